"""Shared CLI pieces: one-line errors with exit codes inside every command, and consoles."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from edgectl.errors import EdgectlError

F = TypeVar("F", bound=Callable[..., Any])

# Set by the app's --debug option; a traceback is then shown instead of the one-line error.
DEBUG = {"on": False}


def one_line_errors(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EdgectlError as exc:
            if DEBUG["on"]:
                raise
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None

    return wrapper  # type: ignore[return-value]


def console(*, stderr: bool = False) -> Console:
    """A rich console; when output is not a terminal, wide enough that tables never truncate."""
    probe = Console(stderr=stderr)
    return probe if probe.is_terminal else Console(stderr=stderr, width=200)
