#!/usr/bin/env bash
# Prepare this host for the container images and the emulated arm64 checks: system packages
# (docker.io, qemu-user-static, binfmt-support, mmdebstrap), the qemu-aarch64 binfmt handler, and
# a running dockerd (vfs storage: works inside containers and VMs without overlayfs). Idempotent;
# needs root (or sudo). Used by scripts/build_images.sh and .ci/run.
#
#   scripts/images_host.sh            # packages + binfmt + dockerd
#   scripts/images_host.sh --no-docker  # packages + binfmt only (enough for --verify-on arm64)
set -euo pipefail

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
want_docker=1
[ "${1:-}" = "--no-docker" ] && want_docker=0

need=()
command -v mmdebstrap >/dev/null 2>&1 || need+=(mmdebstrap)
# mmdebstrap verifies Debian's Release files with it (Ubuntu hosts do not have it by default).
[ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || need+=(debian-archive-keyring)
[ -x /usr/bin/qemu-aarch64-static ] || need+=(qemu-user-static binfmt-support)
[ "$want_docker" -eq 0 ] || [ -x /usr/sbin/dockerd ] || need+=(docker.io)
if [ ${#need[@]} -gt 0 ]; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

# qemu-aarch64 for foreign binaries (docker build/run of arm64 images, chroot into the rootfs).
# F (fix binary) makes the handler work inside containers and chroots without copying qemu in.
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    $SUDO mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    conf=/usr/lib/binfmt.d/qemu-aarch64.conf
    [ -r "$conf" ] || { echo "images_host: $conf is missing: apt-get install qemu-user-static" >&2; exit 1; }
    # The packaged interpreter path may not exist on every host: fall back to the static binary.
    line=$(cat "$conf")
    interp=$(echo "$line" | cut -d: -f7)
    [ -x "$interp" ] || line=$(echo "$line" | sed "s#:$interp:#:/usr/bin/qemu-aarch64-static:#")
    echo "$line" | $SUDO tee /proc/sys/fs/binfmt_misc/register >/dev/null
fi

if [ "$want_docker" -eq 1 ] && ! docker info >/dev/null 2>&1; then
    log=${EDGECTL_CACHE:-$HOME/.cache/edgectl}/dockerd.log
    mkdir -p "$(dirname "$log")"
    $SUDO sh -c "nohup dockerd --storage-driver=vfs >'$log' 2>&1 &"
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
    if ! docker info >/dev/null 2>&1; then
        echo "images_host: dockerd did not start (log: $log):" >&2
        tail -20 "$log" >&2
        exit 1
    fi
fi
echo "images_host: ready (qemu-aarch64 binfmt$([ "$want_docker" -eq 1 ] && echo ', dockerd'))"
