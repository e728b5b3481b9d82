//! The pipeline: the stages that exist with their passes, in order, and what runs a recipe
//! through them: `compile` (up to a stage), `check` (validation without weights) and `plan`
//! (the quantization plan, what `qc plan` prints).

use qc_dsl::{Diagnostic, Loaded};

use crate::bind;
use crate::calibrate;
use crate::convert;
use crate::expand;
use crate::float;
use crate::ir::{Module, Stage};
use crate::lower;
use crate::observe;
use crate::ops;
use crate::pass::{self, PassError, RunOptions};
use crate::rewrite;
use crate::rules;
use crate::verify;
use crate::why_not::{self, Explanation, WhyNotError};

/// The stages that exist, after `parsed`, with their passes.
pub fn pipeline() -> Vec<pass::StageDef> {
    vec![
        stage(
            Stage::Float,
            vec![Box::new(float::InferShapes), Box::new(float::BindWeights)],
        ),
        stage(Stage::Fused, vec![Box::new(rewrite::Fuse)]),
        stage(Stage::Observed, vec![Box::new(observe::InsertObservers)]),
        stage(Stage::Calibrated, vec![Box::new(calibrate::Calibrate)]),
        stage(Stage::Quantized, vec![Box::new(convert::Convert)]),
        stage(Stage::Lowered, vec![Box::new(lower::Lower)]),
    ]
}

/// A stage of the pipeline: its passes, then `bind-checkpoint` once the module is at `stage` (a
/// checkpoint saved at a later stage than `float` binds at the first stage it fits).
fn stage(stage: Stage, passes: Vec<Box<dyn pass::Pass>>) -> pass::StageDef {
    pass::StageDef {
        stage,
        passes,
        reached: vec![Box::new(bind::BindCheckpoint)],
    }
}

/// The last stage the pipeline reaches.
pub fn last_stage() -> Stage {
    pipeline().last().map(|s| s.stage).unwrap_or(Stage::Parsed)
}

/// Why compilation stopped.
#[derive(Debug)]
pub enum CompileError {
    /// The recipe (or a file it names) is at fault; render these.
    User(Vec<Diagnostic>),
    /// A compiler bug found by the verifier.
    Internal { pass: String, message: String },
}

/// Runs every stage up to `opts.stop_after` (or the last that exists). `on_stage` sees the module
/// after each stage, `parsed` included; `on_print` serves `--print-after`.
pub fn compile(
    loaded: &Loaded,
    opts: &RunOptions,
    on_stage: &mut dyn FnMut(&Module),
    on_print: &mut dyn FnMut(&str, &Module),
) -> Result<Module, CompileError> {
    if !loaded.diagnostics.is_empty() {
        return Err(CompileError::User(loaded.diagnostics.clone()));
    }
    rules::load(loaded).map_err(pass_error)?;
    let mut module = expand::expand(loaded).map_err(CompileError::User)?;
    if cfg!(debug_assertions) || opts.verify {
        let errors = verify::verify(&module);
        if !errors.is_empty() {
            return Err(CompileError::Internal {
                pass: "expand".into(),
                message: errors.join("; "),
            });
        }
    }
    on_stage(&module);
    if opts.print_after_all || opts.print_after.iter().any(|p| p == "parsed" || p == "expand") {
        on_print("expand", &module);
    }
    let mut cx = pass::Ctx::new(loaded, opts);
    pass::run_stages(&mut module, &pipeline(), &mut cx, opts, on_stage, on_print).map_err(pass_error)?;
    Ok(module)
}

fn pass_error(e: PassError) -> CompileError {
    match e {
        PassError::User(d) => CompileError::User(d),
        PassError::Internal { pass, message } => CompileError::Internal { pass, message },
    }
}

/// The quantization plan of a recipe: the stages before `observed`, then `plan::build` on the
/// result (what `qc plan` prints). A recipe without a `quantize` section is a user error.
pub fn plan(loaded: &Loaded, opts: &RunOptions) -> Result<(Module, crate::plan::Plan), CompileError> {
    if !loaded.diagnostics.is_empty() {
        return Err(CompileError::User(loaded.diagnostics.clone()));
    }
    let mut module = expand::expand(loaded).map_err(CompileError::User)?;
    let stages: Vec<pass::StageDef> = pipeline().into_iter().filter(|s| s.stage < Stage::Observed).collect();
    let mut cx = pass::Ctx::new(loaded, opts);
    pass::run_stages(&mut module, &stages, &mut cx, opts, &mut |_| {}, &mut |_, _| {}).map_err(pass_error)?;
    let q = crate::plan::settings(loaded, &module).map_err(CompileError::User)?;
    let p = crate::plan::build(&module, q).map_err(CompileError::User)?;
    Ok((module, p))
}

