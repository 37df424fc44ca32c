#!/usr/bin/env python3
"""Run python_client.py against the demo server in all four ways:

  direct-stdio   shadowcat demo-server
  direct-http    shadowcat demo-server --http 127.0.0.1:PORT
  proxy-stdio    shadowcat forward stdio --demo
  proxy-http     shadowcat forward http --listen 127.0.0.1:PORT --demo

Prints every check prefixed with its way, then `N passed, M failed` over all
checks of all ways; exits 0 only if all passed. Every process it starts is
stopped (its whole process group) before it exits. Uses only the standard
library, so any python3 can run it; the client itself runs under --python
(default: the interpreter running this script).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CLIENT = HERE / "python_client.py"
WAYS = ["direct-stdio", "direct-http", "proxy-stdio", "proxy-http"]
RESULT_LINE = re.compile(r"^(\d+) passed, (\d+) failed$")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM the process group we created for `proc`, then SIGKILL it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        # Also reaps stragglers left in the group (e.g. a proxy's child).
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def wait_listening(proc: subprocess.Popen[bytes], port: int, deadline: float) -> bool:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def start_http_server(argv_for_port, log_path: Path, startup: float) -> tuple[subprocess.Popen[bytes], int]:
    """Start an HTTP server on a free port (a few tries, since the port may be taken meanwhile)."""
    last = ""
    for _ in range(3):
        port = free_port()
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                argv_for_port(port),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if wait_listening(proc, port, time.monotonic() + startup):
            return proc, port
        stop(proc)
        last = f"server did not start listening on port {port} (exit code {proc.returncode})"
    raise RuntimeError(last)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_way(way: str, args: argparse.Namespace, workdir: Path) -> tuple[int, int]:
    binary = str(args.binary)
    client = [args.python, str(CLIENT), "--mode", args.mode, "--timeout", str(args.timeout)]
    if args.concurrency:
        client += ["--concurrency", str(args.concurrency)]
    if args.verbose:
        client.append("--verbose")
    server_log = workdir / f"{way}.server.log"
    client_err = workdir / f"{way}.client.stderr"
    server: subprocess.Popen[bytes] | None = None
    try:
        if way == "direct-stdio":
            client += ["--stdio", "--", binary, "demo-server"]
        elif way == "proxy-stdio":
            client += ["--stdio", "--", binary, "forward", "stdio", "--demo"]
        elif way == "direct-http":
            server, port = start_http_server(
                lambda p: [binary, "demo-server", "--http", f"127.0.0.1:{p}"], server_log, args.startup
            )
            client += ["--url", f"http://127.0.0.1:{port}/mcp"]
        elif way == "proxy-http":
            server, port = start_http_server(
                lambda p: [binary, "forward", "http", "--listen", f"127.0.0.1:{p}", "--demo"],
                server_log,
                args.startup,
            )
            client += ["--url", f"http://127.0.0.1:{port}/mcp"]
        else:
            raise ValueError(way)

        with open(client_err, "wb") as err:
            proc = subprocess.Popen(
                client, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, start_new_session=True
            )
            try:
                out, _ = proc.communicate(timeout=args.timeout * 20 + 60)
            except subprocess.TimeoutExpired:
                stop(proc)
                out = b"FAIL run: the client did not finish\n"
            finally:
                stop(proc)  # and anything it left in its process group (a stdio server)
    except Exception as e:  # noqa: BLE001
        print(f"[{way}] FAIL setup: {e}", flush=True)
        if server_log.exists():
            print(f"[{way}] server log tail:\n{tail(server_log)}", flush=True)
        return 0, 1
    finally:
        if server is not None:
            stop(server)

    passed = failed = None
    for line in out.decode(errors="replace").splitlines():
        m = RESULT_LINE.match(line)
        if m:
            passed, failed = int(m.group(1)), int(m.group(2))
        else:
            print(f"[{way}] {line}", flush=True)
    if passed is None or failed is None:
        print(f"[{way}] FAIL run: no summary line (client exit code {proc.returncode})", flush=True)
        passed, failed = 0, 1
    elif proc.returncode != 0 and failed == 0:
        print(f"[{way}] FAIL run: client exited {proc.returncode}", flush=True)
        failed = 1
    if failed or args.verbose:
        print(f"[{way}] client stderr tail:\n{tail(client_err)}", flush=True)
        if server_log.exists():
            print(f"[{way}] server log tail:\n{tail(server_log)}", flush=True)
    print(f"[{way}] {passed} passed, {failed} failed", flush=True)
    return passed, failed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--binary", type=Path, default=REPO / "target" / "debug" / "shadowcat", help="shadowcat binary")
    p.add_argument("--python", default=sys.executable, help="interpreter with `mcp` installed")
    p.add_argument("--mode", default="legacy", help="client connect mode (see python_client.py)")
    p.add_argument("--timeout", type=float, default=20.0, help="per-check timeout in seconds")
    p.add_argument("--concurrency", type=int, default=4, help="parallel sessions for the isolation check (0: skip)")
    p.add_argument("--startup", type=float, default=20.0, help="seconds an HTTP server may take to listen")
    p.add_argument("--way", action="append", choices=WAYS, help="run only these ways (repeatable)")
    p.add_argument("--verbose", "-v", action="store_true")
    args = p.parse_args()
    if not args.binary.exists():
        print(f"FAIL setup: {args.binary} does not exist (build it first)", flush=True)
        print("0 passed, 1 failed", flush=True)
        return 1
    total_passed = total_failed = 0
    with tempfile.TemporaryDirectory(prefix="shadowcat-interop-") as tmp:
        for way in args.way or WAYS:
            passed, failed = run_way(way, args, Path(tmp))
            total_passed += passed
            total_failed += failed
    print(f"{total_passed} passed, {total_failed} failed", flush=True)
    return 0 if total_failed == 0 and total_passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
