"""Capabilities: cpuinfo parsing on real samples, and the names matching targets/*.toml."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from edge_agent.capabilities import (
    KNOWN_ISA,
    RUNTIME_DISTRIBUTIONS,
    arm64_flags_from_hwcaps,
    detect_capabilities,
    normalize_arch,
    parse_cpuinfo,
)
from edgectl.targets import RUNTIMES, all_targets

ROOT = Path(__file__).resolve().parents[2]


def _arm64(features: str, part: str, variant: str, revision: str, cores: int, model_name: str | None = None) -> str:
    core = []
    for i in range(cores):
        lines = [f"processor\t: {i}"]
        if model_name:
            lines.append(f"model name\t: {model_name}")
        lines += [
            "BogoMIPS\t: 108.00",
            f"Features\t: {features}",
            "CPU implementer\t: 0x41",
            "CPU architecture: 8",
            f"CPU variant\t: {variant}",
            f"CPU part\t: {part}",
            f"CPU revision\t: {revision}",
        ]
        core.append("\n".join(lines))
    return "\n\n".join(core) + "\n\n"


PI4 = _arm64("fp asimd evtstrm crc32 cpuid", "0xd08", "0x0", "3", 4) + (
    "Hardware\t: BCM2835\nRevision\t: c03114\nSerial\t\t: 100000002e2c6bd6\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n"
)
PI5 = _arm64(
    "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp",
    "0xd0b", "0x4", "1", 4,
) + "Revision\t: d04170\nSerial\t\t: 2c3fb2d3d28fbd68\nModel\t\t: Raspberry Pi 5 Model B Rev 1.0\n"
# Jetson AGX Orin (L4T 35): NVIDIA's kernel adds a generic model name; no board line.
ORIN = _arm64(
    "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp "
    "uscat ilrcpc flagm paca pacg",
    "0xd42", "0x0", "1", 12, model_name="ARMv8 Processor rev 1 (v8l)",
)
# Raspberry Pi OS 32-bit on a Pi 4: a 32-bit process sees the compat (armv7) cpuinfo.
PI4_ARMV7 = "\n\n".join(
    f"processor\t: {i}\nmodel name\t: ARMv7 Processor rev 3 (v7l)\nBogoMIPS\t: 108.00\n"
    "Features\t: half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt vfpd32 lpae evtstrm crc32\n"
    "CPU implementer\t: 0x41\nCPU architecture: 7\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3"
    for i in range(4)
) + "\n\nHardware\t: BCM2711\nRevision\t: c03114\nSerial\t\t: 100000002e2c6bd6\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n"

_X86_BASE = (
    "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht "
    "syscall nx pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology nonstop_tsc cpuid pni pclmulqdq ssse3 "
    "fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes xsave avx f16c rdrand hypervisor "
    "lahf_lm abm 3dnowprefetch fsgsbase tsc_adjust bmi1 avx2 smep bmi2 erms invpcid rdseed adx smap "
    "clflushopt xsaveopt xsavec xgetbv1 xsaves arat"
)
# AMD EPYC (Zen 4) in a VM: AVX-512 with VNNI.
X86_VNNI_FLAGS = _X86_BASE + (
    " avx512f avx512dq avx512ifma avx512cd sha_ni avx512bw avx512vl avx512_bf16 avx512vbmi umip avx512_vbmi2"
    " gfni vaes vpclmulqdq avx512_vnni avx512_bitalg avx512_vpopcntdq rdpid fsrm"
)
# Intel Core i5-8250U (Kaby Lake R): AVX2, no AVX-512.
X86_AVX2_FLAGS = _X86_BASE + " mpx intel_pt dtherm ida pln pts hwp md_clear flush_l1d"
# Intel Core i7-12700 (Alder Lake): AVX-VNNI, but no AVX-512.
X86_ALDER_FLAGS = _X86_BASE + " avx_vnni serialize arch_lbr"


def _x86(model: str, flags: str, cores: int = 2) -> str:
    return "\n\n".join(
        f"processor\t: {i}\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 142\n"
        f"model name\t: {model}\nstepping\t: 10\ncpu MHz\t\t: 1800.000\nflags\t\t: {flags}\nbogomips\t: 3600.00"
        for i in range(cores)
    ) + "\n"


X86_VNNI = _x86("AMD EPYC 9R14", X86_VNNI_FLAGS)
X86_AVX2 = _x86("Intel(R) Core(TM) i5-8250U CPU @ 1.60GHz", X86_AVX2_FLAGS, cores=8)
X86_ALDER = _x86("12th Gen Intel(R) Core(TM) i7-12700", X86_ALDER_FLAGS, cores=20)


def _fitting_targets(arch: str, isa: tuple[str, ...]) -> set[str]:
    return {t.name for t in all_targets() if t.arch == arch and set(t.isa) <= set(isa)}


@pytest.mark.parametrize(
    ("text", "arch", "model", "isa", "fits"),
    [
        (PI4, "aarch64", "Cortex-A72", ("neon",), {"arm64-cortex-a72"}),
        (PI5, "aarch64", "Cortex-A76", ("asimddp", "asimdhp", "asimdrdm", "fphp", "neon"),
         {"arm64-cortex-a72", "arm64-cortex-a76", "jetson-orin-cpu"}),
        (ORIN, "aarch64", "Cortex-A78AE", ("asimddp", "asimdhp", "asimdrdm", "fphp", "neon"),
         {"arm64-cortex-a72", "arm64-cortex-a76", "jetson-orin-cpu"}),
        (PI4_ARMV7, "armv7l", "Cortex-A72", ("neon", "vfpv4"), set()),
        (X86_VNNI, "x86_64", "AMD EPYC 9R14",
         ("avx", "avx2", "avx512_bf16", "avx512_vnni", "avx512bw", "avx512cd", "avx512dq", "avx512f", "avx512vl",
          "f16c", "fma", "sse4.1", "sse4.2", "ssse3"),
         {"x86_64-avx2", "x86_64-avx512-vnni"}),
        (X86_AVX2, "x86_64", "Intel(R) Core(TM) i5-8250U CPU @ 1.60GHz",
         ("avx", "avx2", "f16c", "fma", "sse4.1", "sse4.2", "ssse3"), {"x86_64-avx2"}),
        (X86_ALDER, "x86_64", "12th Gen Intel(R) Core(TM) i7-12700",
         ("avx", "avx2", "avx_vnni", "f16c", "fma", "sse4.1", "sse4.2", "ssse3"), {"x86_64-avx2"}),
    ],
    ids=["pi4", "pi5", "jetson-orin", "pi4-armv7l", "x86-avx512-vnni", "x86-avx2", "x86-alder-lake"],
)
def test_cpuinfo_samples_map_to_the_targets_vocabulary(text, arch, model, isa, fits):
    info = parse_cpuinfo(text)
    assert info.isa == isa
    assert info.model == model
    assert _fitting_targets(arch, info.isa) == fits


# AT_HWCAP bit n is the n-th name here: the order of arm64's hwcap.h, which is also the order in
# which the kernel prints a cpuinfo Features line.
ARM64_HWCAP_ORDER = ["fp", "asimd", "evtstrm", "aes", "pmull", "sha1", "sha2", "crc32", "atomics", "fphp", "asimdhp", "cpuid", "asimdrdm", "jscvt", "fcma", "lrcpc", "dcpop", "sha3", "sm3", "sm4", "asimddp", "sha512", "sve", "asimdfhm", "dit", "uscat", "ilrcpc", "flagm", "ssbs", "sb", "paca", "pacg"]


@pytest.mark.parametrize("text", [PI4, PI5, ORIN], ids=["pi4", "pi5", "orin"])
def test_hwcap_words_announce_what_cpuinfo_does(text):
    """Under qemu-user /proc/cpuinfo is the host's, so a live arm64 agent reads the auxiliary vector."""
    features = next(line for line in text.splitlines() if line.startswith("Features")).split(":")[1].split()
    word = sum(1 << ARM64_HWCAP_ORDER.index(f) for f in features)
    assert arm64_flags_from_hwcaps(word, 0) == parse_cpuinfo(text).flags
    # HWCAP2: i8mm is bit 13, bf16 bit 14 (Cortex-A710 and later).
    assert {"i8mm", "bf16"} <= set(arm64_flags_from_hwcaps(word, 1 << 13 | 1 << 14))


