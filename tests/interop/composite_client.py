#!/usr/bin/env python3
"""Interop client for composite routes: the official Python SDK (`mcp`) against a Shadowcat
route that serves several member servers behind one endpoint.

    composite_client.py --url http://127.0.0.1:PORT/mcp [--everything]

The route must have these members (see crates/cli/tests/it/composite.rs):

* `demo`: Shadowcat's demo server (stdio), `twin`: the demo server again (HTTP): the same
  tool names twice, told apart by their prefixes;
* `paged`: tests/interop/paged_server.py (stdio): 1,000 tools in pages of 50, `grow`
  (announces a new tool with list_changed) and `die` (exits mid-call; the proxy restarts it);
* with --everything, `everything`: server-everything (stdio).

Prints `ok NAME` / `FAIL NAME: WHY` per check, then `N passed, M failed`; exits 0 only if every
check passed. Each check has a timeout, so it never hangs.
"""

from __future__ import annotations

import argparse
import re
import sys
import traceback
from typing import Any

import anyio

import mcp.types as types
from mcp import Client

from python_client import ELICIT_NAME, SAMPLING_REPLY, CheckFailed, Recorder, Runner, expect, text_of

NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def method_of(message: Any) -> str | None:
    for obj in (message, getattr(message, "root", None)):
        m = getattr(obj, "method", None)
        if isinstance(m, str):
            return m
    return None


