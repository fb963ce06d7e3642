#!/usr/bin/env python3
"""Stand-in for the iSimple app's backend in the wine-retail example (participant `isimple`):
the webhook the isimple-prices subscription pushes price changes to, signed per Standard
Webhooks.

  partner.py                      listen on 127.0.0.1:7401, path /magistral/prices; verify each
                                  request's webhook-signature with the secret in
                                  secrets/isimple-webhook-secret; print valid deliveries (204),
                                  refuse a bad or stale signature with 401

The signature: HMAC-SHA256, keyed by the base64-decoded part of the `whsec_` secret, over
"<webhook-id>.<webhook-timestamp>.<raw body>", sent as "v1,<base64>" (several, space-separated,
while a secret is rotated). The timestamp must be within 5 minutes of this clock.

Python 3 standard library only. --bus is accepted for symmetry with the other simulators
(this one only receives).
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import sys
import threading
import time
import urllib.parse
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
# The bus configuration (samples/, secrets/) is at the repository root, two levels up.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
DEFAULT_BUS = os.environ.get("MAGISTRAL_BUS", "http://127.0.0.1:8080")
TOLERANCE = 300  # seconds


# The server answers each request on its own thread: one line at a time, never two mixed.
PRINT_LOCK = threading.Lock()


def say(*parts):
    line = " ".join([f"[isimple {datetime.now().strftime('%H:%M:%S')}]", *map(str, parts)])
    with PRINT_LOCK:
        print(line, flush=True)


def money(value):
    return f"{value:.2f}" if isinstance(value, (int, float)) else str(value)


def verify(secret, headers, body):
    """None when the request is genuine, else why not."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    msg_id, ts, signatures = headers.get("webhook-id"), headers.get("webhook-timestamp"), headers.get("webhook-signature")
    if not (msg_id and ts and signatures):
        return "webhook-id, webhook-timestamp or webhook-signature missing"
    try:
        age = time.time() - int(ts)
    except ValueError:
        return f"webhook-timestamp {ts!r} is not a number"
    if abs(age) > TOLERANCE:
        return f"webhook-timestamp is {int(age)} s away from this clock"
    mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    expected = base64.b64encode(mac).decode()
    for signature in signatures.split(" "):
        version, _, value = signature.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return None
    return "no signature matches"


class Partner(BaseHTTPRequestHandler):
    secret = None
    path_ = "/magistral/prices"
    seen = set()

    def log_message(self, *args):
        pass

    def answer(self, status, document=None):
        body = b"" if document is None else json.dumps(document).encode()
        self.send_response(status)
        if document is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if urllib.parse.urlsplit(self.path).path != Partner.path_:
            return self.answer(404, {"error": "not found"})
        why = verify(Partner.secret, self.headers, body)
        if why:
            say(f"REJECTED {self.headers.get('webhook-id')}: {why} -> 401")
            return self.answer(401, {"error": "invalid signature", "detail": why})
        message_id = self.headers["webhook-id"]
        again = "  (seen before: not applied twice)" if message_id in Partner.seen else ""
        Partner.seen.add(message_id)
        try:
            price = json.loads(body)
        except ValueError:
            price = None
        event = self.headers.get("ce-type", "")
        key = urllib.parse.unquote(self.headers.get("ce-subject", ""))
        if event.endswith(".put") and isinstance(price, dict):
            was = f"{money(price['previous_amount'])} -> " if "previous_amount" in price else ""
            say(f"signed price change OK: {key} {was}{money(price.get('amount'))} {price.get('currency')} "
                f"from {price.get('valid_from')} (webhook-id {message_id}, attempt "
                f"{self.headers.get('magistral-attempt')}){again}")
        else:
            say(f"signed event OK: {event} {key} {body[:200].decode('utf-8', 'replace')}{again}")
        self.answer(204)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bus", default=DEFAULT_BUS, help="the gateway's base URL (unused; default %(default)s)")
    parser.add_argument("--listen", default="127.0.0.1:7401", help="address to listen on (default %(default)s)")
    parser.add_argument("--path", default="/magistral/prices", help="webhook path (default %(default)s)")
    parser.add_argument("--secret-file", default=os.path.join(ROOT, "secrets", "isimple-webhook-secret"),
                        help="the whsec_ secret (default: the example's secrets/isimple-webhook-secret)")
    args = parser.parse_args()
    with open(args.secret_file, encoding="utf-8") as f:
        Partner.secret = f.read().strip()
    Partner.path_ = args.path
    host, port = args.listen.rsplit(":", 1)
    server = ThreadingHTTPServer((host, int(port)), Partner)
    say(f"iSimple webhook on http://{args.listen}{args.path}, verifying with {os.path.relpath(args.secret_file)}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