def test_raw_kernel_flags_are_kept_alongside():
    assert parse_cpuinfo(PI4).flags == ("asimd",)
    assert "asimddp" in parse_cpuinfo(PI5).flags and "sse4_2" in parse_cpuinfo(X86_AVX2).flags


def test_board_and_processor_count():
    assert parse_cpuinfo(PI4).board == "Raspberry Pi 4 Model B Rev 1.4"
    assert parse_cpuinfo(PI5).board == "Raspberry Pi 5 Model B Rev 1.0"
    assert parse_cpuinfo(ORIN).board is None
    assert parse_cpuinfo(X86_VNNI).board is None  # x86's numeric "model" field is not a board
    assert [parse_cpuinfo(t).processors for t in (PI4, ORIN, X86_AVX2)] == [4, 12, 8]


def test_big_little_lists_both_cores_and_only_common_flags():
    little = _arm64("fp asimd evtstrm aes crc32 atomics fphp asimdhp asimdrdm lrcpc dcpop asimddp", "0xd05", "0x2", "0", 4)
    big = _arm64("fp asimd evtstrm aes crc32 atomics fphp asimdhp asimdrdm lrcpc dcpop asimddp i8mm", "0xd0b", "0x4", "0", 4)
    info = parse_cpuinfo(little + big)
    assert info.model == "Cortex-A55 + Cortex-A76"
    assert "i8mm" not in info.isa and "asimddp" in info.isa


