#!/usr/bin/env python3
"""Aggregate the raw shadowcat-bench runs of one bench/run.sh invocation into DATE.json + DATE.md.

Each raw run carries a label `scenario|group|variant|param|rN`. Runs of the same
(scenario, group, variant, param) are rounds; the report gives the median over rounds of
each metric, ratios against the scenario's baseline, and the targets table.
Standard library only.
"""

import argparse
import glob
import json
import os
import statistics
from collections import defaultdict

# Targets we compare against (numbers, not pass/fail of the run).
IDLE_TARGET_BYTES = 10 * 1024  # "≤ 10 KB RSS per idle session"


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def dig(d, *path):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


STORE_OPS = ("create", "get", "touch", "append_event", "events_after_10", "delete")


def metrics(run):
    """The numbers of one raw run, flat."""
    mode = run.get("mode")
    if mode == "calls":
        cpu = run.get("cpu", {})
        return {
            "rps": run.get("throughput_rps"),
            "p50_us": dig(run, "latency", "p50_us"),
            "p90_us": dig(run, "latency", "p90_us"),
            "p99_us": dig(run, "latency", "p99_us"),
            "max_us": dig(run, "latency", "max_us"),
            "ok": run.get("requests_ok"),
            "errors": dig(run, "errors", "total"),
            "proxy_cpu_us": dig(cpu, "proxy", "cpu_us_per_request"),
            "proxy_children": dig(cpu, "proxy", "children"),
            "children_cpu_us": dig(cpu, "proxy", "children_cpu_us_per_request"),
            "upstream_cpu_us": dig(cpu, "upstream", "cpu_us_per_request"),
            "generator_cpu_us": dig(cpu, "generator", "cpu_us_per_request"),
        }
    if mode == "idle-sessions":
        p = run.get("processes", {})
        return {
            "sessions": run.get("sessions"),
            "sessions_per_s": run.get("sessions_per_s"),
            "verified": f'{run.get("verified")}/{run.get("verify_attempted")}',
            "proxy_b_per_session": dig(p, "proxy", "rss_bytes_per_session"),
            "proxy_rss_kb": dig(p, "proxy", "after", "rss_kb"),
            "children": dig(p, "proxy", "after", "children"),
            "children_rss_b_per_session": dig(p, "proxy", "children_rss_bytes_per_session"),
            "children_pss_b_per_session": dig(p, "proxy", "children_pss_bytes_per_session"),
            "upstream_b_per_session": dig(p, "upstream", "rss_bytes_per_session"),
            "upstream_rss_kb": dig(p, "upstream", "after", "rss_kb"),
            "children_rss_kb": dig(p, "proxy", "after", "children_rss_kb"),
            "total_rss_mb": total_mb(dig(p, "proxy", "after", "rss_kb"),
                                     dig(p, "proxy", "after", "children_rss_kb")),
        }
    if mode == "sse":
        cpu = run.get("cpu", {})
        return {
            "events_per_s": run.get("events_per_s"),
            "call_events_per_s": run.get("median_call_events_per_s"),
            "gap_p50_us": dig(run, "event_gap", "p50_us"),
            "gap_p99_us": dig(run, "event_gap", "p99_us"),
            "gap_max_us": dig(run, "event_gap", "max_us"),
            "first_event_p50_us": dig(run, "probe_first_event", "p50_us"),
            "first_event_p99_us": dig(run, "probe_first_event", "p99_us"),
            "errors": dig(run, "errors", "total"),
            "proxy_cpu_us_per_event": dig(cpu, "proxy", "cpu_us_per_request"),
            "upstream_cpu_us_per_event": dig(cpu, "upstream", "cpu_us_per_request"),
        }
    if mode == "resume":
        cpu = run.get("cpu", {})
        per_cycle = dig(cpu, "proxy", "cpu_us_per_request")
        return {
            "resumed": run.get("resumed"),
            "resumptions": run.get("resumptions"),
            "first_p50_us": dig(run, "resume_first_event", "p50_us"),
            "first_p99_us": dig(run, "resume_first_event", "p99_us"),
            "first_max_us": dig(run, "resume_first_event", "max_us"),
            "events_per_resumption": run.get("events_per_resumption") if run.get("resumed") else None,
            "events_per_s": run.get("events_per_s") if run.get("resumed") else None,
            "reply_p50_ms": ms(dig(run, "resume_to_reply", "p50_us")),
            "errors": dig(run, "errors", "total"),
            "warmup_errors": dig(run, "warmup_errors", "total"),
            "proxy_cpu_ms_per_cycle": ms(per_cycle),
        }
    if mode == "pipeline":
        rec = run.get("recorded") or {}
        frames = rec.get("frames")
        return {
            "ns_per_frame": run.get("ns_per_frame"),
            "ns_per_frame_min": run.get("ns_per_frame_min"),
            "writer_ns_per_frame": rec.get("ns_per_frame_incl_writer"),
            "tape_b_per_frame": rec["tape_bytes"] / frames if frames else None,
        }
    if mode == "store":
        stores = run.get("stores") or {}
        st = next(iter(stores.values()), {})
        out = {"appends_per_s": st.get("appends_per_s")}
        worst = None
        for op in STORE_OPS:
            for q in ("p50_us", "p99_us"):
                out[f"{op}_{q}"] = dig(st, op, q)
            p99 = dig(st, op, "p99_us")
            if p99 is not None:
                worst = p99 if worst is None else max(worst, p99)
        out["worst_p99_us"] = worst
        return out
    if mode == "list-latency":
        cpu = run.get("cpu", {})
        return {
            "list_p50_ms": ms(dig(run, "list", "p50_us")),
            "list_p90_ms": ms(dig(run, "list", "p90_us")),
            "list_max_ms": ms(dig(run, "list", "max_us")),
            "init_p50_ms": ms(dig(run, "initialize", "p50_us")),
            "tools": run.get("tools"),
            "pages": run.get("pages"),
            "runs_ok": run.get("runs_ok"),
            "errors": dig(run, "errors", "total"),
            # Only the proxy's own CPU: each run's children are spawned and gone between the
            # samples, so /proc cannot count theirs.
            "proxy_cpu_ms_per_run": ms(dig(cpu, "proxy", "cpu_us_per_request")),
        }
    if mode == "cold-start":
        return {
            "listening_p50_ms": ms(dig(run, "listening", "p50_us")),
            "init_p50_ms": ms(dig(run, "initialized", "p50_us")),
            "init_max_ms": ms(dig(run, "initialized", "max_us")),
            "first_call_p50_ms": ms(dig(run, "first_call", "p50_us")),
            "runs": run.get("runs"),
            "errors": dig(run, "errors", "total"),
        }
    return {}


