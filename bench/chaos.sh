#!/usr/bin/env bash
# Shadowcat chaos run: hostile requests and injected faults against the real binary, on
# 127.0.0.1 ephemeral ports only. Bounded in time and count; prints a JSON summary, writes it to
# bench/results/DATE-chaos.json, and exits 1 on any loss (a request without the right class of
# answer, a panic, a hung or wrong call, a lost or duplicate frame, a session that did not
# continue, RSS not flat within 10% over the soak). It is not a test and not part of CI.
#
#   bench/chaos.sh                              everything, 10-minute soak (~15 min on 2 cores)
#   CHAOS_SOAK_SECS=60 bench/chaos.sh           a short soak
#   SCENARIOS=hostile,resume bench/chaos.sh     some scenarios
#
# Scenarios:
#   hostile       CHAOS_HOSTILE (10000) malformed/hostile requests (fuzzed JSON, oversize bodies,
#                 bad headers, bad and foreign session ids, trickled heads): each must get a 4xx,
#                 the proxy must stay up and serve, no panic in its stderr
#   child-kill    `forward http -- demo-server`: the stdio children SIGKILLed while `slow` calls
#                 are in flight: each gets an answer (a JSON-RPC error), none hangs
#   upstream-restart  `forward http --target` an HTTP demo server, killed while `slow` calls
#                 stream their progress and restarted on the same port: no hang, calls recover
#   redis-restart `--store redis+unix://` (a private redis-server in a temp dir) stopped and
#                 restarted under load with session churn: no hang, calls recover
#   replica-kill  two replicas sharing that Redis, one SIGKILLed: its sessions continue on the
#                 other (the load generator moves them, as a load balancer would)
#   resume        an SSE stream dropped and resumed CHAOS_RESUMES (1000) times
#                 (`shadowcat-bench resume`): no lost and no duplicate frames
#   soak          CHAOS_SOAK_SECS (600) of calls with session churn; RSS of the proxy sampled,
#                 start (after CHAOS_RSS_WARMUP, default 30 s or a quarter of the soak) vs end
#
# Knobs (environment):
#   CARGO_TARGET_DIR   where the binaries are built (default: ./target)
#   PROFILE=release    or debug: which build to run (release is what the results should use)
#   SKIP_BUILD=1       use the binaries already built
#   RESULTS_DIR        default: bench/results    DATE   result file name (default: UTC now)
#   CHAOS_HOSTILE=10000  CHAOS_RESUMES=1000  CHAOS_SOAK_SECS=600  CHAOS_CONC=8
#   KEEP_WORK=1        keep the scratch directory (every process's log)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
PROFILE=${PROFILE:-release}
RESULTS=${RESULTS_DIR:-$ROOT/bench/results}
DATE=${DATE:-$(date -u +%Y-%m-%d-%H%M)}
SCENARIOS=${SCENARIOS:-hostile,child-kill,upstream-restart,redis-restart,replica-kill,resume,soak}
CHAOS_HOSTILE=${CHAOS_HOSTILE:-10000}
CHAOS_RESUMES=${CHAOS_RESUMES:-1000}
CHAOS_SOAK_SECS=${CHAOS_SOAK_SECS:-600}
CHAOS_CONC=${CHAOS_CONC:-8}
default_warmup=$((CHAOS_SOAK_SECS / 4 < 30 ? CHAOS_SOAK_SECS / 4 : 30))
CHAOS_RSS_WARMUP=${CHAOS_RSS_WARMUP:-$default_warmup}
export RUST_BACKTRACE=0 RUST_LIB_BACKTRACE=0