/// Names of every pass, in order (for `--print-after` validation and help).
pub fn pass_names() -> Vec<&'static str> {
    let mut names = vec!["expand"];
    for s in pipeline() {
        names.extend(s.passes.iter().map(|p| p.name()));
    }
    names
}

/// Validates a recipe without materialising weights: parse, sections, expansion, shapes, and
/// (when the recipe names one) the checkpoint's keys and shapes. Returns a one-line summary.
pub fn check(loaded: &Loaded) -> Result<String, CompileError> {
    if !loaded.diagnostics.is_empty() {
        return Err(CompileError::User(loaded.diagnostics.clone()));
    }
    rules::load(loaded).map_err(pass_error)?;
    let mut module = expand::expand(loaded).map_err(CompileError::User)?;
    let opts = RunOptions::default();
    let mut cx = pass::Ctx::new(loaded, &opts);
    use pass::Pass;
    let user = pass_error;
    float::InferShapes.run(&mut module, &mut cx).map_err(user)?;
    let weights = match loaded.recipe.weights.first() {
        Some(_) => {
            float::BindWeights.run(&mut module, &mut cx).map_err(user)?;
            if cx.pending.is_some() {
                "checkpoint of a later stage than float (bound where it fits when compiling)"
            } else {
                "checkpoint fits"
            }
        }
        None => "no checkpoint (deterministic initialiser)",
    };
    let n_params: usize = module
        .params
        .values()
        .map(|p| ops::elements(&p.shape).unwrap_or(usize::MAX))
        .fold(0, usize::saturating_add);
    let mut sections = vec![];
    if !loaded.recipe.quantize.is_empty() {
        sections.push("quantize");
    }
    if !loaded.recipe.train.is_empty() {
        sections.push("train");
    }
    if !loaded.recipe.qat.is_empty() {
        sections.push("qat");
    }
    let sections = if sections.is_empty() {
        String::new()
    } else {
        format!(", sections {}", sections.join("+"))
    };
    Ok(format!(
        "model `{}`: {} nodes, {} parameter tensors ({} values), {weights}{sections}",
        module.name,
        module.graph.node_count(),
        module.params.len(),
        n_params
    ))
}

/// `qc compile --why-not NODE`: compiles to stage `float`, then explains what the fusion rules (in
/// the mode of the compile, QAT or not) did to the node. Returns the model's name with the
/// explanation (or why there is none: an unknown node, a rule set that does not load).
pub fn why_not(
    loaded: &Loaded,
    node: &str,
    qat: bool,
) -> Result<(String, Result<Explanation, WhyNotError>), CompileError> {
    let opts = RunOptions {
        stop_after: Some(Stage::Float),
        qat,
        ..Default::default()
    };
    let module = compile(loaded, &opts, &mut |_| {}, &mut |_, _| {})?;
    let rules = rules::load(loaded).map_err(pass_error)?;
    let mode = if qat {
        crate::report::Mode::Qat
    } else {
        crate::report::Mode::Ptq
    };
    let explained = why_not::why_not(&module, &rules, mode, node);
    Ok((module.name.clone(), explained))
}

/// What a `.qmodel` says of the model `module` compiled from `sources`: its name, the stage,
/// whether it was calibrated for accuracy, a hash of the recipe's sources, and the normalization
/// each input line declares (what calibration and training applied to the data), so that
/// `qc run` and `Model::run` take raw samples.
pub fn model_meta(module: &Module, sources: &qc_dsl::SourceMap) -> qc_runtime::artifact::Meta {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for f in sources.files() {
        h.update(f.name.as_bytes());
        h.update(&[0]);
        h.update(f.text.as_bytes());
        h.update(&[0]);
    }
    let normalize = module
        .input_normalizations()
        .into_iter()
        .filter_map(|(name, n)| n.map(|n| (name.to_string(), n.clone())))
        .collect();
    qc_runtime::artifact::Meta::new(
        module.name.clone(),
        module.stage.name(),
        module.calibrated_for_accuracy,
        format!("xxh3:{:016x}", h.digest()),
    )
    .with_input_normalize(normalize)
}

