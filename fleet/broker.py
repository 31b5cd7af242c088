"""The MQTT broker run by edgectl itself (``edgectl up``, the benchmarks): a child process on
127.0.0.1 and a free port, its config, persistence and log in a folder of ours, stopped (and
waited for) by ``stop()``. Two kinds with one shape::

    broker = make_broker("auto", Path(".edgectl-up/run/broker"))  # Mosquitto if installed, else embedded
    broker = MosquittoBroker(folder)   # BrokerMissing (with the install command) when not installed
    broker = EmbeddedBroker(folder)    # python -m fleet.embedded_broker: always there, pure Python
    broker.start()
    broker.url              # "mqtt://127.0.0.1:40123"
    broker.kill()           # SIGKILL (a crash); start() brings it back on the same port
    broker.stop()           # SIGTERM, then SIGKILL after a timeout; the process is reaped

Errors::

    BrokerMissing (UserError, exit 2)   the mosquitto binary is not installed
    BrokerError (exit 1)                a broker did not start (the message carries its log), or its
                                        fixed port is taken

Mosquitto persists its sessions (SIGTERM saves them, autosave every 5 s); the embedded broker
keeps them in memory, so any restart loses them and the clients subscribe and publish their
retained state again (fleet/embedded_broker.py says what it supports and why it exists).

Why these Mosquitto settings: the broker only listens on loopback, so anonymous clients are fine.
The agents fetch artifacts as windows of QoS 1 chunks, more than Mosquitto's defaults let through
(20 in flight, 1000 queued). Started as root, Mosquitto drops to the user "mosquitto", which
cannot write its persistence file in our folder: the config then names the current user. The
embedded broker has the same limits built in.

The process is started in a session of its own, so a Ctrl-C in the terminal reaches only us and
the broker outlives the agents' goodbyes (their retained "offline" states); on Linux it also gets
SIGTERM if the thread that started it dies, so a kill -9 of edgectl does not leave it behind.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TypeVar

from edgectl.errors import EdgectlError, UserError

CANDIDATES = ("mosquitto", "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/opt/homebrew/sbin/mosquitto")
INSTALL_HINT = "install it with `apt-get install mosquitto` (macOS: `brew install mosquitto`)"
# Chunks are up to 1 MB (agent fetch.chunk_kb ≤ 1024) plus headers; a little headroom over 8 MB.
MAX_PACKET_SIZE = (8 << 20) + (64 << 10)
START_ATTEMPTS = 3  # a free port can be taken by someone else between our probe and the bind


class BrokerError(EdgectlError):
    """The broker did not start or did not accept connections."""


class BrokerMissing(UserError):
    """The mosquitto binary is not installed."""


def find_mosquitto() -> str | None:
    """The mosquitto binary's path (PATH first, then the usual sbin folders), or None."""
    for name in CANDIDATES:
        found = shutil.which(name) or (name if os.path.isabs(name) and os.access(name, os.X_OK) else None)
        if found:
            return found
    return None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def accepts_connections(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGTERM the child when its parent thread dies, or None."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here: the child only calls it
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM))

    return preexec


class NotListening(Exception):
    """The child of ``spawn_listening`` exited (``code``) or kept silent (``code`` None, stopped)."""

    def __init__(self, code: int | None) -> None:
        super().__init__(code)
        self.code = code