case $PROFILE in release | debug) ;; *) echo "PROFILE must be release or debug" >&2; exit 2 ;; esac
[[ $CHAOS_SOAK_SECS =~ ^[0-9]+$ && $CHAOS_SOAK_SECS -ge 10 ]] || { echo "CHAOS_SOAK_SECS must be a whole number >= 10" >&2; exit 2; }
[[ $CHAOS_HOSTILE =~ ^[0-9]+$ && $CHAOS_RESUMES =~ ^[0-9]+$ && $CHAOS_CONC =~ ^[0-9]+$ ]] || { echo "CHAOS_HOSTILE, CHAOS_RESUMES and CHAOS_CONC must be whole numbers" >&2; exit 2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/shadowcat-chaos.XXXXXX")
mkdir -p "$RESULTS" "$WORK/parts"
PIDS=()
T0=$(date +%s)

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
has() { [[ ",$SCENARIOS," == *",$1,"* ]]; }

# --- processes (as in bench/run.sh) ------------------------------------------------------------

descendants() {
  local p kids
  kids=$(ps -o pid= --ppid "$1" 2>/dev/null || true)
  for p in $kids; do
    echo "$p"
    descendants "$p"
  done
}

# stop PID: SIGTERM its process group, wait, then SIGKILL the group and any descendant left.
stop() {
  local pid=$1 i kids
  [[ -n $pid ]] || return 0
  kids=$(descendants "$pid")
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL -- "-$pid" 2>/dev/null || true
  for i in $kids; do kill -KILL "$i" 2>/dev/null || true; done
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$? p f
  for p in "${PIDS[@]}"; do
    kill -0 "$p" 2>/dev/null && stop "$p"
  done
  # Processes a fault command restarted (their pid in a file).
  for f in "$WORK"/*.pid; do
    [[ -f $f ]] && p=$(cat "$f") && [[ -n $p ]] && kill -0 "$p" 2>/dev/null && stop "$p"
  done
  if [[ ${KEEP_WORK:-0} == 1 ]]; then log "scratch kept in $WORK"; else rm -rf "$WORK"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME CMD...: run CMD in its own process group; sets LAST_PID.
start() {
  local name=$1
  shift
  setsid "$@" >"$WORK/$name.out" 2>>"$WORK/$name.log" </dev/null &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

# wait_listen NAME PID: the base URL from shadowcat's `listening on http://ADDR` line.
wait_listen() {
  local name=$1 pid=$2 i addr
  for i in $(seq 1 300); do
    addr=$(grep -o '^shadowcat: listening on http://[^ ]*' "$WORK/$name.log" 2>/dev/null | head -1 | sed 's|^shadowcat: listening on http://||') || true
    if [[ -n $addr ]]; then
      echo "http://${addr%/}"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || { log "$name exited: $(tail -5 "$WORK/$name.log")"; return 1; }
    sleep 0.1
  done
  log "$name did not say it was listening"
  return 1
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# proxy NAME ARGS...: `shadowcat forward http` on an ephemeral port; sets URL and PROXY_PID.
proxy() {
  local name=$1
  shift
  start "$name" "$SC" forward http --listen 127.0.0.1:0 --shutdown-deadline 2 "$@"
  PROXY_PID=$LAST_PID
  URL=$(wait_listen "$name" "$PROXY_PID")/mcp
}

# panics NAME...: panics reported in those processes' stderr.
panics() {
  local n=0 f c
  for f in "$@"; do
    c=$(grep -c 'panicked' "$WORK/$f.log" 2>/dev/null || true)
    n=$((n + ${c:-0}))
  done
  echo "$n"
}

# redis NAME: a private redis-server on a unix socket; sets REDIS_SOCK; its pid in NAME.pid.
# (setsid execs redis-server in place, so the pid is redis-server's own.)
redis_cmd() { echo "redis-server --port 0 --save '' --appendonly no --dir $WORK --unixsocket $1"; }
start_redis() {
  REDIS_SOCK=$WORK/$1.sock
  start "$1" redis-server --port 0 --save "" --appendonly no --dir "$WORK" --unixsocket "$REDIS_SOCK"
  echo "$LAST_PID" >"$WORK/$1.pid"
  local i
  for i in $(seq 1 100); do [[ -S $REDIS_SOCK ]] && return 0; sleep 0.1; done
  log "redis-server did not create $REDIS_SOCK"
  return 1
}

# part NAME PYTHON-EXPR...: write the scenario's summary (a JSON object) to parts/NAME.json.
part() {
  python3 - "$WORK/parts/$1.json" "$@" <<'EOF'
import json, sys
out, name, expr = sys.argv[1], sys.argv[2], sys.argv[3]
env = {k: v for k, v in (a.split("=", 1) for a in sys.argv[4:])}
def load(f):
    try:
        with open(f) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {}
v = eval(expr, {"load": load, "env": env, "int": int, "float": float})
v["scenario"] = name
json.dump(v, open(out, "w"), indent=1)
print(f"{name}: {'PASS' if v.get('pass') else 'FAIL'} {json.dumps({k: v[k] for k in v if k not in ('scenario', 'detail')})}", file=sys.stderr)
EOF
}

# --- build ---------------------------------------------------------------------------------------

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
  log "building shadowcat and shadowcat-bench ($PROFILE) in $TARGET_DIR"
  flag=()
  [[ $PROFILE == release ]] && flag=(--release)
  CARGO_TARGET_DIR=$TARGET_DIR cargo build "${flag[@]}" -p shadowcat -p shadowcat-bench >&2
fi
SC=$TARGET_DIR/$PROFILE/shadowcat
BENCH=$TARGET_DIR/$PROFILE/shadowcat-bench
[[ -x $SC && -x $BENCH ]] || { log "missing $SC or $BENCH"; exit 1; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# --- scenarios -----------------------------------------------------------------------------------

if has hostile; then
  log "== hostile: $CHAOS_HOSTILE malformed or hostile requests"
  proxy hostile-proxy --max-message 65536 -- "$SC" demo-server
  timeout -k 5 600 "$BENCH" chaos-hostile --url "$URL" --requests "$CHAOS_HOSTILE" \
    --max-message 65536 -c "$CHAOS_CONC" --json "$WORK/hostile.json" >&2 || true
  up=0
  kill -0 "$PROXY_PID" 2>/dev/null && up=1
  stop "$PROXY_PID"
  part hostile '(lambda r: {"requests": r.get("requests", 0), "answered_4xx": r.get("answered_4xx", 0),
      "other_status": r.get("other_status"), "no_answer": r.get("no_answer"), "hang": r.get("hang"),
      "panics": int(env["panics"]), "proxy_up": env["up"] == "1", "still_serves": r.get("still_serves", False),
      "pass": r.get("requests", 0) == int(env["n"]) and r.get("answered_4xx") == r.get("requests")
              and r.get("still_serves") is True and env["up"] == "1" and int(env["panics"]) == 0,
      "detail": r.get("by_category")})(load(env["f"]))' \
    f="$WORK/hostile.json" n="$CHAOS_HOSTILE" up=$up panics="$(panics hostile-proxy)"
fi

# load NAME ARGS...: chaos-load into $WORK/NAME.json.
load() {
  local name=$1
  shift
  timeout -k 5 $((CHAOS_SOAK_SECS + 300)) "$BENCH" chaos-load --json "$WORK/$name.json" "$@" >&2 || true
}
# The pass rule of a fault scenario: every call answered (no hang, no wrong answer), calls
# answered again after the last fault, and EXTRA.
load_part() {
  local name=$1 extra=$2
  shift 2
  part "$name" '(lambda r: {"calls": r.get("calls", 0), "outcomes": r.get("outcomes"),
      "hang": r.get("hang"), "wrong": r.get("wrong"), "longest_call_s": r.get("longest_call_s"),
      "ok_after_last_fault": r.get("ok_after_last_fault"),
      "sessions_moved": r.get("sessions_moved"), "sessions_continued": r.get("sessions_continued"),
      "session_ops": r.get("session_ops"), "faults": len(r.get("faults", [])), "panics": int(env["panics"]),
      "pass": r.get("calls", 0) > 0 and r.get("hang") == 0 and r.get("wrong") == 0
              and r.get("ok_after_last_fault", 0) > 0 and int(env["panics"]) == 0
              and len(r.get("faults", [])) == int(env["faults"]) and ('"$extra"'),
      "detail": {"faults": r.get("faults"), "timeline": r.get("timeline")}})(load(env["f"]))' \
    f="$WORK/$name.json" "$@"
}

if has child-kill; then
  log "== child-kill: stdio children SIGKILLed during slow calls"
  proxy child-proxy -- "$SC" demo-server
  kill_children="for p in \$(ps -o pid= --ppid $PROXY_PID); do kill -KILL \$p; done"
  load child-kill --url "$URL" -c 4 --duration 10 --tool slow --slow-secs 2 \
    --fault "1=$kill_children" --fault "5=$kill_children"
  stop "$PROXY_PID"
  # The kills hit calls in flight: they must have been answered with JSON-RPC errors.
  load_part child-kill 'r.get("outcomes", {}).get("jsonrpc_error", 0) > 0' faults=2 panics="$(panics child-proxy)"
fi

if has upstream-restart; then
  log "== upstream-restart: the HTTP upstream killed mid-stream and restarted"
  port=$(free_port)
  start upstream "$SC" demo-server --http "127.0.0.1:$port"
  echo "$LAST_PID" >"$WORK/upstream.pid"
  "$BENCH" wait --url "http://127.0.0.1:$port/mcp" --timeout 30 >&2
  proxy upstream-proxy --target "http://127.0.0.1:$port/mcp"
  restart="setsid $SC demo-server --http 127.0.0.1:$port >>$WORK/upstream.log 2>&1 </dev/null & echo \$! >$WORK/upstream.pid"
  load upstream-restart --url "$URL" -c 4 --duration 12 --tool slow --slow-secs 2 \
    --fault "2=kill -KILL \$(cat $WORK/upstream.pid)" --fault "4=$restart"
  stop "$PROXY_PID"
  stop "$(cat "$WORK/upstream.pid")"
  load_part upstream-restart 'True' faults=2 panics="$(panics upstream-proxy)"
fi

if has redis-restart || has replica-kill; then
  command -v redis-server >/dev/null || { log "redis-server is not installed (apt-get install redis-server)"; exit 1; }
fi

if has redis-restart; then
  log "== redis-restart: the session store stopped and restarted under load"
  start_redis redis-a
  proxy redis-proxy --store "redis+unix://$REDIS_SOCK" -- "$SC" demo-server
  restart="setsid $(redis_cmd "$REDIS_SOCK") >/dev/null 2>&1 </dev/null & echo \$! >$WORK/redis-a.pid"
  load redis-restart --url "$URL" -c "$CHAOS_CONC" --duration 20 --churn 10 \
    --fault "3=kill -TERM \$(cat $WORK/redis-a.pid)" --fault "11=$restart"
  stop "$PROXY_PID"
  stop "$(cat "$WORK/redis-a.pid")"
  load_part redis-restart 'True' faults=2 panics="$(panics redis-proxy)"
fi

if has replica-kill; then
  log "== replica-kill: one of two replicas SIGKILLed"
  start_redis redis-b
  port=$(free_port)
  start replica-upstream "$SC" demo-server --http "127.0.0.1:$port"
  "$BENCH" wait --url "http://127.0.0.1:$port/mcp" --timeout 30 >&2
  proxy replica-a --store "redis+unix://$REDIS_SOCK" --replica-id a --target "http://127.0.0.1:$port/mcp"
  url_a=$URL pid_a=$PROXY_PID
  proxy replica-b --store "redis+unix://$REDIS_SOCK" --replica-id b --target "http://127.0.0.1:$port/mcp"
  url_b=$URL pid_b=$PROXY_PID
  load replica-kill --url "$url_a" --url "$url_b" -c "$CHAOS_CONC" --duration 10 \
    --fault "3=kill -KILL $pid_a"
  stop "$pid_b"
  # Every session moved off the killed replica continued on the other one.
  load_part replica-kill 'r.get("sessions_moved", 0) > 0 and r.get("sessions_continued") == r.get("sessions_moved")' \
    faults=1 panics="$(panics replica-a replica-b)"
fi

if has resume; then
  log "== resume: an SSE stream dropped and resumed $CHAOS_RESUMES times"
  proxy resume-proxy -- "$SC" demo-server
  timeout -k 5 1800 "$BENCH" resume --url "$URL" --kind log --count 100 --read 10 \
    --rounds "$CHAOS_RESUMES" --warmup-rounds 0 --json "$WORK/resume.json" >&2 || true
  stop "$PROXY_PID"
  # Each cycle checks every frame after the resume point: a gap (lost frames) or a repeat
  # (duplicate frames) fails that cycle with its kind.
  part resume '(lambda r, k: {"resumptions": r.get("resumptions", 0), "resumed": r.get("resumed", 0),
      "frames_checked": r.get("events", 0),
      "resumptions_losing_frames": sum(k[x]["count"] for x in ("gap", "no-reply") if x in k),
      "resumptions_duplicating_frames": sum(k[x]["count"] for x in ("duplicate", "after-reply") if x in k),
      "errors": k, "panics": int(env["panics"]),
      "pass": r.get("resumed", -1) == int(env["n"]) and r.get("errors", {}).get("total", 1) == 0
              and int(env["panics"]) == 0})(load(env["f"]), load(env["f"]).get("errors", {}).get("kinds", {}))' \
    f="$WORK/resume.json" n="$CHAOS_RESUMES" panics="$(panics resume-proxy)"
fi

if has soak; then
  log "== soak: ${CHAOS_SOAK_SECS}s of calls with session churn, RSS sampled"
  proxy soak-proxy -- "$SC" demo-server
  load soak --url "$URL" -c "$CHAOS_CONC" --duration "$CHAOS_SOAK_SECS" --churn 50 \
    --rss-pid "$PROXY_PID" --rss-every 5 --rss-warmup "$CHAOS_RSS_WARMUP"
  stop "$PROXY_PID"
  part soak '(lambda r: {"soak_s": int(env["secs"]), "calls": r.get("calls", 0), "outcomes": r.get("outcomes"),
      "hang": r.get("hang"), "wrong": r.get("wrong"), "longest_call_s": r.get("longest_call_s"),
      "sessions_opened": r.get("sessions_opened"), "session_ops": r.get("session_ops"),
      "rss_warmup_s": int(env["warmup"]), "rss_kb_start": r.get("rss_kb_start"), "rss_kb_end": r.get("rss_kb_end"),
      "rss_change_pct": round(100.0 * (r["rss_kb_end"] - r["rss_kb_start"]) / r["rss_kb_start"], 1) if r.get("rss_kb_start") else None,
      "panics": int(env["panics"]),
      "pass": r.get("calls", 0) > 0 and r.get("hang") == 0 and r.get("wrong") == 0
              and r.get("outcomes", {}).get("ok") == r.get("calls")
              and bool(r.get("rss_kb_start")) and r["rss_kb_end"] <= 1.10 * r["rss_kb_start"]
              and int(env["panics"]) == 0,
      "detail": {"rss_samples": r.get("rss_samples")}})(load(env["f"]))' \
    f="$WORK/soak.json" secs="$CHAOS_SOAK_SECS" warmup="$CHAOS_RSS_WARMUP" panics="$(panics soak-proxy)"
fi

# --- summary -------------------------------------------------------------------------------------

out=$RESULTS/$DATE-chaos.json
python3 - "$WORK/parts" "$out" "$PROFILE" "$CHAOS_SOAK_SECS" "$(($(date +%s) - T0))" "$("$SC" --version)" <<'EOF'
import json, os, platform, subprocess, sys
parts_dir, out, profile, soak, took, version = sys.argv[1:7]
order = ["hostile", "child-kill", "upstream-restart", "redis-restart", "replica-kill", "resume", "soak"]
parts = {}
for name in order:
    f = os.path.join(parts_dir, name + ".json")
    if os.path.exists(f):
        parts[name] = json.load(open(f))
def g(name, key, default=0):
    return parts.get(name, {}).get(key, default) or 0
summary = {
    "requests_hostile": g("hostile", "requests"),
    "requests_right_class": g("hostile", "answered_4xx"),
    "panics": sum(p.get("panics", 0) for p in parts.values()),
    "calls_hung": sum(p.get("hang", 0) or 0 for p in parts.values()),
    "calls_wrong": sum(p.get("wrong", 0) or 0 for p in parts.values()),
    "resumptions": g("resume", "resumed"),
    "resumed_frames_checked": g("resume", "frames_checked"),
    "resumptions_losing_frames": g("resume", "resumptions_losing_frames"),
    "resumptions_duplicating_frames": g("resume", "resumptions_duplicating_frames"),
    "sessions_moved": g("replica-kill", "sessions_moved"),
    "sessions_continued": g("replica-kill", "sessions_continued"),
    "soak_s": int(soak) if "soak" in parts else None,
    "rss_kb_start": parts.get("soak", {}).get("rss_kb_start"),
    "rss_kb_end": parts.get("soak", {}).get("rss_kb_end"),
    "rss_change_pct": parts.get("soak", {}).get("rss_change_pct"),
}
ok = bool(parts) and all(p.get("pass") for p in parts.values())
def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:
        return ""
report = {
    "kind": "chaos",
    "date": os.path.basename(out).removesuffix("-chaos.json"),
    "pass": ok,
    "shadowcat": version,
    "profile": profile,
    "took_s": int(took),
    "machine": {"nproc": os.cpu_count(), "cpu": sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"),
                "kernel": platform.release(), "load": sh("cut -d' ' -f1-3 /proc/loadavg")},
    "summary": summary,
    "scenarios": {n: {k: v for k, v in p.items() if k != "scenario"} for n, p in parts.items()},
}
json.dump(report, open(out, "w"), indent=1)
print(json.dumps({"pass": ok, "profile": profile, "summary": summary,
                  "scenarios": {n: p.get("pass") for n, p in parts.items()}}, indent=1))
print(f"chaos: {'PASS' if ok else 'FAIL'}; report: {out}", file=sys.stderr)
sys.exit(0 if ok else 1)
EOF
