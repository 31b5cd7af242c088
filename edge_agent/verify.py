"""Trust and fit checks for an artifact before the agent installs or loads it.

The manifest's bytes must hash to the sha256 the desired state named, carry a signature from
one of the device's trusted keys, and describe a build for this device (arch, ISA, an available
runtime); each fetched file must hash to what the signed manifest lists. The agent fetches only
the file it serves plus ``selftest.npz``, so unlike ``edgectl verify`` this checks a subset::

    keys = load_trusted_keys(cfg.trusted_keys)
    manifest = check_manifest(raw, expected_sha, keys, allow_unsigned=False)
    entry = check_fit(manifest, "digits_cnn.int8.onnx", capabilities)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgectl import signing, wire
from edgectl.errors import VerificationError
from edgectl.hashing import sha256_bytes, sha256_file
from edgectl.manifest import check_signature, parse_manifest

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

SELFTEST_FILE = "selftest.npz"
# Which installed runtime package can run a variant whose manifest says ``runtime``.
RUNTIME_PROVIDERS = {"onnxruntime": ("onnxruntime",), "litert": ("litert", "tflite_runtime")}


def load_trusted_keys(paths: tuple[Path, ...]) -> dict[str, Ed25519PublicKey]:
    keys = {}
    for path in paths:
        key = signing.load_public_key(path)
        keys[signing.key_id(key)] = key
    return keys


def load_trusted_key_bytes(paths: tuple[Path, ...]) -> dict[str, bytes]:
    """Key id → raw Ed25519 public key, what the agent holds: cryptography (~7 MB of RSS) is
    imported only when a signature is checked, so an idle agent never pays for it."""
    keys = {}
    for path in paths:
        raw = signing.public_key_raw(path)
        keys[signing.key_id_raw(raw)] = raw
    return keys


def check_manifest(raw: bytes, expected_sha: str, trusted: dict[str, bytes], *,
                   allow_unsigned: bool) -> dict[str, Any]:
    actual = sha256_bytes(raw)
    if actual != expected_sha:
        raise VerificationError(f"manifest has sha256 {actual[:12]}…, desired state names {expected_sha[:12]}…")
    manifest = parse_manifest(raw, f"manifest {expected_sha[:12]}…")
    for name, sha in manifest["files"].items():
        if not wire.valid_name(name) or not wire.valid_sha256(sha):
            raise VerificationError(f"manifest {expected_sha[:12]}… lists an unsafe file name or hash: {name!r}")
    sig = manifest.get("signature")
    key_id = sig.get("key_id") if isinstance(sig, dict) else None
    if key_id in trusted:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        check_signature(manifest, Ed25519PublicKey.from_public_bytes(trusted[str(key_id)]),
                        f"manifest {expected_sha[:12]}…")
    elif not allow_unsigned:
        who = f"key {key_id}" if key_id else "no key"
        raise VerificationError(
            f"manifest {expected_sha[:12]}… is signed by {who}, which this device does not trust: "
            "add the fleet's public key to trusted_keys"
        )
    return manifest


def check_fit(manifest: dict[str, Any], variant_file: str, caps: dict[str, Any]) -> dict[str, Any]:
    """Returns the manifest's entry for ``variant_file``; raises when this device cannot run it."""
    entries = [v for v in manifest.get("variants", []) if isinstance(v, dict) and v.get("file") == variant_file]
    if not entries or variant_file not in manifest["files"]:
        emitted = sorted(str(v.get("file")) for v in manifest.get("variants", []) if isinstance(v, dict)
                         and v.get("file"))
        raise VerificationError(f"manifest has no emitted variant {variant_file!r} (it has: {', '.join(emitted)})")
    entry = entries[0]
    target = manifest.get("target") or {}
    arch = target.get("arch")
    if arch != caps.get("arch"):
        raise VerificationError(f"{variant_file} was built for {arch}, this device is {caps.get('arch')}")
    missing = sorted(set(target.get("isa", [])) - set(caps.get("isa", [])))
    if missing:
        raise VerificationError(f"{variant_file} needs CPU features this device lacks: {', '.join(missing)}")
    runtime = entry.get("runtime")
    runtimes = caps.get("runtimes") or {}
    if not any(runtimes.get(p) for p in RUNTIME_PROVIDERS.get(str(runtime), ())):
        raise VerificationError(f"{variant_file} runs in {runtime}, which is not installed on this device")
    if SELFTEST_FILE not in manifest["files"]:
        raise VerificationError(f"manifest lists no {SELFTEST_FILE}: recompile with this edgectl")
    return entry


def check_file(path: Path, expected_sha: str) -> None:
    actual = sha256_file(path)
    if actual != expected_sha:
        raise VerificationError(f"{path.name} has sha256 {actual[:12]}…, the manifest says {expected_sha[:12]}…")
