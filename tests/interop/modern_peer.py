#!/usr/bin/env python3
"""Era interop peers built on the official Python SDK (`mcp`):

    modern_peer.py server --port PORT        # a dual-era Streamable HTTP server (tools echo, add)
    modern_peer.py client --url URL --mode M # list tools, call echo and add; check the answers

The client prints `ok ...` lines, then `N passed, M failed`, and exits 0 only if all passed.
`--expect-era modern|legacy` also checks which era the session ended up speaking.
"""

from __future__ import annotations

import argparse
import sys

import anyio

from mcp import Client
from mcp.server.mcpserver import MCPServer


def serve(port: int) -> None:
    app = MCPServer("py-dual-era")

    @app.tool()
    def echo(message: str) -> str:
        """Return the message unchanged."""
        return message

    @app.tool()
    def add(a: int, b: int) -> str:
        """Add two integers."""
        return str(a + b)

    app.run(transport="streamable-http", host="127.0.0.1", port=port)


def text_of(result) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


async def drive(url: str, mode: str, expect_era: str | None) -> int:
    passed = failed = 0

    def check(name: str, ok: bool, why: str = "") -> None:
        nonlocal passed, failed
        if ok:
            passed += 1
            print(f"ok {name}")
        else:
            failed += 1
            print(f"FAIL {name}: {why}")

    with anyio.fail_after(30):
        async with Client(url, mode=mode) as c:
            version = str(getattr(c, "protocol_version", "") or "")
            tools = await c.list_tools()
            names = sorted(t.name for t in tools.tools)
            check("tools_list", {"echo", "add"} <= set(names), f"got {names}")
            r = await c.call_tool("echo", {"message": "héllo era"})
            check("echo", text_of(r) == "héllo era", f"got {text_of(r)!r}")
            r = await c.call_tool("add", {"a": 2, "b": 3})
            check("add", text_of(r) == "5", f"got {text_of(r)!r}")
            if expect_era:
                modern = version.startswith("2026")
                era = "modern" if modern else "legacy"
                check("era", era == expect_era, f"negotiated {version!r} ({era})")
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


def main() -> int:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("server")
    s.add_argument("--port", type=int, required=True)
    c = sub.add_parser("client")
    c.add_argument("--url", required=True)
    c.add_argument("--mode", default="auto")
    c.add_argument("--expect-era", choices=["modern", "legacy"])
    a = p.parse_args()
    if a.cmd == "server":
        serve(a.port)
        return 0
    return anyio.run(drive, a.url, a.mode, a.expect_era)


if __name__ == "__main__":
    sys.exit(main())
