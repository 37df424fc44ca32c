#!/usr/bin/env bash
# Shadowcat benchmark suite.
#
#   bench/run.sh                 full run (about 15 minutes on 2 cores)
#   QUICK=1 bench/run.sh         every scenario briefly (smoke test, ~3 minutes)
#   SCENARIOS=a,d bench/run.sh   only some scenarios
#
# Every scenario is an A/B comparison run in the same invocation: variants alternate in rotating
# order for ROUNDS rounds, and the report gives medians over rounds and ratios. Results go to
# bench/results/DATE.json (everything, raw runs included) and bench/results/DATE.md (tables).
# Benchmarks report numbers; they never fail on timing. A peer that cannot be installed or run is
# recorded in the results with its error and the run goes on.
#
# Knobs (environment):
#   CARGO_TARGET_DIR   where shadowcat and shadowcat-bench are built (default: ./target)
#   PEERS_DIR          where peer proxies are installed (default: ./target/bench-peers)
#   RESULTS_DIR        default: bench/results          DATE   result file name (default: UTC now)
#   SKIP_BUILD=1       use the binaries already built   SKIP_PEERS=1   do not install/run peers
#   NO_INSTALL=1       run the peers already installed, install none
#   ROUNDS=3           A/B rounds                       DURATION=3 WARMUP=1   seconds per calls run
#   PAYLOAD=64         echo message bytes               CONCURRENCY="1 32"
#   IDLE_HTTP=10000    idle sessions, HTTP upstream     IDLE_STDIO=1000   idle sessions, stdio children
#   IDLE_ROUNDS=2      rounds of the idle scenario      IDLE_PEERS=1      idle stdio peers (not supergateway)
#   SSE_COUNT=10000    notifications per call           SSE_CALLS=3       measured calls per stream
#   SSE_STREAMS="1 4"  concurrent streams               SSE_PROBES=200    count=1 probes (first-event latency)
#   COLD_RUNS=20       cold starts per variant per round   PEER_COLD_RUNS=3
#   PIPE_EXCHANGES=20000 PIPE_BATCHES=15   in-process pipeline batches (scenario g)
#   STORE_OPS=2000     operations of each kind per store backend (scenario e)
#   RESUME_ROUNDS=10   resumptions per run and worker (scenario f)   RESUME_CONC=1   workers
#   RESUME_COUNT=10000 log notifications per call          RESUME_STEPS=500  progress steps per call
#   RESUME_READ=100    notifications read before the connection is dropped
#   RESUME_PAUSE_MS=300  wait before resuming a log call (the progress call waits 1.5 ms per step)
#   LIST_RUNS=20       new sessions (first tools/list each) per run (scenario i)
#   LIST_MEMBERS=10    composite members (one of them slow)   LIST_TOOLS=20   tools per member
#   LIST_DELAY=0.2     seconds the slow member sleeps before answering tools/list
#   SHARE=2            children of `forward http --share` (variant shadowcat-share, scenario j)
#   POOL_SESSIONS=1000 sessions on server-everything through --share (scenario j)
#   SHADOWCAT_PYTHON   python for tests/interop/paged_server.py (default: python3)
#   BENCH_THREADS=1    generator threads (it shares the 2 cores with what it measures)
#   BENCH_QUICKACK=1   generator ACKs at once (see crates/bench: --quickack); 0 = delayed ACKs
#   KEEP_WORK=1        keep the scratch directory (logs of every process)
#   SC_BASE=PATH       a second shadowcat binary (e.g. a release build of an older commit): scenarios
#                      a, b and c add it as variants `shadowcat-base`/`gateway-base`, alternating
#                      with the current binary in the same rounds (a before/after A/B under the same
#                      load); SC_BASE_LABEL names it in the report (e.g. its commit)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
PEERS=${PEERS_DIR:-$ROOT/target/bench-peers}
RESULTS=${RESULTS_DIR:-$ROOT/bench/results}
DATE=${DATE:-$(date -u +%Y-%m-%d-%H%M)}
SCENARIOS=${SCENARIOS:-a,b,c,d,e,f,g,h,i,j}
QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
  ROUNDS=${ROUNDS:-1} DURATION=${DURATION:-1} WARMUP=${WARMUP:-0.3}
  IDLE_HTTP=${IDLE_HTTP:-500} IDLE_STDIO=${IDLE_STDIO:-20} IDLE_ROUNDS=${IDLE_ROUNDS:-1}
  SSE_COUNT=${SSE_COUNT:-2000} SSE_CALLS=${SSE_CALLS:-1} SSE_STREAMS=${SSE_STREAMS:-1} SSE_PROBES=${SSE_PROBES:-20}
  COLD_RUNS=${COLD_RUNS:-3} PEER_COLD_RUNS=${PEER_COLD_RUNS:-1}
  PIPE_EXCHANGES=${PIPE_EXCHANGES:-5000} PIPE_BATCHES=${PIPE_BATCHES:-5}
  STORE_OPS=${STORE_OPS:-300}
  RESUME_ROUNDS=${RESUME_ROUNDS:-2} RESUME_COUNT=${RESUME_COUNT:-2000} RESUME_STEPS=${RESUME_STEPS:-200}
  LIST_RUNS=${LIST_RUNS:-5}
  POOL_SESSIONS=${POOL_SESSIONS:-100}
fi
ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-3} WARMUP=${WARMUP:-1} PAYLOAD=${PAYLOAD:-64}
CONCURRENCY=${CONCURRENCY:-1 32}
IDLE_HTTP=${IDLE_HTTP:-10000} IDLE_STDIO=${IDLE_STDIO:-1000} IDLE_ROUNDS=${IDLE_ROUNDS:-2} IDLE_PEERS=${IDLE_PEERS:-1}
SSE_COUNT=${SSE_COUNT:-10000} SSE_CALLS=${SSE_CALLS:-3} SSE_STREAMS=${SSE_STREAMS:-1 4} SSE_PROBES=${SSE_PROBES:-200}
COLD_RUNS=${COLD_RUNS:-20} PEER_COLD_RUNS=${PEER_COLD_RUNS:-3}
PIPE_EXCHANGES=${PIPE_EXCHANGES:-20000} PIPE_BATCHES=${PIPE_BATCHES:-15}
STORE_OPS=${STORE_OPS:-2000}
RESUME_ROUNDS=${RESUME_ROUNDS:-10} RESUME_CONC=${RESUME_CONC:-1} RESUME_COUNT=${RESUME_COUNT:-10000}
RESUME_STEPS=${RESUME_STEPS:-500} RESUME_READ=${RESUME_READ:-100} RESUME_PAUSE_MS=${RESUME_PAUSE_MS:-300}
SHARE=${SHARE:-2} POOL_SESSIONS=${POOL_SESSIONS:-1000}
LIST_RUNS=${LIST_RUNS:-20} LIST_MEMBERS=${LIST_MEMBERS:-10} LIST_TOOLS=${LIST_TOOLS:-20} LIST_DELAY=${LIST_DELAY:-0.2}
export BENCH_THREADS=${BENCH_THREADS:-1}
# The generator ACKs at once (TCP_QUICKACK) so it takes no part in Nagle/delayed-ACK stalls of
# servers that write responses in pieces without TCP_NODELAY; BENCH_QUICKACK=0 behaves like a
# typical client instead.
export BENCH_QUICKACK=${BENCH_QUICKACK:-1}
export RUST_BACKTRACE=0

