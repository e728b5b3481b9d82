//! `qc eval`: where accuracy goes. One table of FP32, INT8-PTQ and INT8-QAT accuracy (top-1, top-5
//! with more than 10 classes), the gap to FP32, latency per image and size; then per layer, worst
//! first, the SQNR between float and int8 values, the chosen range, the share clipped, the observer
//! and what decided it; `--report DIR` writes it as a page with plots; `--bits 16` simulates
//! everything at 16 bits to tell quantization's losses from the float model's.

mod accuracy;
mod data;
mod html;
mod layers;
mod plots;
mod sim16;
mod table;
mod variants;
mod weights;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use qc_runtime::program::Device;

use crate::exit::{Failure, Outcome};
use accuracy::{Backend, Score};
use layers::{Kind, LayerStat, WeightPair};

/// `qc eval` arguments.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  qc eval examples/fashion_cnn.qrecipe\n  qc eval examples/fashion_cnn.qrecipe --report out/\n  qc eval examples/fashion_cnn.qrecipe --bits 16\n  qc eval trained.qrecipe --data fashion_mnist:test --limit 2000\n\nA recipe that binds no weights but has a `train` section is trained first, as `qc train` does\n(and its `qat` section after), into --weights-dir; later runs reuse those weights while the\nrecipe and the training options stay the same."
)]
pub struct EvalArgs {
    /// The .qrecipe file.
    file: PathBuf,
    /// Labeled samples to score on: `fashion_mnist` (its test split), `fashion_mnist:train`, a
    /// folder of IDX files, or a `.npz` with the inputs and `labels` (default: the recipe's
    /// `test_data:`).
    #[arg(long, value_name = "SOURCE")]
    data: Option<String>,
    /// Score on the first N samples only (at least 1).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    limit: Option<u64>,
    /// Write `report.html` (self-contained) and the plots as SVG and PNG into this folder.
    #[arg(long, value_name = "DIR")]
    report: Option<PathBuf>,
    /// `16`: quantize everything at 16 bits (simulated through libtorch) instead of 8; if the
    /// accuracy is still low, quantization is not the problem.
    #[arg(long, default_value = "8", value_parser = ["8", "16"])]
    bits: String,
    /// Where the models run: qc's CPU runtime, or libtorch on CUDA (calibration and training too).
    #[arg(long, value_enum, default_value_t = EvalDevice::Cpu)]
    device: EvalDevice,
    /// Images the per-layer report compares (the first ones of the data).
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    layer_samples: u64,
    /// Where trained weights are kept (default: `out/<model>/eval`).
    #[arg(long, value_name = "DIR")]
    weights_dir: Option<PathBuf>,
    /// When eval trains: this many epochs instead of the sections' `epochs`.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    epochs: Option<u64>,
    /// When eval trains: at most this many training samples.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_samples: Option<u64>,
    /// Leave out INT8-QAT even when the recipe has a `qat` section.
    #[arg(long)]
    no_qat: bool,
}

/// Where `qc eval` runs models.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvalDevice {
    /// qc's CPU runtime (int8 kernels; float steps on the reference interpreter).
    Cpu,
    /// libtorch on CUDA, where libtorch sees a GPU.
    Cuda,
}

/// Activation histograms and weight plots the report draws at most.
const HISTOGRAMS: usize = 8;
const WEIGHT_PLOTS: usize = 3;

