#!/usr/bin/env python3
"""Stand-in for Dynamics NAV / Business Central in the wine-retail example (participant `nav`).

  erp.py [serve]                  listen on 127.0.0.1:7048 for what the bus sends NAV:
      POST  /BC/api/v2.0/companies(demo)/salesOrders         nav-orders: book the sales order
            (201) or refuse it with Business Central's error (400), then publish the order's
            status on orders.status (as nav, ce-correlationid = the order id)
      POST  /BC/ODataV4/MagistralQueries_Answer?company=demo nav-queries: purchase history and
            order status, answered as an OData unbound action ({"value": "<JSON text>"})
      PATCH /BC/ODataV4/Company('demo')/MagistralPriceInbox('PRICES')   nav-prices: apply a
            price from 1C, then write it into the prices directory
      POST  /BC/ODataV4/MagistralCustomers_Upsert?company=demo   nav-customers: learn a customer
      POST  /BC/ODataV4/MagistralEdi_Receive?company=demo        nav-edi: take an EDI document
  erp.py price W-0012345 1090     write a price into the prices directory
                                  (PUT /v1/kv/prices/RETAIL.W-0012345)

How this NAV decides an order: an unknown customer (not C-000482193, C-000517006, C-0042 or one
the CRM sent) is refused as unknown-customer; an SKU starting with X as unknown-sku; more than
120 bottles of one SKU as out-of-stock. Every other order is created as SO-26-00NNNN.

Python 3 standard library only. The bus address is --bus (default $MAGISTRAL_BUS or
http://127.0.0.1:8080); the token is nav's demo token unless --token says otherwise.
"""

import argparse
import json
import os
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
# The bus configuration (samples/, secrets/) is at the repository root, two levels up.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
DEFAULT_BUS = os.environ.get("MAGISTRAL_BUS", "http://127.0.0.1:8080")
STOCK = 120  # bottles of any one SKU in the warehouse


def stamp():
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def money(value):
    return f"{value:.2f}" if isinstance(value, (int, float)) else str(value)


# The server answers each request on its own thread: one line at a time, never two mixed.
PRINT_LOCK = threading.Lock()


def say(*parts):
    line = " ".join([f"[nav  {datetime.now().strftime('%H:%M:%S')}]", *map(str, parts)])
    with PRINT_LOCK:
        print(line, flush=True)


