"""Reading a TOML config file with one-line errors that say which file and what to do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomllib

from edgectl.errors import UserError


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
