//! `qc.Model`: a `.qmodel` loaded once and run in-process on numpy arrays, with the GIL released
//! while qc's kernels run on the model's own thread pool.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use numpy::ndarray::{ArrayD, IxDyn};
use numpy::{PyArray, PyArrayDyn, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use qc_runtime::model::TensorSpec;
use qc_runtime::program::ValueInfo;
use qc_runtime::{DType, Tensor, TensorData};

use crate::error::qc_error;

/// A compiled model (`.qmodel`), loaded once, run any number of times from any thread.
///
/// `Model.run(x)` takes one numpy array per model input (any batch size) and returns the output
/// as a numpy array (a tuple of them when the model has several outputs). The inputs are raw
/// samples: a model whose recipe declares `normalize(...)` applies it itself.
#[pyclass(module = "qc", frozen, name = "Model")]
pub struct Model {
    model: Arc<qc_runtime::model::Model>,
    path: PathBuf,
    pool: RwLock<Arc<Pool>>,
}

/// A rayon pool and the thread count it was asked for (`0`: one thread per core).
struct Pool {
    threads: usize,
    pool: rayon::ThreadPool,
}

fn pool(threads: usize) -> PyResult<Arc<Pool>> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("qc-worker-{i}"))
        .build()
        .map(|pool| Arc::new(Pool { threads, pool }))
        .map_err(|e| {
            qc_error(format!(
                "error: cannot start {threads} threads: {e}\nhelp: ask for fewer threads"
            ))
        })
}

/// `qc.load(path, threads=None)`: reads and checks a `.qmodel` file.
pub fn load(path: PathBuf, threads: Option<usize>) -> PyResult<Model> {
    let model = qc_runtime::model::Model::load(&path).map_err(|e| load_error(&path, &e))?;
    Ok(Model {
        model: Arc::new(model),
        path,
        pool: RwLock::new(pool(threads.unwrap_or(0))?),
    })
}

/// The CLI's (`qc run`) message for a `.qmodel` that cannot be loaded.
fn load_error(path: &std::path::Path, e: &qc_runtime::artifact::LoadError) -> PyErr {
    use qc_runtime::artifact::LoadError;
    let compile = "`qc compile RECIPE -o model.qmodel` writes one";
    let text = match e {
        LoadError::Io { source, .. } => format!(
            "error: cannot read `{}`: {source}\nhelp: {}",
            path.display(),
            qc_runtime::io_help::after_read(source, path, compile)
        ),
        LoadError::Version { .. } => format!(
            "error: cannot load `{}`: {e}\nhelp: compile the recipe again with this qc ({compile})",
            path.display()
        ),
        _ => format!(
            "error: cannot load `{}`: {e}\nhelp: the file is damaged or is not a .qmodel; {compile}",
            path.display()
        ),
    };
    qc_error(text)
}

