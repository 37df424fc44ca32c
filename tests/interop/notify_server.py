#!/usr/bin/env python3
"""A small MCP server (stdio, newline-delimited JSON-RPC, no SDK) for the shared stdio pool tests.

* `notify` (`uri`): sends `notifications/resources/updated` for `uri`, then
  `notifications/tools/list_changed`, then answers `notified`. The list change reaches every
  session of a shared child; it marks, on each session's stream, where the update was sent.
* `subscriptions`: answers the URIs this process is subscribed to (sorted, comma-separated),
  so a test sees what the proxy subscribed the shared process to.

`resources/subscribe` and `resources/unsubscribe` are kept in one set per process. Speaks
whatever protocol version the client asks for.
"""

from __future__ import annotations

import json
import sys


def main() -> None:
    subscribed: set[str] = set()

    def send(msg: dict) -> None:
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()

    def text(mid, t: str) -> None:
        send({"jsonrpc": "2.0", "id": mid, "result": {"content": [{"type": "text", "text": t}]}})

    tools = [
        {"name": "notify", "description": "Send resources/updated, then tools/list_changed.",
         "inputSchema": {"type": "object", "properties": {"uri": {"type": "string"}}}},
        {"name": "subscriptions", "description": "The URIs this process is subscribed to.",
         "inputSchema": {"type": "object", "properties": {}}},
    ]
    for line in sys.stdin:
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        method, mid = msg.get("method"), msg.get("id")
        if mid is None or method is None:
            continue
        params = msg.get("params") or {}
        if method == "initialize":
            send({"jsonrpc": "2.0", "id": mid, "result": {
                "protocolVersion": params.get("protocolVersion", "2025-06-18"),
                "capabilities": {"tools": {"listChanged": True},
                                 "resources": {"subscribe": True, "listChanged": True}},
                "serverInfo": {"name": "notify-server", "version": "1"},
            }})
        elif method == "tools/list":
            send({"jsonrpc": "2.0", "id": mid, "result": {"tools": tools}})
        elif method == "resources/subscribe":
            subscribed.add(params.get("uri", ""))
            send({"jsonrpc": "2.0", "id": mid, "result": {}})
        elif method == "resources/unsubscribe":
            subscribed.discard(params.get("uri", ""))
            send({"jsonrpc": "2.0", "id": mid, "result": {}})
        elif method == "tools/call" and params.get("name") == "notify":
            uri = (params.get("arguments") or {}).get("uri", "")
            send({"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": uri}})
            send({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
            text(mid, "notified")
        elif method == "tools/call" and params.get("name") == "subscriptions":
            text(mid, ",".join(sorted(subscribed)))
        elif method == "ping":
            send({"jsonrpc": "2.0", "id": mid, "result": {}})
        else:
            send({"jsonrpc": "2.0", "id": mid, "error": {"code": -32601, "message": f"unknown: {method}"}})


if __name__ == "__main__":
    main()
