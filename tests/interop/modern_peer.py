#!/usr/bin/env python3
"""Era interop peers built on the official Python SDK (`mcp`):

    modern_peer.py server --port PORT [--era E]   # an MCP server (tools echo, add, count,
                                                  # wait, cancellations, whoami, ask)
    modern_peer.py server --stdio                 # the same tools on stdin/stdout
    modern_peer.py client --url URL --mode M      # list tools, call echo, add, count; check answers

Server eras (`--era`), all on 127.0.0.1:PORT:
    dual    (default) Streamable HTTP at /mcp serving 2026-07-28 and the session-based eras,
            as the SDK does out of the box
    legacy  Streamable HTTP at /mcp without 2026-07-28: a request with that MCP-Protocol-Version
            is refused 400 with a plain JSON-RPC -32600 (as pre-2026 SDKs answer)
    modern  Streamable HTTP at /mcp serving only 2026-07-28: anything else (e.g. `initialize`)
            is refused 400 with -32022 listing `2026-07-28`; GET and DELETE get 405
    sse     the legacy HTTP+SSE transport (2024-11-05): GET /sse, POST /messages/

Client modes: `auto`, `legacy` or `2026-07-28` (the SDK's `Client(mode=...)`); `--sse` uses the
SDK's HTTP+SSE client (legacy mode only); `--any-server` only lists tools and calls `echo`
(whose text must contain the message), for other SDKs' servers. `--progress` also checks that `count` reports
progress 1..3 through a progress callback; `--ask` that `ask` reaches the elicitation callback
(the server asks with a 2026-07-28 multi-round-trip result). The client prints `ok ...` lines, then
`N passed, M failed`, and exits 0 only if all passed. `--expect-era modern|legacy` also checks
which era the session ended up speaking.
"""

from __future__ import annotations

import argparse
import json
import sys

import anyio
import uvicorn

from mcp import Client
from mcp.client.sse import sse_client
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import ElicitRequest, ElicitRequestFormParams, ElicitResult, InputRequiredResult

MODERN = "2026-07-28"


def make_app(name: str = "py-era-peer") -> MCPServer:
    app = MCPServer(name)
    cancelled = 0

    @app.tool()
    def echo(message: str) -> str:
        """Return the message unchanged."""
        return message

    @app.tool()
    def add(a: int, b: int) -> str:
        """Add two integers."""
        return str(a + b)

    @app.tool()
    async def count(n: int, ctx: Context) -> str:
        """Report progress 1..n, then answer."""
        for i in range(1, n + 1):
            await ctx.report_progress(i, n)
            await anyio.sleep(0.01)
        return f"counted {n}"

    @app.tool()
    async def wait(seconds: float) -> str:
        """Sleep; a cancelled wait is counted (see `cancellations`)."""
        nonlocal cancelled
        try:
            await anyio.sleep(seconds)
        except anyio.get_cancelled_exc_class():
            cancelled += 1
            raise
        return "waited"

    @app.tool()
    async def ask(question: str, ctx: Context) -> str | InputRequiredResult:
        """Ask the client (2026-07-28 multi-round-trip elicitation); answer with what it said."""
        answer = (ctx.input_responses or {}).get("answer")
        if answer is None:
            form = ElicitRequestFormParams(
                message=question,
                requested_schema={"type": "object", "properties": {"name": {"type": "string"}}},
            )
            return InputRequiredResult(
                input_requests={"answer": ElicitRequest(params=form)}, request_state="asked"
            )
        content = getattr(answer, "content", None) or {}
        return f"{getattr(answer, 'action', '?')} {content.get('name', '')} ({ctx.request_state})"

    @app.tool()
    def whoami() -> str:
        """This server's name (`--name`)."""
        return name

    @app.tool()
    def cancellations() -> str:
        """How many `wait` calls were cancelled in this process."""
        return str(cancelled)

    return app


