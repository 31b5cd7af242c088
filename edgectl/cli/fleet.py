"""``edgectl fleet …``: the controller and the operations on its store (publish, deploy, status …).

Every command reads ``--config`` (``fleet.toml``, see ``fleet/config.py``) and works on the store it
names, so they work whether or not a controller is running: the controller's reconcile loop picks
up what they write. The fleet modules are imported inside the commands: ``import edgectl.cli``
must not load SQLAlchemy (the [agent] extra does not have it).

    edgectl fleet publish build/digits
    edgectl fleet deploy digits_cnn --replicas 2 --selector site=lab --max-p95-ms 20
    edgectl fleet explain digits_cnn --device pi-07        # why (not) this device
    edgectl fleet status --watch
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table

from edgectl.cli._common import console, one_line_errors
from edgectl.errors import UserError

if TYPE_CHECKING:
    from fleet.config import FleetConfig
    from fleet.model import DeploymentSpec
    from fleet.scheduler import Verdict
    from fleet.store import Store

app = typer.Typer(help="Run the fleet controller and manage what the fleet runs.", no_args_is_help=True)

ConfigOpt = typer.Option(Path("fleet.toml"), "--config", "-c", help="The fleet.toml to read (see fleet/config.py).")
JsonOpt = typer.Option(False, "--json", help="Machine-readable output.")
STRATEGIES = ("binpack", "spread")


# --- plumbing --------------------------------------------------------------------------------------

def _config(path: Path) -> FleetConfig:
    from fleet.config import load_fleet_config

    return load_fleet_config(path)


@contextmanager
def _opened(path: Path) -> Iterator[tuple[FleetConfig, Store]]:
    """The config and its store, closed on the way out."""
    cfg = _config(path)
    from fleet.store import open_store

    store = open_store(cfg.store_url)
    try:
        yield cfg, store
    finally:
        store.close()


def _plain(value: Any) -> Any:
    """Dataclasses, mappings and sets as JSON-ready values (sets sorted)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, set | frozenset):
        return sorted(_plain(v) for v in value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _echo_json(data: Any) -> None:
    typer.echo(json.dumps(_plain(data), indent=2, ensure_ascii=False))


def _when(ts: float | None) -> str:
    return "—" if not ts else datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _dash(value: Any, fmt: str = "{}") -> str:
    return "—" if value is None else fmt.format(value)


# --- serve and publish -----------------------------------------------------------------------------

@app.command("serve")
@one_line_errors
def serve_command(
    config: Path = ConfigOpt,
    log_level: str = typer.Option("INFO", "--log-level", help="DEBUG, INFO, WARNING or ERROR."),
) -> None:
    """Run the controller (registry, scheduler, rollouts, artifact server, HTTP API) until stopped."""
    import logging

    cfg = _config(config)
    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from fleet.controller import serve

    raise typer.Exit(serve(cfg))


@app.command("publish")
@one_line_errors
def publish_command(
    folder: Path = typer.Argument(..., help="The --out folder of `edgectl compile` (or one target's folder)."),
    config: Path = ConfigOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Verify a compile output against the trusted keys and register it as the model's next version."""
    from edge_agent.verify import load_trusted_keys
    from fleet.artifacts import ArtifactStore
    from fleet.ops import publish_dir

    with _opened(config) as (cfg, store):
        keys = load_trusted_keys(cfg.trusted_keys)
        known = {(m.name, m.version) for m in store.list_models()}
        mv = publish_dir(store, ArtifactStore(cfg.artifact_dir), folder, keys, allow_unsigned=cfg.allow_unsigned)
        variants = store.get_variants(mv.name, mv.version)
    new = (mv.name, mv.version) not in known
    if as_json:
        _echo_json({"model": mv.name, "version": mv.version, "new": new, "registered": mv.registered,
                    "targets": sorted(mv.manifests), "manifests": dict(mv.manifests),
                    "variants": [v.key for v in variants]})
        return
    head = "published" if new else "already published:"
    typer.echo(f"{head} {mv.name} v{mv.version} ({len(variants)} variants for {len(mv.manifests)} targets)")
    width = max(map(len, mv.manifests), default=0)
    for target, sha in sorted(mv.manifests.items()):
        files = ", ".join(f"{v.precision}/{v.runtime}" for v in variants if v.target == target)
        typer.echo(f"  {target:<{width}}  manifest {sha}  {files}")


# --- deploy and undeploy ---------------------------------------------------------------------------

def _selector(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        for part in item.split(","):
            key, sep, value = (s.strip() for s in part.partition("="))
            if not sep or not key or not value:
                raise UserError(f"--selector {part.strip()!r} is not key=value: e.g. --selector site=lab")
            if out.get(key, value) != value:
                raise UserError(f"--selector names {key} twice ({out[key]} and {value}): a device has one value")
            out[key] = value
    return out


def _percent(text: str) -> float:
    try:
        value = float(text.strip().removesuffix("%"))
    except ValueError:
        value = math.nan
    if not 0 <= value <= 100:  # NaN fails too
        raise UserError(f"--canary {text!r} is not a percentage from 0 to 100: e.g. --canary 10%")
    return value


def _precisions(text: str) -> tuple[str, ...]:
    from edgectl.targets import PRECISIONS

    names = tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    bad = [p for p in names if p not in PRECISIONS]
    if bad or not names:
        raise UserError(f"--precision {text!r}: unknown precision {', '.join(bad) or '(none given)'}; "
                        f"list some of {', '.join(PRECISIONS)} in order of preference, e.g. int8,fp32")
    return names


def _spec(model: str, name: str | None, replicas: int | None, every: bool, version: int | None,
          selector: list[str], max_p95_ms: float | None, strategy: str, canary: str, max_unavailable: int,
          precision: str) -> DeploymentSpec:
    """The DeploymentSpec the flags describe, or a UserError naming the flag that is wrong."""
    from fleet.model import DeploymentSpec

    if (replicas is None) == (not every):
        raise UserError("give either --replicas N or --all (every matching device), not both or neither")
    if replicas is not None and replicas < 1:
        raise UserError(f"--replicas {replicas} must be at least 1: `edgectl fleet undeploy` removes a deployment")
    if version is not None and version < 1:
        raise UserError(f"--version {version} must be at least 1 (omit it for the latest)")
    if max_p95_ms is not None and not max_p95_ms > 0:
        raise UserError(f"--max-p95-ms {max_p95_ms:g} must be a positive number of milliseconds")
    if strategy not in STRATEGIES:
        raise UserError(f"--strategy {strategy!r} must be binpack (fill devices) or spread (balance them)")
    if max_unavailable < 1:
        raise UserError(f"--max-unavailable {max_unavailable} must be at least 1, or a rollout could never start")
    return DeploymentSpec(
        name=name or model, model=model, version=version or 0, replicas=replicas, selector=_selector(selector),
        max_p95_ms=max_p95_ms, strategy=strategy, canary_percent=_percent(canary), max_unavailable=max_unavailable,
        precisions=_precisions(precision),
    )


@app.command("deploy")
@one_line_errors
def deploy_command(
    model: str = typer.Argument(..., help="A published model's name."),
    replicas: int | None = typer.Option(None, "--replicas", "-n", help="How many devices run it."),
    every: bool = typer.Option(False, "--all", help="Run it on every device that matches and fits."),
    version: int | None = typer.Option(None, "--version", help="Model version (default: the latest)."),
    selector: list[str] = typer.Option([], "--selector", "-l", help="Device label key=value (repeat, or a,b)."),
    max_p95_ms: float | None = typer.Option(None, "--max-p95-ms", help="Latency SLO: skip devices measured slower."),
    strategy: str = typer.Option("binpack", "--strategy", help="binpack (fill devices) or spread (balance)."),
    canary: str = typer.Option("0%", "--canary", help="Share of replicas a new version reaches first, e.g. 10%."),
    max_unavailable: int = typer.Option(1, "--max-unavailable", help="Replicas a rollout may take down at once."),
    precision: str = typer.Option("int8,fp16,fp32", "--precision", help="Accepted precisions, preferred first."),
    name: str | None = typer.Option(None, "--name", help="Deployment name (default: the model's)."),
    config: Path = ConfigOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Create a deployment, change it, or roll it out to another version (the controller places it)."""
    from fleet.ops import deploy

    spec = _spec(model, name, replicas, every, version, selector, max_p95_ms, strategy, canary, max_unavailable,
                 precision)
    with _opened(config) as (_, store):
        result = deploy(store, spec)
        stored = store.get_deployment(spec.name)
    if as_json:
        _echo_json({"result": result, "deployment": stored})
    else:
        typer.echo(result)


@app.command("undeploy")
@one_line_errors
def undeploy_command(
    name: str = typer.Argument(..., help="The deployment's name."),
    config: Path = ConfigOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Delete a deployment: its devices unload it on their next desired state."""
    from fleet.ops import undeploy

    with _opened(config) as (_, store):
        devices = undeploy(store, name)
    if as_json:
        _echo_json({"name": name, "devices": devices})
    else:
        typer.echo(f"undeployed {name}: removed from {len(devices)} device(s)")


# --- status ----------------------------------------------------------------------------------------

def _models_cell(models: list[dict[str, Any]]) -> str:
    colors = {"serving": "green", "failed": "red", "rolled_back": "red", "rejected": "red"}
    cells = []
    for m in models:
        state = escape(m["state"])
        color = colors.get(m["state"], "yellow")
        cells.append(f"{escape(m['deployment'])}@{m['version']} [{color}]{state}[/]")
    return "\n".join(cells) or "—"


def status_view(data: Mapping[str, Any]) -> RenderableType:
    """The two tables of ``fleet status``: devices and deployments (``edgectl up`` shows them too).

    ``data`` is what ``fleet.ops.status`` returns."""
    devices = Table("device", "arch", "online", "CPU %", "memory used", "temp", "models", title="devices",
                    title_justify="left")
    for d in data["devices"]:
        online = "[green]yes[/]" if d["online"] else "[red]no[/]"
        if d["draining"]:
            online += " (draining)"
        devices.add_row(escape(d["id"]), escape(d["arch"]), online, f"{d['cpu_percent']:.0f}",
                        _dash(d["memory_used_percent"], "{:.0f} %"), _dash(d["temperature_c"], "{:.0f} °C"),
                        _models_cell(d["models"]))
    if not data["devices"]:
        devices.caption = "no devices yet: agents appear here when they connect to the broker"
    deployments = Table("deployment", "model", "desired", "running", "failed", "pending", "rollout",
                        title="deployments", title_justify="left")
    for s in data["deployments"]:
        r = s["rollout"]
        rollout = "—" if r is None else f"v{_dash(r['from'])} → v{r['to']} {escape(r['state'])}"
        failed = f"[red]{s['failed']}[/]" if s["failed"] else "0"
        deployments.add_row(escape(s["name"]), escape(f"{s['model']}@{s['version']}"), str(s["desired"]),
                            str(s["running"]), failed, str(s["pending"]), rollout)
    if not data["deployments"]:
        deployments.caption = "no deployments: `edgectl fleet deploy MODEL --replicas N`"
    return Group(devices, "", deployments)


@app.command("status")
@one_line_errors
def status_command(
    config: Path = ConfigOpt,
    as_json: bool = JsonOpt,
    watch: bool = typer.Option(False, "--watch", "-w", help="Refresh until Ctrl-C."),
    interval: float = typer.Option(2.0, "--interval", help="Seconds between refreshes with --watch."),
) -> None:
    """Devices (load, memory, models and their state) and deployments (desired / running / failed)."""
    from fleet.ops import status

    if not interval > 0:
        raise UserError(f"--interval {interval:g} must be a positive number of seconds")
    with _opened(config) as (_, store):
        if as_json:
            _echo_json(status(store))
        elif not watch:
            console().print(status_view(status(store)))
        else:
            _watch(store, interval)


def _watch(store: Store, interval: float) -> None:
    from rich.live import Live

    from fleet.ops import status

    def view() -> RenderableType:
        data = status(store)
        stamp = datetime.fromtimestamp(data["ts"]).strftime("%H:%M:%S")
        return Group(status_view(data), f"[dim]{stamp} · every {interval:g} s · Ctrl-C to stop[/]")

    try:
        with Live(view(), console=console(), auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                live.update(view(), refresh=True)
    except KeyboardInterrupt:
        pass  # the way to stop watching: not an error


# --- inventories -----------------------------------------------------------------------------------

@app.command("devices")
@one_line_errors
def devices_command(config: Path = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """The devices the controller knows: what they announced and when they were last heard of."""
    with _opened(config) as (_, store):
        found = store.list_devices()
    if as_json:
        _echo_json(found)
        return
    table = Table("device", "arch", "isa", "runtimes", "labels", "memory", "online", "last seen")
    for d in found:
        online = ("[green]yes[/]" if d.online else "[red]no[/]") + (" (draining)" if d.draining else "")
        labels = " ".join(f"{k}={v}" for k, v in sorted(d.labels.items()))
        table.add_row(escape(d.id), escape(d.arch), escape(" ".join(sorted(d.isa))),
                      escape(" ".join(sorted(d.runtimes))), escape(labels) or "—", f"{d.memory_total >> 20} MB",
                      online, _when(d.last_seen))
    console().print(table)


@app.command("deployments")
@one_line_errors
def deployments_command(config: Path = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """The deployments as specified (`edgectl fleet status` shows how many replicas run)."""
    with _opened(config) as (_, store):
        found = store.list_deployments()
    if as_json:
        _echo_json(found)
        return
    table = Table("deployment", "model", "replicas", "selector", "strategy", "precisions", "max p95", "canary")
    for s in found:
        selector = " ".join(f"{k}={v}" for k, v in sorted(s.selector.items()))
        replicas = "all" if s.replicas is None else str(s.replicas)
        table.add_row(escape(s.name), escape(f"{s.model}@{s.version}"), replicas,
                      escape(selector) or "—", s.strategy, ",".join(s.precisions), _dash(s.max_p95_ms, "{:g} ms"),
                      f"{s.canary_percent:g} %")
    console().print(table)


@app.command("events")
@one_line_errors
def events_command(
    since: int = typer.Option(0, "--since", help="Only events after this id (the last one you saw)."),
    limit: int = typer.Option(100, "--limit", help="At most this many, oldest first."),
    subject: str | None = typer.Option(None, "--subject", help="Only events about this device or deployment."),
    config: Path = ConfigOpt,
    as_json: bool = JsonOpt,
) -> None:
    """The controller's event log: publishes, deploys, placements, rollouts, devices coming and going."""
    if limit < 1:
        raise UserError(f"--limit {limit} must be at least 1")
    with _opened(config) as (_, store):
        found = store.list_events(since_id=since, limit=limit, subject=subject)
    if as_json:
        _echo_json(found)
        return
    table = Table("id", "time", "kind", "subject", "message")
    for e in found:
        table.add_row(str(e.id), _when(e.ts), escape(e.kind), escape(e.subject), escape(e.message))
    console().print(table)


# --- explain ---------------------------------------------------------------------------------------

def _verdict_json(v: Verdict) -> dict[str, Any]:
    variant = v.variant
    return {
        "device": v.device, "feasible": v.feasible, "score": v.score, "scores": dict(v.scores),
        "variant": None if variant is None else {"key": variant.key, "target": variant.target, "file": variant.file,
                                                 "precision": variant.precision, "runtime": variant.runtime},
        "rejections": [{"filter": r.filter, "reason": r.reason} for r in v.rejections], "notes": list(v.notes),
    }


def _explain_lines(spec: DeploymentSpec, verdicts: list[Verdict], device: str | None) -> list[str]:
    """Plain text: a head line, then per device ✓ (variant, score, scores) or ✗ (every reason), with notes."""
    want = "every matching device" if spec.replicas is None else f"{spec.replicas} replica(s)"
    lines = [f"{spec.name}: {spec.model}@{spec.version}, {want}, {spec.strategy}, "
             f"precisions {' > '.join(spec.precisions)}"]
    if not verdicts:
        return [*lines, "no devices registered yet: nothing to place it on (agents appear when they connect)"]
    if device is None:
        fit = sum(v.feasible for v in verdicts)
        lines.append(f"{len(verdicts)} device(s): {fit} could take a replica, {len(verdicts) - fit} could not")
    feasible = sorted((v for v in verdicts if v.feasible), key=lambda v: (-(v.score or 0.0), v.device))
    for v in [*feasible, *(v for v in verdicts if not v.feasible)]:
        lines.append("")
        if v.feasible and v.variant is not None:
            var = v.variant
            lines.append(f"✓ {v.device}: would place {var.target}/{var.file} ({var.precision}, {var.runtime}), "
                         f"score {v.score or 0.0:+.2f}")
            lines.append("    scores: " + (", ".join(f"{k} {s:+.2f}" for k, s in v.scores.items()) or "none"))
        else:
            n = len(v.rejections)
            lines.append(f"✗ {v.device}: cannot take a replica of {spec.name} ({n} reason{'s' if n != 1 else ''})")
            lines += [f"    ✗ {r.reason}" for r in v.rejections]
        lines += [f"    · {note}" for note in v.notes]
    return lines


@app.command("explain")
@one_line_errors
def explain_command(
    name: str = typer.Argument(..., help="The deployment's name."),
    device: str | None = typer.Option(None, "--device", "-d", help="Only this device: why (not) here."),
    config: Path = ConfigOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Why each device would or would not get a replica: the variant and scores, or every failing filter."""
    from fleet.ops import explain_deployment

    with _opened(config) as (cfg, store):
        spec, verdicts = explain_deployment(store, name, device, cfg.scheduler)
    if as_json:
        _echo_json({"deployment": spec, "verdicts": [_verdict_json(v) for v in verdicts]})
        return
    typer.echo("\n".join(_explain_lines(spec, verdicts, device)))


# --- drain -----------------------------------------------------------------------------------------

@app.command("drain")
@one_line_errors
def drain_command(device: str = typer.Argument(..., help="The device's id."), config: Path = ConfigOpt) -> None:
    """Drain a device (before maintenance): the controller moves its replicas elsewhere and gives it no new ones."""
    # The event also tells a running controller to act now (its idle ticks skip full passes).
    with _opened(config) as (_, store), store.atomic():
        store.set_draining(device, True)
        store.append_event("draining", device, "drained by an operator: its replicas move", time.time())
    typer.echo(f"draining {device}: its replicas move to other devices (`edgectl fleet undrain {device}` reverts)")


@app.command("undrain")
@one_line_errors
def undrain_command(device: str = typer.Argument(..., help="The device's id."), config: Path = ConfigOpt) -> None:
    """Let this device take replicas again."""
    with _opened(config) as (_, store), store.atomic():
        store.set_draining(device, False)
        store.append_event("undrained", device, "takes replicas again", time.time())
    typer.echo(f"{device} takes replicas again")
