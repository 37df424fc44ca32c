#!/usr/bin/env bash
# Create or update the Python virtualenv used by the interop tests
# (tests/interop/), then print the path of its python on stdout.
#
#   PY=$(scripts/python-env.sh) && "$PY" tests/interop/run_all.py
#
# Idempotent and fast when already done: if the venv's python imports `mcp`
# and every `name==version` pin of tests/interop/requirements.txt is installed,
# it installs nothing. Environment:
#   SHADOWCAT_VENV  venv location (default: <repo>/.venv, which is gitignored)
#   PYTHON          interpreter used to create the venv (default: python3)
# Progress goes to stderr; stdout carries only the python path.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${SHADOWCAT_VENV:-$repo/.venv}
requirements=$repo/tests/interop/requirements.txt
venv_python=$venv/bin/python

# Exit 0 when every `name==version` pin of the requirements is installed.
pins_satisfied() {
    "$venv_python" - "$requirements" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import PackageNotFoundError, version

import mcp  # noqa: F401  - the package must import, not merely be recorded

for line in open(sys.argv[1], encoding="utf-8"):
    line = line.split("#", 1)[0].strip()
    if "==" not in line:
        continue
    name, want = (part.strip() for part in line.split("==", 1))
    name = name.split("[", 1)[0]
    try:
        have = version(name)
    except PackageNotFoundError:
        sys.exit(1)
    if have != want:
        sys.exit(1)
EOF
}

if [[ -x $venv_python ]] && pins_satisfied; then
    echo "$venv_python"
    exit 0
fi

# A venv whose interpreter no longer runs (e.g. its base python moved) is rebuilt.
if [[ -f $venv/pyvenv.cfg ]] && ! "$venv_python" -c 'import sys' >/dev/null 2>&1; then
    echo "python-env: $venv is broken; recreating it" >&2
    rm -rf "$venv"
fi

if [[ ! -x $venv_python ]]; then
    base=${PYTHON:-python3}
    echo "python-env: creating $venv with $($base --version 2>&1)" >&2
    if ! "$base" -m venv "$venv" >&2; then
        echo "python-env: '$base -m venv' failed (on Debian: apt-get install python3-venv)" >&2
        exit 1
    fi
fi

echo "python-env: installing $(grep -v '^\s*#' "$requirements" | xargs) into $venv" >&2
"$venv_python" -m pip install --disable-pip-version-check --quiet -r "$requirements" >&2

if ! pins_satisfied; then
    echo "python-env: $venv still does not satisfy $requirements" >&2
    exit 1
fi
echo "$venv_python"
