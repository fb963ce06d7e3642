#!/usr/bin/env python3
"""A recording stand-in: listens where the example's push subscriptions deliver and prints what
arrives, the way the `>>>` blocks of the README and the walkthrough show it.

  standin.py                         listen on 7048 (NAV), 7101 (shop), 7201 (CRM), 7401 (iSimple)
  standin.py --ports 9000            listen on one port of your own
  standin.py --status 500            answer 500 to everything (watch retries, the breaker,
                                     dead letters: `magistral subs`)
  standin.py --secret whsec_...      check signatures with this secret (repeatable) instead of
                                     the example's, secrets/*-webhook-secret at the root

Each delivery prints as

  >>> POST /BC/api/v2.0/companies(demo)/salesOrders (port 7048)
      content-type: application/json
      ce-id: BX-2026-118734
      ...
      {"externalDocumentNumber": ...}

with the headers a receiver cares about (content type, authorization, if-match, CloudEvents `ce-*`,
Standard Webhooks `webhook-*`, `magistral-*`, `traceparent`). A signed delivery (one carrying
`webhook-signature`) is checked as its receiver would check it, against the signing secrets the
example gives its subscriptions, and prints `(signature verified)` or `(signature DOES NOT VERIFY)`.

What it answers: on Business Central's paths (`/BC/...`) it decides as NAV does in erp.py — it
books a sales order (201) or refuses it with Business Central's own error (400: an unknown
customer, an SKU starting with X, more than 120 bottles), learns the customers the CRM sends
(`MagistralCustomers_Upsert`), and answers `MagistralQueries_Answer` (purchase history, where an
order is) from the orders it booked. A refusal and a query's answer print after the delivery:

  <<< 400 {"error": {"code": "Internal_RecordNotFound", ...}}

Unlike erp.py it publishes nothing on the bus (no orders.status, no prices directory): what the
bus holds is what you sent it. Everything else is answered 2xx as the real systems do (204 for
a PATCH, 200 otherwise).

Python 3 standard library only.
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# NAV's decisions (customers, orders, history) are erp.py's, beside this file.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from erp import Nav  # noqa: E402

SHOWN = ("content-type", "authorization", "if-match", "traceparent")
SHOWN_PREFIXES = ("ce-", "webhook-", "magistral-")
PRINT_LOCK = threading.Lock()


# The example's demo signing secrets (magistral.toml's `signing_secrets` files), at the root.
EXAMPLE_SECRETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "secrets")


def example_secrets():
    """The whsec_ secrets in the example's secrets/*-webhook-secret files."""
    try:
        names = sorted(n for n in os.listdir(EXAMPLE_SECRETS) if n.endswith("-webhook-secret"))
    except OSError:
        return []
    secrets = []
    for name in names:
        with open(os.path.join(EXAMPLE_SECRETS, name), encoding="utf-8") as f:
            secrets.append(f.read().strip())
    return secrets


def verify(secrets, headers, body):
    """Standard Webhooks: HMAC-SHA256 over "<id>.<timestamp>.<body>" with the base64 key; a
    receiver holding any of `secrets` accepts one matching `v1,` signature."""
    signed = f"{headers.get('webhook-id', '')}.{headers.get('webhook-timestamp', '')}.".encode() + body
    given = [s.split(",", 1)[1] for s in headers.get("webhook-signature", "").split() if s.startswith("v1,")]
    for secret in secrets:
        key = base64.b64decode(secret.removeprefix("whsec_"))
        expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        if any(hmac.compare_digest(expected, g) for g in given):
            return True
    return False


def nav_answer(nav, method, path, body):
    """What Business Central answers on `path`: (status, document or None), printed or not."""
    path = urllib.parse.urlsplit(path).path
    try:
        document = json.loads(body or b"null")
    except ValueError:
        return 400, {"error": {"code": "BadRequest", "message": "Invalid JSON."}}, True
    if method == "POST" and path.endswith("/salesOrders"):
        status, answer, _ = nav.book(document)
        return status, answer, status != 201
    if method == "POST" and path.endswith("/MagistralCustomers_Upsert"):
        with nav.lock:
            nav.customers.add(document.get("customerNo"))
        return 204, None, False
    if method == "POST" and path.endswith("/MagistralQueries_Answer"):
        status, answer, _ = nav.answer(document)
        return status, answer, True
    return (204 if method == "PATCH" else 200), ({} if method != "PATCH" else None), False


def handler(port, status, secrets, nav):
    class Recorder(BaseHTTPRequestHandler):
        def do_POST(self):
            self.record()

        def do_PUT(self):
            self.record()

        def do_PATCH(self):
            self.record()

        def record(self):
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            lines = [f">>> {self.command} {self.path} (port {port})"]
            for name, value in headers.items():
                if name in SHOWN or name.startswith(SHOWN_PREFIXES):
                    lines.append(f"    {name}: {value}")
            if "webhook-signature" in headers:
                lines.append(f"    (signature {'verified' if verify(secrets, headers, body) else 'DOES NOT VERIFY'})")
            lines.append("    " + body.decode("utf-8", errors="replace"))
            if status:
                code, answer = status, b"{}"
            elif self.path.startswith("/BC/"):
                code, document, shown = nav_answer(nav, self.command, self.path, body)
                answer = b"" if document is None else json.dumps(document, ensure_ascii=False).encode()
                if shown:
                    lines.append(f"<<< {code} {answer.decode()}")
            else:
                code = 204 if self.command == "PATCH" else 200
                answer = b"" if code == 204 else b"{}"
            with PRINT_LOCK:
                print("\n".join(lines) + "\n", flush=True)
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    return Recorder


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ports", default="7048,7101,7201,7401", help="comma-separated ports (default: the example's)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--status", type=int, default=0, help="answer this status to everything")
    p.add_argument("--secret", action="append", default=[],
                   help="a whsec_ signing secret to verify signatures with (repeatable; default: the example's)")
    args = p.parse_args()
    servers, nav = [], Nav()
    for port in (int(x) for x in args.ports.split(",") if x.strip()):
        try:
            servers.append(ThreadingHTTPServer((args.host, port), handler(port, args.status, args.secret or example_secrets(), nav)))
        except OSError as err:
            sys.exit(f"standin: port {port}: {err} (another stand-in or simulator running?)")
    for server in servers[1:]:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"standin: recording on {', '.join(str(s.server_address[1]) for s in servers)}; Ctrl+C stops",
          flush=True)
    try:
        servers[0].serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
