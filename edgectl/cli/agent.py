"""``edgectl agent run``: the device daemon (the same as ``python -m edge_agent``)."""

from __future__ import annotations

from pathlib import Path

import typer

from edgectl.cli._common import one_line_errors

app = typer.Typer(help="Run the device agent.", no_args_is_help=True)


@app.command("run")
@one_line_errors
def run_command(
    config: Path = typer.Option(..., "--config", "-c", help="The agent's TOML config (see edge_agent/README.md)."),
    log_level: str = typer.Option("INFO", "--log-level", help="DEBUG, INFO, WARNING or ERROR."),
) -> None:
    """Connect to the broker, serve the installed models and follow the desired state until stopped."""
    from edge_agent.main import run

    raise typer.Exit(run(config, log_level=log_level))
