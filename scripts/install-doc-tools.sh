#!/usr/bin/env bash
# Installs what the docs' commands use besides magistral and python3: `curl` and `jq` (the
# README's and the example's console blocks, run by the doc tests in tests/it/doctest.rs, and
# the quick start itself).
#
# System-wide (apt-get install, Debian's packages): curl needs libcurl and jq libjq, which only
# the package manager resolves. Idempotent: when both are on PATH this only prints their
# versions.
set -euo pipefail

log() { printf 'install-doc-tools: %s\n' "$*" >&2; }

versions() {
    curl --version | head -n 1
    jq --version
}

if command -v curl >/dev/null && command -v jq >/dev/null; then
    versions
    exit 0
fi

source "$(dirname "${BASH_SOURCE[0]}")/lib/apt.sh"
apt_install curl jq
require_commands curl jq
log "installed curl and jq"
versions