async def refuse(send, status: int, body: dict | None) -> None:
    payload = json.dumps(body).encode() if body is not None else b""
    headers = [(b"content-type", b"application/json")] if body is not None else []
    if status == 405:
        headers.append((b"allow", b"POST"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def era_gate(inner, era: str):
    """ASGI middleware restricting the SDK's dual-era server to one era."""

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return await inner(scope, receive, send)
        headers = dict(scope["headers"])
        version = headers.get(b"mcp-protocol-version", b"").decode("latin-1")
        if era == "legacy" and version == MODERN:
            err = {"code": -32600, "message": f"Bad Request: Unsupported protocol version: {version}"}
            return await refuse(send, 400, {"jsonrpc": "2.0", "id": None, "error": err})
        if era == "modern":
            if scope["method"] in ("GET", "DELETE"):
                return await refuse(send, 405, None)
            if version != MODERN:
                err = {
                    "code": -32022,
                    "message": "Unsupported protocol version: this server speaks only 2026-07-28",
                    "data": {"supported": [MODERN], "requested": version or None},
                }
                return await refuse(send, 400, {"jsonrpc": "2.0", "id": None, "error": err})
        return await inner(scope, receive, send)

    return app


async def serve_http(port: int, era: str, name: str) -> None:
    app = make_app(name)
    if era == "sse":
        asgi = app.sse_app(host="127.0.0.1")
    else:
        asgi = app.streamable_http_app(host="127.0.0.1")
        if era != "dual":
            asgi = era_gate(asgi, era)
    config = uvicorn.Config(asgi, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    await uvicorn.Server(config).serve()


def text_of(result) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


async def drive(a: argparse.Namespace) -> int:
    passed = failed = 0

    def check(name: str, ok: bool, why: str = "") -> None:
        nonlocal passed, failed
        if ok:
            passed += 1
            print(f"ok {name}")
        else:
            failed += 1
            print(f"FAIL {name}: {why}")

    asked: list[str] = []

    async def on_elicit(ctx, params) -> ElicitResult:
        asked.append(params.message)
        return ElicitResult(action="accept", content={"name": "Ada"})

    target = sse_client(a.url, timeout=20) if a.sse else a.url
    with anyio.fail_after(60):
        async with Client(target, mode=a.mode, elicitation_callback=on_elicit) as c:
            version = str(getattr(c, "protocol_version", "") or "")
            print(f"negotiated {version}", file=sys.stderr)
            tools = await c.list_tools()
            names = sorted(t.name for t in tools.tools)
            print(f"tools: {' '.join(names)}")
            if a.any_server:
                # Another SDK's server: its echo decorates the message.
                r = await c.call_tool("echo", {"message": "héllo era"})
                check("echo", "héllo era" in text_of(r), f"got {text_of(r)!r}")
                print(f"{passed} passed, {failed} failed")
                return 0 if failed == 0 else 1
            check("tools_list", {"echo", "add"} <= set(names), f"got {names}")
            r = await c.call_tool("echo", {"message": "héllo era"})
            check("echo", text_of(r) == "héllo era", f"got {text_of(r)!r}")
            r = await c.call_tool("add", {"a": 2, "b": 3})
            check("add", text_of(r) == "5", f"got {text_of(r)!r}")
            if a.progress:
                seen: list[float] = []

                async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                    seen.append(progress)

                r = await c.call_tool("count", {"n": 3}, progress_callback=on_progress)
                check("count", text_of(r) == "counted 3", f"got {text_of(r)!r}")
                check("progress", seen == [1, 2, 3], f"got {seen}")
            if a.ask:
                r = await c.call_tool("ask", {"question": "your name?"})
                check("ask", text_of(r) == "accept Ada (asked)", f"got {text_of(r)!r}")
                check("asked", asked == ["your name?"], f"elicitation callback saw {asked}")
            if a.expect_era:
                era = "modern" if version.startswith("2026") else "legacy"
                check("era", era == a.expect_era, f"negotiated {version!r} ({era})")
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("server")
    s.add_argument("--port", type=int)
    s.add_argument("--stdio", action="store_true")
    s.add_argument("--era", choices=["dual", "legacy", "modern", "sse"], default="dual")
    s.add_argument("--name", default="py-era-peer")
    c = sub.add_parser("client")
    c.add_argument("--url", required=True)
    c.add_argument("--mode", default="auto")
    c.add_argument("--sse", action="store_true")
    c.add_argument("--progress", action="store_true")
    c.add_argument("--any-server", action="store_true", help="only list tools and call echo (any server's)")
    c.add_argument("--ask", action="store_true", help="call `ask` (multi-round-trip elicitation)")
    c.add_argument("--expect-era", choices=["modern", "legacy"])
    a = p.parse_args()
    if a.cmd == "server":
        if a.stdio:
            make_app(a.name).run()
            return 0
        if a.port is None:
            p.error("server needs --port or --stdio")
        anyio.run(serve_http, a.port, a.era, a.name)
        return 0
    return anyio.run(drive, a)


if __name__ == "__main__":
    sys.exit(main())
