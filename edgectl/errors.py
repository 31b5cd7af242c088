"""The error hierarchy every edgectl package raises from.

    EdgectlError                 base: one line that says what is wrong and what to do
    ├── UserError                bad input from the user (exit code 2)
    │   ├── ModelLoadError       not a model, truncated, unsupported opset/frontend
    │   ├── DataError            calibration / eval / labels files
    │   ├── TargetError          unknown or malformed target spec
    │   ├── OutputError          output folder cannot be written
    │   ├── KeyFileError         signing key missing or malformed
    │   └── MissingExtraError    an optional dependency is not installed
    ├── VerificationError        a manifest, hash or signature does not check out (exit 3)
    └── GateError                no variant met its fidelity budget (exit 3)

Library errors are translated at the boundary (``raise ModelLoadError(...) from exc``) so a
user sees one line; the traceback is for ``--debug``.
"""

from __future__ import annotations


class EdgectlError(Exception):
    """Base class; ``exit_code`` is what the CLI returns."""

    exit_code = 1


class UserError(EdgectlError):
    exit_code = 2


class ModelLoadError(UserError):
    pass


class DataError(UserError):
    pass


class TargetError(UserError):
    pass


class OutputError(UserError):
    pass


class KeyFileError(UserError):
    pass


class MissingExtraError(UserError):
    """An optional dependency is missing; the message carries the pip command."""

    def __init__(self, module: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the '{module}' package, which is not installed: "
            f"pip install 'edgectl[{extra}]'"
        )
        self.module = module
        self.extra = extra


class VerificationError(EdgectlError):
    exit_code = 3


class GateError(EdgectlError):
    exit_code = 3
