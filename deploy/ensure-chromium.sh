#!/usr/bin/env bash
# Make sure headless Chromium is here for the status page's browser test (tests/test_status_page.py).
# Installs Debian's chromium + chromium-driver with apt-get when missing and possible (root, or
# passwordless sudo); otherwise says why. Never fails here: without Chromium the browser tests
# skip with that reason, except under CI (CI=true), where they fail rather than pass unrun.
set -uo pipefail

found() { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; }

found && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "note: chromium is not installed and apt-get is not available here;" \
    "the status page's browser test will be skipped (install Chromium to run it)." >&2
  exit 0
fi
if [[ $(id -u) == 0 ]]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO=(sudo -n)
else
  echo "note: chromium is not installed and installing it needs root (or passwordless sudo);" \
    "the status page's browser test will be skipped. Install it with:" \
    "apt-get install chromium chromium-driver" >&2
  exit 0
fi
echo "chromium is not installed; installing Debian's chromium and chromium-driver packages..." >&2
if ! { "${SUDO[@]}" apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq chromium chromium-driver; } \
    >/dev/null 2>&1; then
  echo "note: installing chromium failed; the status page's browser test will be skipped." >&2
  exit 0
fi
found && echo "chromium installed: $(chromium --version 2>/dev/null)" >&2
exit 0
