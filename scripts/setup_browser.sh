#!/usr/bin/env bash
# Idempotent set-up for the real-browser test (tests/browser/, `make browser-test`):
# Debian's chromium (+ fonts, so JupyterLab's text renders) with apt where it is missing,
# and Playwright for Python in .venv at the version pinned in constraints.txt. Playwright
# drives Debian's binary through executable_path; `playwright install` (a browser download)
# is never run. Needs scripts/setup.sh's environment first; it does not touch that flow.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VENV:-.venv}"
PY="$VENV/bin/python"
CHROMIUM="${MCM_CHROMIUM:-/usr/lib/chromium/chromium}"
APT_PACKAGES="chromium fonts-liberation fonts-dejavu-core"

[ -x "$PY" ] || bash scripts/setup.sh

if [ ! -x "$CHROMIUM" ] || ! dpkg -s fonts-liberation >/dev/null 2>&1; then
    if [ "$(id -u)" != "0" ]; then
        echo "[setup-browser] Chromium missing at $CHROMIUM: run this as root, or:" >&2
        echo "  sudo apt-get install -y --no-install-recommends $APT_PACKAGES" >&2
        exit 1
    fi
    echo "[setup-browser] installing Debian packages: $APT_PACKAGES"
    start=$SECONDS
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086  # a list of package names
    apt-get install -y -q --no-install-recommends $APT_PACKAGES >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $APT_PACKAGES >/dev/null; }
    echo "[setup-browser] apt: $((SECONDS - start)) s"
fi

pin=$(grep -i '^playwright==' constraints.txt | cut -d= -f3)
have=$("$PY" -c "import importlib.metadata as m; print(m.version('playwright'))" 2>/dev/null || true)
if [ "$have" != "$pin" ]; then
    echo "[setup-browser] installing playwright==$pin into $VENV (have: ${have:-none})"
    start=$SECONDS
    "$PY" -m pip install -q -c constraints.txt -r requirements-browser.txt
    echo "[setup-browser] pip: $((SECONDS - start)) s"
fi

# A real launch: the browser starts headless and Playwright can talk to it.
"$PY" - "$CHROMIUM" <<'PY'
import importlib.metadata
import sys

from playwright.sync_api import sync_playwright

with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=sys.argv[1], headless=True)
    version = browser.version
    browser.close()
print(f"[setup-browser] ok: playwright {importlib.metadata.version('playwright')}, Chromium {version} ({sys.argv[1]})")
PY
