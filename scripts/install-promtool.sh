#!/usr/bin/env bash
# Installs promtool into <repo>/.tools/bin/promtool for the alert rule tests (tests/it/alerts.rs).
#
# Source: Debian's `prometheus` package, fetched with `apt-get download` and unpacked with
# `dpkg-deb -x` into a temp dir: nothing is installed system-wide, no service is started, none of
# the package's web-asset dependencies are pulled in. promtool is a Go binary needing only libc.
# The package version is pinned (Debian 12's, with its security update); when the package index
# no longer has it, the index's candidate is taken, loudly.
#
# Idempotent: when .tools/bin/promtool exists and runs, this only prints its version.
#
# Environment:
#   PROMETHEUS_DEB_VERSION   Debian version of the prometheus package (default below)
set -euo pipefail

PROMETHEUS_DEB_VERSION="${PROMETHEUS_DEB_VERSION:-2.42.0+ds-5+deb12u1}"

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin_dir="$repo/.tools/bin"
promtool="$bin_dir/promtool"

log() { printf 'install-promtool: %s\n' "$*" >&2; }

if [[ -x "$promtool" ]] && version="$("$promtool" --version 2>&1 | head -n 1)"; then
    printf '%s\n' "$version"
    exit 0
fi

for tool in apt-get dpkg-deb; do
    if ! command -v "$tool" >/dev/null; then
        log "$tool is not available (not Debian?); install promtool at $promtool by other means"
        exit 1
    fi
done

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# apt's download sandbox user must be able to write there.
chmod 755 "$tmp"

# `apt-get download` needs the package lists; an empty or stale cache is refreshed once.
download() {
    (cd "$tmp" && apt-get download -q "$1" >"$tmp/apt.log" 2>&1)
}
if ! download "prometheus=$PROMETHEUS_DEB_VERSION"; then
    log "prometheus=$PROMETHEUS_DEB_VERSION not in the package lists; running apt-get update"
    apt-get update -q >/dev/null
    if ! download "prometheus=$PROMETHEUS_DEB_VERSION"; then
        candidate="$(apt-cache policy prometheus | awk '/Candidate:/ { print $2 }')"
        if [[ -z "$candidate" || "$candidate" == "(none)" ]]; then
            cat "$tmp/apt.log" >&2
            log "no prometheus package in the package lists"
            exit 1
        fi
        log "!!! pinned prometheus=$PROMETHEUS_DEB_VERSION is gone; taking the candidate $candidate"
        download "prometheus=$candidate" || { cat "$tmp/apt.log" >&2; exit 1; }
    fi
fi

debs=("$tmp"/prometheus_*.deb)
if [[ ${#debs[@]} -ne 1 || ! -f "${debs[0]}" ]]; then
    log "expected one prometheus .deb in $tmp, found: ${debs[*]}"
    exit 1
fi
dpkg-deb -x "${debs[0]}" "$tmp/root"
if [[ ! -x "$tmp/root/usr/bin/promtool" ]]; then
    log "usr/bin/promtool is not in ${debs[0]##*/}"
    exit 1
fi

mkdir -p "$bin_dir"
# Copied next to the target, then renamed: an interrupted run never leaves a half binary.
cp "$tmp/root/usr/bin/promtool" "$promtool.tmp.$$"
chmod 755 "$promtool.tmp.$$"
mv -f "$promtool.tmp.$$" "$promtool"

if ! version="$("$promtool" --version 2>&1 | head -n 1)"; then
    log "$promtool does not run"
    exit 1
fi
log "installed $promtool from ${debs[0]##*/}"
printf '%s\n' "$version"
