"""The package documents itself: help() texts, the type stubs and py.typed in the wheel."""

import pathlib
import pydoc

import qc


def test_help_of_load_reads_well():
    text = pydoc.render_doc(qc.load, renderer=pydoc.plaintext)
    assert "load(path, threads=None)" in text
    assert "Loads a compiled model" in text and "Raises `qc.QcError`" in text


def test_help_of_model_run_names_its_arguments():
    text = pydoc.render_doc(qc.Model.run, renderer=pydoc.plaintext)
    assert "run(self, /, *inputs, allow_non_finite=False)" in text
    assert "GIL is released" in text


def test_every_function_has_a_docstring():
    for name in qc.__all__:
        obj = getattr(qc, name)
        if callable(obj):
            assert obj.__doc__ and len(obj.__doc__) > 40, name
    assert "file:line:col" in qc.QcError.__doc__


def test_the_stubs_and_py_typed_ship_with_the_package():
    folder = pathlib.Path(qc.__file__).parent
    assert (folder / "py.typed").is_file()
    stubs = (folder / "__init__.pyi").read_text()
    for name in qc.__all__:
        assert name in stubs, name
