"""Bad input to Model.run and qc.load raises qc.QcError with the CLI's words; never a crash."""

import numpy as np
import pytest

import qc


def test_a_wrong_shape_is_refused(model, images):
    with pytest.raises(qc.QcError, match=r"x: f32\[N, 1, 28, 28\]") as e:
        model.run(images.reshape(64, 28, 28, 1))
    assert "help:" in str(e.value)


def test_a_wrong_dtype_is_refused(model, images):
    with pytest.raises(qc.QcError, match="has dtype float64; the model takes float32") as e:
        model.run(images.astype(np.float64))
    assert "astype(np.float32)" in str(e.value)


def test_something_other_than_an_array_is_refused(model):
    with pytest.raises(qc.QcError, match="is a list, not a numpy array"):
        model.run([[0.0] * 784])


def test_the_wrong_number_of_inputs_is_refused(model, images):
    with pytest.raises(qc.QcError, match="takes 1 input, got 2"):
        model.run(images, images)
    with pytest.raises(qc.QcError, match="takes 1 input, got 0"):
        model.run()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_inputs_are_refused(model, images, bad):
    x = images[:3].copy()
    x[2, 0, 5, 7] = bad
    with pytest.raises(qc.QcError, match=r"at element 1715 \(sample 2\)") as e:
        model.run(x)
    assert "allow_non_finite=True" in str(e.value)


def test_allow_non_finite_runs_them(model, images):
    x = images[:2].copy()
    x[0, 0, 0, 0] = np.nan
    y = model.run(x, allow_non_finite=True)
    assert y.shape == (2, 10)


def test_a_missing_model_file_is_named(tmp_path):
    with pytest.raises(qc.QcError, match="nothing is at"):
        qc.load(tmp_path / "none.qmodel")


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_a_corrupt_qmodel_is_refused(model_path, tmp_path, damage):
    data = bytearray(model_path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[len(data) // 2] ^= 0x40
    elif damage == "garbage":
        data = bytearray(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    else:
        data = bytearray()
    bad = tmp_path / f"{damage}.qmodel"
    bad.write_bytes(bytes(data))
    with pytest.raises(qc.QcError, match="cannot load") as e:
        qc.load(bad)
    assert "help:" in str(e.value)


def test_a_folder_is_not_a_model(tmp_path):
    with pytest.raises(qc.QcError, match="help:"):
        qc.load(tmp_path)
