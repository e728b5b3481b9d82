//! The recipe functions: `qc.compile` (a recipe to a `.qmodel`, the stage summary back),
//! `qc.keys`, `qc.fates` and `qc.check_checkpoint` (a stage's parameters, what became of the float
//! keys, and how a checkpoint fits), each as Python lists of dicts. Errors are `qc.QcError`s with
//! the CLI's text.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use qc_compiler::ir::{Module, Provenance, Stage};
use qc_compiler::RunOptions;
use qc_dsl::SourceMap;

use crate::error::{compile_error, compile_error_text, qc_error};

/// The recipe at `file`, or the CLI's message for a file that cannot be read.
fn load(file: &Path) -> Result<qc_dsl::Loaded, String> {
    qc_dsl::load(file).map_err(|e| {
        let qc_dsl::LoadError::Read { source, .. } = &e;
        format!(
            "error: {e}\nhelp: {}",
            qc_runtime::io_help::after_read(source, file, "recipes are UTF-8 text files ending in .qrecipe")
        )
    })
}

/// The stage called `name`, one this qc reaches.
fn stage_named(name: &str, argument: &str) -> Result<Stage, String> {
    let last = qc_compiler::last_stage();
    let reached: Vec<&str> = Stage::ALL.iter().filter(|s| **s <= last).map(|s| s.name()).collect();
    match Stage::from_name(name) {
        Some(s) if s <= last => Ok(s),
        Some(s) => Err(format!(
            "error: stage `{s}` does not exist in this qc yet; it reaches `{last}`\nhelp: ask for one of: {}",
            reached.join(", ")
        )),
        None => Err(format!(
            "error: {argument}=\"{name}\" names no stage {}\nhelp: stages are {}",
            qc_dsl::diag::did_you_mean(name, reached.iter().copied()).unwrap_or_default(),
            reached.join(", ")
        )),
    }
}

/// One line of `qc compile`'s summary.
struct StageLine {
    stage: &'static str,
    nodes: usize,
    params: usize,
    dump: Option<PathBuf>,
}

/// What `compile` hands back from the detached compile: the stage lines and, when a model was
/// written, its path, step count and whether it was calibrated for accuracy.
struct Compiled {
    stages: Vec<StageLine>,
    written: Option<(PathBuf, usize)>,
    calibration_note: Option<String>,
}

/// Compiles a recipe through every stage (or up to `stop_after`), as `qc compile` does, and
/// returns the stage summary: one dict per stage with `stage`, `nodes`, `params` and `dump` (the
/// IR dump's path, or None). With `output`, writes the compiled model (a `.qmodel`, atomically);
/// with `dump_ir`, writes each stage's IR dump into that folder (made when missing). `qat=True`
/// compiles for quantization-aware training. Calibration runs on qc's reference interpreter.
///
/// Raises `qc.QcError` with the CLI's rendered diagnostics (file:line:col, the source line with
/// a caret, a help line) when the recipe is wrong.
#[pyfunction]
#[pyo3(signature = (recipe, output = None, dump_ir = None, stop_after = None, qat = false))]
pub fn compile<'py>(
    py: Python<'py>,
    recipe: PathBuf,
    output: Option<PathBuf>,
    dump_ir: Option<PathBuf>,
    stop_after: Option<String>,
    qat: bool,
) -> PyResult<Bound<'py, PyList>> {
    let compiled = py
        .detach(move || {
            compile_detached(
                &recipe,
                output.as_deref(),
                dump_ir.as_deref(),
                stop_after.as_deref(),
                qat,
            )
        })
        .map_err(qc_error)?;
    let list = PyList::empty(py);
    for s in &compiled.stages {
        let d = PyDict::new(py);
        d.set_item("stage", s.stage)?;
        d.set_item("nodes", s.nodes)?;
        d.set_item("params", s.params)?;
        d.set_item("dump", s.dump.clone())?;
        list.append(d)?;
    }
    if let (Some((path, steps)), Some(last)) = (&compiled.written, list.iter().last()) {
        let last = last.cast_into::<PyDict>()?;
        last.set_item("output", path.clone())?;
        last.set_item("steps", *steps)?;
        last.set_item("calibration_note", compiled.calibration_note.clone())?;
    }
    Ok(list)
}

