#!/usr/bin/env python3
"""Compare two runs of the MCP conformance suite (`conformance server -o DIR`): one against a
server directly, one through Shadowcat. Used by scripts/conformance.sh; standard library only.

    conformance_compare.py DIRECT_DIR PROXIED_DIR [--direct-log F] [--proxied-log F]
                           [--allow FILE] [--min-direct-pass N] [--strict]

Each DIR holds one `server-<scenario>-<timestamp>/checks.json` per scenario, a JSON list of
checks `{id, status, errorMessage?, details?}` with status SUCCESS, FAILURE, WARNING or INFO.
A check id may repeat inside a scenario, so a check is keyed by (scenario, id, n-th occurrence).
The runner's stdout (--*-log) names every scenario it started: one that left no checks.json
(the scenario threw) is counted as a failed pseudo-check `<no checks.json>`.

Verdict per check, direct -> proxied:
  SUCCESS -> SUCCESS                       same (not listed)
  SUCCESS -> anything else (INFO, FAILURE,
             WARNING, missing)             REGRESSION (exit 1), unless the allow-list (--allow)
                                           has an entry for that scenario, check and proxied
                                           status: then "allowed", with the entry's reason
  non-SUCCESS -> SUCCESS                   better via proxy
  any other change                         changed (informational)
A scenario of the direct run that the proxied run lacks altogether is a REGRESSION (never
allowed). With --min-direct-pass N, fewer than N checks passing directly is a failure too: the
baseline shrank (a runner or server change), and a comparison against it proves little.
--strict ignores the allow-list.

Allow-list file: one entry a line, `SCENARIO CHECK PROXIED-STATUS REASON...` separated by
whitespace (CHECK as printed in the table, `id#2` for a repeated id); the reason is required.
Blank lines and lines starting with `#` are ignored. An entry for a scenario that ran and that
matched nothing is reported (stale: remove it), not an error.
Exit 0 when there is no regression, 1 otherwise, 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

DIR_RE = re.compile(r"^server-(?P<scenario>.+)-\d{4}-\d{2}-\d{2}T[\d-]+Z$")
STARTED_RE = re.compile(r"Running client scenario '(?P<scenario>[^']+)' against server")
MISSING = "-"
NO_RESULT_ID = "<no checks.json>"


def scenario_of(dirname: str) -> str:
    m = DIR_RE.match(dirname)
    return m.group("scenario") if m else dirname


def load_run(root: Path, log: Path | None) -> dict[tuple[str, str, int], dict]:
    """Map (scenario, check id, occurrence) -> check for one run."""
    checks: dict[tuple[str, str, int], dict] = {}
    seen_scenarios: set[str] = set()
    if root.is_dir():
        for path in sorted(root.glob("*/checks.json")):
            scenario = scenario_of(path.parent.name)
            if scenario in seen_scenarios:
                print(f"compare: {root}: more than one result for {scenario}; using the last",
                      file=sys.stderr)
                for key in [k for k in checks if k[0] == scenario]:
                    del checks[key]
            seen_scenarios.add(scenario)
            try:
                items = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                items = [{"id": NO_RESULT_ID, "status": "FAILURE",
                          "errorMessage": f"unreadable {path}: {err}"}]
            counts: Counter[str] = Counter()
            for item in items:
                cid = str(item.get("id") or item.get("name") or "?")
                checks[(scenario, cid, counts[cid])] = item
                counts[cid] += 1
    if log is not None and log.is_file():
        for m in STARTED_RE.finditer(log.read_text(encoding="utf-8", errors="replace")):
            scenario = m.group("scenario")
            if scenario not in seen_scenarios:
                seen_scenarios.add(scenario)
                checks[(scenario, NO_RESULT_ID, 0)] = {
                    "id": NO_RESULT_ID, "status": "FAILURE",
                    "errorMessage": f"scenario started but wrote no checks.json (see {log})"}
    return checks


def status(check: dict | None) -> str:
    return MISSING if check is None else str(check.get("status", "?"))


STATUSES = {"SUCCESS", "FAILURE", "WARNING", "INFO", MISSING}


class AllowList:
    """Allowed SUCCESS -> other transitions: (scenario, check, proxied status) -> reason."""

    def __init__(self, path: Path | None) -> None:
        self.entries: dict[tuple[str, str, str], str] = {}
        self.used: set[tuple[str, str, str]] = set()
        self.path = path
        if path is None:
            return
        for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split(None, 3)
            if len(parts) < 4 or not parts[3].strip():
                raise ValueError(f"{path}:{n}: expected `SCENARIO CHECK PROXIED-STATUS REASON`, "
                                 f"the reason is required: {line!r}")
            scenario, check, proxied, reason = parts
            if proxied not in STATUSES or proxied == "SUCCESS":
                raise ValueError(f"{path}:{n}: proxied status {proxied!r} is not one of "
                                 f"{', '.join(sorted(STATUSES - {'SUCCESS'}))}")
            key = (scenario, check, proxied)
            if key in self.entries:
                raise ValueError(f"{path}:{n}: duplicate entry for {scenario} {check} {proxied}")
            self.entries[key] = reason.strip()

    def reason(self, scenario: str, check: str, proxied: str) -> str | None:
        key = (scenario, check, proxied)
        if key in self.entries:
            self.used.add(key)
            return self.entries[key]
        return None

    def stale(self, scenarios: set[str]) -> list[tuple[str, str, str]]:
        """Entries for a scenario that ran and that matched nothing."""
        return [k for k in self.entries if k[0] in scenarios and k not in self.used]


def verdict(direct: str, proxied: str) -> str | None:
    if direct == proxied:
        return None
    if direct == "SUCCESS":
        return "REGRESSION"
    if proxied == "SUCCESS":
        return "better via proxy"
    return "changed"


def message(check: dict | None) -> str:
    if check is None:
        return "(no such check in this run)"
    text = check.get("errorMessage") or ""
    if not text:
        details = check.get("details") or {}
        if isinstance(details, dict):
            text = str(details.get("message") or "")
    return " ".join(str(text).split())


def totals(checks: dict) -> Counter[str]:
    return Counter(status(c) for c in checks.values())


def fmt_totals(c: Counter[str]) -> str:
    return (f"{c['SUCCESS']} passed, {c['FAILURE']} failed, {c['WARNING']} warnings, "
            f"{c['INFO']} info")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("direct", type=Path)
    ap.add_argument("proxied", type=Path)
    ap.add_argument("--direct-log", type=Path)
    ap.add_argument("--proxied-log", type=Path)
    ap.add_argument("--allow", type=Path,
                    help="allow-list of SUCCESS -> other transitions, each with its reason")
    ap.add_argument("--min-direct-pass", type=int, default=0, metavar="N",
                    help="fail when fewer than N checks pass directly (a shrunken baseline)")
    ap.add_argument("--strict", action="store_true",
                    help="ignore the allow-list: every SUCCESS -> other is a regression")
    ap.add_argument("--width", type=int, default=110, help="truncate the message column")
    args = ap.parse_args()

    try:
        allow = AllowList(None if args.strict else args.allow)
    except (OSError, ValueError) as err:
        print(f"compare: allow-list: {err}", file=sys.stderr)
        return 2
    direct = load_run(args.direct, args.direct_log)
    proxied = load_run(args.proxied, args.proxied_log)
    if not direct:
        print(f"compare: no results in {args.direct}", file=sys.stderr)
        return 2

    scenarios_direct = {k[0] for k in direct}
    scenarios_proxied = {k[0] for k in proxied}
    order = {}
    for key in list(direct) + list(proxied):
        order.setdefault(key, len(order))
    keys = sorted(order, key=lambda k: (k[0], order[k]))

    rows = []
    regressions = 0
    lost_scenarios = sorted(scenarios_direct - scenarios_proxied)
    for scenario in lost_scenarios:
        regressions += 1
        rows.append((scenario, "*", "ran", MISSING, "REGRESSION",
                     "scenario missing from the proxied run"))
    for key in keys:
        if key[0] in lost_scenarios:
            continue
        d, p = direct.get(key), proxied.get(key)
        v = verdict(status(d), status(p))
        if v is None:
            continue
        scenario, cid, n = key
        name = cid if n == 0 else f"{cid}#{n + 1}"
        shown = p if (v == "REGRESSION" or p is not None) else d
        text = message(shown)
        if v == "REGRESSION":
            reason = allow.reason(scenario, name, status(p))
            if reason is None:
                regressions += 1
            else:
                v = "allowed"
                text = f"{reason} [suite: {text}]" if text else reason
        rows.append((scenario, name, status(d), status(p), v, text))

    if rows:
        head = ("scenario", "check", "direct", "proxied", "verdict", "message")
        widths = [max(len(r[i]) for r in rows + [head]) for i in range(5)]
        line = "  ".join("{:<%d}" % w for w in widths) + "  {}"
        print(line.format(*head))
        print(line.format(*("-" * w for w in widths), "-" * 7))
        for r in rows:
            msg = r[5] if len(r[5]) <= args.width else r[5][: args.width - 1] + "…"
            print(line.format(*r[:5], msg))
    else:
        print("no differences between the direct and the proxied run")

    counts = Counter(r[4] for r in rows)
    print()
    print(f"direct : {len(scenarios_direct)} scenarios, {fmt_totals(totals(direct))}")
    print(f"proxied: {len(scenarios_proxied)} scenarios, {fmt_totals(totals(proxied))}")
    for key in allow.stale(scenarios_direct):
        print(f"note: allow-list entry {' '.join(key)} matched nothing in this run "
              f"(stale? remove it from {allow.path})")
    passed_direct = sum(1 for c in direct.values() if status(c) == "SUCCESS")
    kept = sum(1 for k, c in direct.items()
               if status(c) == "SUCCESS" and status(proxied.get(k)) == "SUCCESS")
    shrunk = passed_direct < args.min_direct_pass
    if shrunk:
        print(f"baseline: FAIL: only {passed_direct} checks pass directly, the pin is "
              f"{args.min_direct_pass}: the direct run shrank (runner, server or environment "
              f"change); find out why before lowering the pin")
    elif args.min_direct_pass:
        print(f"baseline: OK: {passed_direct} checks pass directly (pin: at least "
              f"{args.min_direct_pass})"
              + (f"; raise the pin to {passed_direct}" if passed_direct > args.min_direct_pass
                 else ""))
    ok = regressions == 0 and not shrunk
    print(f"conformance via proxy: {'OK' if ok else 'FAIL'}: {kept}/{passed_direct} checks that "
          f"pass directly also pass via the proxy; {regressions} regressions "
          f"({len(lost_scenarios)} scenarios missing), {counts['allowed']} allowed, "
          f"{counts['better via proxy']} better via proxy, {counts['changed']} other changes"
          + (" (strict: allow-list ignored)" if args.strict else ""))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
