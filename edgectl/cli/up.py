"""``edgectl up``: a whole fleet on this machine in one command, shown live until Ctrl-C.

    edgectl up                                  # 5 simulated devices, until Ctrl-C
    edgectl up --devices 3 --duration 60 --json # a JSON summary at the end instead of the live view

It starts a broker (Mosquitto when installed, else the embedded MQTT 5 broker), the controller and N agents,
builds the bundled example (cached in the workdir), publishes and deploys it, sends requests
and shows `edgectl fleet status --watch`'s tables with the run's events underneath. The work is
``fleet.up.run_up``; this module renders it. Library logs go to ``WORKDIR/up.log``, not the
terminal. Exit code 0 when a replica served and answered correctly, 1 otherwise.

Fleet modules are imported inside the command: ``import edgectl.cli`` must stay light.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from rich.console import Group, RenderableType
from rich.markup import escape

from edgectl.cli._common import console
from edgectl.errors import OutputError

if TYPE_CHECKING:
    from fleet.up import RequestStats, UpReport, UpStatus

EVENTS_SHOWN = 8
PHASES = {
    "starting": "starting",
    "building": "building the example model (~15 s the first time, cached after)",
    "deploying": "deploying",
    "serving": "serving",
    "chaos": "injecting faults",
    "stopping": "stopping",
    "stopped": "stopped",
}


def up_command(
    devices: int = typer.Option(5, "--devices", "-n", help="How many simulated devices (agents) to start."),
    workdir: Path = typer.Option(Path(".edgectl-up"), "--workdir", help="Where the fleet keeps its files."),
    duration: float | None = typer.Option(None, "--duration", help="Stop after this many seconds (default: Ctrl-C)."),
    broker: str = typer.Option("auto", "--broker", help="auto (Mosquitto when installed, else embedded), mosquitto, "
                               "embedded (the pure-Python MQTT 5 broker) or memory (in-process, no TCP)."),
    rate: float = typer.Option(10.0, "--rate", help="Inference requests per second, over all serving replicas."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary at the end, no live view."),
    chaos: str | None = typer.Option(
        None, "--chaos", help="Faults to inject once the model serves: NAME[,NAME…] (kill-device, cut-link, "
        "broker-restart, controller-restart, slow-link, corrupt-chunk, disk-full), all, or random:N."),
    seed: int = typer.Option(0, "--seed", help="Seeds the fault schedule, its targets and the scheduler."),
    fault_s: float = typer.Option(6.0, "--fault-seconds", help="How long a timed fault lasts."),
    recovery_timeout: float = typer.Option(90.0, "--recovery-timeout",
                                           help="A fault not recovered from within this many seconds fails the run."),
) -> None:
    """Run a whole fleet on this machine: broker, controller, devices, a model deployed and serving.

    With --chaos, faults are injected one after another once the model serves; the run ends with
    a report of each fault's recovery time and of the invariants, and exits 1 when one failed."""
    from fleet.chaos import ChaosOptions, parse_chaos
    from fleet.up import UpOptions, run_up

    chaos_options = None
    if chaos is not None:
        if not fault_s > 0 or not recovery_timeout > 0:
            raise typer.BadParameter("--fault-seconds and --recovery-timeout must be positive")
        chaos_options = ChaosOptions(parse_chaos(chaos, seed), seed=seed, fault_s=fault_s,
                                     recovery_timeout_s=recovery_timeout)
    options = UpOptions(devices=devices, workdir=workdir, duration=duration, requests_per_s=rate, broker=broker,
                        seed=seed, chaos=chaos_options)
    live = not as_json and console().is_terminal
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create --workdir {workdir}: {exc.strerror}") from exc
    with _logs_to(workdir / "up.log"), _sigterm_interrupts():
        if live:
            report = _run_live(options)
        else:
            printed = [0]

            def progress(st: UpStatus) -> None:  # one line per event on stderr: stdout is the summary
                for line in st.events[printed[0]:]:
                    typer.echo(line, err=True)
                printed[0] = len(st.events)

            report = run_up(options, on_status=progress)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        typer.echo("\n".join(summary_lines(report)))  # plain: long paths must not be wrapped
    raise typer.Exit(0 if report.ok else 1)


def _run_live(options: Any) -> UpReport:
    from rich.live import Live

    from fleet.up import run_up

    with Live(Group("[dim]starting …[/]"), console=console(), auto_refresh=False) as live:
        return run_up(options, on_status=lambda st: live.update(status_view(st), refresh=True))


