#!/usr/bin/env bash
# Build the agent images for linux/amd64 and linux/arm64 on this host, from nothing but Debian's
# mirror and PyPI (no container registry):
#
#   scripts/build_images.sh [amd64] [arm64]      # default: both; tags edgectl-agent:<arch>
#
# 1. host: docker.io, qemu binfmt, dockerd (scripts/images_host.sh)
# 2. base: a bookworm + Python 3.11 rootfs per arch with mmdebstrap (cached in ~/.cache/edgectl/base),
#    imported as edgectl-base:bookworm-<arch>
# 3. wheels: per platform, on this host, into build/images/wheels-<arch> (scripts/download_wheels.sh)
# 4. docker build -f Dockerfile.<arch> --build-arg BASE=edgectl-base:bookworm-<arch>
set -euo pipefail
cd "$(dirname "$0")/.."
arches=("$@")
[ ${#arches[@]} -gt 0 ] || arches=(amd64 arm64)
export PYTHON=${PYTHON:-.venv/bin/python}

scripts/images_host.sh
pids=()
builds=()
# edgectl's own wheel once (two pip builds in one tree collide), reproducible for the layer cache.
rm -rf build/images/dist
SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || echo 315532800) \
    "$PYTHON" -m pip wheel -q --no-deps -w build/images/dist . >/dev/null
EDGECTL_WHEEL=$(ls build/images/dist/edgectl-*.whl)
export EDGECTL_WHEEL
for arch in "${arches[@]}"; do
    scripts/download_wheels.sh "$arch" "build/images/wheels-$arch" >/dev/null &
    pids+=($!)
done
# The two mmdebstraps in parallel: mostly downloads and (arm64) emulated maintainer scripts.
for arch in "${arches[@]}"; do
    scripts/make_base_rootfs.sh "$arch" >/dev/null &
    pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
for arch in "${arches[@]}"; do
    rootfs=$(scripts/make_base_rootfs.sh "$arch")
    base=edgectl-base:bookworm-$arch
    # Re-import only when the cached rootfs is newer than the image (a rebuilt rootfs).
    stamp=$(cat "$rootfs/etc/edgectl-base-built" 2>/dev/null || stat -c %Y "$rootfs")
    if [ "$(docker image inspect -f '{{index .Config.Labels "edgectl.rootfs-stamp"}}' "$base" 2>/dev/null)" != "$stamp" ]; then
        tar -C "$rootfs" --numeric-owner -cf - . \
            | docker import --platform "linux/$arch" --change "LABEL edgectl.rootfs-stamp=$stamp" - "$base" >/dev/null
    fi
done
for arch in "${arches[@]}"; do
    # The classic builder: docker.io's CLI may come without buildx, and nothing here needs BuildKit.
    # Both at once: amd64 is mostly vfs copying, arm64 mostly emulated CPU.
    log=build/images/build-$arch.log
    DOCKER_BUILDKIT=0 docker build -f "Dockerfile.$arch" --build-arg "BASE=edgectl-base:bookworm-$arch" \
        -t "edgectl-agent:$arch" . >"$log" 2>&1 &
    builds+=("$!:$arch")
done
for b in "${builds[@]}"; do
    if ! wait "${b%%:*}"; then
        echo "build_images: docker build of ${b#*:} failed:" >&2
        tail -30 "build/images/build-${b#*:}.log" >&2
        exit 1
    fi
done
for arch in "${arches[@]}"; do
    echo "edgectl-agent:$arch $(docker image inspect -f '{{.Size}}' "edgectl-agent:$arch") bytes"
done
