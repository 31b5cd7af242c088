"""The distribution's promises: a lean agent extra and a CLI that starts without the compiler."""

import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "skl2onnx", "scikit-learn", "sqlalchemy", "onnx>", "onnx=", "mlxtend", "tensorflow")


def _extras() -> dict[str, list[str]]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def test_agent_extra_stays_lean():
    agent = [d.lower().replace(" ", "") for d in _extras()["agent"]]
    assert not [d for d in agent if d.startswith(HEAVY)], agent


def test_all_extra_covers_every_runtime_extra():
    extras = _extras()
    joined = " ".join(extras["all"])
    for name in ("compiler", "torch", "sklearn", "agent", "fleet"):
        assert name in joined and name in extras


def test_cli_import_does_not_load_the_compiler_stack():
    code = (
        "import sys, edgectl.cli; "
        "heavy = [m for m in ('onnx', 'onnxruntime', 'torch', 'sklearn', 'skl2onnx') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_console_script_runs():
    exe = Path(sys.executable).with_name("edgectl")
    result = subprocess.run([str(exe), "targets", "list", "--json"], capture_output=True, text=True)
    assert result.returncode == 0 and "x86_64-avx2" in result.stdout
    bad = subprocess.run([str(exe), "targets", "show", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown target")
