#!/usr/bin/env python3
"""Interop client: drive an MCP server (usually through Shadowcat) with the
official Python SDK (`mcp`, pinned in requirements.txt) and check every answer.

The server under test is Shadowcat's built-in demo server, reached directly or
through the proxy:

    python_client.py --url http://127.0.0.1:PORT/mcp [--mode legacy]
    python_client.py --stdio -- shadowcat forward stdio --demo

Prints one line per check (`ok NAME` / `FAIL NAME: WHY`), then
`N passed, M failed`; exits 0 only if every check passed. Diagnostics
(negotiated protocol version, exception tracebacks with --verbose) go to
stderr. Each check has its own timeout, and a watchdog ends the process if the
whole run overstays, so it never hangs.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import traceback
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

import mcp.types as types
from mcp import Client, StdioServerParameters

EXPECTED_SERVER_NAME = "shadowcat-demo"
EXPECTED_TOOLS = {"echo", "add", "slow", "sample", "elicit", "log", "increment"}
SAMPLING_REPLY = "pong from python"
ELICIT_NAME = "Ada"
UNICODE_MESSAGE = "héllo 🐈‍⬛ interop\nsecond line «ünïcødé» 你好 🚀"


class CheckFailed(Exception):
    """A check saw a wrong answer (as opposed to an unexpected exception)."""


def expect(condition: bool, why: str) -> None:
    if not condition:
        raise CheckFailed(why)


def text_of(result: types.CallToolResult) -> str:
    """The concatenated text content of a successful tool result."""
    texts = [block.text for block in result.content if isinstance(block, types.TextContent)]
    if result.is_error:
        raise CheckFailed(f"tool returned isError=true: {''.join(texts)!r}")
    if not texts:
        raise CheckFailed(f"tool result has no text content: {result.content!r}")
    return "".join(texts)


@dataclass
class Recorder:
    """What the client callbacks saw, shared with the checks."""

    sampling_requests: list[types.CreateMessageRequestParams] = field(default_factory=list)
    elicitation_requests: list[Any] = field(default_factory=list)
    log_messages: list[types.LoggingMessageNotificationParams] = field(default_factory=list)
    log_event: anyio.Event | None = None

    async def sampling(self, context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        self.sampling_requests.append(params)
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text=SAMPLING_REPLY),
            model="interop-python",
            stop_reason="endTurn",
        )

    async def elicitation(self, context: Any, params: Any) -> types.ElicitResult:
        self.elicitation_requests.append(params)
        return types.ElicitResult(action="accept", content={"name": ELICIT_NAME})

    async def logging(self, params: types.LoggingMessageNotificationParams) -> None:
        self.log_messages.append(params)
        if self.log_event is not None:
            self.log_event.set()


class Runner:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.passed = 0
        self.failed = 0

    def report(self, name: str, error: str | None) -> None:
        if error is None:
            self.passed += 1
            print(f"ok {name}", flush=True)
        else:
            self.failed += 1
            # Keep the report on one line.
            why = " ".join(error.split())
            print(f"FAIL {name}: {why}", flush=True)

    def fail_phase(self, phase: str, names: list[str], why: str) -> None:
        if phase == "initialize":
            self.report("initialize", why)
            for name in names[1:]:
                self.report(name, "no session (initialize failed)")
        elif phase == "close":
            self.report("close", why)
        else:
            self.report("session", why)

    async def run_check(self, name: str, fn: Callable[[], Awaitable[None]]) -> bool:
        error: str | None = None
        try:
            with anyio.fail_after(self.args.timeout):
                await fn()
        except CheckFailed as e:
            error = str(e)
        except TimeoutError:
            error = f"timed out after {self.args.timeout:g} s"
        except Exception as e:  # noqa: BLE001 - any error is a failed check
            error = describe(e)
            if self.args.verbose:
                traceback.print_exc()
        self.report(name, error)
        return error is None

    # -- connection -------------------------------------------------------

    def make_client(self, rec: Recorder | None) -> Client:
        # log_level: 2026-07-28 servers send log messages only to requests that opt in.
        kwargs: dict[str, Any] = dict(
            mode=self.args.mode, read_timeout_seconds=self.args.timeout, log_level="debug"
        )
        if rec is not None:
            kwargs.update(
                sampling_callback=rec.sampling,
                elicitation_callback=rec.elicitation,
                logging_callback=rec.logging,
            )
        if self.args.url:
            return Client(self.args.url, **kwargs)
        cmd = self.args.command
        return Client(StdioServerParameters(command=cmd[0], args=cmd[1:]), **kwargs)

    # -- the checks ---------------------------------------------------------

    async def main(self) -> None:
        rec = Recorder()
        names = [
            "initialize",
            "tools_list",
            "echo",
            "echo_unicode",
            "add",
            "progress",
            "sampling",
            "elicitation",
            "logging",
            "resource_template",
            "prompt_get",
        ]
        # The client is entered under a cancel scope whose deadline bounds the
        # connect (initialize), is lifted while the checks run (each has its own
        # timeout), and bounds the close again. (A `fail_after` around only the
        # `__aenter__` would break anyio's scope nesting: the client holds a task
        # group open until it exits.)
        scope = anyio.CancelScope(deadline=anyio.current_time() + self.args.timeout)
        phase = "initialize"
        try:
            with scope:
                async with self.make_client(rec) as c:
                    scope.deadline = float("inf")
                    phase = "checks"
                    error: str | None = None
                    info = c.server_info
                    if info is None and str(c.protocol_version).startswith("2026"):
                        # Mode 2026-07-28 starts without a round trip: ask who is there.
                        raw = await c.session.send_discover(str(c.protocol_version))
                        stamp = (raw.get("_meta") or {}).get("io.modelcontextprotocol/serverInfo")
                        info = types.Implementation.model_validate(stamp) if stamp else None
                    print(f"# protocol version {c.protocol_version}, server {info!r}", file=sys.stderr)
                    if info is None:
                        error = "server did not identify itself"
                    elif info.name != EXPECTED_SERVER_NAME:
                        error = f"server name {info.name!r}, expected {EXPECTED_SERVER_NAME!r}"
                    self.report("initialize", error)
                    await self.session_checks(c, rec)
                    phase = "close"
                    scope.deadline = anyio.current_time() + self.args.timeout
        except Exception as e:  # noqa: BLE001
            self.fail_phase(phase, names, describe(e))
            if self.args.verbose:
                traceback.print_exc()
        if scope.cancelled_caught:
            self.fail_phase(phase, names, f"timed out after {self.args.timeout:g} s")

        if self.args.concurrency > 0:
            await self.run_check(f"concurrency_{self.args.concurrency}", self.concurrency_check)

    async def session_checks(self, c: Client, rec: Recorder) -> None:
        async def tools_list() -> None:
            result = await c.list_tools()
            names = [t.name for t in result.tools]
            expect(result.next_cursor is None, f"unexpected pagination cursor {result.next_cursor!r}")
            expect(len(names) == len(set(names)), f"duplicate tool names: {names}")
            expect(set(names) == EXPECTED_TOOLS, f"tools {sorted(names)}, expected {sorted(EXPECTED_TOOLS)}")

        async def echo_roundtrip(message: str) -> None:
            got = text_of(await c.call_tool("echo", {"message": message}))
            expect(got == message, f"echo returned {got!r}, expected {message!r}")

        async def add() -> None:
            got = text_of(await c.call_tool("add", {"a": 2, "b": 3}))
            expect(got == "5", f"add(2, 3) returned {got!r}, expected '5'")

        async def progress() -> None:
            seen: list[tuple[float, float | None, str | None]] = []

            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                seen.append((progress, total, message))

            result = await c.call_tool("slow", {"steps": 3, "duration": 0.3}, progress_callback=on_progress)
            got = text_of(result)
            expect(got == "completed 3 steps", f"slow returned {got!r}, expected 'completed 3 steps'")
            values = [p for p, _, _ in seen]
            expect(values == [1, 2, 3], f"progress values {values}, expected [1, 2, 3] (notifications: {seen})")

        async def sampling() -> None:
            prompt = "ping from python " + uuid.uuid4().hex[:8]
            before = len(rec.sampling_requests)
            got = text_of(await c.call_tool("sample", {"prompt": prompt, "max_tokens": 42}))
            expect(
                got == f"sampled: {SAMPLING_REPLY}", f"sample returned {got!r}, expected 'sampled: {SAMPLING_REPLY}'"
            )
            reqs = rec.sampling_requests[before:]
            expect(len(reqs) == 1, f"sampling callback ran {len(reqs)} times, expected once")
            req = reqs[0]
            texts = [getattr(m.content, "text", None) for m in req.messages]
            expect(texts == [prompt], f"sampling request messages {texts!r}, expected [{prompt!r}]")
            expect(req.max_tokens == 42, f"sampling request maxTokens {req.max_tokens}, expected 42")

        async def elicitation() -> None:
            message = "What is your name? " + uuid.uuid4().hex[:8]
            before = len(rec.elicitation_requests)
            got = text_of(await c.call_tool("elicit", {"message": message}))
            expect("accept" in got and f"name={ELICIT_NAME}" in got, f"elicit returned {got!r}")
            expect(got == f"elicited: accept name={ELICIT_NAME}", f"elicit returned {got!r}")
            reqs = rec.elicitation_requests[before:]
            expect(len(reqs) == 1, f"elicitation callback ran {len(reqs)} times, expected once")
            expect(reqs[0].message == message, f"elicitation message {reqs[0].message!r}, expected {message!r}")

        async def logging() -> None:
            def ours() -> list[types.LoggingMessageNotificationParams]:
                return [
                    m for m in rec.log_messages if m.logger == "demo" and str(m.data).startswith("hi")
                ]

            rec.log_messages.clear()
            got = text_of(await c.call_tool("log", {"message": "hi", "count": 2}))
            expect(got == "logged 2", f"log returned {got!r}, expected 'logged 2'")
            # Notifications may be delivered on another stream than the result: wait briefly.
            with anyio.move_on_after(self.args.log_wait):
                while len(ours()) < 2:
                    rec.log_event = anyio.Event()
                    await rec.log_event.wait()
            await anyio.sleep(0.1)  # let any extra (wrong) notification show up
            msgs = ours()
            data = [m.data for m in msgs]
            expect(len(msgs) == 2, f"received {len(msgs)} logging notifications {data!r}, expected 2")
            expect(sorted(data) == ["hi #1", "hi #2"], f"logging data {data!r}, expected ['hi #1', 'hi #2']")
            levels = {m.level for m in msgs}
            expect(levels == {"info"}, f"logging levels {levels}, expected {{'info'}}")

        async def resource_template() -> None:
            result = await c.read_resource("demo://items/42")
            texts = [getattr(x, "text", None) for x in result.contents]
            expect(texts == ["item 42"], f"demo://items/42 contents {texts!r}, expected ['item 42']")
            uris = [str(x.uri) for x in result.contents]
            expect(uris == ["demo://items/42"], f"contents uri {uris!r}")

        async def prompt_get() -> None:
            result = await c.get_prompt("greeting", {"name": "Bob"})
            texts = [getattr(m.content, "text", "") for m in result.messages]
            expect(len(texts) >= 1, "prompt has no messages")
            expect(any("Bob" in t for t in texts), f"prompt messages {texts!r} do not mention 'Bob'")

        await self.run_check("tools_list", tools_list)
        await self.run_check("echo", lambda: echo_roundtrip("hello interop"))
        await self.run_check("echo_unicode", lambda: echo_roundtrip(UNICODE_MESSAGE))
        await self.run_check("add", add)
        await self.run_check("progress", progress)
        await self.run_check("sampling", sampling)
        await self.run_check("elicitation", elicitation)
        await self.run_check("logging", logging)
        await self.run_check("resource_template", resource_template)
        await self.run_check("prompt_get", prompt_get)

    async def concurrency_check(self) -> None:
        """K sessions in parallel, each echoing its own messages: none may see another's."""
        k = self.args.concurrency
        rounds = 5
        errors: list[str] = []

        async def one(i: int) -> None:
            try:
                async with self.make_client(None) as c:
                    for r in range(rounds):
                        message = f"session {i} round {r} {uuid.uuid4().hex}"
                        got = text_of(await c.call_tool("echo", {"message": message}))
                        if got != message:
                            errors.append(f"session {i} sent {message!r}, got {got!r}")
                            return
                        await anyio.sleep(0)
            except Exception as e:  # noqa: BLE001
                errors.append(f"session {i}: {describe(e)}")

        async with anyio.create_task_group() as tg:
            for i in range(k):
                tg.start_soon(one, i)
        expect(not errors, f"{len(errors)} of {k} sessions failed: " + "; ".join(errors[:3]))


