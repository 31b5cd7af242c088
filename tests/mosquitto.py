"""A throwaway Mosquitto broker on 127.0.0.1 and a free port, for integration tests and benchmarks.

The broker persists its sessions in ``tmp_dir`` so a restart on the same port (``stop()`` then
``start()``) resumes them, which is what the fault tests need::

    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    settings = MqttSettings(url=broker.url, client_id="dev-1")
    ...
    broker.stop()     # SIGTERM: sessions are saved
    broker.start()    # same port, same sessions
    broker.kill()     # SIGKILL: nothing saved since the last autosave

The pytest fixtures ``mosquitto`` (per test) and ``mosquitto_session`` (per run) live in
``tests/conftest.py``.
"""

from __future__ import annotations

import getpass
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

_CANDIDATES = ("mosquitto", "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/opt/homebrew/sbin/mosquitto")


class MosquittoMissing(RuntimeError):
    """The mosquitto binary is not installed."""


def find_mosquitto() -> str:
    for name in _CANDIDATES:
        path = shutil.which(name) or (name if Path(name).is_file() else None)
        if path:
            return path
    raise MosquittoMissing("the mosquitto broker is not installed; run scripts/bootstrap.sh (it installs it)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mosquitto:
    """One broker process; ``start()`` may be called again after ``stop()``/``kill()`` and
    reuses the port and the persisted sessions."""

    def __init__(self, tmp_dir: Path, *, port: int | None = None, max_packet_size: int = (8 << 20) + (64 << 10),
                 anonymous: bool = True, extra_conf: str = "") -> None:
        self.dir = Path(tmp_dir)
        self.port = port or free_port()
        self.max_packet_size = max_packet_size
        self.anonymous = anonymous
        self.extra_conf = extra_conf
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.dir / "mosquitto.log"

    def write_conf(self) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "mosquitto.conf"
        conf.write_text(
            f"""\
listener {self.port} 127.0.0.1
# Started as root, Mosquitto drops to user "mosquitto", which cannot write the log or the
# persistence file here, and a restart then loses every session. No effect for other users.
user {getpass.getuser()}
allow_anonymous {"true" if self.anonymous else "false"}
persistence true
persistence_location {self.dir}/
autosave_interval 1
# Chunk transfers keep a window of QoS 1 messages in flight and may queue thousands for a
# device that is away; the defaults (20 in flight, 1000 queued) would drop or throttle them.
max_inflight_messages 1000
max_queued_messages 100000
max_queued_bytes 0
max_packet_size {self.max_packet_size}
set_tcp_nodelay true
log_dest file {self.log_path}
log_type error
log_type warning
log_type notice
{self.extra_conf}
"""
        )
        return conf

    def start(self, timeout: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        binary = find_mosquitto()
        conf = self.write_conf()
        self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode} on port {self.port}:\n{err}{log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"mosquitto did not accept connections on port {self.port} within {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: Mosquitto saves its sessions and exits."""
        self._signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL: an abrupt broker crash."""
        self._signal(signal.SIGKILL, 10.0)

    def freeze(self) -> None:
        """SIGSTOP: the broker hangs (connections stay open, nothing is acknowledged)."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    def _signal(self, sig: int, timeout: float) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        if sig != signal.SIGKILL:
            proc.send_signal(signal.SIGCONT)  # a frozen broker cannot act on SIGTERM
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
