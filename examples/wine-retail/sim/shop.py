#!/usr/bin/env python3
"""Stand-in for the 1C-Bitrix web shop of the wine-retail example (participant `bitrix`).

  shop.py [serve]                 listen on 127.0.0.1:7101 for what the bus pushes to the shop:
                                  the shop-status subscription's sale.order.update calls and the
                                  bitrix-failures dead-letter events; print each as one line
  shop.py order [--bad]           place an order: POST /v1/publish/orders.created (a fresh order
                                  id on samples/sales-order.valid.json, or --id's); --bad sends one
                                  that breaks the sales-order contract and prints the field errors
  shop.py history C-0042          ask NAV for a customer's purchase history
                                  (POST /v1/request/nav.query.customer.purchases)
  shop.py status BX-2026-118734   ask NAV where an order is (POST /v1/request/nav.query.order.status)
  shop.py where BX-2026-118734    where is this message on the bus? (GET /v1/messages/<id>)

Python 3 standard library only. The bus address is --bus (default $MAGISTRAL_BUS or
http://127.0.0.1:8080); the token is bitrix's demo token unless --token says otherwise.
"""

import argparse
import copy
import json
import os
import re
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
# The bus configuration (samples/, secrets/) is at the repository root, two levels up.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
DEFAULT_BUS = os.environ.get("MAGISTRAL_BUS", "http://127.0.0.1:8080")

# Statuses the shop defines (sale.status.add): RN "registered in NAV", ER "NAV refused it".
STATUS_NAMES = {"RN": "registered in NAV", "ER": "refused by NAV"}


def now():
    return datetime.now().strftime("%H:%M:%S")


# The server answers each request on its own thread: one line at a time, never two mixed.
PRINT_LOCK = threading.Lock()


def say(*parts):
    line = " ".join([f"[shop {now()}]", *map(str, parts)])
    with PRINT_LOCK:
        print(line, flush=True)


