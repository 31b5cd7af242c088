"""Load and self-test a candidate artifact in a child process before the agent loads it.

A model can crash its runtime (a segfault or abort in a kernel, a malformed flatbuffer that
LiteRT trusts, memory blown up by a shape): in the agent's own process that would take the
daemon down with every model it serves. So the agent first runs the candidate here, in a
child, with a timeout; only a model that loads, passes its self-test and fits the memory
budget is then loaded in-process (see ``serving``)::

    result = probe(Path("digits_cnn.int8.onnx"), "onnxruntime",
                   selftest_npz=Path("selftest.npz"), variant="int8", atol=0.59)
    if not result.ok:
        report_failure(result.reason)              # one line: what happened and what to do
    elif result.rss_delta_bytes > budget_bytes:    # what loading it in-process will cost
        ...

    parent ── python -m edge_agent.probe FILE RUNTIME [--selftest NPZ --variant V --atol A] ──► child
           ◄── one JSON object on stdout (the child's native stdout goes to stderr) ────────────┘
           exit by signal / timeout / no JSON  →  ok=False with the reason

Memory, measured by the child on itself (``VmHWM`` on Linux, reset just before loading):

    runtime_rss_bytes   importing the runtime library (paid once per runtime in the agent)
    rss_delta_bytes     peak RSS during load + self-test + timed runs, minus RSS before loading
                        (runtime already imported): what one more model costs in-process
    peak_rss_bytes      the child's peak RSS over the same span (includes Python and numpy)

Test hook: ``EDGECTL_PROBE_CRASH=1`` in the child's environment makes it ``os.abort()`` right
after loading, to exercise the crash path with a real signal.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

DEFAULT_TIMEOUT_S = 60.0
LATENCY_RUNS = 20
WARMUP_RUNS = 3
CRASH_HOOK = "EDGECTL_PROBE_CRASH"


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    reason: str | None
    peak_rss_bytes: int
    rss_delta_bytes: int
    load_ms: float
    latency_ms: float | None  # median of batch-1 runs (the model's fixed batch if it has one)
    runtime_rss_bytes: int = 0
    selftest_max_abs: float | None = None
    wall_ms: float = 0.0  # the whole probe, child start-up included

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def probe(
    path: Path,
    runtime: str,
    selftest_npz: Path | None = None,
    variant: str | None = None,
    atol: float | None = None,
    *,
    threads: int | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    latency_runs: int = LATENCY_RUNS,
) -> ProbeResult:
    """Load (and self-test, when ``selftest_npz`` is given) ``path`` in a child process."""
    if selftest_npz is not None and (variant is None or atol is None):
        raise ValueError("a self-test needs the variant name and its atol")
    cmd = [sys.executable, "-m", "edge_agent.probe", str(path), runtime, "--runs", str(latency_runs)]
    if selftest_npz is not None:
        cmd += ["--selftest", str(selftest_npz), "--variant", str(variant), "--atol", repr(atol)]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout, env=_child_env(), check=False)
    except subprocess.TimeoutExpired:  # run() has killed the child already
        return _failed(f"loading {path.name} did not finish within {timeout:g} s: the runtime hangs on it", t0)
    except OSError as exc:
        return _failed(f"cannot start the probe process ({exc.strerror}): check the agent's Python install", t0)
    wall_ms = (time.perf_counter() - t0) * 1e3
    if proc.returncode < 0:
        return _failed(_signal_reason(path, runtime, -proc.returncode, proc.stderr), t0)
    try:
        doc = json.loads(proc.stdout)
        return ProbeResult(**{**doc, "wall_ms": wall_ms})
    except (ValueError, TypeError):
        tail = _stderr_tail(proc.stderr)
        return _failed(f"the probe of {path.name} exited with code {proc.returncode} and no result ({tail})", t0)


def _child_env() -> dict[str, str]:
    # The child must import this package even when the agent runs from a source tree that is
    # on sys.path but not installed: put the tree first on its PYTHONPATH.
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _failed(reason: str, t0: float) -> ProbeResult:
    return ProbeResult(False, reason, 0, 0, 0.0, None, wall_ms=(time.perf_counter() - t0) * 1e3)


def _signal_reason(path: Path, runtime: str, signum: int, stderr: bytes) -> str:
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    hint = " (the kernel's OOM killer sends it: the model needs more memory than the device has)" \
        if signum == signal.SIGKILL else ""
    tail = _stderr_tail(stderr)
    detail = f"; last output: {tail}" if tail != "no output" else ""
    return f"{runtime} crashed loading {path.name}: killed by {name}{hint}{detail}; do not deploy this artifact here"


def _stderr_tail(stderr: bytes, limit: int = 200) -> str:
    # LiteRT prints "INFO: Created TensorFlow Lite XNNPACK delegate" on every load: not news.
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("INFO:")]
    return lines[-1][:limit] if lines else "no output"


# --- the child -----------------------------------------------------------------------------------

def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (Linux ≥ 4.0), so the peak covers only what follows."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # bytes on macOS, KiB elsewhere


def _import_runtime(runtime: str) -> None:
    """Import the runtime library before the baseline, so its cost is measured apart."""
    try:
        if runtime == "onnxruntime":
            import onnxruntime  # noqa: F401
        else:
            from edge_agent.runtime import litert_interpreter_class

            litert_interpreter_class()
    except ImportError:
        pass  # open_runner reports the missing runtime with the pip command


def _latency_feed(runner: Any, selftest_npz: Path | None) -> dict[str, Any]:
    import numpy as np

    first = runner.inputs[0].shape[0] if runner.inputs and runner.inputs[0].shape else None
    batch = first or 1
    if selftest_npz is not None:
        with np.load(selftest_npz, allow_pickle=False) as npz:
            return {s.name: npz[f"input.{s.name}"][:batch] for s in runner.inputs}
    return {s.name: np.zeros([d if d is not None else 1 for d in s.shape], dtype=s.dtype) for s in runner.inputs}


def _child(args: argparse.Namespace, crash: bool) -> dict[str, Any]:
    import numpy as np

    from edge_agent.runtime import open_runner, selftest

    rss_start = _rss()
    _import_runtime(args.runtime)
    rss_before = _rss()
    if not _reset_peak():
        rss_before = max(rss_before, _peak_rss())  # no reset: the old peak is the floor
    t0 = time.perf_counter()
    runner = open_runner(Path(args.path), args.runtime, threads=args.threads)
    load_ms = (time.perf_counter() - t0) * 1e3
    if crash:
        os.abort()
    result: dict[str, Any] = {"ok": True, "reason": None, "load_ms": load_ms, "latency_ms": None,
                              "selftest_max_abs": None}
    if args.selftest is not None:
        st = selftest(runner, Path(args.selftest), args.variant, args.atol)
        result.update(ok=st.ok, reason=st.reason, selftest_max_abs=st.max_abs)
    if result["ok"] and args.runs > 0:
        feed = _latency_feed(runner, Path(args.selftest) if args.selftest else None)
        for _ in range(WARMUP_RUNS):
            runner.run(feed)
        times = []
        for _ in range(args.runs):
            t = time.perf_counter()
            runner.run(feed)
            times.append(time.perf_counter() - t)
        result["latency_ms"] = float(np.median(times)) * 1e3
    peak = max(_peak_rss(), _rss())
    runner.close()
    return {**result, "peak_rss_bytes": peak, "rss_delta_bytes": max(0, peak - rss_before),
            "runtime_rss_bytes": max(0, rss_before - rss_start)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge_agent.probe", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("runtime")
    parser.add_argument("--selftest")
    parser.add_argument("--variant")
    parser.add_argument("--atol", type=float)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--runs", type=int, default=LATENCY_RUNS)
    args = parser.parse_args(argv)
    # The JSON result goes to the real stdout; anything native code prints goes to stderr.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    from edge_agent.runtime import one_line
    from edgectl.errors import EdgectlError

    try:
        doc = _child(args, crash=os.environ.get(CRASH_HOOK) == "1")  # entry point: env read here only
    except EdgectlError as exc:
        doc = {"ok": False, "reason": str(exc)}
    except Exception as exc:
        doc = {"ok": False, "reason": f"probing {Path(args.path).name} failed ({one_line(exc)})"}
    if not doc["ok"]:
        doc = {"peak_rss_bytes": 0, "rss_delta_bytes": 0, "load_ms": 0.0, "latency_ms": None, **doc}
    out.write(json.dumps(doc))
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
