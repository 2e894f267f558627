#!/usr/bin/env bash
# The package as a user installs it. Builds the sdist and the wheel from the
# repository's files (those git tracks, and new ones it does not ignore), checks
# them with twine and checks that every file of leek/ is inside both. Then, in a
# fresh virtualenv outside the source tree with only the wheel installed: a
# `django-admin startproject` site with "leek" in INSTALLED_APPS, through
# migrate, `manage.py leek start` (on a free port, in the background), pushes and
# their results, the `leek` command with --settings and --pythonpath, `leek top`
# without its extra, and the admin's dashboard page. Everything it makes is
# under one temporary directory, removed on the way out with the broker it
# started.
set -euo pipefail
cd "$(dirname "$0")/.."

export PIP_DISABLE_PIP_VERSION_CHECK=1
PYTHON=${PYTHON:-python3}
BIN=.venv/bin

WORK=$(mktemp -d "${TMPDIR:-/tmp}/leek-package.XXXXXX")
BROKER_PID=""
cleanup() {
    if [ -n "$BROKER_PID" ] && kill -0 "$BROKER_PID" 2>/dev/null; then
        kill "$BROKER_PID"
        wait "$BROKER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

say() { echo "== package: $*"; }
fail() {
    echo "== package: FAILED: $*" >&2
    exit 1
}

# build and twine come with the dev extra.
if ! make install PYTHON="$PYTHON" >"$WORK/install.log" 2>&1; then
    tail -n 40 "$WORK/install.log" >&2
    fail "make install"
fi

say "building the sdist and the wheel from a copy of the repository's files"
mkdir "$WORK/src"
git ls-files -z --cached --others --exclude-standard |
    tar --null --files-from=- --ignore-failed-read -cf - 2>/dev/null | tar -xf - -C "$WORK/src"
if ! "$BIN/python" -m build --outdir "$WORK/dist" "$WORK/src" >"$WORK/build.log" 2>&1; then
    tail -n 40 "$WORK/build.log" >&2
    fail "python -m build"
fi
SDIST=$(echo "$WORK"/dist/*.tar.gz)
WHEEL=$(echo "$WORK"/dist/*.whl)
"$BIN/twine" --no-color check --strict "$SDIST" "$WHEEL"

"$BIN/python" - "$WORK/src" "$SDIST" "$WHEEL" <<'PY'
"""Every file of leek/ in the source (templates, py.typed, migrations) is in both."""
import sys
import tarfile
import zipfile
from pathlib import Path

src, sdist, wheel = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
want = {
    p.relative_to(src).as_posix()
    for p in (src / "leek").rglob("*")
    if p.is_file() and "__pycache__" not in p.parts
}
in_wheel = set(zipfile.ZipFile(wheel).namelist())
with tarfile.open(sdist) as tar:
    in_sdist = {name.partition("/")[2] for name in tar.getnames()}
for label, names in (("wheel", in_wheel), ("sdist", in_sdist)):
    missing = sorted(want - names)
    if missing:
        sys.exit(f"the {label} lacks {len(missing)} file(s) of leek/: {', '.join(missing)}")
kinds = {
    "templates": sum(n.endswith(".html") for n in want),
    "migrations": sum("/migrations/" in n for n in want),
    "py.typed": int("leek/py.typed" in want),
}
print(
    f"== package: the sdist and the wheel hold all {len(want)} files of leek/ ("
    + ", ".join(f"{k}: {v}" for k, v in kinds.items())
    + ")"
)
PY

say "installing the wheel into a fresh virtualenv in $WORK"
"$PYTHON" -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install --quiet "$WHEEL" 2>&1 | grep -v "^WARNING: Location" >&2 || true
PY="$WORK/venv/bin/python"
LEEK="$WORK/venv/bin/leek"
# Nothing of the source tree or the caller's project may leak in.
unset PYTHONPATH DJANGO_SETTINGS_MODULE
for name in $(env | sed -n 's/^\(LEEK_[A-Z_]*\)=.*/\1/p'); do unset "$name"; done

cd "$WORK"
"$PY" -c 'import leek, sys; print("== package: leek", leek.__version__, "from", leek.__file__)
sys.exit(not leek.__file__.startswith(sys.argv[1]))' "$WORK/venv/" || fail "leek is not imported from the new virtualenv"

say "a startproject site with \"leek\" in INSTALLED_APPS"
mkdir site
"$WORK/venv/bin/django-admin" startproject mysite site
cd site
PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >>mysite/settings.py <<SETTINGS

INSTALLED_APPS += ["leek"]
LEEK = {"PORT": $PORT}
SETTINGS
cat >mysite/tasks.py <<'TASKS'
import leek


@leek.task
def welcome(n: int) -> str:
    return f"welcome, {n}"
TASKS
"$PY" manage.py check
"$PY" manage.py migrate --verbosity 0

say "manage.py leek start, on 127.0.0.1:$PORT"
"$PY" manage.py leek start >"$WORK/broker.log" 2>&1 &
BROKER_PID=$!
for _ in $(seq 1 100); do
    if "$PY" manage.py leek ping >/dev/null 2>&1; then
        break
    fi
    kill -0 "$BROKER_PID" 2>/dev/null || break
    sleep 0.2
done
if ! "$PY" manage.py leek ping; then
    cat "$WORK/broker.log" >&2
    fail "the broker did not answer ping"
fi

say "pushes and their results, from manage.py shell"
"$PY" manage.py shell --verbosity 0 -c '
import operator

import leek
from mysite.tasks import welcome

assert welcome.delay(7).result(timeout=30) == "welcome, 7"
assert leek.push_task_to_queue(operator.mul, 6, 7).result(timeout=30) == 42
print("== package: welcome.delay(7) and push_task_to_queue(operator.mul, 6, 7) ran on the broker")
'

say "the leek command: with no settings, --settings, --pythonpath"
status=0
out=$("$LEEK" ping 2>&1) || status=$?
[ "$status" = 2 ] || fail "bare leek ping in a site without a settings module exited $status, not 2"
[ "$(printf '%s\n' "$out" | wc -l)" = 1 ] || fail "bare leek ping said more than one line: $out"
case "$out" in
*DJANGO_SETTINGS_MODULE*--settings* | *--settings*DJANGO_SETTINGS_MODULE*) ;;
*) fail "bare leek ping does not name DJANGO_SETTINGS_MODULE and --settings: $out" ;;
esac
echo "== package: bare leek ping exits 2 with: $out"
"$LEEK" --settings mysite.settings ping
(cd "$WORK" && "$LEEK" --pythonpath site --settings mysite.settings ping)