WORK=$(mktemp -d "${TMPDIR:-/tmp}/shadowcat-bench.XXXXXX")
RAW=$WORK/raw
mkdir -p "$RAW" "$RESULTS"
FAILURES=$WORK/failures.jsonl
: >"$FAILURES"
PIDS=()
START_TS=$(date +%s)

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
has() { [[ ",$SCENARIOS," == *",$1,"* ]]; }

# --- processes ------------------------------------------------------------------------------

# All descendants of a pid (children first found, then theirs).
descendants() {
  local p kids
  kids=$(ps -o pid= --ppid "$1" 2>/dev/null || true)
  for p in $kids; do
    echo "$p"
    descendants "$p"
  done
}

# stop PID: SIGTERM its process group, wait, then SIGKILL the group and any descendant left
# (shadowcat puts each stdio child in a process group of its own).
stop() {
  local pid=$1 i kids
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
  local rc=$? p
  for p in "${PIDS[@]}"; do
    kill -0 "$p" 2>/dev/null && stop "$p"
  done
  if [[ ${KEEP_WORK:-0} == 1 ]]; then log "scratch kept in $WORK"; else rm -rf "$WORK"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME CMD...: run CMD in its own session/process group; sets LAST_PID.
start() {
  local name=$1
  shift
  setsid "$@" >"$WORK/$name.out" 2>"$WORK/$name.log" </dev/null &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

# wait_listen NAME PID: the address from shadowcat's `listening on http://ADDR` line.
wait_listen() {
  local name=$1 pid=$2 i addr
  for i in $(seq 1 300); do
    addr=$(grep -o '^shadowcat: listening on http://[^ ]*' "$WORK/$name.log" 2>/dev/null | head -1 | sed 's|^shadowcat: listening on http://||') || true
    if [[ -n $addr ]]; then
      echo "http://$addr"
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      log "$name exited: $(tail -5 "$WORK/$name.log")"
      return 1
    fi
    sleep 0.1
  done
  log "$name did not say it was listening"
  return 1
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

json_str() { python3 -c 'import json,sys; print(json.dumps(sys.stdin.read()))'; }

# failure LABEL MESSAGE: record a failure in the results (the run goes on).
failure() {
  printf '{"label": %s, "error": %s}\n' "$(printf %s "$1" | json_str)" "$(printf %s "$2" | json_str)" >>"$FAILURES"
  log "FAILED $1: $(printf %s "$2" | tail -3)"
}

# bench LABEL MODE ARGS...: one generator run; its JSON goes to $RAW. LABEL is
# scenario|group|variant|param|round.
bench() {
  local label=$1 mode=$2
  shift 2
  local file
  file=$RAW/$(printf %s "$label" | tr '|= /:' '_____').json
  log "$label"
  if timeout --kill-after=10 "${BENCH_TIMEOUT:-300}" "$BENCH" "$mode" --label "$label" --json "$file" "$@" \
    >"$WORK/bench.out" 2>"$WORK/bench.err"; then
    sed 's/^/    /' "$WORK/bench.out" >&2
  else
    failure "$label" "$(cat "$WORK/bench.out" "$WORK/bench.err" | tail -c 3000)"
  fi
}

# rotate N WORDS...: the words rotated left by N (alternates the A/B order between rounds).
rotate() {
  local n=$1
  shift
  local a=("$@") k=${#a[@]} i
  for ((i = 0; i < k; i++)); do printf '%s ' "${a[$(((i + n) % k))]}"; done
}

# --- build and peers --------------------------------------------------------------------------

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
  log "building shadowcat and shadowcat-bench (release) in $TARGET_DIR"
  CARGO_TARGET_DIR=$TARGET_DIR cargo build --release -p shadowcat-bench -p shadowcat >&2
fi
SC=$TARGET_DIR/release/shadowcat
BENCH=$TARGET_DIR/release/shadowcat-bench
[[ -x $SC && -x $BENCH ]] || { log "missing $SC or $BENCH"; exit 1; }
SC_BASE=${SC_BASE:-}
[[ -z $SC_BASE || -x $SC_BASE ]] || { log "SC_BASE=$SC_BASE is not an executable"; exit 1; }
SC_BASE_LABEL=${SC_BASE_LABEL:-$SC_BASE}
# The binary of a shadowcat variant: `*-base` runs SC_BASE.
sc_of() { if [[ $1 == *-base ]]; then echo "$SC_BASE"; else echo "$SC"; fi; }

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

PEER_STATUS=$WORK/peers.jsonl
: >"$PEER_STATUS"
peer() { # peer NAME STATUS VERSION DETAIL
  printf '{"name": "%s", "status": "%s", "version": %s, "detail": %s}\n' "$1" "$2" \
    "$(printf %s "$3" | json_str)" "$(printf %s "$4" | json_str)" >>"$PEER_STATUS"
}
RUST_PEER=$PEERS/bin/mcp-proxy
PY_PEER=$PEERS/pyvenv/bin/mcp-proxy
SG=$PEERS/node/node_modules/supergateway/dist/index.js
EVERYTHING=$PEERS/node/node_modules/@modelcontextprotocol/server-everything/dist/index.js
HAVE_RUST=0 HAVE_PY=0 HAVE_SG=0 HAVE_EVERYTHING=0
if [[ ${SKIP_PEERS:-0} != 1 ]] && { has b || has c || has h || has j; }; then
  mkdir -p "$PEERS"
  if [[ ! -x $RUST_PEER && ${NO_INSTALL:-0} != 1 ]]; then
    log "installing Rust mcp-proxy 0.6 into $PEERS"
    CARGO_TARGET_DIR=$TARGET_DIR/bench-peers-build cargo install mcp-proxy --version '^0.6' --locked \
      --root "$PEERS" >"$WORK/install-rust.log" 2>&1 || true
  fi
  if [[ -x $RUST_PEER ]]; then
    HAVE_RUST=1
    peer rust-mcp-proxy ok "$(grep -o 'mcp-proxy [0-9.]*' "$PEERS/.crates.toml" | head -1)" ""
  else
    peer rust-mcp-proxy install-failed "" "$(tail -c 2000 "$WORK/install-rust.log" 2>/dev/null)"
  fi
  if [[ ! -x $PY_PEER && ${NO_INSTALL:-0} != 1 ]]; then
    log "installing python mcp-proxy into $PEERS/pyvenv"
    { python3 -m venv "$PEERS/pyvenv" && "$PEERS/pyvenv/bin/pip" install -q mcp-proxy; } >"$WORK/install-py.log" 2>&1 || true
  fi
  if [[ -x $PY_PEER ]]; then
    HAVE_PY=1
    peer python-mcp-proxy ok "$("$PEERS/pyvenv/bin/pip" list 2>/dev/null | grep -E '^(mcp|mcp-proxy) ' | tr -s ' ' | paste -sd, -)" ""
  else
    peer python-mcp-proxy install-failed "" "$(tail -c 2000 "$WORK/install-py.log" 2>/dev/null)"
  fi
  if [[ (! -f $SG || ! -f $EVERYTHING) && ${NO_INSTALL:-0} != 1 ]]; then
    log "installing supergateway and server-everything into $PEERS/node"
    mkdir -p "$PEERS/node"
    npm install --no-audit --no-fund --prefix "$PEERS/node" supergateway @modelcontextprotocol/server-everything \
      >"$WORK/install-node.log" 2>&1 || true
  fi
  pkgver() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["version"])' "$1" 2>/dev/null; }
  if [[ -f $SG ]]; then
    HAVE_SG=1
    peer supergateway ok "$(pkgver "$PEERS/node/node_modules/supergateway/package.json")" "node $(node --version)"
  else
    peer supergateway install-failed "" "$(tail -c 2000 "$WORK/install-node.log" 2>/dev/null)"
  fi
  if [[ -f $EVERYTHING ]]; then
    HAVE_EVERYTHING=1
    peer server-everything ok "$(pkgver "$PEERS/node/node_modules/@modelcontextprotocol/server-everything/package.json")" ""
  else
    peer server-everything install-failed "" "$(tail -c 2000 "$WORK/install-node.log" 2>/dev/null)"
  fi
fi

# --- peers as HTTP fronts of a stdio server ---------------------------------------------------

# start_front KIND NAME SERVER_CMD...: start a proxy of KIND (shadowcat, rust-mcp-proxy,
# python-mcp-proxy, supergateway) fronting the stdio server; sets FRONT_URL, FRONT_PID, FRONT_TOOL
# (tool name of `echo` through it). Returns 1 (after recording why) if it does not come up.
start_front() {
  local kind=$1 name=$2
  shift 2
  local port
  FRONT_TOOL=echo
  case $kind in
    shadowcat | shadowcat-share | shadowcat-base)
      local share=()
      [[ $kind == shadowcat-share ]] && share=(--share "$SHARE")
      start "$name" "$(sc_of "$kind")" --log-level warn forward http --listen 127.0.0.1:0 \
        --max-sessions 100000 --idle-timeout 3600 --shutdown-deadline 2 "${share[@]}" -- "$@"
      FRONT_PID=$LAST_PID
      FRONT_URL=$(wait_listen "$name" "$FRONT_PID")/mcp || { failure "$name" "did not start: $(tail -c 1500 "$WORK/$name.log")"; return 1; }
      return 0
      ;;
    rust-mcp-proxy)
      port=$(free_port)
      {
        printf '[proxy]\nname = "bench"\n[proxy.listen]\nhost = "127.0.0.1"\nport = %s\n' "$port"
        printf '[observability]\nlog_level = "warn"\n'
        printf '[[backends]]\nname = "s"\ntransport = "stdio"\ncommand = "%s"\nargs = [' "$1"
        local first=1 arg
        for arg in "${@:2}"; do
          [[ $first == 1 ]] || printf ', '
          printf '"%s"' "$arg"
          first=0
        done
        printf ']\n'
      } >"$WORK/$name.toml"
      start "$name" "$RUST_PEER" --config "$WORK/$name.toml"
      FRONT_URL=http://127.0.0.1:$port/
      FRONT_TOOL=s/echo
      ;;
    python-mcp-proxy)
      port=$(free_port)
      start "$name" "$PY_PEER" --host 127.0.0.1 --port "$port" --log-level WARNING -- "$@"
      FRONT_URL=http://127.0.0.1:$port/mcp
      ;;
    supergateway)
      port=$(free_port)
      # supergateway has no listen-address option (it binds every interface); we only ever
      # address it on 127.0.0.1.
      start "$name" node "$SG" --stdio "$*" --outputTransport streamableHttp --stateful \
        --port "$port" --logLevel none
      FRONT_URL=http://127.0.0.1:$port/mcp
      ;;
  esac
  FRONT_PID=$LAST_PID
  if ! "$BENCH" wait --url "$FRONT_URL" --timeout 60 >"$WORK/wait.out" 2>&1; then
    failure "$name" "did not come up: $(cat "$WORK/wait.out" | tail -c 1000); log: $(tail -c 1500 "$WORK/$name.log")"
    stop "$FRONT_PID"
    return 1
  fi
}

