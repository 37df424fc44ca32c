#!/usr/bin/env python3
"""Tests of scripts/conformance_compare.py on made-up runs (standard library only):

    python3 -m unittest discover -s scripts -p "test_*.py"

Each test writes a direct and a proxied run the way the conformance runner does
(`server-<scenario>-<timestamp>/checks.json` + the runner's log) and checks the exit code
and the verdict the comparison prints.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

COMPARE = Path(__file__).resolve().parent / "conformance_compare.py"
STAMP = "2026-12-05T00-01-16-904Z"


def write_run(root: Path, label: str, scenarios: dict[str, list[tuple[str, str]]]) -> tuple[Path, Path]:
    """scenario -> [(check id, status)]; returns (results dir, runner log)."""
    out = root / label
    out.mkdir()
    log = root / f"{label}.log"
    lines = []
    for scenario, checks in scenarios.items():
        lines.append(f"Running client scenario '{scenario}' against server: http://x/mcp")
        d = out / f"server-{scenario}-{STAMP}"
        d.mkdir()
        (d / "checks.json").write_text(json.dumps([{"id": c, "status": s} for c, s in checks]))
    log.write_text("\n".join(lines) + "\n")
    return out, log


class Compare(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.root = Path(self.tmp.name)

    def tearDown(self) -> None:
        self.tmp.cleanup()

    def run_compare(self, direct: dict, proxied: dict, *args: str,
                    allow: str | None = None) -> tuple[int, str]:
        d, dlog = write_run(self.root, "direct", direct)
        p, plog = write_run(self.root, "proxied", proxied)
        cmd = [sys.executable, str(COMPARE), str(d), str(p), "--direct-log", str(dlog),
               "--proxied-log", str(plog), *args]
        if allow is not None:
            f = self.root / "allow.txt"
            f.write_text(allow)
            cmd += ["--allow", str(f)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        return r.returncode, r.stdout + r.stderr

    BASE = {
        "ping": [("ping", "SUCCESS")],
        "tools-list": [("tools-list", "SUCCESS")],
        "tools-call-image": [("tools-call-image", "FAILURE")],
        "sse": [("accepts", "SUCCESS"), ("functional", "SUCCESS")],
    }

    def test_same_results_pass(self) -> None:
        rc, out = self.run_compare(self.BASE, self.BASE, "--min-direct-pass", "4")
        self.assertEqual(rc, 0, out)
        self.assertIn("baseline: OK: 4 checks pass directly", out)
        self.assertIn("conformance via proxy: OK", out)

    def test_shrunken_baseline_fails(self) -> None:
        # Everything that passes directly passes through the proxy, but too little passes.
        small = {"ping": [("ping", "SUCCESS")]}
        rc, out = self.run_compare(small, small, "--min-direct-pass", "4")
        self.assertEqual(rc, 1, out)
        self.assertIn("baseline: FAIL: only 1 checks pass directly, the pin is 4", out)

    def test_more_than_the_pin_says_raise_it(self) -> None:
        rc, out = self.run_compare(self.BASE, self.BASE, "--min-direct-pass", "3")
        self.assertEqual(rc, 0, out)
        self.assertIn("raise the pin to 4", out)

    def test_scenario_missing_from_proxied_run_fails(self) -> None:
        # The missing scenario has no passing check: only the scenario comparison can catch it.
        proxied = {k: v for k, v in self.BASE.items() if k != "tools-call-image"}
        rc, out = self.run_compare(self.BASE, proxied)
        self.assertEqual(rc, 1, out)
        self.assertRegex(out, r"tools-call-image\s+\*\s+ran\s+-\s+REGRESSION")
        self.assertIn("1 regressions (1 scenarios missing)", out)

    def test_success_to_info_is_a_regression(self) -> None:
        proxied = dict(self.BASE, sse=[("accepts", "SUCCESS"), ("functional", "INFO")])
        rc, out = self.run_compare(self.BASE, proxied)
        self.assertEqual(rc, 1, out)
        self.assertRegex(out, r"sse\s+functional\s+SUCCESS\s+INFO\s+REGRESSION")

    def test_success_to_warning_is_a_regression(self) -> None:
        proxied = dict(self.BASE, ping=[("ping", "WARNING")])
        rc, out = self.run_compare(self.BASE, proxied)
        self.assertEqual(rc, 1, out)
        self.assertRegex(out, r"ping\s+ping\s+SUCCESS\s+WARNING\s+REGRESSION")

    def test_allow_listed_transition_passes_with_its_reason(self) -> None:
        proxied = dict(self.BASE, sse=[("accepts", "SUCCESS"), ("functional", "INFO")])
        allow = "# comment\n\nsse  functional  INFO  the proxy answers JSON first\n"
        rc, out = self.run_compare(self.BASE, proxied, allow=allow)
        self.assertEqual(rc, 0, out)
        self.assertRegex(out, r"sse\s+functional\s+SUCCESS\s+INFO\s+allowed\s+the proxy answers JSON first")

    def test_allow_entry_is_for_one_status_only(self) -> None:
        proxied = dict(self.BASE, sse=[("accepts", "SUCCESS"), ("functional", "FAILURE")])
        allow = "sse functional INFO the proxy answers JSON first\n"
        rc, out = self.run_compare(self.BASE, proxied, allow=allow)
        self.assertEqual(rc, 1, out)
        self.assertIn("allow-list entry sse functional INFO matched nothing", out)

    def test_strict_ignores_the_allow_list(self) -> None:
        proxied = dict(self.BASE, sse=[("accepts", "SUCCESS"), ("functional", "INFO")])
        allow = "sse functional INFO the proxy answers JSON first\n"
        rc, out = self.run_compare(self.BASE, proxied, "--strict", allow=allow)
        self.assertEqual(rc, 1, out)

    def test_allow_entry_without_reason_is_refused(self) -> None:
        rc, out = self.run_compare(self.BASE, self.BASE, allow="sse functional INFO\n")
        self.assertEqual(rc, 2, out)
        self.assertIn("the reason is required", out)

    def test_allow_entry_for_success_is_refused(self) -> None:
        rc, out = self.run_compare(self.BASE, self.BASE, allow="sse functional SUCCESS why\n")
        self.assertEqual(rc, 2, out)
        self.assertIn("proxied status 'SUCCESS' is not one of", out)

    def test_repo_allow_list_parses(self) -> None:
        rc, out = self.run_compare(self.BASE, self.BASE,
                                   allow=(COMPARE.parent / "conformance-allow.txt").read_text())
        self.assertEqual(rc, 0, out)


if __name__ == "__main__":
    unittest.main()
