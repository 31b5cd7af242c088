"""Agent configuration: one TOML file read once at start into frozen dataclasses (STYLE.md §8).

    device_id = "pi-kitchen-01"
    data_dir = "/var/lib/edgectl-agent"
    memory_budget_mb = 512            # models whose measured memory would exceed this are refused
    telemetry_interval_s = 10
    trusted_keys = ["/etc/edgectl/fleet.pub"]   # manifests must be signed by one of these

    [broker]
    url = "mqtts://broker.example:8883"  # mqtt:// or mqtts://
    username = "pi-kitchen-01"
    password_file = "/etc/edgectl/broker.pass"
    tls_ca = "/etc/edgectl/ca.pem"

    [labels]
    site = "kitchen"

    [http]
    host = "127.0.0.1"
    port = 8470                          # 0 picks a free port; enabled = false turns it off

    [fetch]
    chunk_kb = 256
    window = 16
    timeout_s = 10

Relative paths are resolved against the config file's folder.

    >>> cfg = load_config(Path("/etc/edgectl/agent.toml"))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgectl.errors import UserError
from edgectl.tomlfile import config_path, read_toml
from edgectl.wire import valid_name


class ConfigError(UserError):
    """The agent config file is missing, not TOML, or has a bad field."""


@dataclass(frozen=True)
class BrokerConfig:
    url: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password: str | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    keepalive_s: int = 30


@dataclass(frozen=True)
class HttpConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8470


@dataclass(frozen=True)
class FetchConfig:
    chunk_bytes: int = 256 * 1024
    window: int = 16
    timeout_s: float = 10.0
    retries: int = 5


@dataclass(frozen=True)
class AgentConfig:
    device_id: str
    data_dir: Path
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    trusted_keys: tuple[Path, ...] = ()
    memory_budget_bytes: int | None = None
    telemetry_interval_s: float = 10.0
    labels: tuple[tuple[str, str], ...] = ()
    http: HttpConfig = field(default_factory=HttpConfig)
    fetch: FetchConfig = field(default_factory=FetchConfig)
    # Seconds between reconcile ticks when nothing happens (guard checks, retries).
    tick_s: float = 2.0
    # Allow unsigned manifests (hash-checked only). Off by default; for local experiments.
    allow_unsigned: bool = False


_TOP = {"device_id", "data_dir", "memory_budget_mb", "telemetry_interval_s", "trusted_keys", "broker", "labels",
        "http", "fetch", "tick_s", "allow_unsigned"}


def _path(base: Path, value: Any, key: str) -> Path:
    return config_path(base, value, key, "config", ConfigError)


def _number(value: Any, key: str, *, minimum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise ConfigError(f"config: {key} must be a number ≥ {minimum}, got {value!r}")
    return float(value)


def _table(raw: dict[str, Any], key: str, allowed: set[str]) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"config: [{key}] must be a table")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ConfigError(
            f"config: unknown key(s) in [{key}]: {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})"
        )
    return value


def parse_config(raw: dict[str, Any], base: Path) -> AgentConfig:
    unknown = sorted(set(raw) - _TOP)
    if unknown:
        raise ConfigError(f"config: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(_TOP))})")
    device_id = raw.get("device_id")
    if not valid_name(device_id):
        raise ConfigError(
            f"config: device_id {device_id!r} must be 1-128 letters, digits, '.', '_' or '-' (no slashes)"
        )
    assert isinstance(device_id, str)
    if "data_dir" not in raw:
        raise ConfigError("config: data_dir is missing: set it to a folder the agent owns")
    b = _table(raw, "broker", {"url", "username", "password", "password_file", "tls_ca", "tls_cert", "tls_key",
                               "keepalive_s"})
    url = b.get("url", BrokerConfig.url)
    if not isinstance(url, str) or not url.startswith(("mqtt://", "mqtts://")):
        raise ConfigError(f"config: broker.url {url!r} must start with mqtt:// or mqtts://")
    password = b.get("password")
    if "password_file" in b:
        pf = _path(base, b["password_file"], "broker.password_file")
        try:
            password = pf.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"config: cannot read broker.password_file {pf}: {exc.strerror}") from exc
    tls = {k: _path(base, b[k], f"broker.{k}") for k in ("tls_ca", "tls_cert", "tls_key") if k in b}
    for k, p in tls.items():
        if not p.is_file():
            raise ConfigError(f"config: broker.{k} {p} does not exist")
    broker = BrokerConfig(
        url=url, username=b.get("username"), password=password, tls_ca=tls.get("tls_ca"),
        tls_cert=tls.get("tls_cert"), tls_key=tls.get("tls_key"),
        keepalive_s=int(_number(b.get("keepalive_s", 30), "broker.keepalive_s", minimum=5)),
    )
    keys = raw.get("trusted_keys", [])
    if not isinstance(keys, list):
        raise ConfigError("config: trusted_keys must be a list of public key paths")
    trusted = tuple(_path(base, k, "trusted_keys[]") for k in keys)
    allow_unsigned = bool(raw.get("allow_unsigned", False))
    if not trusted and not allow_unsigned:
        raise ConfigError(
            "config: trusted_keys is empty: list the fleet's public key(s) (`edgectl keys generate`), "
            "or set allow_unsigned = true for local experiments"
        )
    labels = raw.get("labels", {})
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise ConfigError("config: [labels] must map names to strings")
    h = _table(raw, "http", {"enabled", "host", "port"})
    http = HttpConfig(
        enabled=bool(h.get("enabled", True)), host=str(h.get("host", "127.0.0.1")),
        port=int(_number(h.get("port", 8470), "http.port", minimum=0)),
    )
    f = _table(raw, "fetch", {"chunk_kb", "window", "timeout_s", "retries"})
    fetch = FetchConfig(
        chunk_bytes=int(_number(f.get("chunk_kb", 256), "fetch.chunk_kb", minimum=1)) * 1024,
        window=int(_number(f.get("window", 16), "fetch.window", minimum=1)),
        timeout_s=_number(f.get("timeout_s", 10.0), "fetch.timeout_s", minimum=0.1),
        retries=int(_number(f.get("retries", 5), "fetch.retries", minimum=0)),
    )
    if fetch.chunk_bytes > 1024 * 1024:
        raise ConfigError("config: fetch.chunk_kb must be ≤ 1024")
    budget = raw.get("memory_budget_mb")
    return AgentConfig(
        device_id=device_id,
        data_dir=_path(base, raw["data_dir"], "data_dir"),
        broker=broker,
        trusted_keys=trusted,
        memory_budget_bytes=None if budget is None else int(_number(budget, "memory_budget_mb", minimum=1)) << 20,
        telemetry_interval_s=_number(raw.get("telemetry_interval_s", 10.0), "telemetry_interval_s", minimum=0.05),
        labels=tuple(sorted(labels.items())),
        http=http,
        fetch=fetch,
        tick_s=_number(raw.get("tick_s", 2.0), "tick_s", minimum=0.01),
        allow_unsigned=allow_unsigned,
    )


def load_config(path: Path) -> AgentConfig:
    raw = read_toml(path, "agent config", "edge_agent/README.md", ConfigError)
    return parse_config(raw, path.parent.resolve())
