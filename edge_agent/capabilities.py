"""What this device can run: arch, ISA flags, runtimes, memory, disk, accelerators.

The agent announces this on its retained ``devices/{id}/state`` topic; the scheduler matches it
against ``targets/*.toml``. So the ISA flags use the targets' vocabulary (``neon``,
``asimddp``, ``asimdhp``, ``sse4.2``, ``avx512_vnni`` ...), not the kernel's (``asimd``,
``sse4_2``): a target fits a device when ``set(target.isa) <= set(caps["isa"])``. The kernel's
own spelling of the same flags is kept under ``cpu_flags`` for people reading it.

Parsing is pure (:func:`parse_cpuinfo` takes the text of ``/proc/cpuinfo``) so tests feed real
samples from a Raspberry Pi 4/5, a Jetson Orin and x86 hosts. Runtimes are found through their
installed distributions' metadata, never imported: importing onnxruntime costs ~30 MB of RSS
that an idle agent must not pay.

    >>> caps = detect_capabilities(data_dir=Path("/var/lib/edgectl-agent"), labels={"site": "lab"},
    ...                            agent_version="0.1.0", memory_budget_bytes=512 << 20)
    >>> caps["arch"], caps["isa"], caps["runtimes"]
    ('aarch64', ['asimddp', 'asimdhp', 'asimdrdm', 'fphp', 'neon'], {'onnxruntime': '1.20.1'})
"""

from __future__ import annotations

import dataclasses
import os
import platform
import shutil
import struct
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

# platform.machine() spellings → the arch names targets/*.toml use.
_ARCH_ALIASES = {
    "x86_64": "x86_64", "amd64": "x86_64", "x64": "x86_64",
    "aarch64": "aarch64", "arm64": "aarch64", "armv8": "aarch64",
    # armv8l: a 32-bit process on an ARMv8 core. It runs armv7l (armhf) wheels.
    "armv7l": "armv7l", "armv7": "armv7l", "armv7hl": "armv7l", "armv8l": "armv7l",
}

# Kernel flag → target vocabulary, for the flags that decide which kernels a runtime can use.
# Flags absent from this table are not announced: the state message stays small and stable.
_X86_ISA = {
    "ssse3": "ssse3", "sse4_1": "sse4.1", "sse4_2": "sse4.2",
    "avx": "avx", "avx2": "avx2", "fma": "fma", "f16c": "f16c",
    "avx512f": "avx512f", "avx512bw": "avx512bw", "avx512vl": "avx512vl", "avx512dq": "avx512dq",
    "avx512cd": "avx512cd", "avx512_vnni": "avx512_vnni", "avx512_bf16": "avx512_bf16",
    "avx512_fp16": "avx512_fp16",
    # AVX-VNNI (Alder Lake+, Zen 5) is the 256-bit VEX form: VPDPBUSD without AVX-512. It is not
    # avx512_vnni, and a target asking for avx512_vnni also needs avx512f, so it stays separate.
    "avx_vnni": "avx_vnni",
    "amx_tile": "amx_tile", "amx_int8": "amx_int8", "amx_bf16": "amx_bf16",
}
_ARM_ISA = {
    "asimd": "neon",  # arm64 kernels call NEON "asimd"
    "neon": "neon",  # 32-bit (armv7l) kernels and compat cpuinfo call it "neon"
    "vfpv4": "vfpv4",
    "fphp": "fphp", "asimdhp": "asimdhp",  # fp16 arithmetic (scalar / vector)
    "asimddp": "asimddp",  # SDOT/UDOT: the int8 dot product
    "asimdfhm": "asimdfhm", "asimdrdm": "asimdrdm",
    "i8mm": "i8mm", "bf16": "bf16", "sve": "sve", "sve2": "sve2", "svei8mm": "svei8mm", "sme": "sme",
}
# Every ISA name this module can announce; a test checks targets/*.toml uses only these.
KNOWN_ISA = frozenset(_X86_ISA.values()) | frozenset(_ARM_ISA.values())

# (CPU implementer, CPU part) → core name, as lscpu names them: arm64 cpuinfo has no model name
# (or only "ARMv8 Processor rev 1 (v8l)" on Jetson kernels).
_ARM_PARTS = {
    ("0x41", "0xc07"): "Cortex-A7", ("0x41", "0xc09"): "Cortex-A9", ("0x41", "0xc0f"): "Cortex-A15",
    ("0x41", "0xd03"): "Cortex-A53", ("0x41", "0xd04"): "Cortex-A35", ("0x41", "0xd05"): "Cortex-A55",
    ("0x41", "0xd07"): "Cortex-A57", ("0x41", "0xd08"): "Cortex-A72", ("0x41", "0xd09"): "Cortex-A73",
    ("0x41", "0xd0a"): "Cortex-A75", ("0x41", "0xd0b"): "Cortex-A76", ("0x41", "0xd0c"): "Neoverse-N1",
    ("0x41", "0xd0d"): "Cortex-A77", ("0x41", "0xd0e"): "Cortex-A76AE", ("0x41", "0xd40"): "Neoverse-V1",
    ("0x41", "0xd41"): "Cortex-A78", ("0x41", "0xd42"): "Cortex-A78AE", ("0x41", "0xd44"): "Cortex-X1",
    ("0x41", "0xd46"): "Cortex-A510", ("0x41", "0xd47"): "Cortex-A710", ("0x41", "0xd48"): "Cortex-X2",
    ("0x41", "0xd49"): "Neoverse-N2", ("0x41", "0xd4b"): "Cortex-A78C", ("0x41", "0xd4f"): "Neoverse-V2",
    ("0x4e", "0x004"): "NVIDIA Carmel",
}

