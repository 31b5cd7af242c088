"""Linters the deploy tests run that come from PyPI (listed in the ``dev`` extra): imported from
the venv, or pip-installed once into ``~/.cache/edgectl/tools`` when the venv lacks them, so the
tests run them rather than skip.

    check_jsonschema = tool("check_jsonschema", "check-jsonschema==0.39.0")
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from types import ModuleType


def tool(module: str, requirement: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        pass
    target = Path.home() / ".cache" / "edgectl" / "tools" / requirement.replace("==", "-")
    if not (target / ".ready").exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(target), requirement],
                       check=True, timeout=600)
        (target / ".ready").touch()
    sys.path.insert(0, str(target))
    return importlib.import_module(module)


def run_tool(module: str, requirement: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m module args`` with the tool importable; the output is captured."""
    mod = tool(module, requirement)
    site = str(Path(mod.__file__ or "").resolve().parents[1])
    env = {"PYTHONPATH": site}
    import os

    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **env})
