//! `import qc`: qc's Python package. The extension module `qc._qc` wraps the edge runtime core
//! (`qc.load`, `qc.Model`: a `.qmodel` run in-process on numpy arrays, no libtorch) and the
//! compiler (`qc.compile`, `qc.keys`, `qc.fates`, `qc.check_checkpoint`); python/qc/ re-exports
//! it with the type stubs.

mod error;
mod model;
mod recipe;

use std::path::PathBuf;

use pyo3::prelude::*;

/// Loads a compiled model (a `.qmodel` file that `qc compile RECIPE -o model.qmodel` or
/// `qc.compile(recipe, output=...)` wrote) for running in-process: `qc.load(path).run(x)`.
///
/// `threads`: how many threads each `run` uses (default: one per core); `Model.threads` changes
/// it later. The file is read and checked once (format, version, checksum, every step).
///
/// Raises `qc.QcError` when the file is missing, unreadable, damaged or not a `.qmodel`.
#[pyfunction]
#[pyo3(signature = (path, threads = None))]
fn load(py: Python<'_>, path: PathBuf, threads: Option<usize>) -> PyResult<model::Model> {
    py.detach(|| model::load(path, threads))
}

#[pymodule]
fn _qc(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("QcError", m.py().get_type::<error::QcError>())?;
    m.add_class::<model::Model>()?;
    m.add_function(wrap_pyfunction!(load, m)?)?;
    m.add_function(wrap_pyfunction!(recipe::compile, m)?)?;
    m.add_function(wrap_pyfunction!(recipe::keys, m)?)?;
    m.add_function(wrap_pyfunction!(recipe::fates, m)?)?;
    m.add_function(wrap_pyfunction!(recipe::check_checkpoint, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
