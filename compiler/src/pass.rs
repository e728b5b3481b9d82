//! The pass manager: named passes grouped into stages, a verifier after every pass (in tests and
//! debug builds, or on request), `--print-after`, `--print-after-all` and `--stop-after`.

use qc_dsl::Diagnostic;

use crate::ir::{Module, Stage};

/// Whether a pass changed the module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Changed {
    Yes,
    No,
}

/// Why a pass stopped.
#[derive(Debug)]
pub enum PassError {
    /// The user's recipe, data or checkpoint is at fault; each diagnostic says how.
    User(Vec<Diagnostic>),
    /// A compiler bug: the verifier found a broken invariant after a pass.
    Internal { pass: String, message: String },
}

/// What passes may read besides the module: the checked recipe and its sources, the options
/// of the run (`qat`, progress reporting), and a checkpoint waiting for its stage.
pub struct Ctx<'a> {
    pub loaded: &'a qc_dsl::Loaded,
    pub opts: &'a RunOptions,
    /// A checkpoint that did not fit stage `float`: it is bound at the first later stage whose
    /// keys it fits (a QAT or converted PyTorch checkpoint), by the pass `crate::bind::BindCheckpoint`.
    pub pending: Option<PendingCheckpoint>,
    /// Quantization-aware training (`opts.qat`): batch norms stay inside the fused ops
    /// (PyTorch's ConvBn), `observed` inserts fake-quant nodes.
    pub qat: bool,
}

impl<'a> Ctx<'a> {
    pub fn new(loaded: &'a qc_dsl::Loaded, opts: &'a RunOptions) -> Self {
        Ctx {
            loaded,
            opts,
            pending: None,
            qat: opts.qat,
        }
    }
}

/// A checkpoint waiting for the stage it was saved at.
pub struct PendingCheckpoint {
    pub values: indexmap::IndexMap<String, crate::checkpoint::CkptValue>,
    /// As written in the recipe.
    pub file: String,
    /// The file's own names of keys its `weights` line remapped.
    pub origins: crate::remap::Origins,
    pub span: qc_dsl::Span,
    /// The diagnostics of binding it at stage `float`, reported if no stage fits.
    pub float_diagnostics: Vec<Diagnostic>,
}

/// One transformation of the module.
pub trait Pass {
    /// Kebab-case name, used by `--print-after` and in logs.
    fn name(&self) -> &'static str;
    fn run(&self, module: &mut Module, cx: &mut Ctx) -> Result<Changed, PassError>;
}

/// The passes that make up a stage.
pub struct StageDef {
    pub stage: Stage,
    pub passes: Vec<Box<dyn Pass>>,
    /// Passes run once the module has reached `stage`, before the stage is handed on (binding
    /// a checkpoint saved at this stage). They are not named by `--print-after`, printed by
    /// `--print-after-all` or followed by the verifier.
    pub reached: Vec<Box<dyn Pass>>,
}

/// Options of a pipeline run.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Stop once this stage is reached (inclusive).
    pub stop_after: Option<Stage>,
    /// Pass or stage names after which to print the IR.
    pub print_after: Vec<String>,
    pub print_after_all: bool,
    /// Run the verifier after every pass (always on in debug builds).
    pub verify: bool,
    /// Quantization-aware training (`qc compile --qat`): batch norms stay inside the fused ops
    /// and `observed` inserts fake-quant nodes (PyTorch's `FusedMovingAvgObsFakeQuantize`)
    /// instead of PTQ observers. The default is post-training quantization.
    pub qat: bool,
    /// Where long passes (calibration) report progress, one line at a time; `None` keeps them
    /// quiet. The CLI passes a printer to stderr when stderr is a terminal.
    pub progress: Option<fn(&str)>,
    /// Where calibration runs the observed model: through libtorch on this device, or, with
    /// `None`, on the reference interpreter (f64 accumulation, the same result on every machine;
    /// what tests and snapshots use).
    pub calibration_device: Option<qc_runtime::program::Device>,
    /// Only the keys, dtypes and shapes of the stages matter (`qc keys --check`): the recipe's
    /// checkpoint is not read (conv and linear parameters are zeros), calibration reads no data
    /// but gives every observer the placeholder range [-1, 1], and `convert` leaves integer
    /// weights at zero. Values come out meaningless; the keys, dtypes and shapes of every stage
    /// are those of a real compile.
    pub keys_only: bool,
}

/// Runs stages in order, calling `on_stage` with the module after each stage and `on_print` with
/// (pass name, module) wherever printing was asked for.
pub fn run_stages(
    module: &mut Module,
    stages: &[StageDef],
    cx: &mut Ctx,
    opts: &RunOptions,
    on_stage: &mut dyn FnMut(&Module),
    on_print: &mut dyn FnMut(&str, &Module),
) -> Result<(), PassError> {
    let verify = opts.verify || cfg!(debug_assertions);
    for def in stages {
        if opts.stop_after.is_some_and(|s| module.stage >= s) {
            break;
        }
        for pass in &def.passes {
            pass.run(module, cx)?;
            if verify {
                let errors = crate::verify::verify(module);
                if !errors.is_empty() {
                    return Err(PassError::Internal {
                        pass: pass.name().to_string(),
                        message: errors.join("; "),
                    });
                }
            }
            if opts.print_after_all || opts.print_after.iter().any(|p| p == pass.name()) {
                on_print(pass.name(), module);
            }
        }
        module.stage = def.stage;
        for pass in &def.reached {
            pass.run(module, cx)?;
        }
        on_stage(module);
        if !opts.print_after_all && opts.print_after.iter().any(|p| p == def.stage.name()) {
            on_print(def.stage.name(), module);
        }
    }
    if let Some(p) = cx.pending.take() {
        let mut d = p.float_diagnostics;
        if let Some(first) = d.first_mut() {
            let help = format!(
                "{}; it fits no stage up to `{}` either (`qc keys FILE --stage S --check CKPT` explains each stage)",
                first.help, module.stage
            );
            first.help = help;
        }
        return Err(PassError::User(d));
    }
    Ok(())
}
