#!/usr/bin/env bash
# Installs what tests/test_browser.py needs, idempotently: Debian's chromium and the
# playwright-core npm package (a driver only; it never downloads a browser of its own).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/chromium ]; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends chromium fonts-liberation
fi

if ! command -v npm >/dev/null 2>&1; then
    echo "install-browser: npm (Node.js) is needed for playwright-core" >&2
    exit 1
fi

export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
lock=tests/browser/package-lock.json
stamp=tests/browser/node_modules/.installed-lock
if [ ! -f "$stamp" ] || ! cmp -s "$lock" "$stamp"; then
    npm ci --prefix tests/browser --no-audit --no-fund
    cp "$lock" "$stamp"
fi
/usr/bin/chromium --version