def total_mb(*kbs):
    """kB values summed, in MB (None if one is missing)."""
    return None if any(k is None for k in kbs) else sum(kbs) / 1024.0


def ms(us):
    return None if us is None else us / 1000.0


def fmt(v, digits=None):
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    if isinstance(v, float):
        if digits is not None:
            return f"{v:,.{digits}f}"
        if abs(v) >= 100:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.2f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def load(args):
    runs, pending = [], []
    for f in sorted(glob.glob(os.path.join(args.raw, "*.json"))):
        with open(f) as fh:
            try:
                d = json.load(fh)
            except json.JSONDecodeError as e:
                d = {"label": os.path.basename(f), "parse_error": str(e)}
        (pending if "status" in d else runs).append(d)
    meta = {}
    with open(args.meta) as fh:
        for line in fh:
            if "=" in line:
                k, v = line.rstrip("\n").split("=", 1)
                meta[k] = v
    def jsonl(path):
        out = []
        if path and os.path.exists(path):
            with open(path) as fh:
                for line in fh:
                    line = line.strip()
                    if line:
                        out.append(json.loads(line))
        return out
    return runs, pending, meta, jsonl(args.peers), jsonl(args.failures)


def aggregate(runs):
    groups = defaultdict(list)
    for r in runs:
        parts = r.get("label", "").split("|")
        if len(parts) != 5:
            continue
        s, g, v, p, _round = parts
        groups[(s, g, v, p)].append(metrics(r))
    agg = {}
    for key, ms_ in groups.items():
        keys = {k for m in ms_ for k in m}
        row = {"rounds": len(ms_)}
        for k in sorted(keys):
            vals = [m.get(k) for m in ms_]
            if all(isinstance(x, (int, float)) or x is None for x in vals):
                row[k] = med(vals)
                row[k + "_rounds"] = vals
            else:
                row[k] = vals[-1]
        agg[key] = row
    return agg


def ratio(a, b):
    if a is None or b in (None, 0):
        return None
    return a / b