def spawn_listening(command: list[str], host: str, port: int, timeout: float, *, stdout: IO[bytes] | int,
                    stderr: IO[bytes] | int, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``command`` in a session of its own (SIGTERM'd if our thread dies) and poll until it
    accepts connections on ``host:port``. If it exits first, or ``timeout`` passes (it is then
    stopped), raise ``NotListening``: nothing is left running either way."""
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, env=env,
                            start_new_session=True, preexec_fn=_die_with_parent())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if accepts_connections(host, port, timeout=0.2):
            return proc
        time.sleep(0.05)
    code = proc.poll()
    if code is None:
        stop_child(proc, 10.0)
    raise NotListening(code)


def stop_child(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, SIGKILL after ``timeout``; always reaped (no zombie left behind)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


_B = TypeVar("_B", bound="BrokerProcess")


class BrokerProcess:
    """A broker child process whose files live in ``folder``: what Mosquitto and the embedded
    broker share (free port, start-up poll and retry, stop, kill). Subclasses say how to start it."""

    kind = "broker"
    log_name = "broker.log"

    def __init__(self, folder: Path, *, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.dir = Path(folder)
        self.host = host
        self.port = port or 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.dir / self.log_name

    @property
    def stderr_path(self) -> Path:
        return self.dir / f"{self.log_name.split('.')[0]}.stderr"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self: _B, timeout: float = 10.0) -> _B:
        """Start the broker and wait until it accepts connections; returns self."""
        if self.running:
            return self
        fixed = bool(self.port)
        for attempt in range(1, START_ATTEMPTS + 1):
            if not fixed:
                self.port = free_port(self.host)
            try:
                self._start_once(timeout)
                return self
            except BrokerError as exc:
                if fixed or attempt == START_ATTEMPTS or "in use" not in f"{exc} {self._log_tail()}":
                    raise
        raise AssertionError("unreachable")  # the loop returns or raises

    def _start_once(self, timeout: float) -> None:
        command = self.command()
        if accepts_connections(self.host, self.port, timeout=0.2):  # else the poll below would see that one
            raise BrokerError(f"{self.host}:{self.port} is already in use by another process: stop it or "
                              "choose another port")
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            with self.stderr_path.open("wb") as err:
                self.proc = spawn_listening(command, self.host, self.port, timeout, stdout=subprocess.DEVNULL,
                                            stderr=err)
        except NotListening as exc:
            if exc.code is not None:
                raise BrokerError(f"{self.kind} exited with code {exc.code} on {self.host}:{self.port}: "
                                  f"{self._log_tail()}") from None
            raise BrokerError(f"{self.kind} did not accept connections on {self.host}:{self.port} within "
                              f"{timeout:g} s: {self._log_tail()}") from None

    def _log_tail(self, lines: int = 3) -> str:
        text = ""
        for path in (self.stderr_path, self.log_path):
            with contextlib.suppress(OSError):
                text += path.read_text(errors="replace")
        tail = [ln.strip() for ln in text.splitlines() if ln.strip()][-lines:]
        return " | ".join(tail) or "no output"

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, SIGKILL after ``timeout``; always reaped."""
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_child(proc, timeout)

    def kill(self) -> None:
        """SIGKILL, reaped: a broker crash. ``start()`` brings it back on the same port."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
        if proc is not None:
            proc.wait()

    def __enter__(self: _B) -> _B:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class MosquittoBroker(BrokerProcess):
    """One Mosquitto process whose config, persistence and log live in ``folder``. ``stop()``
    (SIGTERM) saves its sessions; ``kill()`` loses what changed since the last autosave (5 s)."""

    kind = "mosquitto"
    log_name = "mosquitto.log"

    def __init__(self, folder: Path, *, host: str = "127.0.0.1", port: int | None = None,
                 binary: str | None = None) -> None:
        super().__init__(folder, host=host, port=port)
        self.binary = binary

    def command(self) -> list[str]:
        binary = self.binary or find_mosquitto()
        if binary is None:
            raise BrokerMissing(f"mosquitto is not installed: {INSTALL_HINT}")
        return [binary, "-c", str(self.write_config())]

    def write_config(self) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        user = f"user {getpass.getuser()}\n" if hasattr(os, "geteuid") and os.geteuid() == 0 else ""
        conf = self.dir / "mosquitto.conf"
        conf.write_text(
            "# Written by edgectl (fleet/broker.py): rewritten on every start.\n"
            f"listener {self.port} {self.host}\n"
            f"{user}"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {self.dir.resolve()}/\n"
            "autosave_interval 5\n"
            "max_inflight_messages 1000\n"
            "max_queued_messages 100000\n"
            "max_queued_bytes 0\n"
            f"max_packet_size {MAX_PACKET_SIZE}\n"
            "set_tcp_nodelay true\n"
            f"log_dest file {self.log_path.resolve()}\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
        )
        return conf


class EmbeddedBroker(BrokerProcess):
    """The pure-Python MQTT 5 broker (fleet/embedded_broker.py) as a child process, with its log
    in ``folder``. Sessions and retained messages live in its memory: ``stop()`` and ``kill()``
    both lose them (the clients re-subscribe and re-publish on reconnect)."""

    kind = "embedded broker"
    log_name = "embedded-broker.log"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "fleet.embedded_broker", "--host", self.host, "--port", str(self.port),
                "--log", str(self.log_path.resolve())]


def make_broker(kind: str, folder: Path, *, host: str = "127.0.0.1", port: int | None = None) -> BrokerProcess:
    """``"mosquitto"`` or ``"embedded"``; ``"auto"`` is Mosquitto when installed, else embedded."""
    if kind == "auto":
        kind = "mosquitto" if find_mosquitto() is not None else "embedded"
    if kind == "mosquitto":
        return MosquittoBroker(folder, host=host, port=port)
    if kind == "embedded":
        return EmbeddedBroker(folder, host=host, port=port)
    raise UserError(f"broker {kind!r} must be one of auto, mosquitto, embedded")
