"""``edgectl verify DIR``: hashes of every file and, with --key, the manifest signature."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from edgectl.errors import VerificationError
from edgectl.manifest import MANIFEST_NAME, verify_dir
from edgectl.signing import load_public_key


def verify_command(
    folder: Path = typer.Argument(..., help="A target folder, or a compile output holding target folders."),
    key: Path | None = typer.Option(
        None, "--key", help="Trusted public key (.pub); without it only hashes are checked."
    ),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Verify compile output: every byte hashed, the signature checked against --key."""
    public = load_public_key(key) if key is not None else None
    if (folder / MANIFEST_NAME).is_file():
        folders = [folder]
    else:
        folders = sorted(p.parent for p in folder.glob(f"*/{MANIFEST_NAME}"))
    if not folders:
        raise VerificationError(f"{folder} holds no {MANIFEST_NAME}: pass a compile output folder")
    checked = []
    for f in folders:
        manifest = verify_dir(f, public)
        checked.append({"folder": str(f), "files": len(manifest["files"]), "signature_checked": public is not None})
    if as_json:
        typer.echo(json.dumps(checked, indent=2))
        return
    for c in checked:
        how = "hashes and signature" if c["signature_checked"] else "hashes only (pass --key to check the signature)"
        typer.echo(f"ok  {c['folder']}: {c['files']} files, {how}")
