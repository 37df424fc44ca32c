#!/usr/bin/env python3
"""Interop client over the legacy HTTP+SSE transport (2024-11-05): the checks of
python_client.py, with the official Python SDK's SSE client (`mcp.client.sse.sse_client`)
instead of Streamable HTTP.

    python_sse_client.py --url http://127.0.0.1:PORT/sse [--concurrency K]

Same options and output as python_client.py (`ok NAME` / `FAIL NAME: WHY`, then
`N passed, M failed`; exit 0 only if every check passed). The server is expected to be
Shadowcat's demo server behind the proxy's HTTP+SSE front.
"""

from __future__ import annotations

import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import python_client  # noqa: E402
from mcp import Client  # noqa: E402
from mcp.client.sse import sse_client  # noqa: E402


def make_client(self: python_client.Runner, rec: python_client.Recorder | None) -> Client:
    if not self.args.url:
        raise SystemExit("python_sse_client.py needs --url (the SSE endpoint)")
    kwargs: dict[str, Any] = dict(mode="legacy", read_timeout_seconds=self.args.timeout)
    if rec is not None:
        kwargs.update(
            sampling_callback=rec.sampling,
            elicitation_callback=rec.elicitation,
            logging_callback=rec.logging,
        )
    return Client(sse_client(self.args.url, timeout=self.args.timeout), **kwargs)


python_client.Runner.make_client = make_client  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(python_client.main())