/// `compile`'s work, without the GIL; errors are the CLI's text.
fn compile_detached(
    file: &Path,
    output: Option<&Path>,
    dump_ir: Option<&Path>,
    stop_after: Option<&str>,
    qat: bool,
) -> Result<Compiled, String> {
    let loaded = load(file)?;
    let stop = stop_after.map(|s| stage_named(s, "stop_after")).transpose()?;
    if let Some(out) = output {
        check_output(out, &recipe_inputs(&loaded))?;
        if stop.is_some_and(|s| s < Stage::Lowered) {
            return Err(format!(
                "error: output={} asks for a compiled model, which is written by the `lowered` stage\n\
                 help: drop output= and use dump_ir= to see the stages, or qc.keys() for the parameters",
                out.display()
            ));
        }
    }
    if let Some(dir) = dump_ir {
        if dir.exists() && !dir.is_dir() {
            return Err(format!(
                "error: dump_ir `{}` is a file, not a folder\nhelp: name a folder for the dumps (it is made when missing), e.g. dump_ir=\"out/\"",
                dir.display()
            ));
        }
        std::fs::create_dir_all(dir).map_err(|e| {
            format!(
                "error: cannot create the dump folder `{}`: {e}\nhelp: {}",
                dir.display(),
                qc_runtime::io_help::after_write(&e, dir)
            )
        })?;
    }
    let opts = RunOptions {
        stop_after: stop,
        qat,
        ..Default::default()
    };
    let sources = loaded.sources.clone();
    let mut stages = vec![];
    let mut write_error = None;
    let mut on_stage = |m: &Module| {
        let dump = dump_ir.map(|dir| dir.join(format!("{:02}-{}.ir", m.stage.number(), m.stage.name())));
        if let Some(path) = &dump {
            let text = qc_compiler::printer::print(m, &sources);
            if let Err(e) = qc_compiler::checkpoint::write_atomic(path, text.as_bytes()) {
                write_error.get_or_insert(format!(
                    "error: cannot write `{}`: {e}\nhelp: {}",
                    path.display(),
                    qc_runtime::io_help::after_write(&e, path)
                ));
            }
        }
        stages.push(StageLine {
            stage: m.stage.name(),
            nodes: m.graph.node_count(),
            params: m.params.len(),
            dump,
        });
    };
    let module = qc_compiler::compile(&loaded, &opts, &mut on_stage, &mut |_, _| {})
        .map_err(|e| compile_error_text(e, &loaded.sources))?;
    if let Some(e) = write_error {
        return Err(e);
    }
    let written = match output {
        Some(out) => Some((out.to_path_buf(), write_model(&module, &loaded.sources, out)?)),
        None => None,
    };
    let calibration_note = (!module.calibrated_for_accuracy && module.stage >= Stage::Calibrated).then(|| {
        module
            .calibration_note
            .clone()
            .unwrap_or_else(|| "no real data".to_string())
    });
    Ok(Compiled {
        stages,
        written,
        calibration_note,
    })
}

/// The files a recipe reads: the recipe, its includes and the checkpoints it binds.
fn recipe_inputs(loaded: &qc_dsl::Loaded) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = loaded.sources.files().iter().map(|f| f.path.clone()).collect();
    files.extend(loaded.recipe.weights.iter().map(|w| w.resolved.clone()));
    files
}

/// Refuses an output in a missing folder, one that is one of the inputs, or one that is not a
/// regular file (`qc compile -o`'s checks).
fn check_output(output: &Path, inputs: &[PathBuf]) -> Result<(), String> {
    if let Some(folder) = output.parent().filter(|d| !d.as_os_str().is_empty() && !d.is_dir()) {
        return Err(format!(
            "error: cannot write output `{}`: the folder `{}` does not exist\nhelp: create it first, or name a file in a folder that exists",
            output.display(),
            folder.display()
        ));
    }
    let inputs: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
    qc_runtime::fsutil::check_output(output, &inputs).map_err(|refusal| {
        let help = match refusal {
            qc_runtime::fsutil::OutputRefusal::IsInput(_) => {
                "name another file; qc never writes over a file the command reads"
            }
            qc_runtime::fsutil::OutputRefusal::NotRegularFile(_) => {
                "name a regular file, or a path where nothing is yet"
            }
        };
        format!(
            "error: cannot write output `{}`: {refusal}\nhelp: {help}",
            output.display()
        )
    })
}

