"""The install store: atomic state, atomic installs, nothing outside the data dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.store import AgentState, DeploymentState, Installed, InstallStore, StoreError

SHA = "b" * 64


def test_state_round_trips_and_survives_a_damaged_file(tmp_path: Path) -> None:
    store = InstallStore(tmp_path)
    state = AgentState(generation=4, deployments={
        "digits": DeploymentState(current=Installed(SHA, "m.int8.onnx"), previous=None, failed={"x": "why"},
                                  memory_bytes=123),
    })
    store.save_state(state)
    assert store.load_state() == state
    (tmp_path / "state.json").write_text('{"v": 1, "generation": ')  # torn by outside damage
    assert store.load_state() == AgentState()
    assert (tmp_path / "state.json.bad").exists()


def test_commit_renames_a_staged_folder_into_place(tmp_path: Path) -> None:
    store = InstallStore(tmp_path)
    inst = Installed(SHA, "m.onnx")
    staging = store.new_staging(inst)
    (staging / "m.onnx").write_bytes(b"model")
    path = store.commit(staging, inst)
    assert store.installed(inst) == path and (path / "m.onnx").read_bytes() == b"model"
    assert not staging.exists()
    again = store.new_staging(inst)  # a second install of the same bytes keeps the first
    (again / "m.onnx").write_bytes(b"model")
    assert store.commit(again, inst) == path and not again.exists()


def test_gc_keeps_only_what_the_state_refers_to(tmp_path: Path) -> None:
    store = InstallStore(tmp_path)
    keep, drop = Installed(SHA, "a.onnx"), Installed("c" * 64, "a.onnx")
    for inst in (keep, drop):
        store.commit(store.new_staging(inst), inst)
    state = AgentState(deployments={"d": DeploymentState(current=keep)})
    assert store.gc(store.referenced(state)) == [drop.key]
    assert store.installed(keep) and not store.installed(drop)


@pytest.mark.parametrize("inst", [Installed("../" * 3, "x"), Installed(SHA, "../../etc/passwd"), Installed(SHA, "a/b")])
def test_names_that_would_escape_the_data_dir_are_refused(tmp_path: Path, inst: Installed) -> None:
    store = InstallStore(tmp_path)
    with pytest.raises(StoreError):
        store.new_staging(inst)
