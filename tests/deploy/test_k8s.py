"""deploy/k8s: every resource validates against Kubernetes' OpenAPI schemas (kubernetes-validate,
strict: unknown fields fail; offline), the agent runs per arch, and the configs the manifests carry
are ones edgectl itself accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from edge_agent.config import parse_config
from fleet.config import parse_fleet_config
from tests.tools import tool

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
KV = "kubernetes-validate==1.37.0"


def _docs() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        out += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return out


def _find(kind: str, name: str) -> dict[str, Any]:
    return next(d for _, d in _docs() if d["kind"] == kind and d["metadata"]["name"] == name)


@pytest.mark.parametrize(("file", "doc"), [(f, d) for f, d in _docs() if d["kind"] != "Kustomization"],
                         ids=lambda v: v if isinstance(v, str) else f"{v['kind']}/{v['metadata']['name']}")
def test_resource_matches_the_kubernetes_schema(file: str, doc: dict[str, Any]) -> None:
    kv = tool("kubernetes_validate", KV)
    kv.validate(doc, "1.31.0", strict=True)  # raises ValidationError naming the field


def test_a_bad_field_is_caught() -> None:
    kv = tool("kubernetes_validate", KV)
    bad = _find("DaemonSet", "edgectl-agent-arm64")
    bad = {**bad, "spec": {**bad["spec"], "nodeSelectr": {}}}
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, "1.31.0", strict=True)


def test_kustomization_lists_every_manifest() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_agent_daemonset_per_arch(arch: str) -> None:
    ds = _find("DaemonSet", f"edgectl-agent-{arch}")
    spec = ds["spec"]["template"]["spec"]
    assert spec["nodeSelector"]["kubernetes.io/arch"] == arch
    agent = spec["containers"][0]
    assert agent["securityContext"]["runAsNonRoot"] is True
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["data"]["hostPath"]["path"] == "/var/lib/edgectl-agent"
    assert volumes["template"]["configMap"]["name"] == "edgectl-agent"
    assert volumes["secret"]["secret"]["secretName"] == "edgectl-fleet"


def test_configs_in_the_manifests_parse(tmp_path: Path) -> None:
    text = _find("ConfigMap", "edgectl-agent")["data"]["agent.toml.in"].replace("${NODE_NAME}", "node-1")
    raw = tomllib.loads(text)
    raw["broker"]["password_file"] = str(tmp_path / "pass")
    (tmp_path / "pass").write_text("x")
    cfg = parse_config(raw, tmp_path)
    assert cfg.device_id == "node-1" and str(cfg.data_dir) == "/var/lib/edgectl-agent"
    fleet = tomllib.loads(_find("ConfigMap", "edgectl-controller")["data"]["fleet.toml"])
    assert parse_fleet_config(fleet, tmp_path).http_port == 8480
