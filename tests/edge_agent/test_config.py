"""The agent config: typed, read once, and every mistake named with its fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.config import ConfigError, load_config

GOOD = """
device_id = "pi-01"
data_dir = "data"
trusted_keys = ["fleet.pub"]
memory_budget_mb = 256
[broker]
url = "mqtt://127.0.0.1:1883"
password_file = "pass.txt"
[labels]
site = "lab"
[fetch]
chunk_kb = 128
"""


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "pass.txt").write_text("s3cret\n")
    p = tmp_path / "agent.toml"
    p.write_text(text)
    return p


def test_reads_a_full_config(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, GOOD))
    assert cfg.device_id == "pi-01"
    assert cfg.data_dir == tmp_path / "data"  # relative to the config file
    assert cfg.trusted_keys == (tmp_path / "fleet.pub",)
    assert cfg.memory_budget_bytes == 256 << 20
    assert cfg.broker.password == "s3cret"
    assert cfg.labels == (("site", "lab"),)
    assert cfg.fetch.chunk_bytes == 128 * 1024


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("device_id = 'a/b'\ndata_dir='d'\nallow_unsigned=true", "device_id"),
        ("device_id = 'a'\nallow_unsigned=true", "data_dir is missing"),
        ("device_id = 'a'\ndata_dir='d'", "trusted_keys is empty"),
        ("device_id = 'a'\ndata_dir='d'\nallow_unsigned=true\ncolour='red'", "unknown key"),
        ("device_id = 'a'\ndata_dir='d'\nallow_unsigned=true\n[broker]\nurl='http://x'", "mqtt://"),
        ("device_id = 'a'\ndata_dir='d'\nallow_unsigned=true\n[broker]\ntls_ca='nope.pem'", "does not exist"),
        ("device_id = 'a'\ndata_dir='d'\nallow_unsigned=true\nmemory_budget_mb=-1", "memory_budget_mb"),
        ("device_id = 'a'\ndata_dir='d'\nallow_unsigned=true\n[fetch]\nchunk_kb=4096", "chunk_kb"),
        ("device_id = 'a'\ndata_dir='d'\nallow_unsigned=true\n[fetch]\nspeed=1", "unknown key"),
        ("device_id = 'a'\ndata_dir='d'\nallow_unsigned=true\n[labels]\nn=1", "labels"),
        ("device_id = = 'a'", "not valid TOML"),
    ],
)
def test_bad_configs_say_what_to_fix(tmp_path: Path, text: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        load_config(_write(tmp_path, text))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