have_kind() {
  case $1 in
    shadowcat | shadowcat-share) return 0 ;;
    shadowcat-base) [[ -n $SC_BASE ]] ;;
    rust-mcp-proxy) [[ $HAVE_RUST == 1 ]] ;;
    python-mcp-proxy) [[ $HAVE_PY == 1 ]] ;;
    supergateway) [[ $HAVE_SG == 1 ]] ;;
  esac
}

start_demo_http() { # sets DEMO_PID, DEMO_URL
  start "$1" "$SC" --log-level warn demo-server --http 127.0.0.1:0
  DEMO_PID=$LAST_PID
  DEMO_URL=$(wait_listen "$1" "$DEMO_PID")/mcp
}

# --- scenarios ----------------------------------------------------------------------------------

calls_args() { echo --duration "$DURATION" --warmup "$WARMUP" --payload "$PAYLOAD"; }

scenario_a() {
  log "== a. HTTP→HTTP tools/call echo: direct vs through shadowcat forward http --target and gateway"
  # Two upstreams: `http` = the demo server's own Streamable HTTP endpoint (rmcp; answers with an
  # SSE body written in pieces, no TCP_NODELAY), and `json-upstream` = a shadowcat HTTP→stdio front
  # of the demo server (answers with one JSON body): it tells the proxy's own cost apart from
  # Nagle/delayed-ACK stalls on the proxy→upstream connection. Each is reached directly, through
  # `forward http --target URL` (`shadowcat`) and through `gateway --upstream URL` (`gateway`:
  # its admission, metrics and authorization stage on every request; no auth configured).
  start_demo_http a-demo || { failure "a" "demo server did not start"; return; }
  start "a-json" "$SC" --log-level warn forward http --listen 127.0.0.1:0 --max-sessions 100000 \
    --shutdown-deadline 2 -- "$SC" demo-server
  local json_pid=$LAST_PID json_url
  json_url=$(wait_listen a-json "$json_pid")/mcp || { failure "a" "json upstream did not start"; return; }
  declare -A purl=() ppid=()
  local g up_url kind name kinds=(shadowcat gateway)
  [[ -n $SC_BASE ]] && kinds+=(shadowcat-base gateway-base)
  for g in http json-upstream; do
    [[ $g == http ]] && up_url=$DEMO_URL || up_url=$json_url
    for kind in "${kinds[@]}"; do
      name="a-$kind-$g"
      if [[ $kind == shadowcat* ]]; then
        start "$name" "$(sc_of "$kind")" --log-level warn forward http --listen 127.0.0.1:0 --target "$up_url" \
          --max-sessions 100000 --shutdown-deadline 2
      else
        start "$name" "$(sc_of "$kind")" --log-level warn gateway --listen 127.0.0.1:0 --upstream "$up_url"
      fi
      ppid[$g-$kind]=$LAST_PID
      purl[$g-$kind]=$(wait_listen "$name" "$LAST_PID")/mcp || { failure "a" "$name did not start"; return; }
    done
  done
  local r c v url up
  for r in $(seq 1 "$ROUNDS"); do
    for g in http json-upstream; do
      for c in $CONCURRENCY; do
        for v in $(rotate "$r" direct "${kinds[@]}"); do
          [[ $g == http ]] && up=$DEMO_PID || up=$json_pid
          local watch=(--pid "upstream=$up")
          if [[ $v == direct ]]; then
            [[ $g == http ]] && url=$DEMO_URL || url=$json_url
          else
            url=${purl[$g-$v]}
            watch+=(--pid "proxy=${ppid[$g-$v]}")
          fi
          # shellcheck disable=SC2046
          bench "a|$g|$v|c=$c|r$r" calls --url "$url" -c "$c" $(calls_args) "${watch[@]}"
        done
      done
    done
  done
  for v in "${ppid[@]}"; do stop "$v"; done
  stop "$json_pid"
  stop "$DEMO_PID"
}

