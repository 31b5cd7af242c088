"""Targets are data: one ``targets/*.toml`` file per device class, loaded into a frozen dataclass.

Adding a target is adding a file. Code reads the fields (``arch``, ``isa``, ``runtimes``,
``precisions``); nothing subclasses per device.

    >>> t = load_target("arm64-cortex-a76")
    >>> t.arch, t.has("asimddp")
    ('aarch64', True)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

from edgectl.errors import TargetError

ARCHES = ("x86_64", "aarch64", "armv7l")
RUNTIMES = ("onnxruntime", "litert", "tflite-runtime")
PRECISIONS = ("int8", "fp16", "fp32")


@dataclass(frozen=True)
class Target:
    """One device class the compiler builds for.

    >>> Target(name="pi4", description="", arch="aarch64", isa=("neon",),
    ...        runtimes=("onnxruntime",), precisions=("int8",), memory_mb=2048).has("neon")
    True
    """

    name: str
    description: str
    arch: str
    isa: tuple[str, ...]
    runtimes: tuple[str, ...]
    precisions: tuple[str, ...]
    memory_mb: int

    def has(self, feature: str) -> bool:
        return feature in self.isa

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def builtin_targets_dir() -> Path:
    import targets as builtin

    return Path(builtin.__file__).parent


def _fail(source: Path, problem: str) -> TargetError:
    return TargetError(f"{source}: {problem}; see targets/x86_64-avx2.toml for a valid target file")


def _str_tuple(source: Path, raw: dict[str, Any], key: str, allowed: Iterable[str] | None) -> tuple[str, ...]:
    value = raw.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise _fail(source, f"'{key}' must be a non-empty list of strings")
    if allowed is not None:
        allowed = tuple(allowed)
        unknown = [v for v in value if v not in allowed]
        if unknown:
            raise _fail(source, f"'{key}' has unknown value(s) {unknown} (known: {', '.join(allowed)})")
    return tuple(value)


def parse_target(source: Path) -> Target:
    """Read and validate one target file."""
    try:
        raw = tomllib.loads(source.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(source, f"cannot read ({exc.__class__.__name__})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise _fail(source, f"not valid TOML ({exc})") from exc
    for key in ("name", "arch"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise _fail(source, f"'{key}' must be a non-empty string")
    if raw["name"] != source.stem:
        raise _fail(source, f"'name' is {raw['name']!r} but the file is named {source.stem!r}")
    if raw["arch"] not in ARCHES:
        raise _fail(source, f"arch {raw['arch']!r} is not one of {', '.join(ARCHES)}")
    memory = raw.get("memory_mb")
    if not isinstance(memory, int) or memory <= 0:
        raise _fail(source, "'memory_mb' must be a positive integer")
    known = {"name", "description", "arch", "isa", "runtimes", "precisions", "memory_mb"}
    extra = sorted(set(raw) - known)
    if extra:
        raise _fail(source, f"unknown field(s) {extra}")
    return Target(
        name=raw["name"],
        description=str(raw.get("description", "")),
        arch=raw["arch"],
        isa=_str_tuple(source, raw, "isa", None),
        runtimes=_str_tuple(source, raw, "runtimes", RUNTIMES),
        precisions=_str_tuple(source, raw, "precisions", PRECISIONS),
        memory_mb=memory,
    )


def target_files(extra_dirs: Iterable[Path] = ()) -> dict[str, Path]:
    """Every known target name → its file; files in ``extra_dirs`` override built-in ones."""
    found: dict[str, Path] = {}
    for folder in (builtin_targets_dir(), *extra_dirs):
        if not folder.is_dir():
            raise TargetError(f"targets folder {folder} does not exist: pass an existing folder")
        for path in sorted(folder.glob("*.toml")):
            found[path.stem] = path
    return found


def load_target(name_or_path: str, extra_dirs: Iterable[Path] = ()) -> Target:
    """A target by name (built-in or from ``extra_dirs``) or by the path of its .toml file."""
    as_path = Path(name_or_path)
    if as_path.suffix == ".toml":
        if not as_path.is_file():
            raise TargetError(f"target file {as_path} does not exist")
        return parse_target(as_path)
    files = target_files(extra_dirs)
    if name_or_path not in files:
        raise TargetError(
            f"unknown target {name_or_path!r}: known targets are {', '.join(sorted(files))} "
            "(`edgectl targets list`), or pass a .toml file"
        )
    return parse_target(files[name_or_path])


def all_targets(extra_dirs: Iterable[Path] = ()) -> list[Target]:
    return [parse_target(p) for _, p in sorted(target_files(extra_dirs).items())]