def targets(agg):
    """The targets table: (what, shadowcat, reference, value, target, met)."""
    rows = []
    hi = max((p for (s, g, v, p) in agg if s == "a" and p.startswith("c=")),
             key=lambda p: int(p[2:]), default="c=32")
    lo = min((p for (s, g, v, p) in agg if s == "a" and p.startswith("c=")),
             key=lambda p: int(p[2:]), default="c=1")
    for g, note in (("http", ""), ("json-upstream", " — diagnostic: JSON upstream")):
        for v, via in (("shadowcat", "forward http"), ("gateway", "gateway")):
            d, x = agg.get(("a", g, "direct", hi)), agg.get(("a", g, v, hi))
            if d and x:
                r = ratio(x["rps"], d["rps"])
                rows.append((f"a. HTTP→HTTP throughput proxied/direct, {via}, {hi}{note}",
                             f'{fmt(x["rps"])} req/s', f'{fmt(d["rps"])} req/s direct',
                             fmt(r, 2), "≥ 0.70", r is not None and r >= 0.7))
            d, x = agg.get(("a", g, "direct", lo)), agg.get(("a", g, v, lo))
            if d and x and d.get("p50_us") is not None and x.get("p50_us") is not None:
                added = x["p50_us"] - d["p50_us"]
                rows.append((f"a. HTTP→HTTP added p50 latency, {via}, {lo}{note}",
                             f'{fmt(x["p50_us"])} µs', f'{fmt(d["p50_us"])} µs direct',
                             f"{added:+.0f} µs", "≤ 50 µs", added <= 50))
    for srv, v in (("demo", "shadowcat"), ("everything", "shadowcat"), ("demo", "shadowcat-share"),
                   ("everything", "shadowcat-share")):
        for p in (hi, lo):
            x, rp = agg.get(("b", srv, v, p)), agg.get(("b", srv, "rust-mcp-proxy", p))
            how = "" if v == "shadowcat" else ", --share"
            if not x:
                continue
            if not rp or not rp.get("rps"):
                rows.append((f"b. HTTP→stdio ({srv} server{how}) vs Rust mcp-proxy, {p}",
                             f'{fmt(x["rps"])} req/s, p99 {fmt(x["p99_us"])} µs',
                             "Rust mcp-proxy: no result", "–", "≥ 1.2× at no worse p99", None))
                continue
            r = ratio(x["rps"], rp["rps"])
            ok = r is not None and r >= 1.2 and x["p99_us"] is not None and rp["p99_us"] is not None \
                and x["p99_us"] <= rp["p99_us"]
            rows.append((f"b. HTTP→stdio ({srv} server{how}) vs Rust mcp-proxy, {p}",
                         f'{fmt(x["rps"])} req/s, p99 {fmt(x["p99_us"])} µs',
                         f'{fmt(rp["rps"])} req/s, p99 {fmt(rp["p99_us"])} µs',
                         f"{fmt(r, 2)}×", "≥ 1.2× at no worse p99", ok))
    for (s, g, v, p), row in sorted(agg.items()):
        if s == "c" and g == "http" and v == "shadowcat":
            b = row.get("proxy_b_per_session")
            up = agg.get(("c", "http", "direct", p), {}).get("upstream_b_per_session")
            rows.append((f"c. idle RSS per session, HTTP upstream, {p}", f"{fmt(b)} B",
                         f"upstream demo server alone: {fmt(up)} B", f"{fmt(b)} B",
                         "≤ 10 KiB (10,240 B)", b is not None and b <= IDLE_TARGET_BYTES))
        if s == "c" and g == "stdio" and v == "shadowcat":
            b = row.get("proxy_b_per_session")
            rows.append((f"c. idle RSS per session, stdio children, {p} (proxy only)", f"{fmt(b)} B",
                         f'+ 1 child each: {fmt(row.get("children_pss_b_per_session"))} B PSS',
                         f"{fmt(b)} B", "≤ 10 KiB (10,240 B)", b is not None and b <= IDLE_TARGET_BYTES))
    for g in ("http", "stdio"):
        for (s, gg, v, p), row in sorted(agg.items(), key=lambda kv: kv[0][3]):
            if s == "d" and gg == g and v == "shadowcat":
                d = agg.get(("d", g, "direct", p), {})
                e = row.get("events_per_s")
                rows.append((f"d. SSE events/s through the proxy ({g} upstream, {p})", f"{fmt(e)}/s",
                             f'{fmt(d.get("events_per_s"))}/s direct', f"{fmt(e)}/s", "≥ 100,000/s",
                             e is not None and e >= 100_000))
    for (s, g, v, p), row in sorted(agg.items()):
        if s == "g" and g == "pipeline" and v == "no-hooks":
            base = agg.get(("g", "pipeline", "relay", p), {}).get("ns_per_frame")
            x = row.get("ns_per_frame")
            if x is not None and base is not None:
                added = x - base
                rows.append(("g. no --record, no --rules: pipeline cost per frame vs no pipeline call",
                             f"{fmt(x)} ns/frame", f"{fmt(base)} ns/frame (frames only moved)",
                             f"{added:+.1f} ns", "≤ 5 ns (no work when unused)", added <= 5))
        if s == "g" and g == "e2e" and v in ("record", "rules"):
            plain = agg.get(("g", "e2e", "plain", p), {})
            r = ratio(row.get("rps"), plain.get("rps"))
            c = ratio(row.get("proxy_cpu_us"), plain.get("proxy_cpu_us"))
            what = "--record (every frame written)" if v == "record" else "--rules (100 non-matching + 3 continue)"
            rows.append((f"g. {what} vs plain forward http, {p}",
                         f'{fmt(row.get("rps"))} req/s, {fmt(row.get("proxy_cpu_us"))} CPU µs/req',
                         f'{fmt(plain.get("rps"))} req/s, {fmt(plain.get("proxy_cpu_us"))} CPU µs/req',
                         f"{fmt(r, 2)}× throughput, {fmt(c, 2)}× proxy CPU", "– (reported)", None))
    for (s, g, v, p), row in sorted(agg.items()):
        if s == "e" and g == "store":
            worst = row.get("worst_p99_us")
            rows.append((f"e. session store ops p99, {v} ({p})", f"worst op p99 {fmt(worst)} µs",
                         f'get p50 {fmt(row.get("get_p50_us"))} µs, {fmt(row.get("appends_per_s"))} appends/s',
                         f"{fmt(worst)} µs", "≤ 1 ms (1,000 µs)", worst is not None and worst <= 1000))
    for (s, g, v, p), row in sorted(agg.items()):
        if s == "f":
            rows.append((f"f. resuming a dropped stream ({g} notifications, {v} store, {p}): GET → first event",
                         f'p50 {fmt(row.get("first_p50_us"))} µs, p99 {fmt(row.get("first_p99_us"))} µs',
                         f'{fmt(row.get("resumed"))}/{fmt(row.get("resumptions"))} resumed, '
                         f'{fmt(row.get("errors"))} errors (kinds under the f. table)',
                         f'{fmt(row.get("events_per_s"))} events/s replayed, '
                         f'{fmt(row.get("events_per_resumption"))} per resumption',
                         "– (reported)", None))
    for (s, g, v, p), row in sorted(agg.items()):
        if s == "h" and v == "shadowcat":
            t = row.get("init_p50_ms")
            what = "--target URL" if g == "http" else "-- CMD (child spawned by the first initialize)"
            rows.append((f"h. cold start, spawn → first initialize answered ({what})", f"{fmt(t)} ms",
                         f'first tools/call: {fmt(row.get("first_call_p50_ms"))} ms', f"{fmt(t)} ms",
                         "≤ 50 ms", t is not None and t <= 50))
    for (s, g, v, p), row in sorted(agg.items()):
        if s == "j" and p.startswith("n="):
            t = row.get("total_rss_mb")
            rows.append((f"j. {p[2:]} sessions on server-everything, forward http --share: RSS of proxy + children",
                         f'{fmt(t)} MB ({fmt(row.get("children"))} children, verified {row.get("verified")})',
                         f'proxy {fmt(row.get("proxy_rss_kb"))} kB, children {fmt(row.get("children_rss_kb"))} kB',
                         f"{fmt(t)} MB", "≤ 2 GB (2,048 MB)", t is not None and t <= 2048))
    x, alone = agg_find(agg, "i", "list", "composite"), agg_find(agg, "i", "list", "slowest-alone")
    if x or alone:
        p = (x or alone)[0]
        cx, ca = (x or (None, {}))[1].get("list_p50_ms"), (alone or (None, {}))[1].get("list_p50_ms")
        diff = None if cx is None or ca is None else cx - ca
        rows.append((f"i. composite route, first tools/list of a session (one member slow, {p}): "
                     "composite − slowest member alone",
                     f"{fmt(cx)} ms p50 composite", f"{fmt(ca)} ms p50 slowest member alone",
                     "–" if diff is None else f"{diff:+.1f} ms", "≤ 5 ms (parallel fan-out)",
                     None if diff is None else diff <= 5))
    rows += base_rows(agg, hi, lo)
    def by_variant_then_c(kv):
        (_s, _g, v, p), _row = kv
        return v, int(p[2:]) if p[2:].isdigit() else 0

    for (s, g, v, p), row in sorted(agg.items(), key=by_variant_then_c):
        if s == "i" and g == "calls" and v.startswith("composite"):
            plain = agg.get(("i", "calls", "plain", p), {})
            r = ratio(row.get("rps"), plain.get("rps"))
            n = v.split("-", 1)[-1]
            rows.append((f"i. tools/call through a composite route of {n} member(s) vs plain forward http, {p}",
                         f'{fmt(row.get("rps"))} req/s, p50 {fmt(row.get("p50_us"))} µs',
                         f'{fmt(plain.get("rps"))} req/s, p50 {fmt(plain.get("p50_us"))} µs plain',
                         f"{fmt(r, 2)}×", "≥ 0.95×", None if r is None else r >= 0.95))
    return rows


