#!/usr/bin/env bash
# Installs Debian's `chromium` and `chromium-driver` for the console's browser tests
# (tests/it/console.rs), which drive a headless Chromium over WebDriver.
#
# System-wide (apt-get install): Chromium needs its shared libraries, which only the package
# manager resolves. Idempotent: when both binaries are present this only prints their versions.
# The tests run Chromium headless, without sandbox, GPU, QUIC, sync, component updates or
# background networking, each run with a fresh profile (the machine's network is closed).
set -euo pipefail

log() { printf 'install-chromium: %s\n' "$*" >&2; }

if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    chromium --version 2>/dev/null || true
    chromedriver --version
    exit 0
fi

source "$(dirname "${BASH_SOURCE[0]}")/lib/apt.sh"
apt_install chromium chromium-driver
require_commands chromium chromedriver
log "installed $(chromium --version 2>/dev/null || echo chromium)"
chromedriver --version
