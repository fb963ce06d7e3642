# Sourced by the install scripts that need Debian packages system-wide (curl and jq, Chromium):
# their shared libraries are only resolved by the package manager. The caller defines log().

# apt_install PACKAGE...: installs the packages (through sudo when not root); an empty or stale
# package index is refreshed once.
apt_install() {
    if ! command -v apt-get >/dev/null; then
        log "apt-get is not available (not Debian?); install $* by other means"
        return 1
    fi
    local sudo=()
    if [[ "$(id -u)" -ne 0 ]]; then
        sudo=(sudo)
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ! "${sudo[@]}" apt-get install -y -q --no-install-recommends "$@" >/dev/null; then
        log "$* not installable from the current package lists; running apt-get update"
        "${sudo[@]}" apt-get update -q >/dev/null
        "${sudo[@]}" apt-get install -y -q --no-install-recommends "$@" >/dev/null
    fi
}

# require_commands COMMAND...: fails naming the first command still missing after the install.
require_commands() {
    local tool
    for tool in "$@"; do
        if ! command -v "$tool" >/dev/null; then
            log "$tool is still missing after apt-get install"
            return 1
        fi
    done
}
