#!/usr/bin/env bash
# Every wheel the agent image needs, for one platform, downloaded on this host so the image
# build never resolves packages (none under emulation, and it works air-gapped):
#
#   scripts/download_wheels.sh arm64 build/images/wheels-arm64
#
# DEST/edgectl/ gets edgectl's own wheel (built from this checkout), DEST/deps/ the binary wheels of
# edgectl[agent,fleet] + ai-edge-litert for CPython 3.11 (Debian bookworm's and python:3.11-slim's): two
# layers, so a code change rebuilds only the small one.
# Downloads are cached in pip's cache; PYTHON picks the interpreter that runs pip; EDGECTL_WHEEL
# names an edgectl wheel already built (build_images.sh builds it once for both arches).
set -euo pipefail
cd "$(dirname "$0")/.."
arch=${1:?usage: download_wheels.sh amd64|arm64 DEST}
dest=${2:?usage: download_wheels.sh amd64|arm64 DEST}
PY=${PYTHON:-.venv/bin/python}
case "$arch" in
    amd64) m=x86_64 ;;
    arm64) m=aarch64 ;;
    *) echo "download_wheels: unknown arch $arch (amd64 or arm64)" >&2; exit 2 ;;
esac
# What the image runs: the agent extra, plus LiteRT for TFLite artifacts; the fleet extra (SQLAlchemy)
# so the same image also runs the controller (`--entrypoint edgectl … fleet serve`).
extra_reqs=(ai-edge-litert)
rm -rf "$dest"
mkdir -p "$dest/edgectl" "$dest/deps"
if [ -n "${EDGECTL_WHEEL:-}" ]; then
    cp "$EDGECTL_WHEEL" "$dest/edgectl/"
else
    "$PY" -m pip wheel -q --no-deps -w "$dest/edgectl" . >&2
fi
own=$(ls "$dest"/edgectl/edgectl-*.whl)
platforms=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux_2_5 manylinux1 linux; do
    platforms+=(--platform "${tag}_$m")
done
"$PY" -m pip download -q --only-binary=:all: "${platforms[@]}" \
    --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none \
    -d "$dest/deps" "edgectl[agent,fleet] @ file://$(realpath "$own")" "${extra_reqs[@]}" >&2
rm "$dest/deps/$(basename "$own")"
ls "$dest"/*
