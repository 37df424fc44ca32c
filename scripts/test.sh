#!/usr/bin/env bash
# Run every test of the workspace: unit tests, and the end-to-end tests that drive the real
# `shadowcat` binary with real clients (rmcp, python `mcp`). This is the README's test command
# and what CI runs (after fmt and clippy).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Python interop peer (official `mcp` SDK from PyPI) in .venv.
SHADOWCAT_PYTHON=$(scripts/python-env.sh)
export SHADOWCAT_PYTHON

# With the optional OpenTelemetry export (feature `otel`) so its test runs too.
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --features shadowcat/otel --no-fail-fast
else
    cargo test --workspace --features shadowcat/otel --no-fail-fast
fi
