"""``edgectl compile``: formats what compiler.pipeline.compile_model returns."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from edgectl.cli._common import console
from edgectl.errors import DataError, TargetError
from edgectl.targets import all_targets, load_target

if TYPE_CHECKING:
    from compiler.crossarch import EmulatedCheck


def _shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        dims = tuple(int(d) for d in text.replace("x", ",").split(","))
    except ValueError:
        raise DataError(f"--input-shape {text!r} is not a list of integers like 1,3,224,224") from None
    if not dims or any(d <= 0 for d in dims):
        raise DataError(f"--input-shape {text!r} must be positive integers like 1,3,224,224")
    return dims


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.2%}"


def summary_table(result: dict) -> Table:
    table = Table(
        "target", "variant", "size", "size ×", "latency ×", "top-1 agree", "accuracy", "min cosine", "status"
    )
    for row in result["variants"]:
        fid = row["fidelity"] or {}
        cos = min((o["cosine"] for o in fid.get("outputs", {}).values()), default=None)
        if row["emitted"]:
            status = "[green]ok[/]"
            if row["fallback_nodes"]:
                status = f"[yellow]ok, {len(row['fallback_nodes'])} node(s) fp32[/]"
        elif row["skipped"]:
            status = f"[yellow]{row['reason']}[/]"
        else:
            status = f"[red]rejected[/]: {row['reason']}"
        table.add_row(
            row["target"],
            row["variant"],
            f"{fid['size_bytes'] / 1024:.0f} KiB" if fid else "-",
            f"{row['size_ratio']:.2f}" if row["size_ratio"] is not None else "-",
            f"{row['latency_ratio']:.2f}" if row["latency_ratio"] is not None else "-",
            _pct(fid.get("top1_agreement")),
            _pct(fid.get("accuracy")),
            "-" if cos is None else f"{cos:.6f}",
            status,
        )
    return table


def _print_emulated(check: EmulatedCheck) -> None:
    for target, records in check.records.items():
        for variant, rec in records.items():
            fid = rec.get("fidelity") or {}
            line = (f"{check.userland.name} ({rec['machine']}, {rec['emulator'] or 'native'}): {target} {variant}: "
                    f"top-1 agree {_pct(fid.get('top1_agreement'))}, accuracy {_pct(fid.get('accuracy'))}, "
                    f"max |Δ| vs this host {rec.get('max_abs_vs_host', float('nan')):.3g} "
                    f"(self-test tolerance {rec.get('selftest_atol', float('nan')):.3g})")
            console().print(line)
    for failure in check.failures:
        console(stderr=True).print(f"[red]failed[/]: {failure}")


def compile_command(
    model: Path = typer.Argument(
        ..., help="ONNX file, PyTorch (.pt: TorchScript or pickled module) or scikit-learn pickle."
    ),
    target: list[str] = typer.Option([], "--target", "-t", help="Target name or .toml file; repeat for several."),
    all_targets_flag: bool = typer.Option(False, "--all-targets", help="Build for every known target."),
    calibration: Path | None = typer.Option(None, "--calibration", "-c", help=".npy/.npz file or folder of them."),
    random_calibration: bool = typer.Option(
        False, "--random-calibration", help="Calibrate on random inputs (recorded in the manifest)."
    ),
    eval_data: Path | None = typer.Option(None, "--eval", help="Held-out samples for the fidelity gate."),
    labels: Path | None = typer.Option(None, "--labels", help=".npy of integer labels for --eval."),
    max_drop: float = typer.Option(1.0, "--max-drop", help="Budget: top-1 points a variant may lose."),
    min_cosine: float = typer.Option(0.99, "--min-cosine", help="Budget: least cosine similarity per output."),
    method: str = typer.Option("percentile", "--calibration-method", help="percentile | minmax | entropy."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (one sub-folder per target)."),
    sign_key: Path | None = typer.Option(None, "--sign-key", help="Ed25519 private key (edgectl keys generate)."),
    input_shape: str | None = typer.Option(
        None, "--input-shape", help="Input shape for PyTorch files, e.g. 1,1,28,28."
    ),
    no_fallback: bool = typer.Option(False, "--no-fallback", help="Do not keep sensitive nodes in fp32."),
    tflite_io: str = typer.Option(
        "float", "--tflite-io", help="tflite-int8 inputs/outputs: float (quantized inside) or int8."
    ),
    targets_dir: list[Path] = typer.Option([], "--targets-dir", help="Extra folder of target files."),
    verify_on: list[str] = typer.Option(
        [], "--verify-on", help="Also run the aarch64 targets' artifacts in an emulated userland: arm64."
    ),
    arm64_rootfs: Path | None = typer.Option(
        None, "--arm64-rootfs", envvar="EDGECTL_ARM64_ROOTFS",
        help="arm64 userland for --verify-on arm64 (default ~/.cache/edgectl/arm64-rootfs, "
        "made by scripts/make_arm64_rootfs.sh).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Compile MODEL into gated, quantized artifacts for each target."""
    from compiler.crossarch import EmulatedCheck, find_userland
    from compiler.fidelity import Budget
    from compiler.manifest_builder import host
    from compiler.pipeline import CompileOptions, compile_model
    from compiler.quantize import CALIBRATION_METHODS

    if method not in CALIBRATION_METHODS:
        raise DataError(f"--calibration-method {method!r} is not one of {', '.join(CALIBRATION_METHODS)}")
    if all_targets_flag == bool(target):
        raise TargetError("name targets with --target T (repeatable) or pass --all-targets (not both)")
    targets = tuple(all_targets(targets_dir) if all_targets_flag else (load_target(t, targets_dir) for t in target))
    if calibration is not None and random_calibration:
        raise DataError("pass --calibration or --random-calibration, not both")
    if tflite_io not in ("float", "int8"):
        raise DataError(f"--tflite-io {tflite_io!r} is not one of float, int8")
    # Checked before compiling: a missing userland fails in a second, not after the build.
    checks = [EmulatedCheck(find_userland(name, arm64_rootfs), Budget(max_drop=max_drop, min_cosine=min_cosine))
              for name in dict.fromkeys(verify_on)]
    if len(checks) > 1:
        raise DataError("--verify-on takes one userland per run")
    options = CompileOptions(
        targets=targets, out_dir=out, calibration=calibration, random_calibration=random_calibration,
        eval_data=eval_data, labels=labels, budget=Budget(max_drop=max_drop, min_cosine=min_cosine),
        calibration_method=method, sign_key=sign_key, input_shape=_shape(input_shape), fallback=not no_fallback,
        tflite_io=tflite_io,
        cross_check=checks[0] if checks else None,
    )
    err = console(stderr=True)
    with err.status("compiling", spinner="dots") as status:

        def step(msg: str) -> None:
            status.update(msg)
            if not as_json:
                err.log(msg)

        result = compile_model(model, options, on_step=step).to_dict()
    for check in checks:
        result["emulated"] = {"userland": check.userland.describe(), "targets": check.records,
                              "failures": check.failures}
        if check.failures and result["exit_code"] == 0:
            result["exit_code"] = 3
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        console().print(summary_table(result))
        written = ", ".join(result["targets_written"]) or "nothing"
        console().print(f"wrote {written} under {out}")
        console().print(
            f"latency × is int8/fp32 measured on this host ({host()['machine']}, {host()['cpu'] or 'unknown CPU'}); "
            "for other architectures it only indicates"
        )
        for check in checks:
            _print_emulated(check)
    raise typer.Exit(result["exit_code"])
