#!/usr/bin/env python3
"""An example guardrail service for Shadowcat's `callout` interceptor action (standard library
only). Run it, then point a rule at it (see examples/rules/guardrails.toml):

    python3 examples/guardrail.py --port 9100
    shadowcat forward http --rules examples/rules/guardrails.toml -- npx -y @modelcontextprotocol/server-everything

Shadowcat POSTs one JSON object per matching message:

    {"rule": "...", "direction": "c2s" | "s2c", "session": "...", "principal": "...",
     "route": "/mcp", "method": "tools/call", "target": "the tool", "message": {JSON-RPC}}

and expects one of:

    {"decision": "continue"}
    {"decision": "reject", "message": "why", "code": -32003}
    {"decision": "replace", "params": {...}}     (a request: new params, same tool)
    {"decision": "replace", "result": {...}}     (a reply: new result)

This one refuses tool calls whose arguments look like destructive shell or SQL, caps a numeric
`limit` argument at 100, and lets everything else through.
"""

import argparse
import json
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DANGEROUS = re.compile(r"rm\s+-rf\s+/|\bDROP\s+TABLE\b|\bmkfs\b", re.IGNORECASE)
MAX_LIMIT = 100
MAX_BODY = 4 * 1024 * 1024


def decide(asked):
    message = asked.get("message") or {}
    params = message.get("params") or {}
    if asked.get("method") != "tools/call" or "arguments" not in params:
        return {"decision": "continue"}
    arguments = params.get("arguments") or {}
    if DANGEROUS.search(json.dumps(arguments)):
        return {
            "decision": "reject",
            "message": f"tool `{params.get('name')}`: destructive arguments are not allowed",
        }
    limit = arguments.get("limit")
    if isinstance(limit, (int, float)) and limit > MAX_LIMIT:
        capped = dict(params, arguments=dict(arguments, limit=MAX_LIMIT))
        return {"decision": "replace", "params": capped}
    return {"decision": "continue"}


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        if length > MAX_BODY:
            self.send_error(413)
            return
        try:
            asked = json.loads(self.rfile.read(length))
        except ValueError:
            self.send_error(400, "not JSON")
            return
        body = json.dumps(decide(asked)).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        sys.stderr.write("guardrail: " + (fmt % args) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9100)
    a = ap.parse_args()
    server = ThreadingHTTPServer((a.host, a.port), Handler)
    host, port = server.server_address[:2]
    print(f"guardrail listening on http://{host}:{port}/", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
