#!/usr/bin/env bash
# A slim Debian bookworm root filesystem with Python 3.11 for one architecture, built with
# mmdebstrap (no container registry needed) and cached as a folder:
#
#   scripts/make_base_rootfs.sh arm64    # → ~/.cache/edgectl/base/bookworm-python-arm64/
#
# It is the base of the agent images (tar | docker import) and of the arm64 userland that
# `edgectl compile --verify-on arm64` runs artifacts in. Foreign architectures need the
# qemu binfmt handler (scripts/images_host.sh). Prints the folder's path.
set -euo pipefail
arch=${1:?usage: make_base_rootfs.sh amd64|arm64}
cache=${EDGECTL_CACHE:-$HOME/.cache/edgectl}/base
out=$cache/bookworm-python-$arch
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
if [ -x "$out/usr/bin/python3" ]; then
    echo "$out"
    exit 0
fi
mkdir -p "$cache"
rm -rf "$out.tmp"
# Docs, man pages and locales are not needed on a device; apt lists are dropped after the build.
mmdebstrap --quiet --format=directory --arch="$arch" --variant=minbase \
    --include=python3,python3-venv,ca-certificates \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
    bookworm "$out.tmp" "$mirror" >&2
date +%s > "$out.tmp/etc/edgectl-base-built"  # build_images.sh re-imports the image when this changes
mv "$out.tmp" "$out"
echo "$out"