def call(bus, method, path, token, body=None, headers=None, timeout=15):
    data = None if body is None else json.dumps(body, ensure_ascii=False).encode()
    request = urllib.request.Request(bus.rstrip("/") + path, data=data, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    except urllib.error.URLError as error:
        return 0, {"error": f"cannot reach the bus at {bus}: {error.reason}"}
    text = raw.decode("utf-8", "replace")
    try:
        return status, json.loads(text) if text else None
    except ValueError:
        return status, text


class Nav:
    """NAV's data, in memory."""

    def __init__(self):
        self.lock = threading.Lock()
        self.customers = {"C-000482193", "C-000517006", "C-0042"}
        self.next_no = 4512
        # Sales orders by externalDocumentNo (the shop's order id), and per customer.
        self.orders = {}
        self.history = {
            "C-0042": [
                {"no": "SO-26-002871", "externalDocumentNo": "BX-2026-097311", "orderDate": "2026-08-02",
                 "amountIncludingVAT": 5380, "currencyCode": ""},
                {"no": "SO-26-003077", "externalDocumentNo": "", "orderDate": "2026-09-14",
                 "amountIncludingVAT": 2450, "currencyCode": ""},
            ],
            "C-000482193": [
                {"no": "SO-26-003102", "externalDocumentNo": "", "orderDate": "2026-09-20",
                 "amountIncludingVAT": 1290, "currencyCode": ""},
            ],
        }
        self.prices = {}

    def book(self, order):
        """(201, salesOrder) or (400, BC error, classified error for orders.status)."""
        customer = order.get("customerNumber", "")
        lines = order.get("salesOrderLines") or []
        with self.lock:
            known = self.orders.get(order.get("externalDocumentNumber"))
            if known:  # the same order again (a retry or a replay): BC would find it by number
                return 201, known, None
            if customer not in self.customers:
                return 400, {"error": {"code": "Internal_RecordNotFound",
                                       "message": f"The Customer does not exist. Identification fields and values: No.='{customer}'"}}, \
                    {"class": "unknown-customer", "message": f"Клиент {customer} не найден в NAV", "field": "/customer/id"}
            for i, line in enumerate(lines):
                sku = line.get("lineObjectNumber", "")
                if sku.startswith("X"):
                    return 400, {"error": {"code": "Internal_RecordNotFound",
                                           "message": f"The Item does not exist. Identification fields and values: No.='{sku}'"}}, \
                        {"class": "unknown-sku", "message": f"Товар {sku} не найден в NAV", "field": f"/lines/{i}/sku"}
                if line.get("quantity", 0) > STOCK:
                    return 400, {"error": {"code": "Application_DialogException",
                                           "message": f"Item {sku} is not in inventory: {line.get('quantity'):g} requested, {STOCK} available."}}, \
                        {"class": "out-of-stock",
                         "message": f"Нет в наличии: {sku}, доступно {STOCK} из {line.get('quantity'):g}",
                         "field": f"/lines/{i}/qty"}
            number = f"SO-26-{self.next_no:06d}"
            self.next_no += 1
            total = round(sum(l.get("quantity", 0) * l.get("unitPrice", 0) for l in lines), 2)
            total = int(total) if float(total).is_integer() else total
            document = {
                "@odata.context": "http://127.0.0.1:7048/BC/api/v2.0/$metadata#companies(demo)/salesOrders/$entity",
                "@odata.etag": f'W/"JzE5OzE{self.next_no}MTsn"',
                "id": str(uuid.uuid4()),
                "number": number,
                "externalDocumentNumber": order.get("externalDocumentNumber", ""),
                "orderDate": order.get("orderDate"),
                "customerNumber": customer,
                "currencyCode": order.get("currencyCode", ""),
                "totalAmountIncludingTax": total,
                "status": "Draft",
                "lastModifiedDateTime": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            }
            self.orders[document["externalDocumentNumber"]] = document
            self.history.setdefault(customer, []).insert(0, {
                "no": number, "externalDocumentNo": document["externalDocumentNumber"],
                "orderDate": document["orderDate"], "amountIncludingVAT": total, "currencyCode": ""})
            return 201, document, None

    def answer(self, question):
        """The codeunit MagistralQueries, procedure Answer (an OData unbound action): (status,
        document, what NAV's log says or None)."""
        try:
            params = json.loads(question.get("parametersJson") or "{}")
        except (ValueError, AttributeError):
            return 400, {"error": {"code": "BadRequest", "message": "parametersJson is not JSON"}}, None
        kind = question.get("query")
        if kind == "customer.purchases":
            customer = params.get("customerNo")
            with self.lock:
                known = customer in self.customers
                orders = [o for o in self.history.get(customer, []) if o["orderDate"] >= params.get("fromDate", "")]
            if not known:
                return 404, {"error": {"code": "Internal_RecordNotFound",
                                       "message": f"The Customer does not exist. Identification fields and values: No.='{customer}'"}}, \
                    f"question: purchases of {customer}: no such customer -> 404"
            result = {"customerNo": customer, "orders": orders[: int(params.get("top") or 100)]}
            summary = f"question: purchases of {customer} since {params.get('fromDate')}: {len(result['orders'])} order(s) -> 200"
        elif kind == "order.status":
            with self.lock:
                document = self.orders.get(params.get("externalDocumentNo"))
            if not document:
                return 404, {"error": {"code": "Internal_RecordNotFound",
                                       "message": f"The Sales Header does not exist. External Document No.='{params.get('externalDocumentNo')}'"}}, \
                    f"question: where is {params.get('externalDocumentNo')}: no such sales order -> 404"
            result = {"no": document["number"], "externalDocumentNo": document["externalDocumentNumber"],
                      "lastModifiedDateTime": document["lastModifiedDateTime"]}
            summary = f"question: where is {params.get('externalDocumentNo')}: {document['number']} -> 200"
        else:
            return 400, {"error": {"code": "BadRequest", "message": f"unknown query {kind!r}"}}, None
        # An OData unbound action returning Text: the codeunit's JSON as a string.
        return 200, {"@odata.context": "http://127.0.0.1:7048/BC/ODataV4/$metadata#Edm.String",
                     "value": json.dumps(result, ensure_ascii=False)}, summary


class Erp(BaseHTTPRequestHandler):
    nav = Nav()
    bus = DEFAULT_BUS
    token = "nav-demo-token"
    basic_auth = None

    def log_message(self, *args):
        pass

    def answer(self, status, document=None, content_type="application/json; odata.metadata=minimal"):
        body = b"" if document is None else json.dumps(document, ensure_ascii=False).encode()
        self.send_response(status)
        if document is not None:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def body(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        return json.loads(raw or b"null")

    def authorized(self):
        if Erp.basic_auth and self.headers.get("Authorization") != Erp.basic_auth:
            self.answer(401, {"error": {"code": "Unauthorized",
                                        "message": "The server has rejected the client credentials."}})
            return False
        return True

    def do_POST(self):
        self.handle_write("POST")

    def do_PATCH(self):
        self.handle_write("PATCH")

    def handle_write(self, method):
        path = urllib.parse.urlsplit(self.path).path
        try:
            body = self.body()
        except ValueError:
            return self.answer(400, {"error": {"code": "BadRequest", "message": "Invalid JSON."}})
        if not self.authorized():
            return
        if method == "POST" and path.endswith("/salesOrders"):
            return self.sales_order(body)
        if method == "POST" and path.endswith("/MagistralQueries_Answer"):
            return self.query(body)
        if method == "PATCH" and "MagistralPriceInbox" in path:
            return self.price(body)
        if method == "POST" and path.endswith("/MagistralCustomers_Upsert"):
            with Erp.nav.lock:
                Erp.nav.customers.add(body.get("customerNo"))
            say(f"customer {body.get('customerNo')} from the CRM: now known to NAV")
            return self.answer(204)
        if method == "POST" and path.endswith("/MagistralEdi_Receive"):
            say(f"EDI {body.get('documentType')} {body.get('documentNo')} received "
                f"({len(body.get('documentJson', ''))} characters of JSON)")
            return self.answer(204)
        say(f"{method} {self.path}: {json.dumps(body, ensure_ascii=False)[:200]} (answered 204)")
        self.answer(204)

    def sales_order(self, order):
        order_id = order.get("externalDocumentNumber")
        attempt = self.headers.get("magistral-attempt", "?")
        status, document, error = Erp.nav.book(order)
        if status == 201:
            say(f"sales order {document['number']} created for {order_id} "
                f"({order.get('customerNumber')}, {len(order.get('salesOrderLines') or [])} lines, "
                f"{money(document['totalAmountIncludingTax'])} RUB; attempt {attempt}) -> 201")
            self.answer(201, document)
            report = {"order_id": order_id, "status": "created", "nav_document_no": document["number"],
                      "at": stamp()}
        else:
            say(f"order {order_id} refused: {error['class']}: {document['error']['message']} -> 400")
            self.answer(400, document)
            report = {"order_id": order_id, "status": "error", "error": error, "at": stamp()}
        # NAV's posting code reports the status on the bus, after answering.
        threading.Thread(target=publish_status, args=(report,), daemon=True).start()

    def query(self, question):
        status, document, summary = Erp.nav.answer(question)
        if summary:
            say(summary)
        self.answer(status, document)

    def price(self, fields):
        if not self.headers.get("If-Match"):
            return self.answer(400, {"error": {"code": "BadRequest",
                                               "message": "Could not validate the client concurrency token required by the service. Please provide a valid token in the client request."}})
        sku, price_list, amount = fields.get("Item_No"), fields.get("Sales_Code"), fields.get("Unit_Price")
        say(f"price from 1C applied: {price_list} {sku} = {money(amount)} from {fields.get('Starting_Date')} (PATCH -> 204)")
        self.answer(204)
        valid_from = fields.get("Starting_Date") or datetime.now().date().isoformat()
        document = {"sku": sku, "price_list": price_list, "amount": amount,
                    "currency": fields.get("Currency_Code") or "RUB",
                    "includes_vat": bool(fields.get("Price_Includes_VAT")), "vat_rate": 22,
                    "valid_from": f"{valid_from}T00:00:00+03:00"}
        if fields.get("Ending_Date") and fields["Ending_Date"] != "0001-01-01":
            document["valid_to"] = f"{fields['Ending_Date']}T23:59:59+03:00"
        threading.Thread(target=write_price, args=(Erp.bus, Erp.token, document), daemon=True).start()


def publish_status(report):
    status, answer = call(Erp.bus, "POST", "/v1/publish/orders.status", Erp.token, report,
                          {"Idempotency-Key": f"status-{report['order_id']}-{report['status']}",
                           "ce-correlationid": report["order_id"]})
    if status in (200, 202):
        say(f"published orders.status {report['status']} for {report['order_id']} -> {status} (seq {answer.get('seq')})")
    else:
        say(f"publishing orders.status for {report['order_id']} failed: {status} {json.dumps(answer, ensure_ascii=False)}")


def write_price(bus, token, document):
    key = f"{document['price_list']}.{document['sku']}"
    status, current = call(bus, "GET", f"/v1/kv/prices/{key}", token)
    if status == 200 and isinstance(current, dict) and "amount" in current:
        document.setdefault("previous_amount", current["amount"])
    status, answer = call(bus, "PUT", f"/v1/kv/prices/{key}", token, document)
    if status == 200:
        was = f" (was {money(document['previous_amount'])})" if "previous_amount" in document else ""
        say(f"prices directory: {key} = {money(document['amount'])} {document['currency']}{was} -> revision {answer.get('revision')}")
        return 0
    say(f"writing prices/{key} failed: {status} {json.dumps(answer, ensure_ascii=False)}")
    return 1


def serve(args):
    Erp.bus, Erp.token = args.bus, args.token
    if not args.no_auth:
        with open(os.path.join(ROOT, "secrets", "nav-basic-auth"), encoding="utf-8") as f:
            Erp.basic_auth = f.read().strip()
    host, port = args.listen.rsplit(":", 1)
    server = ThreadingHTTPServer((host, int(port)), Erp)
    say(f"Business Central stand-in on http://{args.listen}/BC (reports to {args.bus} as nav)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


def price(args):
    document = {"sku": args.sku, "price_list": args.list, "amount": args.amount, "currency": "RUB",
                "includes_vat": True, "vat_rate": 22,
                "valid_from": args.valid_from or stamp()}
    return write_price(args.bus, args.token, document)


def number(text):
    value = float(text)
    return int(value) if value.is_integer() else value


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bus", default=DEFAULT_BUS, help="the gateway's base URL (default %(default)s)")
    parser.add_argument("--token", default="nav-demo-token", help="nav's bearer token (default %(default)s)")
    parser.add_argument("--listen", default="127.0.0.1:7048", help="serve: address to listen on (default %(default)s)")
    # The same options after the command (`erp.py order --bus ...`).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--bus", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("--token", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command")

    p = commands.add_parser("serve", parents=[common], help="be Business Central (the default)")
    p.add_argument("--listen", default=argparse.SUPPRESS, help="address to listen on (default 127.0.0.1:7048)")
    p.add_argument("--no-auth", action="store_true", help="do not check the Basic auth header")

    p = commands.add_parser("price", parents=[common], help="write a price into the prices directory")
    p.add_argument("sku", help="e.g. W-0012345")
    p.add_argument("amount", type=number, help="price with VAT, e.g. 1090")
    p.add_argument("--list", default="RETAIL", help="price list (default %(default)s)")
    p.add_argument("--valid-from", help="RFC 3339 (default: now)")

    args = parser.parse_args()
    if args.command in (None, "serve"):
        args.no_auth = getattr(args, "no_auth", False)
        return serve(args)
    return price(args)


if __name__ == "__main__":
    sys.exit(main())
