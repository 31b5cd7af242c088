"""``edgectl keys generate``."""

from __future__ import annotations

from pathlib import Path

import typer

from edgectl.cli._common import one_line_errors
from edgectl.signing import key_id, load_public_key, write_keypair

app = typer.Typer(help="Ed25519 signing keys for manifests.", no_args_is_help=True)


@app.command("generate")
@one_line_errors
def generate_command(
    path: Path = typer.Argument(..., help="Private key file to write; the public key goes to PATH.pub."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing key files."),
) -> None:
    """Write a new Ed25519 key pair (private key mode 0600)."""
    public_path = write_keypair(path, overwrite=force)
    typer.echo(f"wrote {path} and {public_path} (key id {key_id(load_public_key(public_path))})")
