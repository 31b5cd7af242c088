"""The fleet controller as a child process (``edgectl fleet serve -c fleet.toml``), so that
``edgectl up --chaos controller-restart`` can kill -9 it and start it again on the same store::

    ctl = ControllerProcess(Path("fleet.toml"), http_port=8480, log_path=Path("controller.log"))
    ctl.start()        # waits until its HTTP API answers
    ctl.kill()         # SIGKILL, reaped: no clean shutdown, the store is whatever was committed
    ctl.start()        # a new process on the same config, store and artifacts
    ctl.stop()         # SIGTERM, then SIGKILL after a timeout

Like Mosquitto in ``fleet/broker.py`` it runs in a session of its own (a Ctrl-C reaches only
``edgectl up``, which stops it in order) and gets SIGTERM from Linux if its parent dies.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from edgectl.errors import EdgectlError
from fleet.broker import NotListening, spawn_listening, stop_child


class ControllerError(EdgectlError):
    """The controller process exited or did not open its HTTP port in time."""


class ControllerProcess:
    def __init__(self, config: Path, *, http_port: int, log_path: Path) -> None:
        self.config = config
        self.http_port = http_port
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 60.0) -> int:
        """Start it and wait until its HTTP API accepts connections; returns the pid."""
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)  # works from a source tree, too
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "edgectl", "fleet", "serve", "-c", str(self.config)]
        try:
            with self.log_path.open("ab") as out:
                self.proc = spawn_listening(command, "127.0.0.1", self.http_port, timeout, stdout=out,
                                            stderr=subprocess.STDOUT, env=env)
        except NotListening as exc:
            if exc.code is not None:
                raise ControllerError(f"the controller exited with code {exc.code}; see {self.log_path}") from None
            raise ControllerError(f"the controller did not open port {self.http_port} within {timeout:g} s; "
                                  f"see {self.log_path}") from None
        return self.proc.pid

    def kill(self) -> int | None:
        """SIGKILL and reap; returns the pid killed."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        return proc.pid

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_child(proc, timeout)