#[pymethods]
impl Model {
    /// Runs the model on numpy arrays, one per input in the order of `Model.inputs` (any batch
    /// size), and returns its output as a numpy array, or a tuple of arrays when the model has
    /// several. The arrays must have the inputs' dtypes (`float32` for float inputs) and shapes;
    /// an input that is not C-contiguous is copied into order first. Inputs holding NaN or an
    /// infinity are refused unless `allow_non_finite=True`. The GIL is released while the model
    /// runs, so several Python threads may run one model at once.
    ///
    /// Raises `qc.QcError` for a wrong count, shape or dtype of inputs, or non-finite values.
    #[pyo3(signature = (*inputs, allow_non_finite = false))]
    fn run<'py>(
        &self,
        py: Python<'py>,
        inputs: &Bound<'py, PyTuple>,
        allow_non_finite: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let specs = &self.model.meta().inputs;
        let wanted = wanted(specs);
        if inputs.len() != specs.len() {
            return Err(qc_error(format!(
                "error: the model takes {} input{}, got {}\nhelp: pass one array per input, in order: {wanted}",
                specs.len(),
                if specs.len() == 1 { "" } else { "s" },
                inputs.len()
            )));
        }
        let mut tensors = Vec::with_capacity(specs.len());
        for (spec, obj) in specs.iter().zip(inputs.iter()) {
            tensors.push(tensor_of(&obj, spec, &wanted)?);
        }
        if let Err(e) = self.model.program().check_inputs(&tensors) {
            return Err(qc_error(format!("error: {e}\nhelp: the model's inputs are {wanted}")));
        }
        if !allow_non_finite {
            refuse_non_finite(specs, &tensors)?;
        }
        let model = Arc::clone(&self.model);
        let pool = Arc::clone(&self.pool.read().unwrap_or_else(|p| p.into_inner()));
        let outputs = py
            .detach(move || pool.pool.install(|| model.run(&tensors)))
            .map_err(|e| {
                qc_error(format!(
                    "error: the model failed: {e}\nhelp: the model's inputs are {wanted}"
                ))
            })?;
        let mut arrays: Vec<Bound<'py, PyAny>> = Vec::with_capacity(outputs.len());
        for t in outputs {
            arrays.push(array_of(py, t)?);
        }
        if arrays.len() == 1 {
            Ok(arrays.remove(0))
        } else {
            Ok(PyTuple::new(py, arrays)?.into_any())
        }
    }

    /// The inputs, in the order `run` takes them: a list of dicts with `name`, `shape` (a tuple,
    /// `None` for the batch dimension), `dtype` (a numpy dtype name), `layout` (`"torch"`:
    /// PyTorch's `[N, C, H, W]`) and `quantization` (`{"scale", "zero_point", "qmin", "qmax"}` for an
    /// integer tensor, else `None`).
    #[getter]
    fn inputs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let p = self.model.program();
        specs_list(py, p.inputs.iter().map(|&i| &p.values[i]))
    }

    /// The outputs, in the order `run` returns them; the same dicts as `inputs`.
    #[getter]
    fn outputs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let p = self.model.program();
        specs_list(py, p.outputs.iter().map(|&i| &p.values[i]))
    }

    /// What the model says about itself: `model` (the recipe's model name), `stage` (what was
    /// lowered), `qc_version`, `recipe_hash` (of the recipe and its includes),
    /// `calibrated_for_accuracy` (False when calibrated on random data) and `normalize` (per input
    /// name, the `{"mean": [...], "std": [...]}` that `run` applies).
    #[getter]
    fn metadata<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let m = self.model.meta();
        let d = PyDict::new(py);
        d.set_item("model", &m.model)?;
        d.set_item("stage", &m.stage)?;
        d.set_item("qc_version", &m.qc_version)?;
        d.set_item("recipe_hash", &m.recipe_hash)?;
        d.set_item("calibrated_for_accuracy", m.calibrated_for_accuracy)?;
        let normalize = PyDict::new(py);
        for (name, n) in &m.input_normalize {
            let one = PyDict::new(py);
            one.set_item("mean", n.mean.clone())?;
            one.set_item("std", n.std.clone())?;
            normalize.set_item(name, one)?;
        }
        d.set_item("normalize", normalize)?;
        Ok(d)
    }

    /// The number of threads `run` uses (`0`: one per core). Setting it starts a new pool; runs
    /// already going finish on the old one.
    #[getter]
    fn threads(&self) -> usize {
        self.pool.read().unwrap_or_else(|p| p.into_inner()).threads
    }

    #[setter]
    fn set_threads(&self, threads: usize) -> PyResult<()> {
        let fresh = pool(threads)?;
        *self.pool.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    /// The file the model was loaded from.
    #[getter]
    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    fn __repr__(&self) -> String {
        let m = self.model.meta();
        let io = |specs: &[TensorSpec]| {
            specs
                .iter()
                .map(|s| format!("{}: {}{}", s.name, s.dtype, qc_runtime::program::shape_string(&s.shape)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "<qc.Model {} (stage {}) from '{}': ({}) -> ({})>",
            m.model,
            m.stage,
            self.path.display(),
            io(&m.inputs),
            io(&m.outputs)
        )
    }
}

/// `x: f32[N, 1, 28, 28], ...`: the inputs as error messages name them.
fn wanted(specs: &[TensorSpec]) -> String {
    specs
        .iter()
        .map(|s| format!("{}: {}{}", s.name, s.dtype, qc_runtime::program::shape_string(&s.shape)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// numpy's name of a qc dtype.
fn numpy_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "float32",
        DType::U8 => "uint8",
        DType::I8 => "int8",
        DType::I32 => "int32",
        DType::I64 => "int64",
    }
}

/// One input as a runtime tensor: the array's elements in C order (one copy; the runtime's
/// tensors own their data), refused when its dtype is not the input's.
fn tensor_of(obj: &Bound<'_, PyAny>, spec: &TensorSpec, wanted: &str) -> PyResult<Tensor> {
    let Ok(untyped) = obj.cast::<PyUntypedArray>() else {
        return Err(qc_error(format!(
            "error: input `{}` is a {}, not a numpy array\nhelp: pass numpy arrays (np.asarray(x, dtype=np.{})); the model's inputs are {wanted}",
            spec.name,
            obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into()),
            numpy_name(spec.dtype)
        )));
    };
    let shape: Vec<usize> = untyped.shape().to_vec();
    let dtype_error = || {
        let found = untyped
            .dtype()
            .str()
            .map(|s| s.to_string())
            .unwrap_or_else(|_| "?".into());
        qc_error(format!(
            "error: input `{}` has dtype {found}; the model takes {}\nhelp: convert it first (x.astype(np.{})); the model's inputs are {wanted}",
            spec.name,
            numpy_name(spec.dtype),
            numpy_name(spec.dtype)
        ))
    };
    let data = match spec.dtype {
        DType::F32 => TensorData::F32(elements::<f32>(untyped).ok_or_else(dtype_error)?),
        DType::U8 => TensorData::U8(elements::<u8>(untyped).ok_or_else(dtype_error)?),
        DType::I8 => TensorData::I8(elements::<i8>(untyped).ok_or_else(dtype_error)?),
        DType::I32 => TensorData::I32(elements::<i32>(untyped).ok_or_else(dtype_error)?),
        DType::I64 => TensorData::I64(elements::<i64>(untyped).ok_or_else(dtype_error)?),
    };
    Ok(Tensor { shape, data })
}

/// The elements of an array of `T`, in C order; `None` when the array holds another dtype.
fn elements<T: numpy::Element + Copy>(untyped: &Bound<'_, PyUntypedArray>) -> Option<Vec<T>> {
    let typed = untyped.cast::<PyArrayDyn<T>>().ok()?;
    // A read-only view needs no borrow flag; a writeable array another thread is writing into
    // is read as numpy would read it.
    let view = typed.try_readonly().ok()?;
    // `as_slice` also takes a Fortran-ordered array, in memory order: only a C-ordered one is
    // copied as a slice; any other is read in its logical (C) order.
    let in_c_order = untyped.is_c_contiguous();
    Some(match view.as_slice() {
        Ok(slice) if in_c_order => slice.to_vec(),
        _ => view.as_array().iter().copied().collect(),
    })
}

/// Refuses an input holding NaN or an infinity, naming the element and its sample (`qc run`'s
/// check and message).
fn refuse_non_finite(specs: &[TensorSpec], inputs: &[Tensor]) -> PyResult<()> {
    for (spec, t) in specs.iter().zip(inputs) {
        let Some(values) = t.as_f32() else { continue };
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            let per_sample: usize = t.shape.iter().skip(1).product::<usize>().max(1);
            return Err(qc_error(format!(
                "error: input `{}` holds {} at element {i} (sample {}); the model would run on garbage\nhelp: clean the data, or pass allow_non_finite=True to run it as it is",
                spec.name,
                values[i],
                i / per_sample
            )));
        }
    }
    Ok(())
}

/// A runtime tensor as a numpy array that owns the tensor's buffer (no copy).
fn array_of(py: Python<'_>, t: Tensor) -> PyResult<Bound<'_, PyAny>> {
    fn owned<'py, T: numpy::Element>(py: Python<'py>, shape: Vec<usize>, v: Vec<T>) -> PyResult<Bound<'py, PyAny>> {
        let a = ArrayD::from_shape_vec(IxDyn(&shape), v)
            .map_err(|e| qc_error(format!("error: an output does not fit its shape: {e}\nhelp: this is a bug in qc; please report it with the model")))?;
        Ok(PyArray::from_owned_array(py, a).into_any())
    }
    match t.data {
        TensorData::F32(v) => owned(py, t.shape, v),
        TensorData::U8(v) => owned(py, t.shape, v),
        TensorData::I8(v) => owned(py, t.shape, v),
        TensorData::I32(v) => owned(py, t.shape, v),
        TensorData::I64(v) => owned(py, t.shape, v),
    }
}

/// `Model.inputs`/`Model.outputs`: one dict per value.
fn specs_list<'a, 'py>(py: Python<'py>, values: impl Iterator<Item = &'a ValueInfo>) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for v in values {
        let d = PyDict::new(py);
        d.set_item("name", &v.name)?;
        d.set_item("shape", PyTuple::new(py, v.shape.iter().copied())?)?;
        d.set_item("dtype", numpy_name(v.dtype))?;
        d.set_item(
            "layout",
            match v.layout {
                qc_runtime::program::Layout::Torch => "torch",
                qc_runtime::program::Layout::ChannelsLast => "channels_last",
            },
        )?;
        match &v.quant {
            Some(q) => {
                let qd = PyDict::new(py);
                qd.set_item("scale", q.scale())?;
                qd.set_item("zero_point", q.zero_point())?;
                qd.set_item("qmin", q.range().qmin())?;
                qd.set_item("qmax", q.range().qmax())?;
                d.set_item("quantization", qd)?;
            }
            None => d.set_item("quantization", py.None())?,
        }
        list.append(d)?;
    }
    Ok(list)
}
