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

if ! command -v apt-get >/dev/null; then
    log "apt-get is not available (not Debian?); install curl and jq by other means"
    exit 1
fi

sudo=()
if [[ "$(id -u)" -ne 0 ]]; then
    sudo=(sudo)
fi

export DEBIAN_FRONTEND=noninteractive
# An empty or stale package index is refreshed once.
if ! "${sudo[@]}" apt-get install -y -q --no-install-recommends curl jq >/dev/null; then
    log "curl or jq not installable from the current package lists; running apt-get update"
    "${sudo[@]}" apt-get update -q >/dev/null
    "${sudo[@]}" apt-get install -y -q --no-install-recommends curl jq >/dev/null
fi

for tool in curl jq; do
    if ! command -v "$tool" >/dev/null; then
        log "$tool is still missing after apt-get install"
        exit 1
    fi
done
log "installed curl and jq"
versions