def call(bus, method, path, token, body=None, headers=None, timeout=15):
    """One request to the bus: (status, headers, parsed JSON or text)."""
    data = None if body is None else json.dumps(body, ensure_ascii=False).encode()
    request = urllib.request.Request(bus.rstrip("/") + path, data=data, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, head, raw = response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        status, head, raw = error.code, error.headers, error.read()
    except urllib.error.URLError as error:
        sys.exit(f"cannot reach the bus at {bus}: {error.reason} (is `scripts/dev` running? see --bus)")
    text = raw.decode("utf-8", "replace")
    try:
        return status, head, json.loads(text) if text else None
    except ValueError:
        return status, head, text


# ------------------------------------------------------------------------------------------
# serve: what the bus pushes to the shop


class Shop(BaseHTTPRequestHandler):
    seen = set()  # webhook-ids already handled (a retry or a replay is shown once more, marked)

    def log_message(self, *args):
        pass

    def reply(self, status, document):
        body = json.dumps(document, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            say(f"!! {self.path}: not JSON: {raw[:200]!r}")
            return self.reply(400, {"error": "INVALID_REQUEST", "error_description": "body is not JSON"})
        message_id = self.headers.get("webhook-id", "")
        again = "" if message_id not in Shop.seen else "  (again: a retry or replay)"
        Shop.seen.add(message_id)
        path = urllib.parse.urlsplit(self.path).path
        if path.endswith("/sale.order.update.json"):
            return self.order_update(body, again)
        if path == "/local/magistral/failures.php":
            return self.failure(body, again)
        say(f"?? POST {self.path}: {json.dumps(body, ensure_ascii=False)[:300]}")
        self.reply(404, {"error": "ERROR_METHOD_NOT_FOUND", "error_description": "Method not found!"})

    def order_update(self, body, again):
        # The shop-status subscription's transform made this of NAV's orders.status:
        # {"id": "<Bitrix order ID>", "fields": {"statusId": "RN" | "ER", ...}}
        order_id = urllib.parse.unquote(self.headers.get("ce-correlationid", "")) or f"#{body.get('id')}"
        fields = body.get("fields") or {}
        status = fields.get("statusId", "?")
        name = STATUS_NAMES.get(status, "")
        if status == "RN":
            detail = fields.get("additionalInfo", "")
        else:
            detail = fields.get("reasonMarked", "")
        say(f"order {order_id} (Bitrix ID {body.get('id')}) -> status {status} {name}: {detail}{again}")
        # What Bitrix's REST answers to sale.order.update.
        self.reply(200, {"result": {"order": {"id": int(body.get("id", 0) or 0), "statusId": status}},
                         "time": {"start": time.time(), "finish": time.time()}})

    def failure(self, body, again):
        # The bitrix-failures subscription: the gateway's dead-letter event of nav-orders.
        say(f"NAV refused order {body.get('message_id')} for good: {body.get('class')}, "
            f"HTTP {body.get('status')}, attempt {body.get('attempts')}: {body.get('detail')}{again}")
        self.reply(200, {"ok": True})


def serve(args):
    host, port = args.listen.rsplit(":", 1)
    server = ThreadingHTTPServer((host, int(port)), Shop)
    say(f"1C-Bitrix shop stand-in on http://{args.listen}: "
        "/rest/1/demo-webhook-code/sale.order.update.json and /local/magistral/failures.php")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


# ------------------------------------------------------------------------------------------
# commands


# Milliseconds since 2026-01-01: unique and increasing across runs (a clock that goes back
# aside), and strictly increasing within one run even for orders placed in the same ms.
_last_bitrix_id = 0


def next_bitrix_id():
    global _last_bitrix_id
    _last_bitrix_id = max(_last_bitrix_id + 1, int((time.time() - 1_767_225_600) * 1000))
    return str(_last_bitrix_id)


def fresh_order(args):
    with open(os.path.join(ROOT, "samples", "sales-order.valid.json"), encoding="utf-8") as f:
        order = json.load(f)
    stamp = datetime.now(timezone.utc).astimezone()
    order["order_id"] = args.id or f"BX-{stamp.year}-{next_bitrix_id()}"
    order["created_at"] = stamp.isoformat(timespec="seconds")
    if args.customer:
        order["customer"]["id"] = args.customer
    if args.sku:
        order["lines"][0]["sku"] = args.sku
    if args.qty:
        line = order["lines"][0]
        line["qty"] = args.qty
        line["amount"] = round(line["qty"] * line["price"], 2)
        gross = round(sum(l["amount"] for l in order["lines"]), 2)
        tax = round(gross * 22 / 122, 2)
        order["totals"].update(gross=gross, tax=tax, net=round(gross - tax, 2))
    return order


def break_order(order):
    """What a careless form produces: the shapes the sales-order contract refuses."""
    bad = copy.deepcopy(order)
    bad["created_at"] = datetime.now().strftime("%d.%m.%Y %H:%M")   # not RFC 3339
    bad["customer"]["phone"] = "8 (916) 123-45-67"                   # not E.164
    bad["delivery"]["country"] = "RUS"                               # not ISO 3166-1 alpha-2
    bad["payment"]["method"] = "sbp"                                 # not in the enum
    bad["totals"]["currency"] = "руб"                                # not ISO 4217
    del bad["lines"][0]["sku"]                                       # required
    bad["lines"][1]["qty"] = -3                                      # must be > 0
    bad["promo_code"] = "WINE10"                                     # not in the contract
    return bad


def order(args):
    document = fresh_order(args)
    if args.bad:
        document = break_order(document)
    order_id = document["order_id"]
    lines = ", ".join(f"{l.get('qty')} x {l.get('sku', '(no sku)')}" for l in document["lines"])
    say(f"placing order {order_id} for {document['customer']['id']}: {lines}")
    # The order id is the message id (a retry is stored once) and the correlation id that NAV's
    # status will carry: GET /v1/messages?correlation_id=<order id> lists the whole story.
    status, _, answer = call(args.bus, "POST", "/v1/publish/orders.created", args.token, document,
                             {"Idempotency-Key": order_id, "ce-correlationid": order_id})
    if status in (200, 202):
        dup = " (a duplicate: already stored)" if answer.get("duplicate") else ""
        say(f"{status}: stored as {answer['id']} in {answer['stream']} seq {answer['seq']}{dup}")
        return 0
    if isinstance(answer, dict) and answer.get("type", "").endswith("contract-violation"):
        errors = answer.get("errors") or []
        say(f"{status} {answer.get('title')}: {len(errors)} field(s)")
        for e in errors:
            print(f"    {e.get('instancePath') or '/':28} {e.get('message')}", flush=True)
        return 1
    say(f"{status}: {json.dumps(answer, ensure_ascii=False)}")
    return 1


def history(args):
    question = {"customer_id": args.customer}
    if args.since:
        question["since"] = args.since
    status, _, answer = call(args.bus, "POST", "/v1/request/nav.query.customer.purchases?timeout=5s",
                             args.token, question)
    if status != 200:
        say(f"{status}: {json.dumps(answer, ensure_ascii=False)}")
        return 1
    orders = answer.get("orders", [])
    say(f"purchase history of {answer.get('customer_id')}: {len(orders)} order(s)")
    for o in orders:
        print(f"    {o.get('date')}  {o.get('order_id'):18} {o.get('nav_document_no', ''):14} "
              f"{o.get('total'):>10} {o.get('currency', '')}", flush=True)
    return 0


def status(args):
    code, _, answer = call(args.bus, "POST", "/v1/request/nav.query.order.status?timeout=5s",
                           args.token, {"order_id": args.order_id})
    say(f"{code}: {json.dumps(answer, ensure_ascii=False)}")
    return 0 if code == 200 else 1


def where(args):
    code, _, answer = call(args.bus, "GET", "/v1/messages/" + urllib.parse.quote(args.id, safe=""), args.token)
    print(json.dumps(answer, ensure_ascii=False, indent=2), flush=True)
    return 0 if code == 200 else 1


def order_number(text):
    """BX-<year>-<Bitrix order ID>: the form shop-status reads the Bitrix ID from."""
    if not re.fullmatch(r"BX-[0-9]{4}-[0-9]+", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not BX-<year>-<Bitrix order ID>, e.g. BX-2026-29052160417")
    return text


def number(text):
    value = float(text)
    return int(value) if value.is_integer() else value


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bus", default=DEFAULT_BUS, help="the gateway's base URL (default %(default)s)")
    parser.add_argument("--token", default="bitrix-demo-token", help="bitrix's bearer token (default %(default)s)")
    parser.add_argument("--listen", default="127.0.0.1:7101", help="serve: address to listen on (default %(default)s)")
    # The same options after the command (`shop.py order --bus ...`).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--bus", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("--token", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command")

    p = commands.add_parser("serve", parents=[common], help="receive statuses and failures (the default)")
    p.add_argument("--listen", default=argparse.SUPPRESS, help="address to listen on (default 127.0.0.1:7101)")

    p = commands.add_parser("order", parents=[common], help="place an order on orders.created")
    p.add_argument("--bad", action="store_true", help="send an order that breaks the contract")
    p.add_argument("--customer", help="customer id instead of the sample's C-000482193 "
                   "(the ERP stand-in refuses ones it does not know, e.g. C-000999999)")
    p.add_argument("--sku", help="SKU of the first line (the ERP stand-in refuses SKUs starting with X)")
    p.add_argument("--qty", type=number, help="quantity of the first line (the ERP stand-in has 120 in stock)")
    p.add_argument("--id", type=order_number, help="the order number, BX-<year>-<Bitrix order ID> "
                   "(default: a fresh one, whose ID is the milliseconds since 2026-01-01: BX-2026-29052160417)")

    p = commands.add_parser("history", parents=[common], help="ask NAV for a customer's purchase history")
    p.add_argument("customer", help="customer id, e.g. C-0042")
    p.add_argument("--since", help="YYYY-MM-DD")

    p = commands.add_parser("status", parents=[common], help="ask NAV where an order is")
    p.add_argument("order_id")

    p = commands.add_parser("where", parents=[common], help="where is a message on the bus (GET /v1/messages/<id>)")
    p.add_argument("id")

    args = parser.parse_args()
    if args.command in (None, "serve"):
        return serve(args)
    return {"order": order, "history": history, "status": status, "where": where}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
