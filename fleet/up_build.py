"""The model ``edgectl up`` deploys: the bundled example, trained and compiled in child processes
and signed with the workdir's key, reused by later runs while it still verifies.

    model = ModelBuild(Path(".edgectl-up")).run()   # or start() in the background, then .done / .result
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgectl.errors import EdgectlError

EXAMPLE = "digits-cnn"
MODEL_FILE = "digits_cnn.onnx"
TARGET = "x86_64-avx2"  # one target keeps the build short; the agents all run on this x86-64 host


class BuildFailed(EdgectlError):
    """Training or compiling the example model failed; the message names the step and the log."""


@dataclass(frozen=True)
class BuiltModel:
    folder: Path  # the --out of `edgectl compile` (one sub-folder, TARGET)
    eval_inputs: Path  # npz keyed by the input name: held out from training
    eval_labels: Path
    cached: bool
    build_s: float


class ModelBuild:
    """The bundled example, signed with the workdir's key: built once, reused by later runs.

        build = ModelBuild(Path(".edgectl-up"))
        model = build.run()          # blocking; or start() in the background, then .done / .result
    """

    def __init__(self, workdir: Path, *, on_event: Callable[[str], None] | None = None) -> None:
        self.dir = workdir / "model"
        self.example = self.dir / "example"
        self.out = self.dir / "build"
        self.key = self.dir / "keys" / "up.key"
        self.public_key = self.key.with_name(self.key.name + ".pub")
        self.log_path = self.dir / "build.log"
        self.on_event = on_event or (lambda _: None)
        self.result: BuiltModel | None = None
        self.error: BaseException | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._cancelled = threading.Event()
        self._thread: threading.Thread | None = None

    def ensure_key(self) -> Path:
        """The public key the fleet trusts (generated on first use; agents need it at start)."""
        from edgectl.signing import write_keypair

        if not (self.key.is_file() and self.public_key.is_file()):
            write_keypair(self.key, overwrite=True)
        return self.public_key

    def _stamp(self) -> dict[str, str]:
        try:
            version = importlib.metadata.version("edgectl")
        except importlib.metadata.PackageNotFoundError:
            version = "source"
        return {"edgectl": version, "example": EXAMPLE, "target": TARGET}

    def cached(self) -> BuiltModel | None:
        from edgectl.manifest import verify_dir
        from edgectl.signing import load_public_key

        stamp = self.dir / "stamp.json"
        files = (self.example / "eval.npz", self.example / "eval_labels.npy", stamp)
        try:
            if not all(f.is_file() for f in files) or json.loads(stamp.read_text()) != self._stamp():
                return None
            verify_dir(self.out / TARGET, load_public_key(self.public_key))
        except (EdgectlError, OSError, ValueError):
            return None  # changed, half-written or signed by an older key: build again
        return BuiltModel(self.out, self.example / "eval.npz", self.example / "eval_labels.npy", True, 0.0)

    def run(self) -> BuiltModel:
        t0 = time.monotonic()
        self.ensure_key()
        found = self.cached()
        if found is not None:
            self.on_event(f"model: reusing {self.out / TARGET} (built by an earlier run, signature verified)")
            return found
        shutil.rmtree(self.out, ignore_errors=True)
        (self.dir / "stamp.json").unlink(missing_ok=True)
        self.log_path.unlink(missing_ok=True)
        ex = self.example
        self._child("training the example model", ["example", EXAMPLE, "--out", str(ex)])
        self._child(f"compiling it for {TARGET}", [
            "compile", str(ex / MODEL_FILE), "--target", TARGET, "--calibration", str(ex / "calibration.npz"),
            "--eval", str(ex / "eval.npz"), "--labels", str(ex / "eval_labels.npy"), "--sign-key", str(self.key),
            "--out", str(self.out), "--json"])
        (self.dir / "stamp.json").write_text(json.dumps(self._stamp()))
        return BuiltModel(self.out, ex / "eval.npz", ex / "eval_labels.npy", False, time.monotonic() - t0)

    def _child(self, what: str, args: list[str]) -> None:
        # A child process, not a call: torch (hundreds of MB) stays out of the process hosting
        # the fleet, training gets a GIL of its own, and Ctrl-C can stop it at once.
        self.on_event(f"{what}: edgectl {shlex.join(args)}")
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)  # works from a source tree, too
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self.dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out, self._lock:
            if self._cancelled.is_set():
                raise BuildFailed("cancelled")
            out.write(f"$ edgectl {shlex.join(args)}\n".encode())
            out.flush()
            proc = self._proc = subprocess.Popen([sys.executable, "-m", "edgectl", *args], stdin=subprocess.DEVNULL,
                                                 stdout=out, stderr=subprocess.STDOUT, env=env)
        code = proc.wait()
        with self._lock:
            self._proc = None
        if self._cancelled.is_set():
            raise BuildFailed("cancelled")
        if code != 0:
            raise BuildFailed(f"{what} failed (exit code {code}): {self._log_error()}; full log in {self.log_path}")

    def _log_error(self) -> str:
        lines = [ln.strip() for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("error:")]
        if errors:
            return errors[-1].removeprefix("error:").strip()
        return "no variant passed the fidelity gate" if lines and lines[-1] == "}" else (lines or ["no output"])[-1]

    # --- in the background ---
    def start(self) -> None:
        def target() -> None:
            try:
                self.result = self.run()
            except BaseException as exc:  # handed to the thread that polls .done
                self.error = exc

        self._thread = threading.Thread(target=target, name="up-model-build", daemon=True)
        self._thread.start()

    @property
    def done(self) -> bool:
        return self._thread is not None and not self._thread.is_alive()

    def cancel(self, timeout: float = 10.0) -> None:
        """Stop a running child (SIGTERM, then SIGKILL) and wait for the build thread."""
        self._cancelled.set()
        with self._lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout / 2)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self._thread is not None:
            self._thread.join(timeout)


def prepare_model(workdir: Path) -> BuiltModel:
    """Build (or reuse) the example model of ``workdir`` now; ``run_up`` then starts with it ready."""
    return ModelBuild(Path(workdir)).run()
