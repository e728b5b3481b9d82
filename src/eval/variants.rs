//! The models `qc eval` compares, compiled as `qc compile` compiles them: FP32 (stage `float`),
//! INT8-PTQ (every stage, the `.qmodel` program), INT8-QAT (the QAT recipe with `--qat`), and
//! what the per-layer report needs besides: the PTQ compile's `fused` stage as a float program
//! (its values named like the int8 program's) and the quantization plan.

use std::sync::Arc;

use qc_compiler::ir::{Module, Stage};
use qc_compiler::plan::Plan;
use qc_compiler::RunOptions;
use qc_dsl::SourceMap;
use qc_runtime::model::Model;
use qc_runtime::program::{Device, Program};

use crate::exit::Failure;

/// One model to score: its name in the table and its runnable form.
pub struct Variant {
    pub name: String,
    pub model: Model,
    /// True for a float program (FP32), false for an int8 one.
    pub float: bool,
    /// Bytes of the model as a `.qmodel` file (`qc compile -o`).
    pub size: usize,
}

/// Everything compiled for one evaluation.
pub struct Variants {
    pub fp32: Variant,
    pub ptq: Variant,
    pub qat: Option<Variant>,
    /// The PTQ compile's `fused` stage lowered: float, batch norms folded, named like `ptq`'s values.
    pub fused: Program,
    pub plan: Plan,
    pub sources: Arc<SourceMap>,
}

/// Compiles the float recipe (PTQ) and the QAT recipe, calibrating on `calibration_device`.
pub fn build(
    float: &qc_dsl::Loaded,
    qat: Option<&qc_dsl::Loaded>,
    calibration_device: Option<Device>,
) -> Result<Variants, Failure> {
    let opts = RunOptions {
        calibration_device,
        ..Default::default()
    };
    let mut float_module = None;
    let mut fused_module = None;
    let lowered = qc_compiler::compile(
        float,
        &opts,
        &mut |m| match m.stage {
            Stage::Float => float_module = Some(m.clone()),
            Stage::Fused => fused_module = Some(m.clone()),
            _ => {}
        },
        &mut |_, _| {},
    )
    .map_err(|e| crate::cli::fail(e, &float.sources))?;
    let (Some(float_module), Some(fused_module)) = (float_module, fused_module) else {
        return Err(bug("the compile passed no `float` or `fused` stage"));
    };
    let (_, plan) =
        qc_compiler::plan(float, &RunOptions::default()).map_err(|e| crate::cli::fail(e, &float.sources))?;
    let lower =
        |m: &Module| qc_compiler::lower::lower(m).map_err(|e| bug(&format!("stage `{}` does not lower: {e}", m.stage)));
    let fp32_program = lower(&float_module)?;
    let fused = lower(&fused_module)?;
    let Some(ptq_program) = lowered.program.clone() else {
        return Err(bug("the compile lowered no program"));
    };
    let fp32 = variant("FP32", fp32_program, &float_module, &float.sources, true)?;
    let ptq = variant("INT8-PTQ", ptq_program, &lowered, &float.sources, false)?;
    let qat = match qat {
        Some(loaded) => {
            let opts = RunOptions {
                qat: true,
                calibration_device,
                ..Default::default()
            };
            let m = qc_compiler::compile(loaded, &opts, &mut |_| {}, &mut |_, _| {})
                .map_err(|e| crate::cli::fail(e, &loaded.sources))?;
            let Some(program) = m.program.clone() else {
                return Err(bug("the QAT compile lowered no program"));
            };
            Some(variant("INT8-QAT", program, &m, &loaded.sources, false)?)
        }
        None => None,
    };
    Ok(Variants {
        fp32,
        ptq,
        qat,
        fused,
        plan,
        sources: float.sources.clone(),
    })
}

fn variant(
    name: &str,
    program: Program,
    module: &Module,
    sources: &SourceMap,
    float: bool,
) -> Result<Variant, Failure> {
    let meta = qc_compiler::pipeline::model_meta(module, sources);
    let size = qc_runtime::artifact::Artifact::new(meta.clone(), program.clone())
        .to_bytes()
        .map_err(|e| bug(&format!("{name} does not serialize: {e}")))?
        .len();
    let model = Model::from_program(program, meta).map_err(|e| bug(&format!("{name} does not load: {e}")))?;
    Ok(Variant {
        name: name.into(),
        model,
        float,
        size,
    })
}

/// A failure that is qc's fault.
pub fn bug(message: &str) -> Failure {
    eprintln!("internal error: {message}");
    eprintln!("help: this is a bug in qc, not in your recipe; please report it with the recipe");
    Failure::Bug
}