def base_rows(agg, hi, lo):
    """Before/after rows: the current binary vs SC_BASE's (`*-base` variants, same rounds)."""
    rows = []
    pairs = [("a", g, v, f"a. HTTP→HTTP ({g} upstream), {via}") for g in ("http", "json-upstream")
             for v, via in (("shadowcat", "forward http"), ("gateway", "gateway"))]
    pairs += [("b", srv, "shadowcat", f"b. HTTP→stdio ({srv} server), a child per session")
              for srv in ("demo", "everything")]
    for s, g, v, what in pairs:
        for p in (hi, lo):
            x, b = agg.get((s, g, v, p)), agg.get((s, g, v + "-base", p))
            if not x or not b:
                continue
            r = ratio(x.get("rps"), b.get("rps"))
            rows.append((f"{what}, {p}: throughput now / before",
                         f'{fmt(x.get("rps"))} req/s, p50 {fmt(x.get("p50_us"))} µs',
                         f'{fmt(b.get("rps"))} req/s, p50 {fmt(b.get("p50_us"))} µs before',
                         "–" if r is None else f"{r:.2f}×", "≥ 0.95× (no loss beyond noise)",
                         None if r is None else r >= 0.95))
    for (s, g, v, p), x in sorted(agg.items()):
        if s == "c" and v == "shadowcat":
            b = agg.get((s, g, "shadowcat-base", p))
            if not b:
                continue
            xb, bb = x.get("proxy_b_per_session"), b.get("proxy_b_per_session")
            r = ratio(xb, bb)
            rows.append((f"c. idle RSS per session ({g}, {p}): now / before", f"{fmt(xb)} B",
                         f"{fmt(bb)} B before", "–" if r is None else f"{r:.2f}×",
                         "≤ 1.05× (no growth beyond noise)", None if r is None else r <= 1.05))
    return rows