def test_old_armv7_format_with_shared_features_section():
    text = (
        "Processor\t: ARMv7 Processor rev 4 (v7l)\nprocessor\t: 0\nBogoMIPS\t: 38.40\n\n"
        "processor\t: 1\nBogoMIPS\t: 38.40\n\n"
        "Features\t: swp half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt\n"
        "CPU implementer\t: 0x41\nCPU architecture: 7\nCPU variant\t: 0x0\nCPU part\t: 0xd03\nCPU revision\t: 4\n\n"
        "Hardware\t: BCM2709\nRevision\t: a02082\n"
    )
    info = parse_cpuinfo(text)
    assert (info.isa, info.model, info.processors) == (("neon", "vfpv4"), "Cortex-A53", 2)


def test_empty_or_foreign_cpuinfo_announces_nothing():
    assert parse_cpuinfo("") == parse_cpuinfo("garbage without colons\n")
    assert parse_cpuinfo("").isa == () and parse_cpuinfo("").model is None


def test_every_target_isa_name_can_be_announced():
    used = {feature for t in all_targets() for feature in t.isa}
    assert used <= KNOWN_ISA, used - KNOWN_ISA


def test_runtime_names_match_the_targets_and_the_fit_check():
    from edge_agent.verify import RUNTIME_PROVIDERS

    assert {"onnxruntime", "litert"} <= set(RUNTIMES) & set(RUNTIME_DISTRIBUTIONS)
    announced = {name for names in RUNTIME_PROVIDERS.values() for name in names}
    assert announced <= set(RUNTIME_DISTRIBUTIONS)  # every runtime check_fit asks about can be announced


@pytest.mark.parametrize(
    ("machine", "bits", "arch"),
    [
        ("x86_64", 64, "x86_64"), ("AMD64", 64, "x86_64"), ("aarch64", 64, "aarch64"), ("arm64", 64, "aarch64"),
        ("armv7l", 32, "armv7l"), ("armv8l", 32, "armv7l"),
        ("aarch64", 32, "armv7l"),  # 32-bit Raspberry Pi OS on a 64-bit kernel
        ("armv6l", 32, "armv6l"), ("riscv64", 64, "riscv64"),
    ],
)
def test_normalize_arch(machine, bits, arch):
    assert normalize_arch(machine, bits) == arch


def test_detect_capabilities_document(tmp_path):
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "apex_0").touch()
    caps = detect_capabilities(
        data_dir=tmp_path / "not" / "created" / "yet", labels={"site": "lab"}, agent_version="0.1.0",
        memory_budget_bytes=512 << 20, cpuinfo=PI5, machine="aarch64", dev_root=dev,
        device_tree_model=tmp_path / "absent",
    )
    assert json.loads(json.dumps(caps)) == caps
    assert caps["arch"] == "aarch64" and caps["isa"] == list(parse_cpuinfo(PI5).isa)
    assert caps["cpu_model"] == "Cortex-A76" and caps["board"] == "Raspberry Pi 5 Model B Rev 1.0"
    assert caps["accelerators"] == ["edgetpu"]
    assert caps["runtimes"]["onnxruntime"] == metadata.version("onnxruntime")
    assert caps["runtimes"]["litert"] == metadata.version("ai-edge-litert")
    assert caps["memory_total_bytes"] > 0 and caps["memory_budget_bytes"] == 512 << 20
    assert 0 < caps["disk_free_bytes"] <= caps["disk_total_bytes"]
    assert caps["labels"] == {"site": "lab"} and caps["agent_version"] == "0.1.0"
    assert caps["cpu_count"] >= 1 and caps["python"].count(".") == 2 and caps["os"]["kernel"]


def test_board_falls_back_to_the_device_tree(tmp_path):
    model = tmp_path / "model"
    model.write_bytes(b"NVIDIA Jetson AGX Orin Developer Kit\x00")
    caps = detect_capabilities(
        data_dir=tmp_path, labels={}, agent_version="0.1.0", memory_budget_bytes=None,
        cpuinfo=ORIN, machine="aarch64", dev_root=tmp_path, device_tree_model=model,
    )
    assert caps["board"] == "NVIDIA Jetson AGX Orin Developer Kit" and caps["accelerators"] == []


def test_agent_modules_stay_light():
    """Detection reads metadata only; none of these modules pulls numpy or a runtime in."""
    code = (
        "import sys, tempfile, pathlib\n"
        "import edge_agent.capabilities as c, edge_agent.telemetry, edge_agent.buffer, edge_agent.guard\n"
        "c.detect_capabilities(data_dir=pathlib.Path(tempfile.gettempdir()), labels={}, agent_version='x',"
        " memory_budget_bytes=None)\n"
        "heavy = [m for m in ('numpy', 'onnxruntime', 'ai_edge_litert', 'tflite_runtime') if m in sys.modules]\n"
        "print(heavy); sys.exit(1 if heavy else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
