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

if ! command -v apt-get >/dev/null; then
    log "apt-get is not available (not Debian?); install chromium and chromedriver by other means"
    exit 1
fi

sudo=()
if [[ "$(id -u)" -ne 0 ]]; then
    sudo=(sudo)
fi

export DEBIAN_FRONTEND=noninteractive
# An empty or stale package index is refreshed once.
if ! "${sudo[@]}" apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null; then
    log "chromium not installable from the current package lists; running apt-get update"
    "${sudo[@]}" apt-get update -q >/dev/null
    "${sudo[@]}" apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null
fi

for tool in chromium chromedriver; do
    if ! command -v "$tool" >/dev/null; then
        log "$tool is still missing after apt-get install"
        exit 1
    fi
done
log "installed $(chromium --version 2>/dev/null || echo chromium)"
chromedriver --version
