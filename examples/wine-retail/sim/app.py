#!/usr/bin/env python3
"""Stand-in for the SimpleWine mobile app's backend in the wine-retail example (participant
`simplewine`): follows price changes live over Server-Sent Events and prints each one.

  app.py                          GET /v1/subscriptions/apps-prices/events, reconnecting with
                                  Last-Event-ID after a dropped connection (no gap, no repeat)
  app.py --last-event-id 0        start from a given event id instead of "from now on"

Python 3 standard library only. The bus address is --bus (default $MAGISTRAL_BUS or
http://127.0.0.1:8080); the token is simplewine's demo token unless --token says otherwise.
"""

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime

DEFAULT_BUS = os.environ.get("MAGISTRAL_BUS", "http://127.0.0.1:8080")


def say(*parts):
    print(f"[app  {datetime.now().strftime('%H:%M:%S')}]", *parts, flush=True)


def money(value):
    return f"{value:.2f}" if isinstance(value, (int, float)) else str(value)


def show(event_id, event_type, data, verbose):
    if verbose:
        say(f"id {event_id} {event_type}: {data}")
    try:
        price = json.loads(data) if data else None
    except ValueError:
        price = None
    kind = event_type.rsplit(".", 1)[-1]  # magistral.directory.prices.put | .delete | .purge
    if kind == "put" and isinstance(price, dict):
        was = f"{money(price['previous_amount'])} -> " if "previous_amount" in price else ""
        until = f" until {price['valid_to']}" if price.get("valid_to") else ""
        say(f"price {price.get('price_list')} {price.get('sku')}: {was}{money(price.get('amount'))} "
            f"{price.get('currency')} from {price.get('valid_from')}{until}  (event {event_id})")
    elif kind in ("delete", "purge"):
        say(f"price removed ({event_type})  (event {event_id})")
    else:
        say(f"event {event_id} {event_type}: {data}")


def listen(args):
    """One connection: read events until it ends. Returns the last event id seen."""
    last = args.last_event_id
    url = args.bus.rstrip("/") + f"/v1/subscriptions/{args.subscription}/events"
    request = urllib.request.Request(url)
    request.add_header("Authorization", f"Bearer {args.token}")
    request.add_header("Accept", "text/event-stream")
    if last is not None:
        request.add_header("Last-Event-ID", str(last))
    # The gateway sends a heartbeat every 15 s: a read silent for longer means a dead connection.
    with urllib.request.urlopen(request, timeout=args.idle_timeout) as response:
        say(f"connected to {url}" + (f" (Last-Event-ID: {last})" if last is not None else " (from now on)"))
        event_id, event_type, data = None, "message", []
        for raw in response:
            line = raw.decode("utf-8").rstrip("\r\n")
            if line == "":  # end of an event
                if data:
                    show(event_id, event_type, "\n".join(data), args.verbose)
                    if event_id is not None:
                        last = args.last_event_id = event_id
                event_id, event_type, data = None, "message", []
            elif line.startswith(":"):
                if args.verbose:
                    say(f"({line[1:].strip()})")
            else:
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "id":
                    event_id = value
                elif name == "event":
                    event_type = value
                elif name == "data":
                    data.append(value)
    return last


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bus", default=DEFAULT_BUS, help="the gateway's base URL (default %(default)s)")
    parser.add_argument("--token", default="simplewine-demo-token", help="simplewine's bearer token (default %(default)s)")
    parser.add_argument("--subscription", default="apps-prices", help="stream subscription (default %(default)s)")
    parser.add_argument("--last-event-id", help="resume after this event id")
    parser.add_argument("--idle-timeout", type=float, default=45, help="seconds of silence before reconnecting (default %(default)s)")
    parser.add_argument("-v", "--verbose", action="store_true", help="also print raw events and heartbeats")
    args = parser.parse_args()

    delay = 1
    while True:
        try:
            listen(args)
            say("the stream ended; reconnecting")
            delay = 1
        except KeyboardInterrupt:
            return 0
        except urllib.error.HTTPError as error:
            body = error.read().decode("utf-8", "replace")
            say(f"{error.code}: {body}")
            if error.code in (401, 403, 404, 409):
                return 1  # a wrong token or subscription: retrying will not help
            retry = error.headers.get("Retry-After")
            delay = max(delay, int(retry)) if retry and retry.isdigit() else delay
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            say(f"connection lost ({reason}); reconnecting in {delay}s"
                + (f" with Last-Event-ID {args.last_event_id}" if args.last_event_id else ""))
        try:
            time.sleep(delay)
        except KeyboardInterrupt:
            return 0
        delay = min(delay * 2, 10)


if __name__ == "__main__":
    sys.exit(main())