/// Runs the command.
pub fn main(args: EvalArgs) -> Outcome {
    let bits: u8 = if args.bits == "16" { 16 } else { 8 };
    let loaded = crate::cli::load(&args.file)?;
    // The plan first: it reports a recipe's mistakes (or a missing `quantize`) before any work;
    // then the data, before any training.
    let (_, plan) =
        qc_compiler::plan(&loaded, &Default::default()).map_err(|e| crate::cli::fail(e, &loaded.sources))?;
    let input = plan.inputs.first().map(|i| i.0.clone()).unwrap_or_default();
    let data =
        data::read(&loaded, args.data.as_deref(), &input, args.limit.map(|n| n as usize)).map_err(|(m, h)| {
            eprintln!("error: {m}");
            eprintln!("help: {h}");
            Failure::User
        })?;
    let (backend, device) = match args.device {
        EvalDevice::Cpu => (Backend::Cpu, Device::Cpu),
        EvalDevice::Cuda => match crate::train::DeviceArg::Cuda.resolve() {
            Ok(d) => (Backend::Torch(d), d),
            Err(e) => {
                eprintln!("error: {e}");
                eprintln!("help: `qc backends` shows what this machine has; drop `--device cuda` to run on the CPU");
                return Err(Failure::User);
            }
        },
    };
    if bits == 16 && !qc_runtime_host::torch::COMPILED {
        eprintln!(
            "error: `--bits 16` simulates 16-bit quantization through libtorch, and this qc was built without it"
        );
        eprintln!("help: build qc with libtorch (the default features)");
        return Err(Failure::User);
    }
    let report_dir = args.report.as_deref();
    if let Some(dir) = report_dir {
        prepare_report_dir(dir, &loaded)?;
    }
    let model_name = loaded
        .recipe
        .models
        .first()
        .map(|m| m.name.name.clone())
        .unwrap_or_default();
    let opts = weights::TrainOptions {
        epochs: args.epochs,
        max_samples: args.max_samples,
        device,
        dir: args
            .weights_dir
            .clone()
            .unwrap_or_else(|| Path::new("out").join(&model_name).join("eval")),
        no_qat: args.no_qat,
    };
    let w = weights::prepare(&args.file, loaded, &opts)?;
    let calibration = qc_runtime_host::torch::COMPILED.then_some(device);
    let v = variants::build(&w.float, w.qat.as_ref(), calibration)?;
    let sim = if bits == 16 {
        Some(sim16::Sim16::build(&w.float, v.ptq.model.program(), &v.plan, device).map_err(|e| variants::bug(&e))?)
    } else {
        None
    };

    let mut scores: Vec<Score> = vec![];
    let score = |r: Result<Score, String>| r.map_err(|e| variants::bug(&format!("scoring failed: {e}")));
    scores.push(score(accuracy::score(&v.fp32, &data, &backend))?);
    scores.push(score(accuracy::score(&v.ptq, &data, &backend))?);
    if let Some(s) = &sim {
        let model = &v.ptq.model;
        let run = |x: &qc_runtime::Tensor| -> Result<qc_runtime::Tensor, String> {
            let inputs = model.normalize(std::slice::from_ref(x)).map_err(|e| e.to_string())?;
            s.run(&inputs)?.into_iter().next().ok_or_else(|| "no output".into())
        };
        let backend = format!(
            "libtorch {} (fake-quantized)",
            if device == Device::Cuda { "CUDA" } else { "CPU" }
        );
        scores.push(score(accuracy::score_with(
            "INT16 (simulated)",
            None,
            &backend,
            &run,
            &data,
        ))?);
    }
    if let Some(q) = &v.qat {
        scores.push(score(accuracy::score(q, &data, &backend))?);
    }

    let rows = layer_rows(&v, sim.as_ref(), &data, args.layer_samples as usize, bits)?;
    let verdict = sim.as_ref().map(|_| verdict(&scores));
    print!("{}", table::scores(&model_name, &scores, &data.described));
    for n in &w.notes {
        println!("note: {n}");
    }
    if let Some(v) = &verdict {
        println!("{v}");
    }
    println!();
    print!("{}", table::layers(&rows, bits));
    if let Some(dir) = report_dir {
        write_report(
            dir,
            &args.file,
            &model_name,
            &data.described,
            &scores,
            &rows,
            bits,
            &w.notes,
            verdict.as_deref(),
        )?;
    }
    Ok(())
}

/// The report folder exists (made when missing) and `report.html` in it is none of the inputs.
fn prepare_report_dir(dir: &Path, loaded: &qc_dsl::Loaded) -> Outcome {
    if dir.exists() && !dir.is_dir() {
        eprintln!("error: --report `{}` is a file, not a folder", dir.display());
        eprintln!("help: name a folder for the report (it is made when missing), e.g. `--report out/`");
        return Err(Failure::User);
    }
    if let Err(e) = std::fs::create_dir_all(dir) {
        eprintln!("error: cannot create the report folder `{}`: {e}", dir.display());
        eprintln!("help: {}", qc_runtime::io_help::after_write(&e, dir));
        return Err(Failure::User);
    }
    crate::cli::check_output("--report", &dir.join("report.html"), &crate::cli::recipe_inputs(loaded))
}

