//! The weights `qc eval` scores: the recipe's own (its `weights` line), or, for a recipe that binds
//! none but has a `train` section, what `qc train` makes of it; and the QAT weights its `qat`
//! section makes from those. Trained weights are kept in a folder (`--weights-dir`) with a stamp
//! of the recipe's sources and the training options, and reused while both stay the same.

use std::path::{Path, PathBuf};

use qc_compiler::training::{self, PrepareError, TrainRequest};
use qc_runtime::program::Device;
use qc_runtime_host::torch::TrainHooks;

use crate::exit::Failure;

/// The recipes eval compiles: one binding the float weights, one binding the QAT weights.
pub struct Weights {
    pub float: qc_dsl::Loaded,
    pub qat: Option<qc_dsl::Loaded>,
    /// What was trained or reused, for the report.
    pub notes: Vec<String>,
}

/// How training runs when eval has to train.
pub struct TrainOptions {
    pub epochs: Option<u64>,
    pub max_samples: Option<u64>,
    pub device: Device,
    pub dir: PathBuf,
    /// Skip QAT even when the recipe has a `qat` section.
    pub no_qat: bool,
}

/// Prints an error and its help line; the command failed through the user's doing.
fn error(message: impl std::fmt::Display, help: impl std::fmt::Display) -> Failure {
    eprintln!("error: {message}");
    eprintln!("help: {help}");
    Failure::User
}

/// The float and QAT recipes of `loaded` (at `file`), training what is missing.
pub fn prepare(file: &Path, loaded: qc_dsl::Loaded, opts: &TrainOptions) -> Result<Weights, Failure> {
    let mut notes = vec![];
    let has_train = loaded.sections.train.is_some();
    let has_qat = loaded.sections.qat.is_some() && !opts.no_qat;
    let binds = !loaded.recipe.weights.is_empty();
    if (has_qat || (!binds && has_train)) && !qc_runtime_host::torch::COMPILED {
        return Err(error(
            "this recipe needs training (its float weights or its `qat` section), and this qc was built without libtorch",
            "build qc with libtorch (the default), bind trained weights with a `weights` line, or pass `--no-qat`",
        ));
    }
    let stamp = stamp(&loaded, opts);
    let float = if binds {
        notes.push(format!(
            "float weights: the recipe's ({})",
            loaded
                .recipe
                .weights
                .iter()
                .map(|w| w.path.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        loaded
    } else if has_train {
        let out = opts.dir.join("fp32.safetensors");
        let reused = train_once(file, &loaded, false, &out, &stamp, opts)?;
        notes.push(format!(
            "float weights: the recipe's `train` section, {} `{}`",
            if reused { "reused from" } else { "trained into" },
            out.display()
        ));
        load_binding(file, &opts.dir.join("trained.qrecipe"), &out)?
    } else {
        notes.push(
            "float weights: none bound and no `train` section, so qc's deterministic initial values: the accuracy means nothing"
                .into(),
        );
        loaded
    };
    let qat = if has_qat {
        let out = opts.dir.join("qat.safetensors");
        let float_file = if binds {
            file.to_path_buf()
        } else {
            opts.dir.join("trained.qrecipe")
        };
        let reused = train_once(&float_file, &float, true, &out, &stamp, opts)?;
        notes.push(format!(
            "QAT weights: the recipe's `qat` section, {} `{}`",
            if reused { "reused from" } else { "trained into" },
            out.display()
        ));
        Some(load_binding(file, &opts.dir.join("qat.qrecipe"), &out)?)
    } else {
        None
    };
    Ok(Weights { float, qat, notes })
}

/// What decides whether trained weights can be reused: the sources of the recipe, the options.
fn stamp(loaded: &qc_dsl::Loaded, opts: &TrainOptions) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for f in loaded.sources.files() {
        h.update(f.text.as_bytes());
        h.update(&[0]);
    }
    format!(
        "qc {} recipe xxh3:{:016x} epochs {:?} max_samples {:?} device {:?}\n",
        env!("CARGO_PKG_VERSION"),
        h.digest(),
        opts.epochs,
        opts.max_samples,
        opts.device
    )
}

/// Trains `loaded` (float, or QAT) into `out` unless `out` and its stamp say it was done with the
/// same recipe and options; true when reused.
fn train_once(
    file: &Path,
    loaded: &qc_dsl::Loaded,
    qat: bool,
    out: &Path,
    stamp: &str,
    opts: &TrainOptions,
) -> Result<bool, Failure> {
    let stamp_path = out.with_extension("stamp");
    if out.is_file() && std::fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp) {
        return Ok(true);
    }
    std::fs::create_dir_all(&opts.dir).map_err(|e| {
        error(
            format!("cannot create `{}`: {e}", opts.dir.display()),
            qc_runtime::io_help::after_write(&e, &opts.dir),
        )
    })?;
    let request = TrainRequest {
        qat,
        epochs: opts.epochs,
        max_samples: opts.max_samples,
        device: opts.device,
        resume_output: None,
    };
    let section = if qat { "qat" } else { "train" };
    let job = training::prepare(loaded, &request).map_err(|e| match e {
        PrepareError::Compile(e) => crate::cli::fail(e, &loaded.sources),
        e => error(
            format!("cannot train `{}` ({section} section): {e:?}", file.display()),
            format!(
                "`qc train {}{}` says more",
                file.display(),
                if qat { " --qat" } else { "" }
            ),
        ),
    })?;
    eprintln!(
        "eval: {} {} on {} samples, {} epoch(s) (the recipe's `{section}` section) into {}",
        if qat {
            "quantization-aware training of"
        } else {
            "training"
        },
        job.module.name,
        job.samples(),
        job.config.epochs,
        out.display()
    );
    let started = std::time::Instant::now();
    job.run(TrainHooks {
        on_step: &mut |_| {},
        on_epoch: &mut |s, state| {
            eprintln!(
                "eval: epoch {} loss {:.4}{}",
                s.epoch,
                s.loss,
                s.test_accuracy
                    .map(|a| format!(", test accuracy {:.2}%", a * 100.0))
                    .unwrap_or_default()
            );
            job.save_epoch(state, out).map(|_| ())
        },
    })
    .map_err(|e| {
        error(
            format!("training failed: {e}"),
            format!(
                "`qc train {}{}` says more",
                file.display(),
                if qat { " --qat" } else { "" }
            ),
        )
    })?;
    eprintln!("eval: trained in {:.1} s", started.elapsed().as_secs_f64());
    qc_runtime::fsutil::write_atomic(&stamp_path, stamp.as_bytes()).map_err(|e| {
        error(
            format!("cannot write `{}`: {e}", stamp_path.display()),
            qc_runtime::io_help::after_write(&e, &stamp_path),
        )
    })?;
    Ok(false)
}

/// Writes (atomically) and loads a recipe that includes `file` and binds `weights`, as
/// `scripts/demo.sh` does.
fn load_binding(file: &Path, recipe: &Path, weights: &Path) -> Result<qc_dsl::Loaded, Failure> {
    let included = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
    let name = weights
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let text = format!(
        "// written by `qc eval`: the recipe with the weights it trained\ninclude \"{}\"\nweights \"{name}\"\n",
        included.display()
    );
    qc_runtime::fsutil::write_atomic(recipe, text.as_bytes()).map_err(|e| {
        error(
            format!("cannot write `{}`: {e}", recipe.display()),
            qc_runtime::io_help::after_write(&e, recipe),
        )
    })?;
    crate::cli::load(recipe)
}
