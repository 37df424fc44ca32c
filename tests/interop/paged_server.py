#!/usr/bin/env python3
"""A small MCP server (stdio, newline-delimited JSON-RPC, no SDK) for composite-route tests.

It has many tools, listed a page at a time, and a few that act on the server itself:

* `t0000` … `tNNNN` (`--tools N`, default 1000): answer their own name (and the arguments
  they were given, as JSON, if any); listed in pages of
  `--page` (default 50) with an opaque cursor. With `--list-delay SECONDS` (default 0) it
  sleeps that long before answering each `tools/list` page (a slow member, for benchmarks).
* `grow`: add a tool `extra`, then send `notifications/tools/list_changed`.
* `die`: exit at once (no answer), so a proxy sees the server fail mid-call.

Speaks whatever protocol version the client asks for.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tools", type=int, default=1000)
    ap.add_argument("--page", type=int, default=50)
    ap.add_argument("--list-delay", type=float, default=0.0)
    args = ap.parse_args()
    tools = [f"t{i:04d}" for i in range(args.tools)] + ["grow", "die"]

    def send(msg: dict) -> None:
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()

    def tool(name: str) -> dict:
        return {
            "name": name,
            "description": f"Tool {name} of the paged server.",
            "inputSchema": {"type": "object", "properties": {}},
        }

    for line in sys.stdin:
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            send({"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "parse error"}})
            continue
        method, mid = msg.get("method"), msg.get("id")
        if mid is None or method is None:
            continue  # notifications and answers
        params = msg.get("params") or {}
        if method == "initialize":
            result = {
                "protocolVersion": params.get("protocolVersion", "2025-06-18"),
                "capabilities": {"tools": {"listChanged": True}},
                "serverInfo": {"name": "paged", "version": "1"},
                "instructions": "Many tools, in pages.",
            }
        elif method == "ping":
            result = {}
        elif method == "tools/list":
            if args.list_delay > 0:
                time.sleep(args.list_delay)
            start = int(params.get("cursor") or 0)
            end = start + args.page
            result = {"tools": [tool(n) for n in tools[start:end]]}
            if end < len(tools):
                result["nextCursor"] = str(end)
        elif method == "tools/call":
            name = params.get("name")
            if name == "die":
                sys.exit(3)
            if name == "grow":
                if "extra" not in tools:
                    tools.append("extra")
                send({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
            if name not in tools:
                send({"jsonrpc": "2.0", "id": mid, "error": {"code": -32602, "message": f"no tool {name}"}})
                continue
            arguments = params.get("arguments") or {}
            text = name + (" " + json.dumps(arguments, sort_keys=True) if arguments else "")
            result = {"content": [{"type": "text", "text": text}]}
        else:
            send({"jsonrpc": "2.0", "id": mid, "error": {"code": -32601, "message": f"no method {method}"}})
            continue
        send({"jsonrpc": "2.0", "id": mid, "result": result})


if __name__ == "__main__":
    main()
