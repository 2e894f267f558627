#!/usr/bin/env bash
# `make bench`: leek and its peers on the same workloads, one after another.
# Creates .venv-bench (never the project's .venv), installs the pinned peers and
# leek into it, then runs bench/run.py; arguments are passed on (e.g. --quick).
# See docs/benchmarks.md for what is measured and the BENCH_* settings.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${BENCH_PYTHON:-python3.11}"
VENV=.venv-bench
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "bench: $PYTHON not found; set BENCH_PYTHON to a Python 3.11 interpreter" >&2
    exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.installed"
if [ ! -f "$stamp" ] || [ bench/requirements.txt -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "bench: installing the peers and leek into $VENV (log: $VENV/install.log)"
    if ! "$VENV/bin/python" -m pip install --quiet -r bench/requirements.txt -e . \
            >"$VENV/install.log" 2>&1; then
        tail -n 30 "$VENV/install.log" >&2
        echo "bench: installing into $VENV failed" >&2
        exit 1
    fi
    touch "$stamp"
fi
exec "$VENV/bin/python" -m bench.run "$@"