def describe(e: BaseException) -> str:
    """A one-line description of an exception, unwrapping exception groups."""
    group = getattr(e, "exceptions", None)  # (Base)ExceptionGroup, also the 3.10 backport
    if isinstance(group, (list, tuple)) and group:
        return "; ".join(describe(x) for x in group)
    text = str(e) or repr(e)
    return f"{type(e).__name__}: {text}"


def parse_args(argv: list[str]) -> argparse.Namespace:
    command: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, command = argv[:i], argv[i + 1 :]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="Streamable HTTP endpoint, e.g. http://127.0.0.1:8080/mcp")
    target.add_argument("--stdio", action="store_true", help="launch the server command given after `--`")
    p.add_argument(
        "--mode",
        default="legacy",
        help="Client connect mode: legacy (initialize handshake, default), auto, or a modern version string",
    )
    p.add_argument("--timeout", type=float, default=20.0, help="seconds each check may take (default 20)")
    p.add_argument(
        "--log-wait", type=float, default=3.0, help="seconds to wait for logging notifications (default 3)"
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=0,
        metavar="K",
        help="also run K parallel sessions checking echo isolation (default 0: skip)",
    )
    p.add_argument("--verbose", "-v", action="store_true", help="print tracebacks of failed checks to stderr")
    args = p.parse_args(argv)
    args.command = command
    if args.stdio and not command:
        p.error("--stdio needs the server command after `--`")
    if args.url and command:
        p.error("a command after `--` only goes with --stdio")
    if args.concurrency < 0:
        p.error("--concurrency must be >= 0")
    return args


def start_watchdog(seconds: float) -> None:
    """End the process if the whole run overstays (a hung close, a stuck child...)."""

    def fire() -> None:
        print(f"FAIL watchdog: the run did not finish within {seconds:g} s", flush=True)
        print("0 passed, 1 failed", flush=True)
        os._exit(2)

    t = threading.Timer(seconds, fire)
    t.daemon = True
    t.start()


def main() -> int:
    args = parse_args(sys.argv[1:])
    runner = Runner(args)
    # 11 checks + concurrency + connect and close, each bounded by --timeout.
    start_watchdog(args.timeout * 15 + 30)
    try:
        anyio.run(runner.main)
    except Exception as e:  # noqa: BLE001 - report, never crash without the summary line
        runner.report("session", describe(e))
        if args.verbose:
            traceback.print_exc()
    print(f"{runner.passed} passed, {runner.failed} failed", flush=True)
    return 0 if runner.failed == 0 and runner.passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
