#!/usr/bin/env bash
# Headless Chromium for the report's browser test (Debian's chromium package).
#
#   scripts/browser.sh          install it if missing (as root, apt-get), print its version
#
# Not root and no chromium: says so and exits 0, so that `make test` still runs (the browser
# test then skips with a message; CI sets MODECONN_REQUIRE_BROWSER=1 and it must run there).
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
    echo "browser: $(chromium --version 2>/dev/null | head -n1)"
    exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "browser: chromium is not installed and this is not root; the browser test will skip"
    exit 0
fi
log=/tmp/chromium-apt.log
if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends chromium fonts-dejavu-core; } >"$log" 2>&1; then
    echo "browser: ERROR: apt-get install chromium failed; see $log" >&2
    tail -n 20 "$log" >&2
    exit 1
fi
echo "browser: $(chromium --version 2>/dev/null | head -n1)"
