"""Reading a TOML config file with one-line errors that say which file and what to do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomllib

from edgectl.errors import UserError


def config_path(base: Path, value: Any, key: str, what: str, error: type[UserError] = UserError) -> Path:
    """A path from a config file: ``~`` expanded, relative ones resolved against ``base`` (the
    config file's folder), so a config means the same wherever the command runs."""
    if not isinstance(value, str) or not value:
        raise error(f"{what}: {key} must be a path string")
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def read_toml(path: Path, what: str, hint: str, error: type[UserError] = UserError) -> dict[str, Any]:
    """``what`` names the file in messages ("agent config"); ``hint`` says where its format is."""
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise error(f"{what} {path} does not exist: write one (see {hint})") from exc
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{what} {path} is not valid TOML: {exc}") from exc
