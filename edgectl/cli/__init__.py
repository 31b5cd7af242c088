"""The ``edgectl`` command: a thin typer layer over the library (one module per command group).

Errors from the library are ``EdgectlError``s: printed as one line on stderr with their exit
code (2 for bad input, 3 for failed verification or fidelity gates); ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import typer

from edgectl.cli import agent, examples, fleet, keys, targets, up, verify
from edgectl.cli import compile as compile_cmd
from edgectl.cli._common import DEBUG, one_line_errors

app = typer.Typer(
    name="edgectl",
    help="Compile models into quantized per-target artifacts and run them on edge fleets.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors.")) -> None:
    DEBUG["on"] = debug


app.command("compile")(one_line_errors(compile_cmd.compile_command))
app.command("verify")(one_line_errors(verify.verify_command))
app.command("example")(one_line_errors(examples.example_command))
app.command("up")(one_line_errors(up.up_command))
app.add_typer(targets.app, name="targets")
app.add_typer(keys.app, name="keys")
app.add_typer(agent.app, name="agent")
app.add_typer(fleet.app, name="fleet")


def main() -> None:
    app(prog_name="edgectl")