scenario_b() {
  log "== b. HTTP→stdio: shadowcat vs peers, each fronting the same stdio server"
  # shadowcat: a child per session (the default); shadowcat-share: --share $SHARE children for
  # all sessions.
  local servers=(demo) kinds=(shadowcat shadowcat-share rust-mcp-proxy python-mcp-proxy supergateway)
  [[ -n $SC_BASE ]] && kinds+=(shadowcat-base)
  [[ $HAVE_EVERYTHING == 1 ]] && servers+=(everything)
  local srv
  for srv in "${servers[@]}"; do
    local cmd prefix
    if [[ $srv == demo ]]; then
      cmd=("$SC" demo-server)
      prefix=""
    else
      cmd=(node "$EVERYTHING" stdio)
      prefix="Echo: "
    fi
    declare -A url=() pid=() tool=()
    local kind
    for kind in "${kinds[@]}"; do
      if ! have_kind "$kind"; then
        failure "b|$srv|$kind" "not installed (see peers)"
        continue
      fi
      if start_front "$kind" "b-$srv-$kind" "${cmd[@]}"; then
        url[$kind]=$FRONT_URL pid[$kind]=$FRONT_PID tool[$kind]=$FRONT_TOOL
      fi
    done
    local variants=(direct "${!url[@]}") r c v
    for r in $(seq 1 "$ROUNDS"); do
      for c in $CONCURRENCY; do
        for v in $(rotate "$r" "${variants[@]}"); do
          if [[ $v == direct ]]; then
            # shellcheck disable=SC2046
            bench "b|$srv|direct-stdio|c=$c|r$r" calls -c "$c" $(calls_args) \
              --expect-prefix "$prefix" --stdio -- "${cmd[@]}"
          else
            # shellcheck disable=SC2046
            bench "b|$srv|$v|c=$c|r$r" calls --url "${url[$v]}" --tool "${tool[$v]}" \
              --expect-prefix "$prefix" -c "$c" $(calls_args) --pid "proxy=${pid[$v]}"
          fi
        done
      done
    done
    for v in "${!pid[@]}"; do stop "${pid[$v]}"; done
    unset url pid tool
  done
}

