"""``edgectl example NAME --out DIR``: write a bundled example model and its data."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def example_command(
    name: str = typer.Argument("digits-cnn", help="digits-cnn | digits-mlp"),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write the model and data into."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Train a small real example model on a data set that ships with scikit-learn."""
    from compiler.examples import write_example

    files = write_example(name, out)
    info = {k: str(v) for k, v in vars(files).items()}
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    for key, value in info.items():
        typer.echo(f"{key:>16}: {value}")