say "leek top without the [top] extra: one line on how to add rich; --json needs none"
status=0
out=$("$PY" manage.py leek top --once 2>&1) || status=$?
[ "$status" = 2 ] || fail "leek top without rich exited $status, not 2"
[ "$out" = "error: leek top needs rich: pip install 'leek[top]'" ] ||
    fail "leek top without rich said: $out"
"$PY" manage.py leek --json top >/dev/null || fail "leek --json top failed without rich"
echo "== package: leek top without rich exits 2 with: $out"

say "the admin's dashboard, rendered for a superuser"
PORT=$PORT "$PY" manage.py shell --verbosity 0 -c '
import os

from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

user = get_user_model().objects.create_superuser("admin", "admin@example.com", "admin")
client = Client(SERVER_NAME="localhost")
client.force_login(user)
page = client.get(reverse("admin:leek_task_dashboard"))
html = page.content.decode()
assert page.status_code == 200, page.status_code
assert "<h2>Brokers</h2>" in html and "Latest failures" in html, html[:2000]
assert ":" + os.environ["PORT"] in html, "the running broker is not on the dashboard"
print("== package: the dashboard, from the wheel'"'"'s templates, shows the running broker")
'

say "manage.py leek stop"
"$PY" manage.py leek stop
for _ in $(seq 1 150); do
    kill -0 "$BROKER_PID" 2>/dev/null || break
    sleep 0.2
done
kill -0 "$BROKER_PID" 2>/dev/null && fail "the broker did not stop within 30 s"
wait "$BROKER_PID" || fail "the broker exited with status $?"
BROKER_PID=""

say "all checks passed: $(basename "$SDIST"), $(basename "$WHEEL")"
