"""`edgectl agent run` and `python -m edge_agent`: bad configs are one line and exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from edgectl.cli import app


def test_cli_missing_config_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["agent", "run", "--config", str(tmp_path / "nope.toml")])
    assert result.exit_code == 2
    assert result.output.strip().startswith("error: agent config") and "does not exist" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_module_entry_bad_config_is_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text('device_id = "x/y"\ndata_dir = "d"\n')
    proc = subprocess.run([sys.executable, "-m", "edge_agent", "--config", str(cfg)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "device_id" in proc.stderr
    assert not (tmp_path / "d").exists()  # nothing created for a config that was refused


def test_console_script_runs_the_agent_without_typer(tmp_path: Path) -> None:
    # `edgectl agent run` must not pay for typer/rich on a device: the entry dispatches first.
    code = ("import sys; sys.argv = ['edgectl', 'agent', 'run', '-c', sys.argv[1]]\n"
            "from edgectl.entry import main\n"
            "try:\n    main()\nexcept SystemExit as e:\n"
            "    print(e.code, 'typer' in sys.modules, 'rich' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "missing.toml")], capture_output=True,
                          text=True, timeout=60)
    assert proc.stdout.split() == ["2", "False", "False"], proc.stdout + proc.stderr
    assert "does not exist" in proc.stderr
