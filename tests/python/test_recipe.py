"""qc.compile, qc.keys, qc.fates and qc.check_checkpoint: Python data, and the CLI's diagnostics."""

import numpy as np
import pytest

import qc
from conftest import ROOT, run_qc

BROKEN = """model tiny {
  input x: f32[N, 4]
  fc = linaer(x, out: 2)
  output fc
}
"""


def test_a_broken_recipe_raises_the_cli_diagnostic(tmp_path):
    path = tmp_path / "broken.qrecipe"
    path.write_text(BROKEN)
    with pytest.raises(qc.QcError) as e:
        qc.compile(path)
    message = str(e.value)
    assert f"{path}:3:8" in message
    assert "linaer" in message and "╰── not an op or block" in message and "help: did you mean `linear`?" in message
    assert message.endswith("error: 1 problem found")
    cli = run_qc("compile", path, check=False)
    assert cli.returncode == 1
    assert message == cli.stderr.rstrip("\n")


def test_a_missing_recipe_is_named(tmp_path):
    with pytest.raises(qc.QcError, match="nothing is at"):
        qc.compile(tmp_path / "none.qrecipe")


def test_an_unknown_stage_lists_the_stages(recipe):
    with pytest.raises(qc.QcError, match="names no stage .*did you mean `fused`") as e:
        qc.keys(recipe, stage="fuesd")
    assert "stages are parsed, float, fused" in str(e.value)


def test_dump_ir_writes_every_stage(tmp_path):
    recipe = ROOT / "examples/conv1d_net.qrecipe"
    stages = qc.compile(recipe, dump_ir=tmp_path / "ir", stop_after="fused")
    assert [s["stage"] for s in stages] == ["parsed", "float", "fused"]
    names = sorted(p.name for p in (tmp_path / "ir").iterdir())
    assert names == ["01-parsed.ir", "02-float.ir", "03-fused.ir"]
    assert stages[2]["dump"] == tmp_path / "ir" / "03-fused.ir"
    assert "conv" in (tmp_path / "ir" / "03-fused.ir").read_text()


def test_an_output_in_a_missing_folder_is_refused_before_any_work(recipe, tmp_path):
    with pytest.raises(qc.QcError, match="does not exist"):
        qc.compile(recipe, output=tmp_path / "no" / "m.qmodel")


def test_the_recipe_is_never_written_over(recipe):
    before = recipe.read_bytes()
    with pytest.raises(qc.QcError, match="never writes over a file the command reads"):
        qc.compile(recipe, output=recipe)
    assert recipe.read_bytes() == before


def test_keys_lists_a_stage_as_dicts(recipe):
    keys = qc.keys(recipe, stage="float")
    assert len(keys) == 18
    first = keys[0]
    assert first == {"key": "conv1.weight", "dtype": "f32", "shape": (16, 1, 3, 3), "origin": first["origin"]}
    assert "checkpoint" in first["origin"]
    cli = run_qc("keys", recipe, "--stage", "float", "--format", "tsv").stdout.splitlines()
    assert [k["key"] for k in keys] == [line.split("\t")[0] for line in cli]


def test_keys_of_the_quantized_stage_hold_scales(recipe):
    keys = {k["key"]: k for k in qc.keys(recipe, stage="quantized")}
    assert "conv1.scale" in keys and "conv1.zero_point" in keys
    assert "bn1.weight" not in keys


def test_fates_say_what_moved(recipe):
    fates = qc.fates(recipe, stage="quantized")
    by_key = {f["float_key"]: f for f in fates if f["float_key"] is not None}
    assert "batch norm folded" in by_key["bn1.weight"]["reason"]
    assert by_key["conv1.weight"]["into"] == ["conv1.weight", "conv1.bias"]
    added = [f for f in fates if f["float_key"] is None]
    assert added and all(len(f["into"]) == 1 for f in added)


def test_a_checkpoint_that_fits_has_no_problems(recipe):
    assert qc.check_checkpoint(recipe, ROOT / "tests/data/fashion_cnn.fp32.pth", stage="float") == []


def test_a_checkpoint_that_does_not_fit_lists_its_problems(recipe):
    problems = qc.check_checkpoint(recipe, ROOT / "tests/data/fashion_cnn.fp32.pth", stage="quantized")
    assert problems and all(isinstance(p, dict) for p in problems)
    kinds = {p["kind"] for p in problems}
    assert kinds <= {"missing", "unexpected", "misshaped", "wrong_dtype", "prefix"}
    assert any(p["kind"] == "unexpected" and p["key"] == "bn1.weight" for p in problems)
    cli = run_qc("keys", recipe, "--stage", "quantized", "--check", ROOT / "tests/data/fashion_cnn.fp32.pth", check=False)
    assert cli.returncode == 1
    assert [p["message"] for p in problems] == cli.stdout.splitlines()


def test_a_missing_checkpoint_is_named(recipe, tmp_path):
    with pytest.raises(qc.QcError, match="help:"):
        qc.check_checkpoint(recipe, tmp_path / "none.pth")
