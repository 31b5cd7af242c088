"""Errors raised by the TFLite backend.

    UserError (edgectl.errors)
    └── TfliteLoweringError     an ONNX op, attribute or shape the TFLite backend cannot express
"""

from __future__ import annotations

from edgectl.errors import UserError


class TfliteLoweringError(UserError):
    """The model uses something this backend cannot lower; the message names the op and node."""
