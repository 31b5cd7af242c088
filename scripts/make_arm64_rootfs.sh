#!/usr/bin/env bash
# An arm64 userland for `edgectl compile --verify-on arm64`: Debian bookworm (mmdebstrap) with
# Python 3.11, onnxruntime and LiteRT, run under qemu-aarch64 user mode. The wheels are installed
# from this host (pip --platform --target), so nothing runs emulated while building it.
#
#   scripts/make_arm64_rootfs.sh [DEST]    # default ~/.cache/edgectl/arm64-rootfs (what --verify-on finds)
#
# Needs root for mmdebstrap and the binfmt handler (scripts/images_host.sh --no-docker is run first).
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${EDGECTL_CACHE:-$HOME/.cache/edgectl}
dest=${1:-${EDGECTL_ARM64_ROOTFS:-$cache/arm64-rootfs}}
PY=${PYTHON:-.venv/bin/python}
if [ -f "$dest/.edgectl-verify-ready" ]; then
    echo "$dest"
    exit 0
fi
scripts/images_host.sh --no-docker >&2
base=$(scripts/make_base_rootfs.sh arm64)
rm -rf "$dest.tmp"
mkdir -p "$(dirname "$dest")"
cp -a "$base" "$dest.tmp"
platforms=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014; do platforms+=(--platform "${tag}_aarch64"); done
# Pin the runtimes to the host's versions when the host has them: the emulated numbers then
# differ from the host's only by architecture.
reqs=()
for dist in onnxruntime ai-edge-litert numpy; do
    v=$("$PY" -c "from importlib.metadata import version; print(version('$dist'))" 2>/dev/null || true)
    reqs+=("$dist${v:+==$v}")
done
"$PY" -m pip install -q --only-binary=:all: "${platforms[@]}" --python-version 3.11 --implementation cp \
    --abi cp311 --abi abi3 --abi none --target "$dest.tmp/usr/local/lib/python3.11/dist-packages" "${reqs[@]}" >&2
# qemu user mode reads /proc and /sys through the rootfs first, then the host's: without these,
# onnxruntime's cpuinfo parses the host's x86 CPU list and crashes. A Cortex-A72 (Raspberry Pi 4);
# the ISA the kernels see comes from qemu's HWCAP, not from this file.
mkdir -p "$dest.tmp/sys/devices/system/cpu" "$dest.tmp/proc"
echo 0 > "$dest.tmp/sys/devices/system/cpu/possible"
echo 0 > "$dest.tmp/sys/devices/system/cpu/present"
printf 'processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n' \
    > "$dest.tmp/proc/cpuinfo"
# Smoke test under emulation: both runtimes import.
qemu-aarch64-static -L "$dest.tmp" "$dest.tmp/usr/bin/python3.11" -c \
    "import onnxruntime, ai_edge_litert.interpreter, platform; print('arm64 userland:', platform.machine(), 'onnxruntime', onnxruntime.__version__)" >&2
touch "$dest.tmp/.edgectl-verify-ready"
rm -rf "$dest"
mv "$dest.tmp" "$dest"
echo "$dest"
