"""What the agent keeps on disk, and how it changes it without ever leaving it half-written.

    data_dir/
      state.json                 per deployment: the serving version, the previous one, versions
                                 that failed here (written to a temp file, fsynced, renamed)
      artifacts/<sha>.<file>/    an installed artifact (manifest sha + the file it serves):
                                 manifest.json, that file, selftest.npz; immutable once in place
      staging/<sha16>.*          an artifact being assembled (removed at start-up)
      partial/<sha256>.part      a file being fetched; the verified prefix survives restarts

Nothing is written outside ``data_dir``: every name that reaches a path is checked with
``edgectl.wire.valid_name`` / ``valid_sha256`` first.

    store = InstallStore(Path("/var/lib/edgectl-agent"))
    state = store.load_state()
    path = store.commit(staging_dir, Installed(manifest_sha, "digits_cnn.int8.onnx"))
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgectl import wire
from edgectl.errors import EdgectlError

log = logging.getLogger(__name__)
STATE_VERSION = 1


class StoreError(EdgectlError):
    """The data dir cannot be written or holds something the agent did not put there."""


@dataclass
class Installed:
    manifest_sha256: str
    variant: str  # the file served, e.g. "digits_cnn.int8.onnx"

    @property
    def key(self) -> str:
        return f"{self.manifest_sha256}.{self.variant}"


@dataclass
class DeploymentState:
    current: Installed | None = None
    previous: Installed | None = None
    failed: dict[str, str] = field(default_factory=dict)  # manifest sha → why it failed here
    memory_bytes: int = 0  # measured when it was probed


@dataclass
class AgentState:
    generation: int = -1
    deployments: dict[str, DeploymentState] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps({"v": STATE_VERSION, **asdict(self)}, indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> AgentState:
        doc = json.loads(raw)
        if doc.get("v") != STATE_VERSION:
            raise ValueError(f"state version {doc.get('v')!r}")
        deps = {}
        for name, d in doc["deployments"].items():
            deps[name] = DeploymentState(
                current=Installed(**d["current"]) if d.get("current") else None,
                previous=Installed(**d["previous"]) if d.get("previous") else None,
                failed=dict(d.get("failed", {})),
                memory_bytes=int(d.get("memory_bytes", 0)),
            )
        return cls(generation=int(doc["generation"]), deployments=deps)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


class InstallStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.artifacts = root / "artifacts"
        self.staging = root / "staging"
        self.partial = root / "partial"
        self.state_path = root / "state.json"
        try:
            for d in (self.artifacts, self.staging, self.partial):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the agent data dir {root}: {exc.strerror}") from exc

    # --- state ------------------------------------------------------------------------------
    def load_state(self) -> AgentState:
        try:
            raw = self.state_path.read_bytes()
        except FileNotFoundError:
            return AgentState()
        try:
            return AgentState.from_json(raw)
        except (ValueError, KeyError, TypeError) as exc:
            # Only this agent writes the file, atomically; a bad one means outside damage. Keep
            # it for a post-mortem and start empty rather than refuse to run.
            bad = self.state_path.with_suffix(".json.bad")
            os.replace(self.state_path, bad)
            log.error("state file %s was unreadable (%s); moved to %s and starting empty", self.state_path, exc, bad)
            return AgentState()

    def save_state(self, state: AgentState) -> None:
        write_atomic(self.state_path, state.to_json())

    # --- artifacts --------------------------------------------------------------------------
    def artifact_dir(self, inst: Installed) -> Path:
        if not wire.valid_sha256(inst.manifest_sha256) or not wire.valid_name(inst.variant):
            raise StoreError(f"{inst.manifest_sha256!r} / {inst.variant!r} is not a sha256 and a file name")
        return self.artifacts / inst.key

    def installed(self, inst: Installed) -> Path | None:
        path = self.artifact_dir(inst)
        return path if path.is_dir() else None

    def new_staging(self, inst: Installed) -> Path:
        self.artifact_dir(inst)  # validates the names
        return Path(tempfile.mkdtemp(dir=self.staging, prefix=f"{inst.manifest_sha256[:16]}."))

    def commit(self, staging: Path, inst: Installed) -> Path:
        """fsync every staged file, then rename the folder into place in one step."""
        dest = self.artifact_dir(inst)
        for f in staging.iterdir():
            with f.open("rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(staging)
        if dest.exists():  # installed meanwhile (same bytes: content-addressed); keep the old one
            shutil.rmtree(staging, ignore_errors=True)
            return dest
        os.replace(staging, dest)
        fsync_dir(self.artifacts)
        return dest

    def clean_staging(self) -> None:
        for d in self.staging.iterdir():
            shutil.rmtree(d, ignore_errors=True)

    def gc(self, keep: set[str]) -> list[str]:
        """Remove installed artifacts no deployment refers to; returns what was removed."""
        removed = []
        for d in self.artifacts.iterdir():
            if d.name not in keep:
                shutil.rmtree(d, ignore_errors=True)
                removed.append(d.name)
        return removed

    def referenced(self, state: AgentState) -> set[str]:
        keep: set[str] = set()
        for dep in state.deployments.values():
            for inst in (dep.current, dep.previous):
                if inst is not None:
                    keep.add(inst.key)
        return keep