/// The per-layer rows: the float model against the int8 model (or the 16-bit simulation) on the
/// first `samples` images.
fn layer_rows(
    v: &variants::Variants,
    sim: Option<&sim16::Sim16>,
    data: &data::EvalData,
    samples: usize,
    bits: u8,
) -> Result<Vec<LayerStat>, Failure> {
    let fail = |e: String| variants::bug(&format!("the per-layer comparison failed: {e}"));
    let ptq = v.ptq.model.program();
    let raw = data.samples.0.batch_f32(0, samples.min(data.len()));
    let inputs = v.ptq.model.normalize(&[raw]).map_err(|e| fail(e.to_string()))?;
    let names: HashSet<String> = ptq
        .values
        .iter()
        .filter(|x| x.quant.is_some())
        .map(|x| layers::node_of(&v.plan, &x.name).to_string())
        .collect();
    let floats = layers::float_values(&v.fused, &inputs, &names).map_err(fail)?;
    let int8_weights = layers::int8_weights(ptq, &v.fused);
    match sim {
        None => layers::report(
            &v.plan,
            &v.sources,
            &floats,
            &mut |on| layers::int8_values(ptq, &inputs, on),
            &int8_weights,
            8,
        ),
        Some(sim) => {
            let weights: Vec<WeightPair> = int8_weights
                .into_iter()
                .map(|w| {
                    let (quantized, ranges) = sim16::quantize_weight(&w.float, w.ranges.len(), 16);
                    WeightPair { quantized, ranges, ..w }
                })
                .collect();
            layers::report(
                &v.plan,
                &v.sources,
                &floats,
                &mut |on| sim.values(&inputs, on),
                &weights,
                bits,
            )
        }
    }
    .map_err(fail)
}

/// What `--bits 16` says of the model: whether quantization is what costs accuracy.
fn verdict(scores: &[Score]) -> String {
    let fp32 = &scores[0];
    let find = |name: &str| scores.iter().find(|s| s.name == name);
    let (Some(int16), Some(int8)) = (find("INT16 (simulated)"), find("INT8-PTQ")) else {
        return String::new();
    };
    let lost16 = (fp32.top1 - int16.top1) * 100.0;
    let lost8 = (fp32.top1 - int8.top1) * 100.0;
    if lost16 <= 1.0 {
        format!(
            "verdict: at 16 bits the model keeps FP32's accuracy ({} against {}, {lost16:+.2} points lost), so quantization itself is sound: \
             if {} is too low, the problem is not quantization but the float model (its weights, training, data or input normalization); \
             8 bits lose {lost8:.2} points{}",
            table::percent(int16.top1),
            table::percent(fp32.top1),
            table::percent(fp32.top1),
            if lost8 > 1.0 {
                ", which is what 8-bit precision costs: see the worst layers below"
            } else {
                ", within a point as well"
            }
        )
    } else {
        format!(
            "verdict: even at 16 bits the model loses {lost16:.2} points ({} against FP32's {}): the problem is not the bit width; \
             look at the ranges (the clipped shares below) and the layers kept in float, and report it if none explains it",
            table::percent(int16.top1),
            table::percent(fp32.top1)
        )
    }
}

/// Writes the plots and `report.html` into `dir`.
#[allow(clippy::too_many_arguments)]
fn write_report(
    dir: &Path,
    recipe: &Path,
    model: &str,
    data: &str,
    scores: &[Score],
    rows: &[LayerStat],
    bits: u8,
    notes: &[String],
    verdict: Option<&str>,
) -> Outcome {
    let fail = |e: String| {
        eprintln!("error: {e}");
        eprintln!("help: check that the report folder `{}` is writable", dir.display());
        Failure::User
    };
    let mut written = vec![];
    written.push(
        plots::Plot::Sqnr { rows, bits }
            .write(
                dir,
                "sqnr",
                format!("SQNR per layer between the float model and the {bits}-bit model, worst at the top: blue bars are activations, orange bars weights."),
            )
            .map_err(fail)?,
    );
    for r in rows.iter().filter(|r| r.kind == Kind::Activation).take(HISTOGRAMS) {
        let caption = format!(
            "Distribution of the float values of `{}` over the evaluation images (log scale), with the range {} quantization represents ({}); values outside the red lines are clipped ({:.3}%).",
            r.node,
            table::range(r.range),
            r.scheme,
            r.clipped * 100.0
        );
        written.push(
            plots::Plot::Histogram(r)
                .write(dir, &plots::stem("hist", &r.node), caption)
                .map_err(fail)?,
        );
    }
    for r in rows.iter().filter(|r| r.kind == Kind::Weight).take(WEIGHT_PLOTS) {
        let caption = format!(
            "Per output channel of `{}`: the float weights' range (orange) and the range its scale represents (red ticks), SQNR {}.",
            r.node,
            table::db(r.sqnr_db)
        );
        written.push(
            plots::Plot::Channels(r)
                .write(dir, &plots::stem("weights", &r.node), caption)
                .map_err(fail)?,
        );
    }
    let page = html::render(&html::Page {
        model,
        recipe: &recipe.display().to_string(),
        data,
        scores,
        rows,
        bits,
        notes,
        verdict,
        plots: &written,
    });
    let path = dir.join("report.html");
    qc_runtime::fsutil::write_atomic(&path, page.as_bytes())
        .map_err(|e| fail(format!("cannot write `{}`: {e}", path.display())))?;
    println!(
        "\nwrote {} and {} plots as SVG and PNG in {}",
        path.display(),
        written.len(),
        dir.display()
    );
    Ok(())
}