scenario_c() {
  log "== c. idle sessions: memory per session"
  local r v http_kinds=(direct shadowcat)
  [[ -n $SC_BASE ]] && http_kinds+=(shadowcat-base)
  for r in $(seq 1 "$IDLE_ROUNDS"); do
    for v in $(rotate "$r" "${http_kinds[@]}"); do
      start_demo_http "c-demo-$v-$r" || { failure "c" "demo server did not start"; continue; }
      if [[ $v == direct ]]; then
        bench "c|http|direct|n=$IDLE_HTTP|r$r" idle-sessions --url "$DEMO_URL" --sessions "$IDLE_HTTP" \
          --pid "upstream=$DEMO_PID"
      else
        start "c-proxy-$v-$r" "$(sc_of "$v")" --log-level warn forward http --listen 127.0.0.1:0 --target "$DEMO_URL" \
          --max-sessions $((IDLE_HTTP * 2)) --idle-timeout 3600 --shutdown-deadline 2
        local ppid=$LAST_PID purl
        if purl=$(wait_listen "c-proxy-$v-$r" "$ppid"); then
          bench "c|http|$v|n=$IDLE_HTTP|r$r" idle-sessions --url "$purl/mcp" --sessions "$IDLE_HTTP" \
            --pid "proxy=$ppid" --pid "upstream=$DEMO_PID"
        fi
        stop "$ppid"
      fi
      stop "$DEMO_PID"
    done
  done
  local kinds=(shadowcat)
  [[ -n $SC_BASE ]] && kinds+=(shadowcat-base)
  [[ $IDLE_PEERS == 1 ]] && kinds+=(rust-mcp-proxy python-mcp-proxy)
  for r in $(seq 1 "$IDLE_ROUNDS"); do
    for v in $(rotate "$r" "${kinds[@]}"); do
      have_kind "$v" || continue
      if start_front "$v" "c-stdio-$v-$r" "$SC" demo-server; then
        BENCH_TIMEOUT=600 bench "c|stdio|$v|n=$IDLE_STDIO|r$r" idle-sessions --url "$FRONT_URL" \
          --tool "$FRONT_TOOL" --sessions "$IDLE_STDIO" --concurrency 16 --pid "proxy=$FRONT_PID"
        stop "$FRONT_PID"
      fi
    done
  done
}

scenario_d() {
  log "== d. SSE pass-through: notifications/message events, proxy vs direct (and per session store)"
  start_demo_http d-demo || { failure "d" "demo server did not start"; return; }
  start d-proxy-http "$SC" --log-level warn forward http --listen 127.0.0.1:0 --target "$DEMO_URL" \
    --max-sessions 100000 --shutdown-deadline 2
  local hp=$LAST_PID hu
  hu=$(wait_listen d-proxy-http "$hp")/mcp || { failure "d" "proxy did not start"; return; }
  # The stdio proxy once per session store: every SSE event is logged before it is sent.
  declare -A sp=() su=()
  start_redis d-redis
  local redis_pid=$REDIS_PID sock=$REDIS_SOCK st spec
  for st in memory sqlite redis; do
    case $st in
      memory) spec=memory ;;
      sqlite) spec=sqlite:$WORK/d.db ;;
      redis) [[ -n $sock && -S $sock ]] || continue; spec=redis+unix://$sock ;;
    esac
    start "d-proxy-stdio-$st" "$SC" --log-level warn forward http --listen 127.0.0.1:0 --max-sessions 100000 \
      --max-events 100000 --store "$spec" --shutdown-deadline 2 -- "$SC" demo-server
    sp[$st]=$LAST_PID
    su[$st]=$(wait_listen "d-proxy-stdio-$st" "$LAST_PID")/mcp || { failure "d" "stdio proxy ($st) did not start"; unset "sp[$st]"; }
  done
  local r s v sse_args=(--count "$SSE_COUNT" --rounds "$SSE_CALLS" --probes "$SSE_PROBES")
  local variants=(direct-http shadowcat-http direct-stdio)
  for st in "${!su[@]}"; do variants+=("stdio-$st"); done
  for r in $(seq 1 "$ROUNDS"); do
    for s in $SSE_STREAMS; do
      for v in $(rotate "$r" "${variants[@]}"); do
        case $v in
          direct-http) bench "d|http|direct|streams=$s|r$r" sse --url "$DEMO_URL" --streams "$s" "${sse_args[@]}" \
            --pid "upstream=$DEMO_PID" ;;
          shadowcat-http) bench "d|http|shadowcat|streams=$s|r$r" sse --url "$hu" --streams "$s" "${sse_args[@]}" \
            --pid "proxy=$hp" --pid "upstream=$DEMO_PID" ;;
          direct-stdio) bench "d|stdio|direct|streams=$s|r$r" sse --streams "$s" "${sse_args[@]}" \
            --stdio -- "$SC" demo-server ;;
          stdio-*)
            st=${v#stdio-}
            # The memory store is the plain `shadowcat` variant (the target row reads it).
            local name=shadowcat
            [[ $st == memory ]] || name=shadowcat-$st
            bench "d|stdio|$name|streams=$s|r$r" sse --url "${su[$st]}" --streams "$s" "${sse_args[@]}" \
              --pid "proxy=${sp[$st]}" ;;
        esac
      done
    done
  done
  for v in "${sp[@]}"; do stop "$v"; done
  [[ -n $redis_pid ]] && stop "$redis_pid"
  stop "$hp"
  stop "$DEMO_PID"
}

# start_redis NAME: a private redis-server on a unix socket in $WORK; sets REDIS_PID and
# REDIS_SOCK (empty, after recording why, when redis-server is not installed).
start_redis() {
  REDIS_PID="" REDIS_SOCK=$WORK/$1.sock
  if ! command -v redis-server >/dev/null; then
    failure "${1%%-*}|store|redis" "redis-server is not installed"
    REDIS_SOCK=""
    return
  fi
  start "$1" redis-server --port 0 --unixsocket "$REDIS_SOCK" --save "" --appendonly no --dir "$WORK"
  REDIS_PID=$LAST_PID
  for _ in $(seq 1 100); do [[ -S $REDIS_SOCK ]] && break; sleep 0.1; done
}

