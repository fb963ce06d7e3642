#!/usr/bin/env bash
# Installs the AsyncAPI project's own parser (`@asyncapi/parser` from the npm registry) into
# <repo>/.tools/asyncapi for the AsyncAPI document tests (tests/it/asyncapi.rs), which run
# scripts/asyncapi-validate.mjs with it.
#
# Only node and npm are needed; nothing is installed globally. The parser version is pinned
# (with its lock file written by npm on first install) so every machine validates alike.
#
# Idempotent: when the pinned version is already installed, this only prints its version.
#
# Environment:
#   ASYNCAPI_PARSER_VERSION   version of @asyncapi/parser (default below)
set -euo pipefail

ASYNCAPI_PARSER_VERSION="${ASYNCAPI_PARSER_VERSION:-3.6.6}"

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="$repo/.tools/asyncapi"
installed="$dir/node_modules/@asyncapi/parser/package.json"

log() { printf 'install-asyncapi-parser: %s\n' "$*" >&2; }

version_of() { node -e 'process.stdout.write(require(process.argv[1]).version)' "$1" 2>/dev/null; }

if [[ -f "$installed" ]] && [[ "$(version_of "$installed")" == "$ASYNCAPI_PARSER_VERSION" ]]; then
    printf '@asyncapi/parser %s\n' "$ASYNCAPI_PARSER_VERSION"
    exit 0
fi

for tool in node npm; do
    if ! command -v "$tool" >/dev/null; then
        log "$tool is not available; install Node.js (>= 18) to validate AsyncAPI documents"
        exit 1
    fi
done

mkdir -p "$dir"
# A private package.json keeps npm from walking up into the repository.
if [[ ! -f "$dir/package.json" ]]; then
    printf '{\n  "name": "magistral-asyncapi-tools",\n  "private": true\n}\n' >"$dir/package.json"
fi
log "installing @asyncapi/parser@$ASYNCAPI_PARSER_VERSION into $dir"
npm install --prefix "$dir" --no-audit --no-fund --loglevel=error --save-exact \
    "@asyncapi/parser@$ASYNCAPI_PARSER_VERSION" >&2

if [[ ! -f "$installed" ]] || [[ "$(version_of "$installed")" != "$ASYNCAPI_PARSER_VERSION" ]]; then
    log "@asyncapi/parser@$ASYNCAPI_PARSER_VERSION did not install into $dir"
    exit 1
fi
log "installed @asyncapi/parser $ASYNCAPI_PARSER_VERSION"
printf '@asyncapi/parser %s\n' "$ASYNCAPI_PARSER_VERSION"
