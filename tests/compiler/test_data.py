from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from compiler import data as ds
from edgectl.errors import DataError


def _two_input_model():
    a = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 4, 4])
    b = helper.make_tensor_value_info("meta", TensorProto.FLOAT, ["N", 5])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 4, 4])
    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["y"])], "g", [a, b], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


SPECS = ds.input_specs(_two_input_model())
RNG = np.random.default_rng(0)
IMAGE = RNG.standard_normal((6, 3, 4, 4)).astype(np.float32)
META = RNG.standard_normal((6, 5)).astype(np.float32)


def test_specs_keep_symbolic_batch():
    assert SPECS[0].shape == (None, 3, 4, 4)
    assert SPECS[1].describe() == "meta[?,5] float32"


def test_npz_keyed_by_input(tmp_path: Path):
    np.savez(tmp_path / "c.npz", image=IMAGE, meta=META.astype(np.float64))
    out = ds.load_tensors(tmp_path / "c.npz", SPECS, what="calibration")
    assert out["meta"].dtype == np.float32 and out["image"].shape == (6, 3, 4, 4)


def test_folder_of_npy_named_per_input(tmp_path: Path):
    np.save(tmp_path / "image.npy", IMAGE)
    np.save(tmp_path / "meta.npy", META)
    out = ds.load_tensors(tmp_path, SPECS, what="calibration")
    np.testing.assert_array_equal(out["image"], IMAGE)


def test_folder_of_npz_batches_concatenates(tmp_path: Path):
    np.savez(tmp_path / "a.npz", image=IMAGE[:3], meta=META[:3])
    np.savez(tmp_path / "b.npz", image=IMAGE[3:], meta=META[3:])
    out = ds.load_tensors(tmp_path, SPECS, what="calibration")
    np.testing.assert_array_equal(out["meta"], META)


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"img": IMAGE, "meta": META}, "name each array after its input"),
        ({"image": IMAGE[:, :2], "meta": META}, "axis 1 differs"),
        ({"image": IMAGE[0], "meta": META}, "first axis = samples"),
        ({"image": IMAGE, "meta": META[:4]}, "different sample counts"),
        ({"image": np.full_like(IMAGE, np.nan), "meta": META}, "NaN"),
        ({"image": IMAGE.astype("U3"), "meta": META}, "dtype"),
    ],
)
def test_bad_calibration_names_the_problem(tmp_path: Path, arrays, match):
    np.savez(tmp_path / "c.npz", **arrays)
    with pytest.raises(DataError, match=match) as info:
        ds.load_tensors(tmp_path / "c.npz", SPECS, what="calibration")
    assert "\n" not in str(info.value)


def test_single_npy_needs_single_input(tmp_path: Path):
    np.save(tmp_path / "x.npy", IMAGE)
    with pytest.raises(DataError, match="keyed by input name"):
        ds.load_tensors(tmp_path / "x.npy", SPECS, what="calibration")


def test_unreadable_files(tmp_path: Path):
    (tmp_path / "x.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"not a readable \.npz"):
        ds.load_tensors(tmp_path / "x.npz", SPECS, what="calibration")
    with pytest.raises(DataError, match="does not exist"):
        ds.load_tensors(tmp_path / "nope.npz", SPECS, what="calibration")


def test_overlap_with_calibration_is_dropped():
    calib = {"image": IMAGE[:4], "meta": META[:4]}
    evals = {"image": IMAGE[2:], "meta": META[2:]}
    kept, dropped = ds.drop_overlap(evals, calib)
    assert dropped == 2 and ds.sample_count(kept) == 2
    np.testing.assert_array_equal(kept["image"], IMAGE[4:])


def test_hash_changes_with_any_value():
    a = {"image": IMAGE, "meta": META}
    b = {"image": IMAGE, "meta": META.copy()}
    assert ds.tensors_sha256(a) == ds.tensors_sha256(b)
    b["meta"][0, 0] += 1
    assert ds.tensors_sha256(a) != ds.tensors_sha256(b)


def test_labels_must_match_samples(tmp_path: Path):
    np.save(tmp_path / "l.npy", np.arange(5))
    with pytest.raises(DataError, match="5 labels for 6"):
        ds.load_labels(tmp_path / "l.npy", 6)
    np.save(tmp_path / "f.npy", np.zeros(6, np.float32))
    with pytest.raises(DataError, match="integer"):
        ds.load_labels(tmp_path / "f.npy", 6)