scenario_e() {
  log "== e. session store operations per backend: memory, sqlite, redis"
  local r v
  start_redis e-redis
  local redis_pid=$REDIS_PID sock=$REDIS_SOCK
  for r in $(seq 1 "$ROUNDS"); do
    for v in $(rotate "$r" memory sqlite redis); do
      local spec
      case $v in
        memory) spec=memory ;;
        sqlite) rm -f "$WORK/e.db"*; spec=sqlite:$WORK/e.db ;;
        redis) [[ -n $sock && -S $sock ]] || continue; spec=redis+unix://$sock ;;
      esac
      bench "e|store|$v|ops=$STORE_OPS|r$r" store --store "$spec" --ops "$STORE_OPS" --payload 256
    done
  done
  [[ -n $redis_pid ]] && stop "$redis_pid"
}
scenario_f() {
  log "== f. resumption: GET + Last-Event-ID after a dropped SSE stream, per session store"
  # One proxy per store, each with a stdio demo child per session; every event is logged for
  # resumption, so the log keeps a whole call (--max-events). Groups: `log` = the demo server's
  # log tool (notifications/message, unrelated to the request on stdio); `progress` = the slow
  # tool with a progress token (notifications/progress of the request). The progress call is
  # paced by the server (~1 ms a step); its pause lets it finish, so the resumed stream is all
  # replayed from the log.
  start_redis f-redis
  local redis_pid=$REDIS_PID sock=$REDIS_SOCK
  declare -A url=() pid=()
  local v spec keep=$((RESUME_COUNT > RESUME_STEPS ? RESUME_COUNT : RESUME_STEPS))
  for v in memory sqlite redis; do
    case $v in
      memory) spec=memory ;;
      sqlite) rm -f "$WORK/f.db"*; spec=sqlite:$WORK/f.db ;;
      redis) [[ -n $sock && -S $sock ]] || continue; spec=redis+unix://$sock ;;
    esac
    start "f-$v" "$SC" --log-level warn forward http --listen 127.0.0.1:0 --store "$spec" \
      --max-events $((keep + 1000)) --max-sessions 100000 --shutdown-deadline 2 -- "$SC" demo-server
    pid[$v]=$LAST_PID
    url[$v]=$(wait_listen "f-$v" "${pid[$v]}")/mcp || { failure "f|$v" "proxy did not start: $(tail -c 1500 "$WORK/f-$v.log")"; unset 'url[$v]'; }
  done
  local r g args=(--read "$RESUME_READ" --rounds "$RESUME_ROUNDS" -c "$RESUME_CONC")
  for r in $(seq 1 "$ROUNDS"); do
    for g in log progress; do
      for v in $(rotate "$r" "${!url[@]}"); do
        if [[ $g == log ]]; then
          bench "f|log|$v|count=$RESUME_COUNT,pause=${RESUME_PAUSE_MS}ms|r$r" resume --url "${url[$v]}" \
            --kind log --count "$RESUME_COUNT" --pause-ms "$RESUME_PAUSE_MS" "${args[@]}" --pid "proxy=${pid[$v]}"
        else
          local pause=$((RESUME_STEPS * 3 / 2))
          bench "f|progress|$v|steps=$RESUME_STEPS,pause=${pause}ms|r$r" resume --url "${url[$v]}" \
            --kind slow --count "$RESUME_STEPS" --pause-ms "$pause" "${args[@]}" --pid "proxy=${pid[$v]}"
        fi
      done
    done
  done
  for v in "${!pid[@]}"; do stop "${pid[$v]}"; done
  [[ -n $redis_pid ]] && stop "$redis_pid"
  unset url pid
}
# bench_rules FILE: 100 interceptor rules that never match the benchmark's traffic (other tools,
# method globs and regexes, and echo calls/replies whose conditions fail, which makes the
# interceptor parse each message), then 3 matching `continue` rules (request, reply,
# notifications) that every message of the benchmark reaches last.
bench_rules() {
  local f=$1 i
  : >"$f"
  for i in $(seq 1 40); do printf '[[rule]]\nname = "other-tool-%s"\ntool = "tool_%s"\naction = "block"\n' "$i" "$i" >>"$f"; done
  for i in $(seq 1 20); do printf '[[rule]]\nname = "glob-%s"\nmethod = "custom/%s/*"\naction = "delay"\ndelay_ms = 1000\n' "$i" "$i" >>"$f"; done
  for i in $(seq 1 20); do printf '[[rule]]\nname = "regex-%s"\nmethod = "/^vendor\\\\.(x|y)%s$/"\naction = "block"\n' "$i" "$i" >>"$f"; done
  for i in $(seq 1 10); do printf '[[rule]]\nname = "echo-cond-%s"\ntool = "echo"\nwhen = [{ pointer = "/params/arguments/message", equals = "never-%s" }]\naction = "block"\n' "$i" "$i" >>"$f"; done
  for i in $(seq 1 10); do printf '[[rule]]\nname = "reply-cond-%s"\nkind = "reply"\ntool = "echo"\nwhen = [{ pointer = "/result/content/0/text", contains = "never-%s" }]\naction = "mock"\nresult = {}\n' "$i" "$i" >>"$f"; done
  printf '[[rule]]\nname = "echo-ok"\ntool = "echo"\naction = "continue"\n' >>"$f"
  printf '[[rule]]\nname = "replies-ok"\nkind = "reply"\nmethod = "tools/call"\naction = "continue"\n' >>"$f"
  printf '[[rule]]\nname = "notifications-ok"\nmethod = "notifications/*"\naction = "continue"\n' >>"$f"
}

scenario_g() {
  log "== g. overhead of recording and of 100 interceptor rules: plain vs --record vs --rules"
  local rules=$WORK/g-rules.toml tapes=$WORK/g-tapes
  bench_rules "$rules"
  mkdir -p "$tapes"
  # 1. In process, per frame, no I/O: the empty pipeline against no pipeline call at all (the
  #    relay path with neither --record nor --rules), and the cost of each hook.
  local r v
  for r in $(seq 1 "$ROUNDS"); do
    for v in $(rotate "$r" relay no-hooks no-hooks-entered rules record rules+record audit pinning); do
      bench "g|pipeline|$v|payload=$PAYLOAD|r$r" pipeline --variant "$v" --rules "$rules" \
        --dir "$tapes" --payload "$PAYLOAD" --exchanges "$PIPE_EXCHANGES" --batches "$PIPE_BATCHES"
    done
  done
  # 2. End to end: the same `calls` workload through forward http (stdio demo child per session;
  #    answers are single JSON bodies, so the proxy's own work dominates), three proxies side by
  #    side. The recorder waits for the disk (`block`) so that every frame is written.
  declare -A url=() pid=()
  local args=(--log-level warn forward http --listen 127.0.0.1:0 --max-sessions 100000 --shutdown-deadline 2)
  for v in plain record rules audit; do
    local extra=()
    case $v in
      record) extra=(--record "$tapes/g-e2e.jsonl" --record-on-full block) ;;
      rules) extra=(--rules "$rules") ;;
      audit) extra=(--audit "$tapes/g-audit.jsonl") ;;
    esac
    start "g-$v" "$SC" "${args[@]}" "${extra[@]}" -- "$SC" demo-server
    pid[$v]=$LAST_PID
    url[$v]=$(wait_listen "g-$v" "${pid[$v]}")/mcp || { failure "g|$v" "proxy did not start: $(tail -c 1500 "$WORK/g-$v.log")"; unset 'url[$v]'; }
  done
  local c
  for r in $(seq 1 "$ROUNDS"); do
    for c in $CONCURRENCY; do
      for v in $(rotate "$r" "${!url[@]}"); do
        # shellcheck disable=SC2046
        bench "g|e2e|$v|c=$c|r$r" calls --url "${url[$v]}" -c "$c" $(calls_args) --pid "proxy=${pid[$v]}"
      done
    done
  done
  for v in "${!pid[@]}"; do stop "${pid[$v]}"; done
  # The tape must be complete: closed, nothing dropped.
  if [[ -n ${url[record]:-} ]]; then
    local end
    end=$(tail -n 1 "$tapes/g-e2e.jsonl" 2>/dev/null || true)
    case $end in
      *'"type":"end"'*'"dropped":0'*) log "g: tape closed: $end" ;;
      *) failure "g|record" "the recorded tape is incomplete; last line: $end" ;;
    esac
  fi
  # The audit log has a line per request (each call plus each session's initialize).
  if [[ -n ${url[audit]:-} ]]; then
    local n
    n=$(wc -l <"$tapes/g-audit.jsonl" 2>/dev/null || echo 0)
    if [[ $n -gt 0 ]]; then log "g: audit log: $n lines"; else failure "g|audit" "the audit log is empty"; fi
  fi
  unset url pid
}

