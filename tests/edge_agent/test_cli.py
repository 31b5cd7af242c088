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