# Runtime name → the distributions that provide it. onnxruntime ships under several names
# (Jetson's wheel is onnxruntime-gpu); the first one installed wins. "tflite_runtime" is the
# import name edge_agent.verify looks for (edgectl.targets.RUNTIMES spells it "tflite-runtime").
RUNTIME_DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-qnn"),
    "litert": ("ai-edge-litert",),
    "tflite_runtime": ("tflite-runtime",),
}

# Accelerators are announced by the presence of their device node only (nothing is opened):
# a node that is there but unusable costs a failed self-test, an invented one would cost more.
_ACCELERATOR_NODES = {
    "nvidia-gpu": ("nvidia0",),
    "tegra-gpu": ("nvhost-ctrl-gpu", "nvgpu/igpu0"),  # Jetson: L4T <= 35, L4T 36
    "edgetpu": ("apex_0",),  # Coral PCIe/M.2 (the USB stick has no device node)
    "hailo": ("hailo0",),
}


@dataclass(frozen=True)
class CpuInfo:
    """What :func:`parse_cpuinfo` reads from ``/proc/cpuinfo``."""

    model: str | None  # "Cortex-A72", "AMD EPYC 7B13"; big.LITTLE: "Cortex-A55 + Cortex-A76"
    isa: tuple[str, ...]  # target vocabulary, sorted
    flags: tuple[str, ...]  # the same flags in the kernel's spelling, sorted
    processors: int  # "processor" entries in the text (0 if the format has none)
    board: str | None  # the "Model" line Raspberry Pi kernels add, e.g. "Raspberry Pi 5 Model B Rev 1.0"


def normalize_arch(machine: str, pointer_bits: int = 64) -> str:
    """``platform.machine()`` → ``x86_64`` / ``aarch64`` / ``armv7l`` (others pass through, lowercased).

    A 32-bit userland on a 64-bit kernel (Raspberry Pi OS 32-bit boots a 64-bit kernel on a
    Pi 4/5) reports ``aarch64``, but only armv7l wheels and artifacts run there, so the process's
    pointer size decides.
    """
    arch = _ARCH_ALIASES.get(machine.strip().lower(), machine.strip().lower())
    if arch == "aarch64" and pointer_bits == 32:
        return "armv7l"
    return arch


def _sections(text: str) -> list[dict[str, str]]:
    # Keys keep their case: old armv7 kernels print both "Processor: ARMv7 ..." and "processor: 0".
    sections: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                sections.append(current)
                current = {}
            continue
        key, sep, value = line.partition(":")
        if sep:
            current[key.strip()] = value.strip()
    if current:
        sections.append(current)
    return sections


def _core_name(section: dict[str, str]) -> str | None:
    part = _ARM_PARTS.get((section.get("CPU implementer", "").lower(), section.get("CPU part", "").lower()))
    return part or section.get("model name")


def parse_cpuinfo(text: str) -> CpuInfo:
    """Read the model name and ISA flags from the text of ``/proc/cpuinfo`` (x86 or Arm)."""
    sections = _sections(text)
    cores = [s for s in sections if "processor" in s]
    # Old armv7 kernels print Features and CPU part once, in a section of their own.
    with_flags = [s for s in cores if "flags" in s or "Features" in s] or [
        s for s in sections if "flags" in s or "Features" in s
    ]
    flag_sets = [set(s.get("flags", s.get("Features", "")).split()) for s in with_flags]
    # Only what every core has is safe: the OS may run the agent's threads on any core.
    common = set.intersection(*flag_sets) if flag_sets else set()
    table = _X86_ISA if any("flags" in s for s in with_flags) else _ARM_ISA
    raw = sorted(f for f in common if f in table)

    names: list[str] = []
    for s in cores:
        name = _core_name(s)
        if name and name not in names:
            names.append(name)
    if not names:
        names = [name for name in map(_core_name, sections) if name][:1]
    board = next((s["Model"] for s in sections if "Model" in s and "processor" not in s), None)
    return CpuInfo(
        model=" + ".join(names) or None,
        isa=tuple(sorted({table[f] for f in raw})),
        flags=tuple(raw),
        processors=len(cores),
        board=board,
    )


