#!/usr/bin/env python3
"""Deterministic MCP session for the tape tests: the same calls every run, the
results printed as one JSON object on stdout, so a live run (recorded through
Shadowcat) and a replay of its tape can be compared for equality.

    tape_client.py --url http://127.0.0.1:PORT/mcp
    tape_client.py --stdio -- shadowcat replay TAPE
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import anyio

import mcp.types as types
from mcp import Client, StdioServerParameters


def texts(result: types.CallToolResult) -> str:
    return "".join(b.text for b in result.content if isinstance(b, types.TextContent))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    logs: list[Any] = []
    sampled: list[str] = []
    got_logs = anyio.Event()

    async def sampling(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        sampled.append(getattr(params.messages[0].content, "text", ""))
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text="pong from the tape test"),
            model="tape-test",
            stop_reason="endTurn",
        )

    async def elicitation(context: Any, params: Any) -> types.ElicitResult:
        return types.ElicitResult(action="accept", content={"name": "Ada"})

    async def logging(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(params.data)
        if len(logs) >= 2:
            got_logs.set()

    kwargs: dict[str, Any] = dict(
        mode="legacy",
        read_timeout_seconds=20,
        sampling_callback=sampling,
        elicitation_callback=elicitation,
        logging_callback=logging,
    )
    target: Any = args.url or StdioServerParameters(command=args.command[0], args=args.command[1:])
    with anyio.fail_after(60):
        async with Client(target, **kwargs) as c:
            out["server"] = c.server_info.name if c.server_info else None
            out["tools"] = sorted(t.name for t in (await c.list_tools()).tools)
            out["echo"] = texts(await c.call_tool("echo", {"message": "hello tape"}))
            out["add"] = texts(await c.call_tool("add", {"a": 2, "b": 3}))
            progress: list[float] = []

            async def on_progress(p: float, total: float | None, message: str | None) -> None:
                progress.append(p)

            out["slow"] = texts(await c.call_tool("slow", {"steps": 3, "duration": 0.3}, progress_callback=on_progress))
            out["progress"] = progress
            out["sample"] = texts(await c.call_tool("sample", {"prompt": "ping from the tape test", "max_tokens": 7}))
            out["sampling_prompts"] = sampled
            out["elicit"] = texts(await c.call_tool("elicit", {"message": "name?"}))
            out["log"] = texts(await c.call_tool("log", {"message": "tape", "count": 2}))
            with anyio.move_on_after(3):
                await got_logs.wait()
            out["logs"] = sorted(str(d) for d in logs)
            res = await c.read_resource("demo://items/7")
            out["resource"] = [getattr(x, "text", None) for x in res.contents]
            prompt = await c.get_prompt("greeting", {"name": "Bob"})
            out["prompt"] = [getattr(m.content, "text", "") for m in prompt.messages]
    return out


def main() -> int:
    argv = sys.argv[1:]
    command: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, command = argv[:i], argv[i + 1 :]
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url")
    p.add_argument("--stdio", action="store_true")
    args = p.parse_args(argv)
    args.command = command
    if not args.url and not command:
        p.error("give --url URL or --stdio -- CMD")
    print(json.dumps(anyio.run(run, args), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