/// Writes `module`'s lowered program as a `.qmodel`; returns its step count.
fn write_model(module: &Module, sources: &SourceMap, out: &Path) -> Result<usize, String> {
    let Some(program) = module.program.clone() else {
        return Err(format!(
            "error: the compile stopped at `{}`, before a program was lowered\nhelp: drop stop_after to write a compiled model",
            module.stage
        ));
    };
    let steps = program.steps.len();
    let meta = qc_compiler::pipeline::model_meta(module, sources);
    match qc_runtime::artifact::Artifact::new(meta, program).write(out) {
        Ok(()) => Ok(steps),
        Err(qc_runtime::artifact::WriteError::Io { source, .. }) => Err(format!(
            "error: cannot write `{}`: {source}\nhelp: {}",
            out.display(),
            qc_runtime::io_help::after_write(&source, out)
        )),
        Err(e) => Err(format!(
            "error: cannot write `{}`: {e}\nhelp: this is a bug in qc; please report it with the recipe",
            out.display()
        )),
    }
}

/// The recipe compiled up to `stage` (`qc keys`'s compile).
fn module_at(file: &Path, stage: &str, qat: bool) -> PyResult<(Module, Arc<SourceMap>)> {
    let loaded = load(file).map_err(qc_error)?;
    let stage = stage_named(stage, "stage").map_err(qc_error)?;
    let opts = RunOptions {
        stop_after: Some(stage),
        qat,
        ..Default::default()
    };
    match qc_compiler::compile(&loaded, &opts, &mut |_| {}, &mut |_, _| {}) {
        Ok(m) => Ok((m, loaded.sources.clone())),
        Err(e) => Err(compile_error(e, &loaded.sources)),
    }
}

/// The parameters of a stage (`qc keys --stage STAGE`): one dict per key, in the stage's order,
/// with `key` (PyTorch's name), `dtype`, `shape` (a tuple; None where the recipe declares a
/// parameter whose shape is not inferred yet, at stage `parsed`) and `origin` (its provenance:
/// `checkpoint`, `fold_bn(conv1.weight, bn1.*)`, ...). `qat=True`: the keys of a QAT compile.
#[pyfunction]
#[pyo3(signature = (recipe, stage = "float", qat = false))]
pub fn keys<'py>(py: Python<'py>, recipe: PathBuf, stage: &str, qat: bool) -> PyResult<Bound<'py, PyList>> {
    let (module, _) = py.detach(|| module_at(&recipe, stage, qat))?;
    let list = PyList::empty(py);
    for (k, p) in &module.params {
        let d = PyDict::new(py);
        d.set_item("key", k)?;
        d.set_item("dtype", p.dtype.to_string())?;
        if matches!(p.provenance, Provenance::Declared) {
            d.set_item("shape", py.None())?;
        } else {
            d.set_item("shape", pyo3::types::PyTuple::new(py, p.shape.iter().copied())?)?;
        }
        d.set_item("origin", p.provenance.to_string())?;
        list.append(d)?;
    }
    Ok(list)
}

/// What became of each key of stage `float` at `stage` (`qc keys --stage STAGE`'s second table),
/// read from provenance: one dict per float key with `float_key`, `into` (the stage's keys made
/// from it; empty when dropped) and `reason`; then one per key the later stages added from no
/// float key (activation scales, observer state), with `float_key` None.
#[pyfunction]
#[pyo3(signature = (recipe, stage = "quantized", qat = false))]
pub fn fates<'py>(py: Python<'py>, recipe: PathBuf, stage: &str, qat: bool) -> PyResult<Bound<'py, PyList>> {
    let (later, float) = py.detach(|| -> PyResult<_> {
        let (later, _) = module_at(&recipe, stage, qat)?;
        let (float, _) = module_at(&recipe, "float", qat)?;
        Ok((later, float))
    })?;
    let (fates, added) = qc_compiler::keys::fates(&float, &later);
    let list = PyList::empty(py);
    for f in &fates {
        let d = PyDict::new(py);
        d.set_item("float_key", &f.float_key)?;
        d.set_item("into", f.into.clone())?;
        d.set_item("reason", &f.reason)?;
        list.append(d)?;
    }
    for f in &added {
        let d = PyDict::new(py);
        d.set_item("float_key", py.None())?;
        d.set_item("into", f.into.clone())?;
        d.set_item("reason", &f.reason)?;
        list.append(d)?;
    }
    Ok(list)
}

