#!/usr/bin/env bash
# systemd-analyze verify on deploy/'s units, when the machine has systemd-analyze
# (it says when not). verify needs each ExecStart binary to exist: the units are
# checked as copies whose /srv/mysite/.venv/bin/python is this machine's python3.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v systemd-analyze > /dev/null 2>&1; then
    echo "units: skipped, systemd-analyze is not installed"
    exit 0
fi
python=$(command -v "${PYTHON:-python3}")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for unit in deploy/*.service; do
    sed "s|/srv/mysite/.venv/bin/python|$python|g" "$unit" > "$work/$(basename "$unit")"
done
# A template is verified through an instance of it.
cp "$work/leek@.service" "$work/leek@8003.service"
units=("$work/leek.service" "$work/leek@8003.service")
if ! output=$(systemd-analyze verify "${units[@]}" 2>&1); then
    echo "$output" >&2
    echo "units: systemd-analyze verify failed" >&2
    exit 1
fi
# verify also reports, without failing, what it could not resolve on this machine
# (a user, a unit named in After=): keep only what concerns the units themselves.
problems=$(echo "$output" | grep -F "$work" | grep -v -e "Failed to resolve" || true)
if [ -n "$problems" ]; then
    echo "$problems" >&2
    echo "units: systemd-analyze verify found problems" >&2
    exit 1
fi
echo "units: deploy/leek.service and deploy/leek@.service verified"