scenario_h() {
  log "== h. cold start: spawn → first initialize answered"
  start_demo_http h-demo || { failure "h" "demo server did not start"; return; }
  local r v variants=(shadowcat-http shadowcat-stdio demo-server)
  [[ $HAVE_RUST == 1 ]] && variants+=(rust-mcp-proxy)
  [[ $HAVE_PY == 1 ]] && variants+=(python-mcp-proxy)
  [[ $HAVE_SG == 1 ]] && variants+=(supergateway)
  local port
  for r in $(seq 1 "$ROUNDS"); do
    for v in $(rotate "$r" "${variants[@]}"); do
      case $v in
        shadowcat-http) bench "h|http|shadowcat|target|r$r" cold-start --runs "$COLD_RUNS" -- \
          "$SC" --log-level warn forward http --listen 127.0.0.1:0 --target "$DEMO_URL" ;;
        shadowcat-stdio) bench "h|stdio|shadowcat|child|r$r" cold-start --runs "$COLD_RUNS" -- \
          "$SC" --log-level warn forward http --listen 127.0.0.1:0 -- "$SC" demo-server ;;
        demo-server) bench "h|http|demo-server|direct|r$r" cold-start --runs "$COLD_RUNS" -- \
          "$SC" --log-level warn demo-server --http 127.0.0.1:0 ;;
        rust-mcp-proxy)
          port=$(free_port)
          printf '[proxy]\nname = "bench"\n[proxy.listen]\nhost = "127.0.0.1"\nport = %s\n[observability]\nlog_level = "warn"\n[[backends]]\nname = "s"\ntransport = "stdio"\ncommand = "%s"\nargs = ["demo-server"]\n' \
            "$port" "$SC" >"$WORK/h-rust.toml"
          bench "h|stdio|rust-mcp-proxy|child|r$r" cold-start --runs "$PEER_COLD_RUNS" \
            --url "http://127.0.0.1:$port/" --tool s/echo -- "$RUST_PEER" --config "$WORK/h-rust.toml" ;;
        python-mcp-proxy)
          port=$(free_port)
          bench "h|stdio|python-mcp-proxy|child|r$r" cold-start --runs "$PEER_COLD_RUNS" \
            --url "http://127.0.0.1:$port/mcp" -- "$PY_PEER" --host 127.0.0.1 --port "$port" \
            --log-level WARNING -- "$SC" demo-server ;;
        supergateway)
          port=$(free_port)
          bench "h|stdio|supergateway|child|r$r" cold-start --runs "$PEER_COLD_RUNS" \
            --url "http://127.0.0.1:$port/mcp" -- node "$SG" --stdio "$SC demo-server" \
            --outputTransport streamableHttp --stateful --port "$port" --logLevel none ;;
      esac
    done
  done
  stop "$DEMO_PID"
}

scenario_i() {
  log "== i. composite routes: merged tools/list with one slow member; tools/call composite vs plain"
  # i1. The first tools/list of a session over LIST_MEMBERS stdio members (paged_server.py, one
  #     page each), one of which sleeps LIST_DELAY before answering: the members are asked in
  #     parallel, so the merged list should take about as long as the slow member through the
  #     proxy by itself (`slowest-alone`: a plain forward http of that one server).
  local py paged=$ROOT/tests/interop/paged_server.py
  # The interpreter itself, not a shim (pyenv's shims are shell scripts): members spawn per session.
  py=$("${SHADOWCAT_PYTHON:-python3}" -c 'import sys; print(sys.executable)') || { failure "i" "no python (SHADOWCAT_PYTHON)"; return; }
  local common=(--log-level warn forward http --listen 127.0.0.1:0 --max-sessions 100000 --shutdown-deadline 2)
  local servers=() k slow="$py $paged --tools $LIST_TOOLS --list-delay $LIST_DELAY"
  for ((k = 1; k < LIST_MEMBERS; k++)); do servers+=(--server "m$k=$py $paged --tools $LIST_TOOLS"); done
  servers+=(--server "slow=$slow")
  declare -A url=() pid=() expect=()
  start i-composite "$SC" "${common[@]}" "${servers[@]}"
  pid[composite]=$LAST_PID
  # paged_server.py lists `grow` and `die` besides its LIST_TOOLS tools.
  expect[composite]=$((LIST_MEMBERS * (LIST_TOOLS + 2)))
  # shellcheck disable=SC2086 # $slow is the command and its arguments
  start i-slowest-alone "$SC" "${common[@]}" -- $slow
  pid[slowest-alone]=$LAST_PID
  expect[slowest-alone]=$((LIST_TOOLS + 2))
  local v
  for v in composite slowest-alone; do
    url[$v]=$(wait_listen "i-$v" "${pid[$v]}")/mcp || { failure "i|list|$v" "proxy did not start: $(tail -c 1500 "$WORK/i-$v.log")"; unset 'url[$v]'; }
  done
  local r param="delay=$(awk -v d="$LIST_DELAY" 'BEGIN { printf "%dms", d * 1000 }')"
  for r in $(seq 1 "$ROUNDS"); do
    for v in $(rotate "$r" "${!url[@]}"); do
      bench "i|list|$v|$param|r$r" list-latency --url "${url[$v]}" --runs "$LIST_RUNS" \
        --expect-tools "${expect[$v]}" --pid "proxy=${pid[$v]}"
    done
  done
  for v in "${!pid[@]}"; do stop "${pid[$v]}"; done
  unset url pid expect

  # i2. tools/call throughput through a composite route vs a plain one, same JSON-answering
  #     upstream (a shadowcat HTTP→stdio front of the demo server, as in scenario a): `plain` =
  #     forward http --target URL, `composite-1` = --server a=URL (the tool is a__echo),
  #     `composite-2` = --server a=URL --server b=URL.
  start i-json "$SC" "${common[@]}" -- "$SC" demo-server
  local json_pid=$LAST_PID json_url
  json_url=$(wait_listen i-json "$json_pid")/mcp || { failure "i" "json upstream did not start"; return; }
  declare -A url=() pid=() tool=()
  for v in plain composite-1 composite-2; do
    local up=()
    case $v in
      plain) up=(--target "$json_url") tool[$v]=echo ;;
      composite-1) up=(--server "a=$json_url") tool[$v]=a__echo ;;
      composite-2) up=(--server "a=$json_url" --server "b=$json_url") tool[$v]=a__echo ;;
    esac
    start "i-$v" "$SC" "${common[@]}" "${up[@]}"
    pid[$v]=$LAST_PID
    url[$v]=$(wait_listen "i-$v" "${pid[$v]}")/mcp || { failure "i|calls|$v" "proxy did not start: $(tail -c 1500 "$WORK/i-$v.log")"; unset 'url[$v]'; }
  done
  local c
  for r in $(seq 1 "$ROUNDS"); do
    for c in $CONCURRENCY; do
      for v in $(rotate "$r" "${!url[@]}"); do
        # shellcheck disable=SC2046
        bench "i|calls|$v|c=$c|r$r" calls --url "${url[$v]}" --tool "${tool[$v]}" -c "$c" $(calls_args) \
          --pid "proxy=${pid[$v]}" --pid "upstream=$json_pid"
      done
    done
  done
  for v in "${!pid[@]}"; do stop "${pid[$v]}"; done
  stop "$json_pid"
  unset url pid tool
}

