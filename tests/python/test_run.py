"""qc.load and Model.run: the same bits as `qc run`, any batch size, threads, zero-copy outputs."""

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import qc
from conftest import run_qc


def test_compile_returns_the_stage_summary(compiled):
    path, stages = compiled
    assert [s["stage"] for s in stages] == [
        "parsed", "float", "fused", "observed", "calibrated", "quantized", "lowered",
    ]
    assert all(s["nodes"] > 0 and s["dump"] is None for s in stages)
    assert stages[1]["params"] == 18  # the state_dict's keys
    assert stages[-1]["output"] == path and stages[-1]["steps"] > 0
    assert stages[-1]["calibration_note"] is None  # calibrated on real data
    assert path.stat().st_size > 0


def test_outputs_equal_qc_run_bit_for_bit(model, model_path, images, tmp_path):
    np.save(tmp_path / "x.npy", images)
    run_qc("run", model_path, "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy")
    expected = np.load(tmp_path / "y.npy")
    got = model.run(images)
    assert got.shape == (64, 10) and got.dtype == np.float32
    assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))


def test_a_model_qc_compile_wrote_gives_the_same_bits(recipe, model, images, tmp_path):
    out = tmp_path / "cli.qmodel"
    run_qc("compile", recipe, "-o", out, "--device", "reference")
    cli = qc.load(out)
    assert np.array_equal(cli.run(images).view(np.uint32), model.run(images).view(np.uint32))


@pytest.mark.parametrize("batch", [1, 3, 17, 64])
def test_any_batch_size_gives_each_sample_its_own_output(model, images, batch):
    whole = model.run(images)
    got = model.run(images[:batch])
    assert got.shape == (batch, 10)
    assert np.array_equal(got, whole[:batch])


def test_outputs_are_fresh_writeable_c_contiguous_arrays(model, images):
    y = model.run(images[:2])
    assert y.flags.c_contiguous and y.flags.writeable
    y2 = model.run(images[:2])
    y[:] = 0
    assert not np.array_equal(y, y2)


def test_a_non_contiguous_input_gives_the_contiguous_result(model, images):
    strided = np.repeat(images[:8], 2, axis=0)[::2]
    assert not strided.flags.c_contiguous
    fortran = np.asfortranarray(images[:8])
    expected = model.run(images[:8])
    assert np.array_equal(model.run(strided), expected)
    assert np.array_equal(model.run(fortran), expected)


def test_a_read_only_input_runs(model, images):
    x = images[:4].copy()
    x.flags.writeable = False
    assert np.array_equal(model.run(x), model.run(images[:4]))


def test_thread_count_is_settable_and_keeps_the_bits(model_path, images):
    m = qc.load(model_path, threads=1)
    assert m.threads == 1
    one = m.run(images)
    m.threads = 2
    assert m.threads == 2
    assert np.array_equal(m.run(images), one)
    m.threads = 0
    assert np.array_equal(m.run(images), one)


def test_eight_python_threads_on_one_model_give_the_single_threaded_outputs(model, images):
    single = [model.run(images[i : i + 4]) for i in range(0, 64, 4)]

    def work(k):
        # Every thread runs every chunk twice, starting at a different chunk.
        order = [(k + j) % 16 for j in range(32)]
        return [(i, model.run(images[i * 4 : i * 4 + 4])) for i in order]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(work, range(8)))
    for per_thread in results:
        assert len(per_thread) == 32
        for i, y in per_thread:
            assert np.array_equal(y, single[i])


def test_the_gil_is_released_while_the_model_runs(model_path, images):
    m = qc.load(model_path, threads=1)
    big = np.repeat(images, 16, axis=0)  # 1024 images: tens of milliseconds
    started = threading.Event()
    done = threading.Event()

    def work():
        started.set()
        m.run(big)
        done.set()

    t = threading.Thread(target=work)
    t.start()
    started.wait()
    counted = 0
    while not done.is_set():
        counted += 1
    t.join()
    # Holding the GIL, the run would stop this loop for its whole length.
    assert counted > 1000


def test_inputs_outputs_and_metadata_describe_the_model(model):
    (x,) = model.inputs
    assert x == {
        "name": "x",
        "shape": (None, 1, 28, 28),
        "dtype": "float32",
        "layout": "torch",
        "quantization": None,
    }
    (y,) = model.outputs
    assert y["name"] == "dequant" and y["shape"] == (None, 10) and y["dtype"] == "float32"
    meta = model.metadata
    assert meta["model"] == "fashion_cnn" and meta["stage"] == "lowered"
    assert meta["calibrated_for_accuracy"] is True
    assert meta["recipe_hash"].startswith("xxh3:")
    assert meta["qc_version"] == qc.__version__
    assert meta["normalize"] == {"x": {"mean": [0.286], "std": [0.353]}}
    assert "fashion_cnn" in repr(model) and "x: f32[N, 1, 28, 28]" in repr(model)
