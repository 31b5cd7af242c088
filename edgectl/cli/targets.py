"""``edgectl targets list|show``."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from edgectl.cli._common import console, one_line_errors
from edgectl.targets import all_targets, load_target

app = typer.Typer(help="Device classes the compiler builds for (targets/*.toml).", no_args_is_help=True)

TargetsDir = typer.Option(None, "--targets-dir", help="Extra folder of target .toml files.")


@app.command("list")
@one_line_errors
def list_command(
    targets_dir: list[Path] = TargetsDir,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """List the known targets."""
    found = all_targets(targets_dir or [])
    if as_json:
        typer.echo(json.dumps([t.to_dict() for t in found], indent=2))
        return
    table = Table("name", "arch", "isa", "runtimes", "precisions", "memory")
    for t in found:
        row = (t.name, t.arch, " ".join(t.isa), " ".join(t.runtimes), " ".join(t.precisions), f"{t.memory_mb} MB")
        table.add_row(*row)
    console().print(table)


@app.command("show")
@one_line_errors
def show_command(
    name: str = typer.Argument(..., help="Target name or path of a .toml file."),
    targets_dir: list[Path] = TargetsDir,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Show one target and the int8 scheme the compiler picks for it."""
    from compiler.schemes import scheme_for

    target = load_target(name, targets_dir or [])
    info = {**target.to_dict(), "int8_scheme": scheme_for(target).to_dict()}
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    for key, value in info.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, list):
            value = " ".join(value)
        typer.echo(f"{key:>12}: {value}")