/// Checks a checkpoint (`.safetensors` or a PyTorch `.pth` state_dict) against the keys of a stage
/// (`qc keys --check`): returns one dict per problem, an empty list when the checkpoint fits. Each
/// dict has `kind` (`missing`, `unexpected`, `misshaped`, `wrong_dtype` or `prefix`), `key`, `expected`
/// and `found` (what the stage and the checkpoint hold, e.g. `f32[16, 1, 3, 3]`, or None),
/// `closest` (the nearest other key), `rename` (a `(from, to)` pair that would bind it), `reason`,
/// and `message` (the line `qc keys --check` prints). The recipe's own checkpoint is read with
/// its `weights` line's `strip`/`rename`.
#[pyfunction]
#[pyo3(signature = (recipe, checkpoint, stage = "float", qat = false))]
pub fn check_checkpoint<'py>(
    py: Python<'py>,
    recipe: PathBuf,
    checkpoint: PathBuf,
    stage: &str,
    qat: bool,
) -> PyResult<Bound<'py, PyList>> {
    use qc_compiler::keys::Problem;
    use qc_compiler::pipeline::CheckpointCheckError;
    let checked = py.detach(|| -> Result<_, String> {
        let loaded = load(&recipe)?;
        let stage = stage_named(stage, "stage")?;
        qc_compiler::pipeline::check_checkpoint(&loaded, stage, &checkpoint, qat).map_err(|e| match e {
            CheckpointCheckError::Read(e) => format!("error: {}\nhelp: {}", e.message, e.help),
            CheckpointCheckError::Compile(e) => compile_error_text(e, &loaded.sources),
            CheckpointCheckError::NotReached(stage) => format!(
                "error: stage `{stage}` was not reached\nhelp: this is a bug in qc; please report it with the recipe"
            ),
        })
    });
    let checked = checked.map_err(qc_error)?;
    let list = PyList::empty(py);
    for p in &checked.problems {
        let d = PyDict::new(py);
        let none = || None::<String>;
        let (kind, key, expected, found, closest, reason) = match p {
            Problem::Missing {
                key,
                expected,
                closest,
                reason,
                ..
            } => (
                "missing",
                key.clone(),
                Some(expected.to_string()),
                none(),
                closest.clone(),
                Some(reason.clone()),
            ),
            Problem::Unexpected {
                key,
                found,
                closest,
                reason,
                ..
            } => (
                "unexpected",
                key.clone(),
                none(),
                Some(found.to_string()),
                closest.clone(),
                Some(reason.clone()),
            ),
            Problem::Misshaped {
                key,
                expected,
                found,
                reason,
            } => (
                "misshaped",
                key.clone(),
                Some(expected.to_string()),
                Some(found.to_string()),
                none(),
                Some(reason.clone()),
            ),
            Problem::WrongDType { key, expected, found } => (
                "wrong_dtype",
                key.clone(),
                Some(expected.to_string()),
                Some(found.to_string()),
                none(),
                none(),
            ),
            Problem::Prefix { prefix, total, fit } => (
                "prefix",
                prefix.clone(),
                none(),
                none(),
                none(),
                Some(qc_compiler::keys::prefix_outcome(*total, *fit)),
            ),
        };
        d.set_item("kind", kind)?;
        d.set_item("key", key)?;
        d.set_item("expected", expected)?;
        d.set_item("found", found)?;
        d.set_item("closest", closest)?;
        d.set_item("rename", p.rename().map(|(f, t)| (f.to_string(), t.to_string())))?;
        d.set_item("reason", reason)?;
        d.set_item("message", p.to_string())?;
        list.append(d)?;
    }
    Ok(list)
}
