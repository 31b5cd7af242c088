"""Ed25519 keys and detached signatures over canonical manifest bytes.

    >>> priv, pub = generate_keypair()
    >>> sig = sign(priv, b"manifest")
    >>> verify_signature(pub, b"manifest", sig)   # raises VerificationError on mismatch

Keys are stored as PEM files (PKCS#8 private, SubjectPublicKeyInfo public). A key id is the
first 16 hex digits of the sha256 of the raw public key, so a manifest says which key signed it.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgectl.errors import KeyFileError, OutputError, VerificationError
from edgectl.hashing import sha256_bytes

ALGORITHM = "ed25519"


def generate_keypair() -> tuple[Ed25519PrivateKey, Ed25519PublicKey]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    private = Ed25519PrivateKey.generate()
    return private, private.public_key()


def key_id(public: Ed25519PublicKey) -> str:
    from cryptography.hazmat.primitives import serialization
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return sha256_bytes(raw)[:16]


def write_keypair(private_path: Path, *, overwrite: bool = False) -> Path:
    """Write ``private_path`` (mode 0600) and ``<private_path>.pub``; returns the public path."""
    from cryptography.hazmat.primitives import serialization

    public_path = private_path.with_name(private_path.name + ".pub")
    for path in (private_path, public_path):
        if path.exists() and not overwrite:
            raise OutputError(f"{path} already exists: choose another path or pass --force")
    private, public = generate_keypair()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        private_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(private_pem)
        public_path.write_bytes(public_pem)
    except OSError as exc:
        raise OutputError(f"cannot write key to {private_path}: {exc.strerror}") from exc
    return public_path


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KeyFileError(
            f"cannot read {what} {path}: {exc.strerror}; create one with `edgectl keys generate`"
        ) from exc


def load_private_key(path: Path) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    try:
        key = serialization.load_pem_private_key(_read(path, "private key"), password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path} is not an unencrypted PEM private key: use `edgectl keys generate`") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} is not an Ed25519 key: use `edgectl keys generate`")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    data = _read(path, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        # A private key file also carries the public key; accept it for convenience.
        return load_private_key(path).public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path} is not an Ed25519 public key: use the .pub file from `edgectl keys generate`")
    return key


_ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")  # DER of an Ed25519 SubjectPublicKeyInfo


def public_key_raw(path: Path) -> bytes:
    """The 32 raw bytes of an Ed25519 public key file. A ``.pub`` from ``edgectl keys generate`` is
    parsed here, without importing cryptography (~7 MB of RSS an idle agent need not pay); any
    other file goes through ``load_public_key`` and its checks."""
    data = _read(path, "public key")
    lines = data.strip().splitlines()
    if len(lines) >= 3 and lines[0] == b"-----BEGIN PUBLIC KEY-----" and lines[-1] == b"-----END PUBLIC KEY-----":
        try:
            der = base64.b64decode(b"".join(lines[1:-1]), validate=True)
        except ValueError:
            der = b""
        if len(der) == 44 and der.startswith(_ED25519_SPKI_PREFIX):
            return der[12:]
    from cryptography.hazmat.primitives import serialization

    return load_public_key(path).public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id_raw(raw: bytes) -> str:
    return sha256_bytes(raw)[:16]


def sign(private: Ed25519PrivateKey, payload: bytes) -> str:
    return base64.b64encode(private.sign(payload)).decode()


def verify_signature(public: Ed25519PublicKey, payload: bytes, signature_b64: str) -> None:
    from cryptography.exceptions import InvalidSignature
    try:
        public.verify(base64.b64decode(signature_b64, validate=True), payload)
    except (InvalidSignature, ValueError) as exc:
        raise VerificationError(
            "manifest signature does not verify with the given key: the manifest was changed "
            "after signing, or it was signed by another key"
        ) from exc