def status_view(st: UpStatus) -> RenderableType:
    """The live view: a head line, `fleet status`'s tables, the requests and the latest events."""
    from edgectl.cli.fleet import status_view as fleet_tables

    if st.phase in ("stopping", "stopped"):
        stop = "leaving nothing running"
    elif st.duration_s is None:
        stop = "Ctrl-C to stop"
    else:
        stop = f"stops in {max(0.0, st.duration_s - st.elapsed_s):.0f} s (Ctrl-C stops now)"
    where = _broker_name(st.broker, st.broker_url)
    head = (f"[bold]edgectl up[/] · {len(st.devices)} devices · {escape(where)} · {st.elapsed_s:.0f} s · "
            f"[cyan]{escape(PHASES.get(st.phase, st.phase))}[/] · [dim]{stop}[/]")
    parts: list[RenderableType] = [head, ""]
    if st.fleet is not None:
        parts += [fleet_tables(st.fleet), ""]
    parts.append(f"[bold]requests[/] {escape(requests_text(st.requests))}")
    parts += [f"[dim]{escape(line)}[/]" for line in st.events[-EVENTS_SHOWN:]]
    return Group(*parts)


def requests_text(r: RequestStats) -> str:
    if not r.sent:
        return "none yet: they start when the first replica serves"
    acc = f" ({r.accuracy:.1%} of answers)" if r.accuracy is not None else ""
    lat = f" · latency p50 {r.p50_ms} ms, p95 {r.p95_ms} ms" if r.p50_ms is not None else ""
    return f"{r.sent} sent, {r.ok} ok, {r.correct} correct{acc}, {r.failed} failed{lat}"


def _broker_name(kind: str, url: str | None) -> str:
    name = {"mosquitto": "Mosquitto", "embedded": "embedded broker"}.get(kind)
    return f"{name} {url}" if name and url else "the in-process broker"


def summary_lines(report: UpReport) -> list[str]:
    """The plain-text end of a run: what ran, when it served, how the requests went, what failed."""
    t = report.timeline
    where = _broker_name(report.broker, report.broker_url)
    why = "Ctrl-C" if report.interrupted else "--duration"
    lines = [f"edgectl up: {len(report.devices)} device(s) on {where}, ran {report.duration_s:.1f} s (until {why})"]
    if report.model is not None:
        m = report.model
        built = "reused from an earlier run" if m.cached else f"built in {m.build_s:.1f} s"
        lines.append(f"  model       {m.name} v{m.version} for {m.target}, signed, {built}")
        lines += [f"                {v}" for v in m.variants]
    else:
        lines.append("  model       not ready before the run ended")
    serving = ", ".join(report.serving) or "none"
    lines.append(f"  deployment  {report.deployment}: {len(report.serving)} of {report.replicas} replica(s) serving "
                 f"at the end ({serving})")
    steps = {"devices_online": "devices online", "model_ready": "model ready", "deployed": "deployed",
             "first_serving": "first replica serving", "all_serving": "all serving"}
    shown = sorted((k for k in steps if k in t), key=lambda k: t[k])  # stable: ties keep this order
    lines.append("  timeline    " + " · ".join(f"{steps[k]} {t[k]:.1f} s" for k in shown))
    lines.append(f"  requests    {requests_text(report.requests)}")
    lines.append("  devices     (simulated: same host, own budget and labels)")
    for d in report.devices:
        answered = report.requests.by_device.get(d.id, 0)
        lines.append(f"    {d.id}  {d.profile:<11} {d.labels.get('zone', '')}  site {d.labels.get('site', ''):<4}  "
                     f"{d.memory_budget_mb:>4} MB budget  HTTP :{d.http_port}  answered {answered}")
    lines.append("  errors      " + ("none" if not report.errors else f"{len(report.errors)}"))
    lines += [f"    {e}" for e in report.errors]
    lines += [f"  note        {n}" for n in report.notes]
    if report.chaos is not None:
        lines += ["  " + ln for ln in report.chaos.lines()]
    lines.append(f"  stopped     broker, controller and devices; files in {report.workdir} "
                 f"(look around: edgectl fleet events -c {report.fleet_config})")
    return lines


@contextlib.contextmanager
def _logs_to(path: Path) -> Iterator[None]:
    """The library's logs into a file for the command's duration: on the terminal they would tear
    the live view apart."""
    handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM stops the fleet like Ctrl-C does: Python's default would exit without stopping it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(*_: object) -> NoReturn:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old if old is not None else signal.SIG_DFL)