def agg_find(agg, s, g, v):
    """The first (param, row) of a scenario's group and variant, or None."""
    for (ss, gg, vv, p), row in sorted(agg.items()):
        if (ss, gg, vv) == (s, g, v):
            return p, row
    return None


COLUMNS = {
    "a": [("rps", "req/s"), ("p50_us", "p50 µs"), ("p90_us", "p90 µs"), ("p99_us", "p99 µs"),
          ("max_us", "max µs"), ("errors", "errors"), ("proxy_cpu_us", "proxy CPU µs/req"),
          ("upstream_cpu_us", "upstream CPU µs/req"), ("generator_cpu_us", "generator CPU µs/req")],
    "b": [("rps", "req/s"), ("p50_us", "p50 µs"), ("p99_us", "p99 µs"), ("max_us", "max µs"),
          ("errors", "errors"), ("proxy_children", "children"), ("proxy_cpu_us", "proxy CPU µs/req"),
          ("children_cpu_us", "children CPU µs/req"), ("generator_cpu_us", "generator CPU µs/req")],
    "c": [("sessions_per_s", "sessions opened/s"), ("verified", "verified"),
          ("proxy_rss_kb", "proxy RSS kB"), ("proxy_b_per_session", "proxy B/session"),
          ("children", "children"), ("children_rss_b_per_session", "children RSS B/session"),
          ("children_pss_b_per_session", "children PSS B/session"),
          ("upstream_rss_kb", "upstream RSS kB"), ("upstream_b_per_session", "upstream B/session")],
    "d": [("events_per_s", "events/s"), ("call_events_per_s", "per call events/s"),
          ("gap_p50_us", "gap p50 µs"), ("gap_p99_us", "gap p99 µs"), ("gap_max_us", "gap max µs"),
          ("first_event_p50_us", "first event p50 µs"), ("first_event_p99_us", "first event p99 µs"),
          ("errors", "errors"), ("proxy_cpu_us_per_event", "proxy CPU µs/event"),
          ("upstream_cpu_us_per_event", "upstream CPU µs/event")],
    "e": [("appends_per_s", "appends/s")] + [(f"{op}_{q}", f"{op} {q[:3]} µs")
                                             for op in STORE_OPS for q in ("p50_us", "p99_us")],
    "f": [("resumed", "resumed"), ("resumptions", "of"), ("first_p50_us", "GET → first event p50 µs"),
          ("first_p99_us", "p99 µs"), ("first_max_us", "max µs"),
          ("events_per_resumption", "events per resumption"), ("events_per_s", "events/s replayed"),
          ("reply_p50_ms", "GET → reply p50 ms"), ("errors", "errors"), ("warmup_errors", "warm-up errors"),
          ("proxy_cpu_ms_per_cycle", "proxy CPU ms/cycle")],
    "g": {
        "pipeline": [("ns_per_frame", "ns/frame (median)"), ("ns_per_frame_min", "ns/frame (min)"),
                     ("writer_ns_per_frame", "ns/frame incl. writer thread"),
                     ("tape_b_per_frame", "tape B/frame")],
        "e2e": [("rps", "req/s"), ("p50_us", "p50 µs"), ("p99_us", "p99 µs"), ("max_us", "max µs"),
                ("errors", "errors"), ("proxy_cpu_us", "proxy CPU µs/req"),
                ("children_cpu_us", "children CPU µs/req"), ("generator_cpu_us", "generator CPU µs/req")],
    },
    "j": [("sessions_per_s", "sessions opened/s"), ("verified", "verified"), ("total_rss_mb", "proxy + children RSS MB"),
          ("proxy_rss_kb", "proxy RSS kB"), ("children", "children"), ("children_rss_kb", "children RSS kB"),
          ("rps", "req/s"), ("p50_us", "p50 µs"), ("p99_us", "p99 µs"), ("errors", "errors"),
          ("proxy_cpu_us", "proxy CPU µs/req"), ("children_cpu_us", "children CPU µs/req")],
    "h": [("listening_p50_ms", "→ listening p50 ms"), ("init_p50_ms", "→ initialize p50 ms"),
          ("init_max_ms", "→ initialize max ms"), ("first_call_p50_ms", "→ first call p50 ms"),
          ("runs", "runs/round"), ("errors", "errors")],
    "i": {
        "list": [("list_p50_ms", "first tools/list p50 ms"), ("list_p90_ms", "p90 ms"),
                 ("list_max_ms", "max ms"), ("tools", "tools"), ("pages", "pages"),
                 ("runs_ok", "runs ok"), ("errors", "errors"), ("init_p50_ms", "initialize p50 ms"),
                 ("proxy_cpu_ms_per_run", "proxy CPU ms/run")],
        "calls": [("rps", "req/s"), ("p50_us", "p50 µs"), ("p90_us", "p90 µs"), ("p99_us", "p99 µs"),
                  ("max_us", "max µs"), ("errors", "errors"), ("proxy_cpu_us", "proxy CPU µs/req"),
                  ("upstream_cpu_us", "upstream CPU µs/req"), ("generator_cpu_us", "generator CPU µs/req")],
    },
}

