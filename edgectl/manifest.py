"""The artifact manifest: the contract between the compiler, the fleet and the agent.

One ``manifest.json`` per target folder. It lists the sha256 of every file in the folder and,
when signed, an Ed25519 signature over the canonical JSON of everything but the signature::

    {"schema": "edgectl.manifest/v1", "target": {...}, "model": {...}, "calibration": {...},
     "toolchain": {...}, "variants": [...], "skipped": [...], "selftest": {...},
     "files": {"model.int8.onnx": "<sha256>", ...},
     "signature": {"algorithm": "ed25519", "key_id": "...", "value": "<base64>"}}

    >>> m = verify_dir(Path("out/x86_64-avx2"), public_key=load_public_key(Path("key.pub")))
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgectl import signing
from edgectl.errors import VerificationError
from edgectl.hashing import canonical_json, sha256_file

SCHEMA = "edgectl.manifest/v1"
MANIFEST_NAME = "manifest.json"
REQUIRED = ("schema", "target", "model", "calibration", "toolchain", "variants", "files")


def signed_payload(manifest: dict[str, Any]) -> bytes:
    return canonical_json({k: v for k, v in manifest.items() if k != "signature"})


def attach_signature(manifest: dict[str, Any], private: Ed25519PrivateKey) -> dict[str, Any]:
    signed = {k: v for k, v in manifest.items() if k != "signature"}
    signed["signature"] = {
        "algorithm": signing.ALGORITHM,
        "key_id": signing.key_id(private.public_key()),
        "value": signing.sign(private, signed_payload(manifest)),
    }
    return signed


def dumps(manifest: dict[str, Any]) -> bytes:
    return json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise VerificationError(f"{path} is missing: is {folder} a compile output folder?") from exc
    except OSError as exc:
        raise VerificationError(f"{path} is not readable ({exc.strerror}): recompile the model") from exc
    return parse_manifest(raw, str(path))


def parse_manifest(raw: bytes, where: str) -> dict[str, Any]:
    """Parse and check the shape of a manifest's bytes; ``where`` names it in errors."""
    try:
        manifest = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise VerificationError(f"{where} is not readable JSON ({exc}): recompile the model") from exc
    if not isinstance(manifest, dict):
        raise VerificationError(f"{where} is not a JSON object: recompile the model")
    missing = [k for k in REQUIRED if k not in manifest]
    if missing:
        raise VerificationError(f"{where} lacks {', '.join(missing)}: recompile the model")
    if manifest["schema"] != SCHEMA:
        raise VerificationError(
            f"{where} has schema {manifest['schema']!r}, this edgectl reads {SCHEMA!r}: upgrade edgectl"
        )
    if not isinstance(manifest["files"], dict):
        raise VerificationError(f"{where}: 'files' must map file names to sha256")
    return manifest


def check_signature(manifest: dict[str, Any], public_key: Ed25519PublicKey, where: str) -> None:
    sig = manifest.get("signature")
    if not isinstance(sig, dict) or sig.get("algorithm") != signing.ALGORITHM:
        raise VerificationError(f"{where} is not signed: compile with --sign-key to sign it")
    signing.verify_signature(public_key, signed_payload(manifest), str(sig.get("value", "")))


def verify_dir(folder: Path, public_key: Ed25519PublicKey | None = None) -> dict[str, Any]:
    """Check every listed file's sha256, refuse unlisted or escaping names, check the signature.

    With ``public_key=None`` only the hashes are checked (the signature is not trusted then).
    """
    manifest = read_manifest(folder)
    root = folder.resolve()
    for name, expected in sorted(manifest["files"].items()):
        path = (folder / name).resolve()
        if root not in path.parents:
            raise VerificationError(f"manifest lists {name!r}, which points outside {folder}")
        if not path.is_file():
            raise VerificationError(f"{folder / name} is listed in the manifest but missing")
        actual = sha256_file(path)
        if actual != expected:
            raise VerificationError(
                f"{folder / name} has sha256 {actual[:12]}…, the manifest says {str(expected)[:12]}…: "
                "the file was changed or corrupted; recompile or re-fetch it"
            )
    listed = set(manifest["files"]) | {MANIFEST_NAME}
    unlisted = sorted(p.name for p in folder.iterdir() if p.name not in listed)
    if unlisted:
        raise VerificationError(f"{folder} holds files the manifest does not list: {', '.join(unlisted)}")
    if public_key is not None:
        check_signature(manifest, public_key, str(folder / MANIFEST_NAME))
    return manifest
