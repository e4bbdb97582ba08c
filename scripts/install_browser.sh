#!/usr/bin/env bash
# Installs Debian's headless Chromium and its driver for the browser tests, when they are missing.
# Playwright drives /usr/bin/chromium; its own browser download is not used.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "note: no apt-get here; install Chromium yourself to run the browser tests (they are skipped without it)." >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "note: not root and no sudo; browser tests will be skipped. Install: apt-get install chromium chromium-driver" >&2
    exit 0
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core >/dev/null
echo "installed $(/usr/bin/chromium --version)" >&2
