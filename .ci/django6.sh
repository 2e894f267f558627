#!/usr/bin/env bash
# The Django 6.x line: on Python 3.12+ with Django 6 (django.tasks built in),
# the tests of what Django touches on SQLite (below) and, when one is reachable,
# the tests of what differs by database on PostgreSQL. The main line
# (`make test`) runs Django 5.2 on the default Python. Without a Python 3.12+
# this says so and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."

export PIP_DISABLE_PIP_VERSION_CHECK=1
VENV=${VENV_DJANGO6:-.venv-django6}
# The newest 6.x (6.1 and later configure mail with MAILERS; the test
# settings pick by version). DJANGO6_SPEC='Django>=6.0,<6.1' runs 6.0.
DJANGO_SPEC=${DJANGO6_SPEC:-Django>=6.0,<7}
PG_URL=${LEEK_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/leek}

new_enough() {
    [ -x "$1" ] && "$1" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null
}

find_python() {
    local candidate
    if [ -n "${PYTHON_DJANGO6:-}" ] && new_enough "$PYTHON_DJANGO6"; then
        echo "$PYTHON_DJANGO6"
        return
    fi
    if command -v pyenv >/dev/null 2>&1; then
        for candidate in $(ls -d "$(pyenv root)"/versions/3.* 2>/dev/null | sort -rV); do
            if new_enough "$candidate/bin/python"; then
                echo "$candidate/bin/python"
                return
            fi
        done
    fi
    for candidate in python3.14 python3.13 python3.12 python3; do
        if command -v "$candidate" >/dev/null 2>&1 && new_enough "$(command -v "$candidate")"; then
            command -v "$candidate"
            return
        fi
    done
}

PY=$(find_python || true)
if [ -z "$PY" ]; then
    echo "Django 6.x line skipped: no Python 3.12+ found"
    exit 0
fi

echo "== Django 6.x line: $("$PY" --version) ($PY)"
if [ ! -x "$VENV/bin/python" ] || ! new_enough "$VENV/bin/python"; then
    rm -rf "$VENV"
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --upgrade pip
"$VENV/bin/pip" install --quiet -e '.[dev]' "$DJANGO_SPEC"
"$VENV/bin/python" -c 'import django; print("== Django", django.get_version())'

# On SQLite, every test outside tests/server (the tasks framework's backend, the
# admin, the commands, the client, the checks) and the server's core: its
# start, store, outcome writes, pools and how their processes start,
# schedules, recovery, cancels, chains and retries. The rest of tests/server
# exercises leek's own sockets and processes, which do not change with Django;
# DJANGO6_TESTS="tests" runs the whole suite (CI keeps within its time without it).
SERVER_CORE="tests/server/test_broker.py tests/server/test_store.py tests/server/test_pools.py
tests/server/test_periodic.py tests/server/test_recovery.py tests/server/test_cancel.py
tests/server/test_chains.py tests/server/test_retries.py tests/server/test_outcome_writes.py
tests/server/test_forkserver.py"
OUTSIDE=$(ls -d tests/*/ tests/test_*.py | grep -v -e '^tests/server/$' -e '__pycache__')
TESTS=${DJANGO6_TESTS:-$OUTSIDE $SERVER_CORE}
echo "== SQLite run (Django 6.x):" $TESTS
# shellcheck disable=SC2086 # a list of paths
"$VENV/bin/pytest" -n "${TEST_JOBS:-4}" -m "not slow" $TESTS
# On PostgreSQL, the tests of what differs by database (the store's statements,
# work sharing, fencing, the tasks framework's backend), to keep CI within its
# time; DJANGO6_PG_TESTS="tests" runs the whole suite there.
PG_TESTS=${DJANGO6_PG_TESTS:-tests/server/test_store.py tests/server/test_outcome_writes.py tests/server/test_plans.py tests/server/test_share.py tests/server/test_fencing.py tests/server/test_database_outage.py tests/backends}
if "$VENV/bin/python" -c "import psycopg,sys; psycopg.connect('$PG_URL'.rsplit('/',1)[0] + '/postgres', connect_timeout=3).close()" 2>/dev/null; then
    echo "== PostgreSQL run (Django 6.x): $PG_URL: $PG_TESTS"
    # shellcheck disable=SC2086 # a list of paths
    DATABASE_URL="$PG_URL" "$VENV/bin/pytest" -n "${TEST_JOBS:-4}" -m "not slow" $PG_TESTS
else
    echo "== PostgreSQL not reachable at $PG_URL: skipped the PostgreSQL run (Django 6.x)"
fi
