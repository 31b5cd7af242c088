import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgectl import manifest as mf
from edgectl.cli import app
from edgectl.errors import KeyFileError, OutputError, VerificationError
from edgectl.hashing import sha256_file
from edgectl.signing import load_private_key, load_public_key, write_keypair

runner = CliRunner()


@pytest.fixture
def keypair(tmp_path: Path) -> tuple[Path, Path]:
    priv = tmp_path / "keys" / "signer"
    return priv, write_keypair(priv)


def _folder(tmp_path: Path, priv: Path | None) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "model.int8.onnx").write_bytes(b"\x08\x01model-bytes")
    manifest = {
        "schema": mf.SCHEMA, "target": {}, "model": {}, "calibration": {}, "toolchain": {},
        "variants": [], "files": {"model.int8.onnx": sha256_file(folder / "model.int8.onnx")},
    }
    if priv is not None:
        manifest = mf.attach_signature(manifest, load_private_key(priv))
    (folder / mf.MANIFEST_NAME).write_bytes(mf.dumps(manifest))
    return folder


def test_private_key_is_owner_only(keypair):
    priv, pub = keypair
    assert priv.stat().st_mode & 0o777 == 0o600
    assert pub.name == "signer.pub"


def test_generate_refuses_to_overwrite(keypair):
    with pytest.raises(OutputError, match="already exists"):
        write_keypair(keypair[0])


def test_signed_folder_verifies(tmp_path, keypair):
    folder = _folder(tmp_path, keypair[0])
    assert mf.verify_dir(folder, load_public_key(keypair[1]))["signature"]["algorithm"] == "ed25519"


def test_a_changed_byte_fails(tmp_path, keypair):
    folder = _folder(tmp_path, keypair[0])
    data = bytearray((folder / "model.int8.onnx").read_bytes())
    data[3] ^= 1
    (folder / "model.int8.onnx").write_bytes(bytes(data))
    with pytest.raises(VerificationError, match="sha256"):
        mf.verify_dir(folder, load_public_key(keypair[1]))


def test_an_edited_manifest_fails_the_signature(tmp_path, keypair):
    folder = _folder(tmp_path, keypair[0])
    doc = json.loads((folder / mf.MANIFEST_NAME).read_text())
    doc["model"] = {"name": "something else"}
    (folder / mf.MANIFEST_NAME).write_text(json.dumps(doc))
    with pytest.raises(VerificationError, match="signature"):
        mf.verify_dir(folder, load_public_key(keypair[1]))


def test_another_key_fails(tmp_path, keypair):
    folder = _folder(tmp_path, keypair[0])
    other = write_keypair(tmp_path / "other")
    with pytest.raises(VerificationError, match="signature"):
        mf.verify_dir(folder, load_public_key(other))


def test_unsigned_folder_fails_when_a_key_is_required(tmp_path, keypair):
    folder = _folder(tmp_path, None)
    mf.verify_dir(folder)  # hashes alone are fine
    with pytest.raises(VerificationError, match="not signed"):
        mf.verify_dir(folder, load_public_key(keypair[1]))


def test_unlisted_and_escaping_files_fail(tmp_path, keypair):
    folder = _folder(tmp_path, None)
    (folder / "extra.bin").write_bytes(b"x")
    with pytest.raises(VerificationError, match="does not list"):
        mf.verify_dir(folder)
    (folder / "extra.bin").unlink()
    doc = json.loads((folder / mf.MANIFEST_NAME).read_text())
    doc["files"]["../../etc/passwd"] = "0" * 64
    (folder / mf.MANIFEST_NAME).write_text(json.dumps(doc))
    with pytest.raises(VerificationError, match="outside"):
        mf.verify_dir(folder)


@pytest.mark.parametrize("content", [b"", b"not json", b"[1, 2]", b'{"schema": "edgectl.manifest/v0"}'])
def test_malformed_manifest_is_one_line(tmp_path, content):
    (tmp_path / mf.MANIFEST_NAME).write_bytes(content)
    with pytest.raises(VerificationError) as info:
        mf.verify_dir(tmp_path)
    assert "\n" not in str(info.value)


def test_bad_key_files(tmp_path):
    (tmp_path / "junk").write_text("hello")
    with pytest.raises(KeyFileError, match="edgectl keys generate"):
        load_private_key(tmp_path / "junk")
    with pytest.raises(KeyFileError, match="cannot read"):
        load_public_key(tmp_path / "missing.pub")


def test_cli_keys_and_verify(tmp_path):
    result = runner.invoke(app, ["keys", "generate", str(tmp_path / "k")])
    assert result.exit_code == 0, result.output
    folder = _folder(tmp_path, tmp_path / "k")
    ok = runner.invoke(app, ["verify", str(folder), "--key", str(tmp_path / "k.pub")])
    assert ok.exit_code == 0 and "signature" in ok.output
    (folder / "model.int8.onnx").write_bytes(b"tampered")
    bad = runner.invoke(app, ["verify", str(folder), "--key", str(tmp_path / "k.pub")])
    assert bad.exit_code == 3