/// What [`check_checkpoint`] found: the asked stage's problems (none: the checkpoint fits) and
/// whether each other stage compiled on the way fits, for the help line that names one.
#[derive(Debug)]
pub struct CheckpointCheck {
    /// The model's name.
    pub model: String,
    /// How many keys the checkpoint has.
    pub keys: usize,
    /// Why the checkpoint does not fit the asked stage, key by key; empty when it fits.
    pub problems: Vec<crate::keys::Problem>,
    /// `(stage, qat, fits)` of every stage from `float` on that was compiled, the asked one first.
    pub fits: Vec<(Stage, bool, bool)>,
    /// The last stage the other candidates were compiled up to.
    pub until_last: Stage,
    /// The recipe's `weights` line when the checkpoint is the recipe's own file (read with its
    /// `strip`/`rename`).
    pub own: Option<qc_dsl::sections::WeightsSettings>,
    /// The remapping applied to the checkpoint's keys before checking.
    pub remap: qc_dsl::sections::KeyRemap,
}

/// Why [`check_checkpoint`] could not judge the checkpoint.
#[derive(Debug)]
pub enum CheckpointCheckError {
    /// The checkpoint could not be read.
    Read(crate::checkpoint::ReadError),
    /// The recipe (or its remapping of the checkpoint) is at fault, or the compiler is.
    Compile(CompileError),
    /// The asked stage was not reached: a bug.
    NotReached(Stage),
}

/// `qc keys --check`: the checkpoint at `ckpt` against stage `stage` of the recipe (QAT mode when
/// `qat`); when it does not fit, every stage it does fit, in either mode, is found too. The keys
/// of every stage come from one keys-only compile per mode (`RunOptions::keys_only`: no checkpoint
/// bound, no calibration data read), so a misfit costs no more than a fit. A checkpoint that is
/// the recipe's own `weights` file is read with that line's `strip`/`rename`.
pub fn check_checkpoint(
    loaded: &Loaded,
    stage: Stage,
    ckpt: &std::path::Path,
    qat: bool,
) -> Result<CheckpointCheck, CheckpointCheckError> {
    if !loaded.diagnostics.is_empty() {
        return Err(CheckpointCheckError::Compile(CompileError::User(
            loaded.diagnostics.clone(),
        )));
    }
    let own = loaded
        .sections
        .weights
        .first()
        .filter(|w| qc_runtime::fsutil::same_file(&w.resolved, ckpt));
    let values = crate::keys::read_checkpoint(ckpt).map_err(CheckpointCheckError::Read)?;
    let (values, remap) = match own {
        Some(w) => match crate::remap::apply(values, &w.remap, &w.path) {
            Ok((v, _)) => (v, w.remap.clone()),
            Err(d) => return Err(CheckpointCheckError::Compile(CompileError::User(d))),
        },
        None => (values, Default::default()),
    };
    let entries = crate::keys::entries(&values);
    let last = last_stage();
    // (stage, qat, fits) of every stage from `float` on, the asked mode first; the asked stage's
    // problems and names on the way.
    // The asked stage alone first: a checkpoint that fits needs no other.
    let mut fits: Vec<(Stage, bool, bool)> = vec![];
    let mut asked: Option<(Vec<crate::keys::Problem>, String)> = None;
    // Stage `lowered` has the keys of `quantized`: the other stages are compiled up to
    // `quantized` unless `lowered` was asked for.
    let until_last = last.min(Stage::Quantized).max(stage);
    for (mode, until) in [(qat, stage), (qat, until_last), (!qat, until_last)] {
        if until == stage && asked.is_some() && mode == qat {
            continue;
        }
        let opts = RunOptions {
            stop_after: Some(until),
            qat: mode,
            keys_only: true,
            ..Default::default()
        };
        let result = compile(
            loaded,
            &opts,
            &mut |m| {
                if m.stage < Stage::Float {
                    return;
                }
                if (m.stage, mode) == (stage, qat) && asked.is_none() {
                    let problems = crate::keys::check(m, &entries);
                    fits.push((m.stage, mode, problems.is_empty()));
                    asked = Some((problems, m.name.clone()));
                } else {
                    fits.push((m.stage, mode, crate::keys::fits_stage(m, &entries)));
                }
            },
            &mut |_, _| {},
        );
        match (&asked, result) {
            // A stage the asked one does not need (no `quantize` section, say) is simply not a
            // candidate.
            (Some((problems, _)), _) if problems.is_empty() => break,
            (Some(_), _) => {}
            (None, Err(e)) => return Err(CheckpointCheckError::Compile(e)),
            (None, Ok(_)) => return Err(CheckpointCheckError::NotReached(stage)),
        }
    }
    let (problems, model) = asked.ok_or(CheckpointCheckError::NotReached(stage))?;
    Ok(CheckpointCheck {
        model,
        keys: entries.len(),
        problems,
        fits,
        until_last,
        own: own.cloned(),
        remap,
    })
}