def installed_runtimes() -> dict[str, str]:
    """Runtime name → version of its installed distribution, without importing it."""
    found: dict[str, str] = {}
    for runtime, distributions in RUNTIME_DISTRIBUTIONS.items():
        for dist in distributions:
            try:
                found[runtime] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return found


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _existing_parent(path: Path) -> Path:
    # The data dir may not exist before the first install; its file system is what counts.
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _usable_cpus() -> int:
    # A container or a taskset may give the agent fewer CPUs than the machine has.
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _distro() -> str | None:
    try:
        return platform.freedesktop_os_release().get("PRETTY_NAME")
    except OSError:
        return None


# arm64 AT_HWCAP / AT_HWCAP2 bits (Linux arch/arm64/include/uapi/asm/hwcap.h) → cpuinfo spelling.
# The kernel prints /proc/cpuinfo's Features from these same bits, but under qemu-user the file is
# the host's: the auxiliary vector is the only view of the CPU the process really runs on.
_HWCAP_BITS = {1: "asimd", 9: "fphp", 10: "asimdhp", 12: "asimdrdm", 20: "asimddp", 22: "sve", 23: "asimdfhm"}
_HWCAP2_BITS = {1: "sve2", 9: "svei8mm", 13: "i8mm", 14: "bf16", 23: "sme"}
_AT_HWCAP, _AT_HWCAP2 = 16, 26


def arm64_flags_from_hwcaps(hwcap: int, hwcap2: int) -> tuple[str, ...]:
    """The ISA flags (kernel spelling) that an arm64 process's AT_HWCAP/AT_HWCAP2 words announce."""
    found = {name for bit, name in _HWCAP_BITS.items() if hwcap >> bit & 1}
    found |= {name for bit, name in _HWCAP2_BITS.items() if hwcap2 >> bit & 1}
    return tuple(sorted(found))


def _live_arm64_flags() -> tuple[str, ...] | None:
    """The running process's arm64 flags from getauxval, or None where libc cannot say."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        getauxval = libc.getauxval
    except (OSError, AttributeError):
        return None
    getauxval.restype, getauxval.argtypes = ctypes.c_ulong, [ctypes.c_ulong]
    return arm64_flags_from_hwcaps(getauxval(_AT_HWCAP), getauxval(_AT_HWCAP2))


def detect_capabilities(
    *,
    data_dir: Path,
    labels: dict[str, str],
    agent_version: str,
    memory_budget_bytes: int | None,
    cpuinfo: str | None = None,
    machine: str | None = None,
    dev_root: Path = Path("/dev"),
    device_tree_model: Path = Path("/sys/firmware/devicetree/base/model"),
) -> dict[str, Any]:
    """The capabilities document of this device (JSON-ready).

    ``cpuinfo``, ``machine``, ``dev_root`` and ``device_tree_model`` default to the live system;
    tests pass their own.
    """
    if cpuinfo is None:
        cpuinfo = _read_text(Path("/proc/cpuinfo")) or ""
    raw_machine = machine if machine is not None else platform.machine()
    cpu = parse_cpuinfo(cpuinfo)
    live_arm64 = machine is None and normalize_arch(raw_machine) == "aarch64"
    hw_flags = _live_arm64_flags() if live_arm64 else None
    if hw_flags:  # the auxiliary vector over /proc/cpuinfo, which qemu-user shows from the host
        cpu = dataclasses.replace(cpu, flags=hw_flags, isa=tuple(sorted({_ARM_ISA[f] for f in hw_flags})))
    # Jetsons (and most non-Pi Arm boards) name the board only in the device tree; it ends in NUL.
    board = cpu.board or ((_read_text(device_tree_model) or "").strip("\x00\n ") or None)
    disk = shutil.disk_usage(_existing_parent(data_dir))
    return {
        "arch": normalize_arch(raw_machine, 8 * struct.calcsize("P")),
        "machine": raw_machine,
        "isa": list(cpu.isa),
        "cpu_flags": list(cpu.flags),
        "cpu_model": cpu.model,
        "cpu_count": _usable_cpus(),
        "board": board,
        "runtimes": installed_runtimes(),
        "accelerators": sorted(
            name for name, nodes in _ACCELERATOR_NODES.items() if any((dev_root / n).exists() for n in nodes)
        ),
        "memory_total_bytes": psutil.virtual_memory().total,
        "memory_budget_bytes": memory_budget_bytes,
        "disk_total_bytes": disk.total,
        "disk_free_bytes": disk.free,
        "labels": dict(labels),
        "agent_version": agent_version,
        "python": platform.python_version(),
        "os": {"system": platform.system(), "kernel": platform.release(), "distro": _distro()},
    }