TITLES = {
    "a": "a. HTTP→HTTP `tools/call` echo: direct vs through `shadowcat forward http --target` (`shadowcat`) and `shadowcat gateway --upstream` (`gateway`) (group `http`: the demo server's own HTTP endpoint; `json-upstream`: a shadowcat HTTP→stdio front of it, which answers in one JSON write)",
    "b": "b. HTTP→stdio: each proxy fronts the same stdio server (`direct-stdio` = the generator speaks stdio to the server itself)",
    "c": "c. Idle sessions: memory per session (RSS of the watched process; children = its descendants)",
    "d": "d. SSE pass-through: `log` tool, `count` notifications/message per call; the stdio proxy once per session store (`shadowcat` = memory, `shadowcat-sqlite`, `shadowcat-redis`: every event is logged before it is sent) (gap = time between consecutive events at the client; first event = request → first notification of a count=1 call)",
    "e": "e. Session store operations per backend, one at a time from one task (`shadowcat-bench store`; SQLite on a file in the run's temp dir, Redis a private `redis-server` on a unix socket)",
    "f": "f. Resumption through `forward http -- shadowcat demo-server`, per session store: each cycle opens a session (2025-11-25), calls a tool that sends `count` notifications as an SSE stream, reads some (RESUME_READ), drops the connection, waits (`pause`), then `GET` + `Last-Event-ID` reads to the reply (events = notifications + reply on the resumed stream; events/s = median per resumption; a gap, repeat, out-of-order id or missing reply is an error; CPU per cycle includes the session and the whole call). Groups: `log` = the `log` tool (notifications/message, not tied to the request on stdio); `progress` = the `slow` tool with a progress token (paced ~1 ms a step by the server; the pause lets it finish, so everything is replayed from the log)",
    "g": {
        "pipeline": "g. Pipeline cost per frame, in process (a `tools/call` and its reply as the HTTP front runs them; `relay` = no pipeline call at all, `no-hooks` = what a session does without --record/--rules (one emptiness check), `no-hooks-entered` = the empty pipeline's future built and polled anyway; the recorder (`block`) is paced by its writer thread, which runs beside the relay)",
        "e2e": "g. Recording and 100 interceptor rules end to end: `forward http` to a stdio demo child per session, plain vs `--record FILE --record-on-full block` vs `--rules` (100 non-matching + 3 matching `continue` rules)",
    },
    "j": "j. Shared stdio children: POOL_SESSIONS sessions on server-everything (stdio) through `forward http --share SHARE`; `n=` rows: every session open at once, memory after (children = the proxy's descendants), 100 of them verified with a call; `c=32,sessions=` rows: echo calls, 32 in flight, spread over all the sessions",
    "h": "h. Cold start: spawn → stderr `listening` line → first `initialize` answered → first `tools/call` answered",
    "i": {
        "list": "i1. Composite route, merged `tools/list`: each run opens a new session (initialize spawns the members) and times its first `tools/list`, all pages; `composite` = `forward http` with LIST_MEMBERS stdio members (`tests/interop/paged_server.py --tools LIST_TOOLS`), one of which (`slow`) sleeps `--list-delay` before answering; `slowest-alone` = that slow server alone behind a plain `forward http -- CMD`. The members are asked in parallel, so composite − slowest-alone is the cost of the fan-out and merge (target ≤ 5 ms)",
        "calls": "i2. `tools/call` echo through a composite route vs a plain one, same JSON-answering upstream (`forward http -- shadowcat demo-server`, as in scenario a): `plain` = `forward http --target URL`, `composite-1` = `--server a=URL` (tool `a__echo`), `composite-2` = `--server a=URL --server b=URL` (target ≥ 0.95× plain)",
    },
}

