#!/usr/bin/env python3
"""Interop server: a legacy HTTP+SSE (2024-11-05) MCP server built with the official Python SDK
(`mcp`, pinned in requirements.txt), for Shadowcat's HTTP+SSE upstream and detection tests.

    python_sse_server.py --port PORT

Serves `GET /sse` (its first event is `endpoint`, data `/messages/?session_id=<hex>`) and
`POST /messages/` on 127.0.0.1. Tools: `echo` (returns its message), `add` (a + b) and `slow`
(sleeps `seconds`, sending a log message first). Prints `ready` on stdout once it listens.
"""

from __future__ import annotations

import argparse
import sys

import anyio
import uvicorn

from mcp.server.mcpserver import Context, MCPServer

app = MCPServer("python-sse-interop")


@app.tool()
def echo(message: str) -> str:
    """Return the message."""
    return message


@app.tool()
def add(a: float, b: float) -> str:
    """Add two numbers."""
    s = a + b
    return str(int(s)) if s == int(s) else str(s)


@app.tool()
async def slow(seconds: float, ctx: Context) -> str:
    """Log, then sleep `seconds`."""
    await ctx.info(f"sleeping {seconds}")
    await anyio.sleep(seconds)
    return "done"


async def serve(port: int) -> None:
    starlette_app = app.sse_app(host="127.0.0.1")
    config = uvicorn.Config(starlette_app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)

    async def announce() -> None:
        while not server.started:
            await anyio.sleep(0.02)
        print("ready", flush=True)

    async with anyio.create_task_group() as tg:
        tg.start_soon(announce)
        await server.serve()
        tg.cancel_scope.cancel()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    anyio.run(serve, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
