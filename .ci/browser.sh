#!/usr/bin/env bash
# The browser the admin's browser test drives: Debian's chromium package, at
# /usr/bin/chromium. Installed with apt-get, as root, without questions, and
# only when it is missing; Playwright's own browser download is never used.
# Without root or apt-get it says why and exits 0: the test then skips itself.
set -euo pipefail

CHROMIUM=${CHROMIUM_PATH:-/usr/bin/chromium}
if [ -x "$CHROMIUM" ]; then
    echo "chromium: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "chromium: not installed and cannot install it here (needs root and apt-get);" \
         "the browser test will be skipped" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium >/dev/null
echo "chromium: installed $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