BASELINE = {"a": "direct", "b": "rust-mcp-proxy", "c": "direct", "d": "direct", "f": "memory",
            "h": "demo-server",
            "g": {"pipeline": "relay", "e2e": "plain"},
            "i": {"list": "slowest-alone", "calls": "plain"}}
RATIO_METRIC = {"a": "rps", "b": "rps", "d": "events_per_s", "f": "first_p50_us",
                "g": {"pipeline": "ns_per_frame", "e2e": "proxy_cpu_us"},
                "i": {"list": "list_p50_ms", "calls": "rps"}}


def by_group(table, s, g):
    """A per-scenario setting, or the group's entry when the scenario has one per group."""
    v = table.get(s)
    return v.get(g) if isinstance(v, dict) else v


def error_notes(runs, scenario):
    """Error kinds of a scenario's runs, with the first message of each: {(group, variant): {kind: [n, msg]}}."""
    notes = defaultdict(dict)
    for r in runs:
        parts = r.get("label", "").split("|")
        if len(parts) != 5 or parts[0] != scenario:
            continue
        for field in ("errors", "warmup_errors"):
            for kind, e in (dig(r, field, "kinds") or {}).items():
                k = kind if field == "errors" else f"{kind} (warm-up)"
                n = notes[(parts[1], parts[2])].setdefault(k, [0, e.get("first", "")])
                n[0] += e.get("count", 0)
    return notes