scenario_j() {
  log "== j. shared stdio children: POOL_SESSIONS sessions on server-everything through forward http --share SHARE"
  if [[ $HAVE_EVERYTHING != 1 ]]; then
    failure "j" "server-everything is not installed (see peers)"
    return
  fi
  local cmd=(node "$EVERYTHING" stdio) r
  for r in $(seq 1 "$IDLE_ROUNDS"); do
    start_front shadowcat-share "j-share-$r" "${cmd[@]}" || continue
    # Memory: every session open at once (the children are the proxy's descendants).
    BENCH_TIMEOUT=600 bench "j|everything|shadowcat-share|n=$POOL_SESSIONS|r$r" idle-sessions \
      --url "$FRONT_URL" --sessions "$POOL_SESSIONS" --concurrency 32 --verify 100 \
      --expect-prefix "Echo: " --pid "proxy=$FRONT_PID"
    # Throughput over all of them: 32 requests in flight spread over POOL_SESSIONS sessions.
    # shellcheck disable=SC2046
    bench "j|everything|shadowcat-share|c=32,sessions=$POOL_SESSIONS|r$r" calls --url "$FRONT_URL" \
      -c 32 --sessions "$POOL_SESSIONS" $(calls_args) --expect-prefix "Echo: " --pid "proxy=$FRONT_PID"
    stop "$FRONT_PID"
  done
}

# --- run ------------------------------------------------------------------------------------------

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
declare -A TOOK=()
for s in a b c d e f g h i j; do
  if has "$s"; then
    t0=$(date +%s)
    "scenario_$s" || failure "$s" "scenario aborted (exit $?)"
    TOOK[$s]=$(($(date +%s) - t0))
  fi
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# Machine and run description for the report.
{
  echo "date=$DATE"
  echo "quick=$QUICK"
  echo "nproc=$(nproc)"
  echo "cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  echo "mem_total_kb=$(awk '/MemTotal/ {print $2}' /proc/meminfo)"
  echo "kernel=$(uname -r)"
  echo "rustc=$(rustc --version 2>/dev/null || echo unknown)"
  echo "commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo '+dirty')"
  [[ -n $SC_BASE ]] && echo "base=$SC_BASE_LABEL"
  echo "load_before=$LOAD_BEFORE"
  echo "load_after=$LOAD_AFTER"
  echo "elapsed_s=$(($(date +%s) - START_TS))"
  echo "settings=BENCH_QUICKACK=$BENCH_QUICKACK ROUNDS=$ROUNDS DURATION=$DURATION WARMUP=$WARMUP PAYLOAD=$PAYLOAD CONCURRENCY=$CONCURRENCY IDLE_HTTP=$IDLE_HTTP IDLE_STDIO=$IDLE_STDIO IDLE_ROUNDS=$IDLE_ROUNDS SSE_COUNT=$SSE_COUNT SSE_CALLS=$SSE_CALLS SSE_STREAMS=$SSE_STREAMS COLD_RUNS=$COLD_RUNS PIPE_EXCHANGES=$PIPE_EXCHANGES PIPE_BATCHES=$PIPE_BATCHES STORE_OPS=$STORE_OPS RESUME_ROUNDS=$RESUME_ROUNDS RESUME_CONC=$RESUME_CONC RESUME_COUNT=$RESUME_COUNT RESUME_STEPS=$RESUME_STEPS RESUME_READ=$RESUME_READ RESUME_PAUSE_MS=$RESUME_PAUSE_MS LIST_RUNS=$LIST_RUNS LIST_MEMBERS=$LIST_MEMBERS LIST_TOOLS=$LIST_TOOLS LIST_DELAY=$LIST_DELAY SHARE=$SHARE POOL_SESSIONS=$POOL_SESSIONS BENCH_THREADS=$BENCH_THREADS"
  for s in "${!TOOK[@]}"; do echo "took_$s=${TOOK[$s]}"; done
} >"$WORK/meta.txt"

python3 "$ROOT/bench/report.py" --raw "$RAW" --meta "$WORK/meta.txt" --peers "$PEER_STATUS" \
  --failures "$FAILURES" --out "$RESULTS/$DATE"
log "results: $RESULTS/$DATE.md and $RESULTS/$DATE.json ($(($(date +%s) - START_TS)) s)"