class Composite(Runner):
    """The interop client's runner (one line per check, each with its timeout) and recorder
    (sampling and elicitation answered as python_client.py answers them), plus what composite
    checks need: list_changed notifications counted."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.rec = Recorder()
        self.changed = 0
        self.changed_event = anyio.Event()

    async def check(self, name: str, fn: Any) -> None:
        await self.run_check(name, fn)

    async def on_message(self, message: Any) -> None:
        if method_of(message) == "notifications/tools/list_changed":
            self.changed += 1
            self.changed_event.set()

    async def wait_changed(self, seen: int) -> None:
        while self.changed <= seen:
            self.changed_event = anyio.Event()
            await self.changed_event.wait()

    async def main(self) -> None:
        client = Client(
            self.args.url,
            read_timeout_seconds=self.args.timeout,
            sampling_callback=self.rec.sampling,
            elicitation_callback=self.rec.elicitation,
            message_handler=self.on_message,
            cache=None,
            mode=self.args.mode,
        )
        async with client as c:
            if not str(c.protocol_version).startswith("2026"):
                await self.checks(c)
                return
            # 2026-07-28: list changes arrive on a `subscriptions/listen` stream.
            async with anyio.create_task_group() as tg, c.listen(tools_list_changed=True) as sub:

                async def changes() -> None:
                    async for _ in sub:
                        self.changed += 1
                        self.changed_event.set()

                tg.start_soon(changes)
                await self.checks(c)
                tg.cancel_scope.cancel()

    async def all_tools(self, c: Client) -> list[types.Tool]:
        tools: list[types.Tool] = []
        cursor = None
        pages = 0
        while True:
            page = await c.list_tools(cursor=cursor)
            tools.extend(page.tools)
            pages += 1
            cursor = page.next_cursor
            if cursor is None:
                return tools
            expect(pages < 10_000, "the cursor never ends")

    async def checks(self, c: Client) -> None:
        info = c.server_info
        if info is None and str(c.protocol_version).startswith("2026"):
            # Mode 2026-07-28 starts without a round trip: ask who is there.
            raw = await c.session.send_discover(str(c.protocol_version))
            stamp = (raw.get("_meta") or {}).get("io.modelcontextprotocol/serverInfo")
            info = types.Implementation.model_validate(stamp) if stamp else None
        self.report(
            "initialize",
            None if info is not None and info.name == "shadowcat-composite" else f"server info {info!r}",
        )

        async def lists() -> None:
            tools = await self.all_tools(c)
            names = [t.name for t in tools]
            expect(len(names) == len(set(names)), "duplicate names in the merged list")
            bad = [n for n in names if not NAME_RE.match(n)]
            expect(not bad, f"names LLM APIs refuse: {bad[:5]}")
            for n in ["demo__echo", "twin__echo", "paged__t0000", "paged__t0999", "paged__die"]:
                expect(n in names, f"{n} missing from {len(names)} tools")
            paged = [n for n in names if n.startswith("paged__t")]
            expect(len(paged) == 1000, f"{len(paged)} of the paged member's 1,000 tools listed")
            if self.args.everything:
                expect(any(n.startswith("everything__") for n in names), "no tool of server-everything")

        async def calls() -> None:
            got = text_of(await c.call_tool("demo__echo", {"message": "hi demo"}))
            expect(got == "hi demo", f"demo__echo returned {got!r}")
            got = text_of(await c.call_tool("twin__echo", {"message": "hi twin"}))
            expect(got == "hi twin", f"twin__echo returned {got!r}")
            got = text_of(await c.call_tool("paged__t0537", {}))
            expect(got == "t0537", f"paged__t0537 returned {got!r}")
            if self.args.everything:
                got = text_of(await c.call_tool("everything__echo", {"message": "hi everything"}))
                expect("hi everything" in got, f"everything__echo returned {got!r}")

        async def unknown() -> None:
            try:
                await c.call_tool("nobody__nothing", {})
            except Exception as e:  # noqa: BLE001
                expect("unknown tool" in str(e), f"unknown tool answered {e!r}")
                return
            raise CheckFailed("a call to an unknown tool succeeded")

        async def sampling() -> None:
            before = len(self.rec.sampling_requests)
            got = text_of(await c.call_tool("twin__sample", {"prompt": "ping", "max_tokens": 7}))
            expect(got == f"sampled: {SAMPLING_REPLY}", f"twin__sample returned {got!r}")
            expect(len(self.rec.sampling_requests) == before + 1, "the sampling callback did not run once")

        async def elicitation() -> None:
            got = text_of(await c.call_tool("demo__elicit", {"message": "name?"}))
            expect(got == f"elicited: accept name={ELICIT_NAME}", f"demo__elicit returned {got!r}")

        async def resources() -> None:
            listed = await c.list_resources()
            uris = [str(r.uri) for r in listed.resources]
            expect("demo+demo://readme" in uris and "twin+demo://readme" in uris, f"resources {uris}")
            read = await c.read_resource("twin+demo://items/7")
            texts = [getattr(x, "text", None) for x in read.contents]
            expect(texts == ["item 7"], f"twin+demo://items/7 read {texts!r}")
            expect([str(x.uri) for x in read.contents] == ["twin+demo://items/7"], "contents URI not exposed")

        async def prompts() -> None:
            got = await c.get_prompt("demo__greeting", {"name": "Bob"})
            texts = [getattr(m.content, "text", "") for m in got.messages]
            expect(any("Bob" in t for t in texts), f"prompt messages {texts!r}")

        async def list_changed() -> None:
            seen = self.changed
            got = text_of(await c.call_tool("paged__grow", {}))
            expect(got == "grow", f"paged__grow returned {got!r}")
            await self.wait_changed(seen)
            names = [t.name for t in await self.all_tools(c)]
            expect("paged__extra" in names, "the new tool is not listed after list_changed")

        async def member_dies_and_returns() -> None:
            seen = self.changed
            try:
                await c.call_tool("paged__die", {})
                raise CheckFailed("the call that killed its server succeeded")
            except CheckFailed:
                raise
            except Exception as e:  # noqa: BLE001
                expect("paged" in str(e), f"the error does not name the member: {e!r}")
            # Its tools go away; the others still work; a call to one of its tools names it.
            await self.wait_changed(seen)
            names = [t.name for t in await self.all_tools(c)]
            if not any(n.startswith("paged__") for n in names):
                try:
                    await c.call_tool("paged__t0001", {})
                    raise CheckFailed("a call to a dead member's tool succeeded")
                except CheckFailed:
                    raise
                except Exception as e:  # noqa: BLE001
                    expect("paged" in str(e), f"the error does not name the member: {e!r}")
            got = text_of(await c.call_tool("demo__echo", {"message": "still here"}))
            expect(got == "still here", f"demo__echo returned {got!r} while a member was down")
            # It is restarted: its tools come back (announced with list_changed).
            with anyio.fail_after(self.args.timeout):
                while True:
                    names = [t.name for t in await self.all_tools(c)]
                    if "paged__t0001" in names:
                        break
                    seen = self.changed
                    await self.wait_changed(seen)
            got = text_of(await c.call_tool("paged__t0001", {}))
            expect(got == "t0001", f"paged__t0001 after the restart returned {got!r}")

        await self.check("lists", lists)
        await self.check("calls", calls)
        await self.check("unknown_tool", unknown)
        await self.check("sampling", sampling)
        await self.check("elicitation", elicitation)
        await self.check("resources", resources)
        await self.check("prompts", prompts)
        await self.check("list_changed", list_changed)
        await self.check("member_dies_and_returns", member_dies_and_returns)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--everything", action="store_true")
    ap.add_argument("--mode", default="legacy", help="the SDK client mode (legacy, 2026-07-28, auto)")
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--verbose", action="store_true", help="print tracebacks of failed checks")
    args = ap.parse_args()
    run = Composite(args)

    async def go() -> None:
        with anyio.fail_after(args.timeout * 12):
            await run.main()

    try:
        anyio.run(go)
    except Exception as e:  # noqa: BLE001
        run.report("session", f"{type(e).__name__}: {e}")
        traceback.print_exc()
    print(f"{run.passed} passed, {run.failed} failed", flush=True)
    sys.exit(0 if run.failed == 0 and run.passed > 0 else 1)


if __name__ == "__main__":
    main()
