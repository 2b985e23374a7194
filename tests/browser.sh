#!/usr/bin/env bash
# Installs the headless Chromium the console test drives (tests/console.rs): Debian's
# `chromium` and `chromium-driver`. The test starts chromedriver itself on 127.0.0.1.
# Idempotent: does nothing when chromedriver is there.
set -euo pipefail

if command -v chromedriver >/dev/null 2>&1 && { [ -x /usr/lib/chromium/chromium ] || [ -x /usr/bin/chromium ]; }; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "browser.sh: chromium and chromium-driver are not installed; run this script as root (it installs Debian's packages) or install them yourself" >&2
    exit 1
fi
echo "browser.sh: installing headless Chromium (Debian packages chromium, chromium-driver)"
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends chromium chromium-driver
chromedriver --version