def markdown(meta, peers, failures, pending, agg, target_rows, runs=()):
    out = []
    w = out.append
    w(f"# Shadowcat benchmarks — {meta.get('date', '')}" + (" (QUICK smoke run)" if meta.get("quick") == "1" else ""))
    w("")
    mem_gib = int(meta.get("mem_total_kb", "0")) / 1024 / 1024
    w("| machine | |")
    w("|---|---|")
    w(f"| nproc | {meta.get('nproc')} |")
    w(f"| CPU | {meta.get('cpu')} |")
    w(f"| memory | {mem_gib:.1f} GiB |")
    w(f"| kernel | {meta.get('kernel')} |")
    w(f"| rustc | {meta.get('rustc')} |")
    w(f"| shadowcat commit | {meta.get('commit')} |")
    if meta.get("base"):
        w(f"| before/after baseline (`*-base` variants) | {meta.get('base')} |")
    w(f"| load average before / after | {meta.get('load_before')} / {meta.get('load_after')} |")
    w(f"| wall time | {meta.get('elapsed_s')} s |")
    w(f"| settings | `{meta.get('settings')}` |")
    w("")
    w("Medians over rounds; A and B variants alternate within each round. The generator, the proxy and")
    w("the upstream share the same cores, so absolute numbers are lower than on a dedicated machine;")
    w("compare within a table. CPU columns are CPU time used during the measured window divided by")
    w("requests (or events), from /proc.")
    w("")
    w("## Targets")
    w("")
    w("| what | shadowcat | reference | value | target | met |")
    w("|---|---|---|---|---|---|")
    for what, x, ref, val, tgt, ok in target_rows:
        w(f"| {what} | {x} | {ref} | {val} | {tgt} | {'yes' if ok else ('–' if ok is None else '**no**')} |")
    w("")
    for s in ("a", "b", "c", "d", "e", "f", "g", "h", "i", "j"):
        keys = sorted(k for k in agg if k[0] == s)
        if not keys:
            continue
        # Scenarios whose groups measure different things get one table per group.
        tables = [(g, [k for k in keys if k[1] == g]) for g in COLUMNS[s]] \
            if isinstance(COLUMNS[s], dict) else [(None, keys)]
        for tg, tkeys in tables:
            if not tkeys:
                continue
            cols = by_group(COLUMNS, s, tg)
            w(f"## {by_group(TITLES, s, tg)}")
            w("")
            rm = by_group(RATIO_METRIC, s, tg)
            head = ["group", "variant", "param", "rounds"] + [c[1] for c in cols]
            if rm:
                head.append(f"{rm} vs {by_group(BASELINE, s, tg)}")
            w("| " + " | ".join(head) + " |")
            w("|" + "---|" * len(head))
            for key in tkeys:
                _, g, v, p = key
                row = agg[key]
                cells = [g, f"**{v}**" if v == "shadowcat" else v, p, str(row["rounds"])]
                cells += [fmt(row.get(c[0])) for c in cols]
                if rm:
                    base = agg.get((s, g, by_group(BASELINE, s, g), p), {}).get(rm)
                    r = ratio(row.get(rm), base)
                    cells.append("–" if r is None else f"{r:.2f}×")
                w("| " + " | ".join(cells) + " |")
            w("")
            if (s, tg) == ("i", "list"):
                for p in sorted({k[3] for k in tkeys}):
                    cx = agg.get(("i", "list", "composite", p), {}).get("list_p50_ms")
                    ca = agg.get(("i", "list", "slowest-alone", p), {}).get("list_p50_ms")
                    if cx is not None and ca is not None:
                        w(f"Medians ({p}): composite {cx:.1f} ms, slowest-alone {ca:.1f} ms, "
                          f"difference {cx - ca:+.1f} ms (target ≤ 5 ms: "
                          f"{'met' if cx - ca <= 5 else '**not met**'}).")
                        w("")
        notes = error_notes(runs, s) if s in ("f", "i") else {}
        for (g, v), kinds in sorted(notes.items()):
            for kind, (n, msg) in sorted(kinds.items()):
                w(f"- errors `{kind}` ×{n} ({g}, {v}): {msg[:300]}")
        if notes:
            w("")
    if pending:
        w("## Not measured yet")
        w("")
        for p in pending:
            w(f"- {p.get('scenario')}: {p.get('status')}")
        w("")
    w("## Peers")
    w("")
    w("| peer | status | version | detail |")
    w("|---|---|---|---|")
    for p in peers:
        detail = (p.get("detail") or "").replace("\n", " ").replace("|", "\\|")[:300]
        w(f"| {p['name']} | {p['status']} | {p.get('version') or ''} | {detail} |")
    w("")
    if failures:
        w("## Failures")
        w("")
        for f in failures:
            err = f["error"].strip().replace("\n", "\n    ")
            w(f"- `{f['label']}`:")
            w("")
            w(f"    {err[-1500:]}")
            w("")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--raw", required=True)
    ap.add_argument("--meta", required=True)
    ap.add_argument("--peers")
    ap.add_argument("--failures")
    ap.add_argument("--out", required=True, help="path without extension")
    args = ap.parse_args()
    runs, pending, meta, peers, failures = load(args)
    agg = aggregate(runs)
    target_rows = targets(agg)
    doc = {
        "meta": meta,
        "peers": peers,
        "failures": failures,
        "pending": pending,
        "targets": [
            {"what": a, "shadowcat": b, "reference": c, "value": d, "target": e, "met": f}
            for a, b, c, d, e, f in target_rows
        ],
        "summary": [
            {"scenario": s, "group": g, "variant": v, "param": p, **row}
            for (s, g, v, p), row in sorted(agg.items())
        ],
        "runs": runs,
    }
    with open(args.out + ".json", "w") as fh:
        json.dump(doc, fh, indent=1, ensure_ascii=False)
    with open(args.out + ".md", "w") as fh:
        fh.write(markdown(meta, peers, failures, pending, agg, target_rows, runs))


if __name__ == "__main__":
    main()
