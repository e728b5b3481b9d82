//! Command-line parsing (clap) and the compile/inspect commands, each a thin call into the
//! compiler's library functions. Exit codes are picked in `exit.rs`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use qc_compiler::ir::{Module, Provenance, Stage};
use qc_compiler::{CompileError, RunOptions};
use qc_dsl::{Diagnostic, SourceMap};

use crate::exit::{Failure, Outcome};

#[derive(Parser, Debug)]
#[command(
    name = "qc",
    version,
    about = "qc: a quantization compiler for neural networks",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Parse and validate a recipe; prints a one-line summary when it is sound.
    #[command(after_help = "Example:\n  qc check examples/fashion_cnn.qrecipe")]
    Check {
        /// The .qrecipe file.
        file: PathBuf,
    },
    /// Run the compiler's stages, writing an IR dump after each.
    #[command(
        after_help = "Examples:\n  qc compile examples/resnet18.qrecipe --dump-ir out/\n  qc compile examples/fashion_cnn.qrecipe --stop-after parsed --print-after infer-shapes\n  qc compile examples/mobilenet_v2.qrecipe --why-not features.1.conv.0.2"
    )]
    Compile {
        /// The .qrecipe file.
        file: PathBuf,
        /// Where to write the compiled model (needs the `lowered` stage).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Folder for the IR dumps, one per stage: NN-<stage>.ir.
        #[arg(long, value_name = "DIR")]
        dump_ir: Option<PathBuf>,
        /// Stop after this stage.
        #[arg(long, value_name = "STAGE", value_parser = stage_parser())]
        stop_after: Option<String>,
        /// Print the IR to stderr after this pass or stage (repeatable).
        #[arg(long, value_name = "PASS")]
        print_after: Vec<String>,
        /// Print the IR to stderr after every pass.
        #[arg(long)]
        print_after_all: bool,
        /// Compile for quantization-aware training: batch norms stay inside the fused ops
        /// (PyTorch's ConvBn) instead of being folded into the weights (the PTQ default).
        #[arg(long)]
        qat: bool,
        /// Print what the passes did: how often each fusion rule fired, and why rewriting stopped.
        #[arg(long)]
        stats: bool,
        /// Where calibration runs the observed model: libtorch on the CPU or CUDA (`auto`: CUDA
        /// when present), or qc's reference interpreter (f64 sums, the same on every machine).
        #[arg(long, value_enum, default_value_t = CalibrationDevice::Auto)]
        device: CalibrationDevice,
        /// Explain what the fusion rules did to this node (a node name of stage `float`): the rule
        /// that fused it, or the rule that came closest and what failed. Prints to stdout and stops.
        #[arg(long, value_name = "NODE", conflicts_with_all = ["output", "stop_after", "dump_ir"])]
        why_not: Option<String>,
    },
    /// Show the quantization plan: for every node, int8 or float and why, how its weights and
    /// activations are quantized, and the recipe line (or scheme default) behind each setting.
    #[command(
        after_help = "Examples:\n  qc plan examples/fashion_cnn.qrecipe\n  qc plan examples/resnet18.qrecipe --format tsv"
    )]
    Plan {
        /// The .qrecipe file.
        file: PathBuf,
        /// `table` for people, `tsv` for tools (a header line, then one line per node).
        #[arg(long, value_enum, default_value_t = KeysFormat::Table)]
        format: KeysFormat,
    },
    /// List the parameters of a stage with their type and where each came from.
    #[command(
        after_help = "Examples:\n  qc keys examples/resnet18.qrecipe --stage float\n  qc keys examples/conv1d_net.qrecipe --stage float --format tsv\n  qc keys examples/conv1d_net.qrecipe --stage quantized --check tests/data/conv1d_net.int8.pth"
    )]
    Keys {
        /// The .qrecipe file.
        file: PathBuf,
        /// The stage whose parameters to list.
        #[arg(long, value_parser = stage_parser(), default_value = "float")]
        stage: String,
        /// `table` for people, `tsv` for tools: key<TAB>dtype<TAB>shape<TAB>origin, no header.
        #[arg(long, value_enum, default_value_t = KeysFormat::Table)]
        format: KeysFormat,
        /// Check a checkpoint (.safetensors or PyTorch .pth) against the stage's keys: every
        /// missing, unexpected, mis-shaped or wrongly typed key with its closest match and the
        /// reason, and the `strip`/`rename` or the stage that would make it fit. The recipe's own
        /// checkpoint is read with its `weights` line's `strip`/`rename`.
        #[arg(long, value_name = "CKPT")]
        check: Option<PathBuf>,
        /// The keys of a quantization-aware-training compile (batch norms kept: `conv1.bn.weight`).
        #[arg(long)]
        qat: bool,
    },
    /// Write a stage's parameters, under PyTorch's names, to a .safetensors file.
    #[command(
        name = "export-weights",
        after_help = "Example:\n  qc export-weights examples/fashion_cnn.qrecipe --stage fused -o fused.safetensors"
    )]
    ExportWeights {
        /// The .qrecipe file.
        file: PathBuf,
        /// The stage whose parameters to write.
        #[arg(long, value_parser = stage_parser(), default_value = "float")]
        stage: String,
        /// The .safetensors file to write (atomically).
        #[arg(short, long)]
        output: PathBuf,
        /// The parameters of a quantization-aware-training compile (batch norms kept).
        #[arg(long)]
        qat: bool,
    },
    /// Write a compiled model as a QDQ ONNX graph (uint8 activations with qc's zero points,
    /// per-channel int8 weights, int32 biases) that ONNX Runtime fuses into its int8 kernels.
    #[command(after_help = "Example:\n  qc export model.qmodel --onnx model.onnx")]
    Export {
        /// The .qmodel file (`qc compile RECIPE -o model.qmodel`), or a .qrecipe: compiled to
        /// `lowered` and exported likewise, or with `--qat` its fake-quantized QAT model.
        model: PathBuf,
        /// The .onnx file to write (atomically).
        #[arg(long, value_name = "OUT")]
        onnx: PathBuf,
        /// MODEL is a recipe whose weights are a QAT checkpoint (`qc train --qat`): export the
        /// fake-quantized model of stage `observed` (`--qat`) as QDQ with the trained scales,
        /// batch norm folded, biases in float (TensorRT's explicit quantization).
        #[arg(long)]
        qat: bool,
    },
    /// Read a float ONNX graph (PyTorch's `torch.onnx.export`, either exporter) as a recipe: one
    /// statement per layer named by its PyTorch module path, repeated structures as blocks, the
    /// initializers under their PyTorch keys in a `.safetensors` the recipe's `weights` line binds.
    #[command(
        after_help = "Examples:\n  qc import resnet18.onnx -o resnet18.qrecipe\n  qc import model.onnx -o model.qrecipe --weights weights/model.safetensors\n\nONNX ops read: AveragePool, BatchNormalization, Clip (relu6, clamp), Concat, Conv (1-d, 2-d,\ngroups, dilation), Flatten, Gemm, GlobalAveragePool, HardSigmoid, HardSwish, MatMul (+ Add),\nMaxPool, Mul, ReduceMean (global), Relu, Reshape (to 2-d), Sigmoid, Add; Constant, Identity\nand Dropout are folded away."
    )]
    Import {
        /// The .onnx file.
        model: PathBuf,
        /// The .qrecipe file to write (atomically).
        #[arg(short, long)]
        output: PathBuf,
        /// The .safetensors file for the initializers (default: the recipe's path with
        /// `.safetensors`).
        #[arg(long, value_name = "FILE")]
        weights: Option<PathBuf>,
    },
    /// Run a compiled model (`qc compile RECIPE -o model.qmodel`) on inputs from `.npy` files.
    #[command(
        after_help = "Examples:\n  qc run model.qmodel --input x.npy\n  qc run model.qmodel --input x.npy --output y.npy\n  qc run model.qmodel --input x.npy --threads 2 --bench 50\n  qc run model.qmodel --input t10k-images-idx3-ubyte.gz --labels t10k-labels-idx1-ubyte.gz\n  qc run model.qmodel --input x.npy --device cuda --bench 50"
    )]
    Run {
        /// The .qmodel file.
        model: PathBuf,
        /// One `.npy` per model input, in order (or one `.npz` holding them by name); `u8`
        /// arrays are images, scaled to [0, 1].
        #[arg(long, required = true)]
        input: Vec<PathBuf>,
        /// Where to write the output as `.npy` (atomically).
        #[arg(long)]
        output: Option<PathBuf>,
        /// Worker threads, 1 to 1024 (default: one per core).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
        threads: Option<u16>,
        /// Time this many runs (1 to 1,000,000) after 3 warm-up runs and print the median.
        #[arg(long, value_name = "ROUNDS", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        bench: Option<u32>,
        /// Run inputs that hold NaN or infinite values (refused by default, naming the value).
        #[arg(long)]
        allow_non_finite: bool,
        /// Print how long each step takes (slowest first).
        #[arg(long)]
        profile: bool,
        /// One class per input sample (IDX labels or `.npy`): print top-1 accuracy.
        #[arg(long)]
        labels: Option<PathBuf>,
        /// An earlier run's output (`.npy`, e.g. `--output` of another model, device or the QAT
        /// evaluation): print how many elements are equal and how many quantization steps apart.
        #[arg(long, value_name = "REF")]
        compare: Option<PathBuf>,
        /// Where to run: qc's own CPU kernels, libtorch on CUDA (`_int_mm`; the same bits), `auto`
        /// (CUDA when present), or `torch-cpu` (libtorch's int8 path on the CPU, for checks).
        #[arg(long, value_enum, default_value_t = crate::run::RunDevice::Cpu)]
        device: crate::run::RunDevice,
        /// MODEL is a recipe: compile it up to this stage (`float`, `fused`, `observed`, ...) and
        /// run that, float stages on qc's reference interpreter (`--device cpu`).
        #[arg(long, value_parser = stage_parser())]
        stage: Option<String>,
        /// With `--stage observed`: compile for QAT (`qc compile --qat`) and run the
        /// fake-quantized model as QAT evaluates it (libtorch on the CPU; the recipe's weights
        /// are a `qc train --qat` checkpoint).
        #[arg(long, requires = "stage")]
        qat: bool,
    },
    /// Train the model with libtorch: float weights with the recipe's `train` section, or, with
    /// `--qat`, quantization-aware fine-tuning with its `qat` section.
    Train(crate::train::TrainArgs),
    /// Where accuracy goes: FP32, INT8-PTQ and INT8-QAT accuracy, latency and size in one table,
    /// then per layer (worst first) the SQNR between float and int8 values, the chosen range,
    /// the share clipped and what decided it; `--report DIR` writes an HTML page with plots.
    Eval(crate::eval::EvalArgs),
    /// Show the execution backends this build has (qc's own CPU code, libtorch, CUDA).
    #[command(after_help = "Example:\n  qc backends")]
    Backends,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum KeysFormat {
    Table,
    Tsv,
}

fn stage_parser() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(Stage::ALL.map(|s| s.name()))
}

/// Runs the command line; says how it ended (`crate::exit` picks the code).
pub fn main() -> Outcome {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { Err(Failure::Usage) } else { Ok(()) };
        }
    };
    // `QC_ISA` picks the int8 kernels of every command that runs them (compile calibrates, run,
    // train evaluates); `qc backends` lists the paths, so it alone reads a bad value too.
    if !matches!(cli.command, Command::Backends) {
        check_isa_env()?;
    }
    match cli.command {
        Command::Check { file } => check(&file),
        Command::Compile {
            file,
            output,
            dump_ir,
            stop_after,
            print_after,
            print_after_all,
            qat,
            stats,
            device,
            why_not,
        } => match why_not {
            Some(node) => explain_fusion(&file, &node, qat),
            None => compile(
                &file,
                output.as_deref(),
                dump_ir.as_deref(),
                stop_after.as_deref(),
                print_after,
                print_after_all,
                qat,
                stats,
                device,
            ),
        },
        Command::Plan { file, format } => plan(&file, format),
        Command::Keys {
            file,
            stage,
            format,
            check,
            qat,
        } => keys(&file, &stage, format, check.as_deref(), qat),
        Command::ExportWeights {
            file,
            stage,
            output,
            qat,
        } => export_weights(&file, &stage, &output, qat),
        Command::Export { model, onnx, qat } => crate::onnx_cmd::export_onnx(&model, &onnx, qat),
        Command::Import { model, output, weights } => crate::onnx_cmd::import_onnx(&model, &output, weights),
        Command::Run {
            model,
            input,
            output,
            threads,
            bench,
            profile,
            labels,
            compare,
            device,
            allow_non_finite,
            stage,
            qat,
        } => crate::run::run(crate::run::RunArgs {
            model,
            inputs: input,
            output,
            threads: threads.map(usize::from),
            bench: bench.map(|b| b as usize),
            profile,
            labels,
            compare,
            device,
            allow_non_finite,
            stage,
            qat,
        }),
        Command::Train(args) => crate::train::main(args),
        Command::Eval(args) => crate::eval::main(args),
        Command::Backends => backends(),
    }
}

/// Prints diagnostics to stderr, in colour on a terminal.
fn report(diags: &[Diagnostic], sources: &Arc<SourceMap>) {
    eprint!(
        "{}",
        qc_dsl::diag::render_report(diags, sources, std::io::stderr().is_terminal())
    );
}

/// The files a recipe reads: the recipe, its includes and the checkpoints it binds.
pub(crate) fn recipe_inputs(loaded: &qc_dsl::Loaded) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = loaded.sources.files().iter().map(|f| f.path.clone()).collect();
    files.extend(loaded.recipe.weights.iter().map(|w| w.resolved.clone()));
    files
}

/// `target` as a recipe at `recipe` names it in a `weights "..."` line: relative to the recipe's
/// folder (`../out/w.safetensors`), or absolute when the two share no folder.
pub(crate) fn path_from_recipe(recipe: &Path, target: &Path) -> String {
    let absolute = |p: &Path| {
        let p = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        p.canonicalize().unwrap_or(p)
    };
    let folder = absolute(
        recipe
            .parent()
            .filter(|f| !f.as_os_str().is_empty())
            .unwrap_or(Path::new(".")),
    );
    let target = absolute(target);
    let (a, b): (Vec<_>, Vec<_>) = (folder.components().collect(), target.components().collect());
    let shared = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    if shared <= 1 {
        return target.display().to_string();
    }
    let mut rel = PathBuf::new();
    for _ in shared..a.len() {
        rel.push("..");
    }
    for c in &b[shared..] {
        rel.push(c);
    }
    rel.display().to_string()
}

/// Refuses, before any work, an output that is one of the command's inputs (the same file by
/// any path or link) or that is not a regular file (a link, a folder, a device).
pub(crate) fn check_output(flag: &str, output: &Path, inputs: &[PathBuf]) -> Outcome {
    let folder = output.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(folder) = folder.filter(|d| !d.is_dir()) {
        eprintln!(
            "error: cannot write {flag} `{}`: the folder `{}` does not exist",
            output.display(),
            folder.display()
        );
        eprintln!(
            "help: create it first (`mkdir -p {}`), or name a file in a folder that exists",
            folder.display()
        );
        return Err(Failure::User);
    }
    let inputs: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
    qc_runtime::fsutil::check_output(output, &inputs).map_err(|refusal| {
        eprintln!("error: cannot write {flag} `{}`: {refusal}", output.display());
        match refusal {
            qc_runtime::fsutil::OutputRefusal::IsInput(_) => {
                eprintln!("help: name another file; qc never writes over a file the command reads")
            }
            qc_runtime::fsutil::OutputRefusal::NotRegularFile(_) => {
                eprintln!("help: name a regular file, or a path where nothing is yet")
            }
        }
        Failure::User
    })
}

pub(crate) fn load(file: &Path) -> Result<qc_dsl::Loaded, Failure> {
    qc_dsl::load(file).map_err(|e| {
        eprintln!("error: {e}");
        let qc_dsl::LoadError::Read { source, .. } = &e;
        eprintln!(
            "help: {}",
            qc_runtime::io_help::after_read(source, file, "recipes are UTF-8 text files ending in .qrecipe")
        );
        Failure::User
    })
}

/// Reports a compile error; says how the command failed.
pub(crate) fn fail(err: CompileError, sources: &Arc<SourceMap>) -> Failure {
    match err {
        CompileError::User(diags) => {
            report(&diags, sources);
            Failure::User
        }
        CompileError::Internal { pass, message } => {
            eprintln!("internal error: the verifier failed after pass `{pass}`: {message}");
            eprintln!("help: this is a bug in qc, not in your recipe; please report it with the recipe");
            Failure::Bug
        }
    }
}

fn check(file: &Path) -> Outcome {
    let loaded = load(file)?;
    match qc_compiler::check(&loaded) {
        Ok(summary) => {
            println!("ok: {} — {summary}", file.display());
            Ok(())
        }
        Err(e) => Err(fail(e, &loaded.sources)),
    }
}

#[allow(clippy::too_many_arguments)]
fn compile(
    file: &Path,
    output: Option<&Path>,
    dump_ir: Option<&Path>,
    stop_after: Option<&str>,
    print_after: Vec<String>,
    print_after_all: bool,
    qat: bool,
    stats: bool,
    device: CalibrationDevice,
) -> Outcome {
    let calibration_device = match device.resolve() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            eprintln!("help: `qc backends` shows what this build and machine have; `--device reference` needs neither");
            return Err(Failure::User);
        }
    };
    let loaded = load(file)?;
    if let Some(out) = output {
        check_output("-o", out, &recipe_inputs(&loaded))?;
    }
    let known = qc_compiler::pass_names();
    for p in &print_after {
        if !known.contains(&p.as_str()) && Stage::from_name(p).is_none() {
            let hint = qc_dsl::diag::did_you_mean(p, known.iter().copied()).unwrap_or_default();
            eprintln!("error: --print-after `{p}` names no pass or stage {hint}");
            eprintln!(
                "help: passes are {}; stages are {}",
                known.join(", "),
                Stage::ALL.map(|s| s.name()).join(", ")
            );
            return Err(Failure::Usage);
        }
    }
    let last = qc_compiler::last_stage();
    let stop = stop_after.and_then(Stage::from_name);
    if let Some(out) = output {
        if stop.is_some_and(|s| s < Stage::Lowered) || last < Stage::Lowered {
            eprintln!(
                "error: -o {} asks for a compiled model, which is written by the `lowered` stage",
                out.display()
            );
            eprintln!(
                "help: this qc runs the stages up to `{last}`; drop -o and use --dump-ir to see them, or `qc keys` for the parameters"
            );
            return Err(Failure::User);
        }
    }
    if let Some(dir) = dump_ir {
        if dir.exists() && !dir.is_dir() {
            eprintln!("error: --dump-ir `{}` is a file, not a folder", dir.display());
            eprintln!("help: name a folder for the dumps (it is made when missing), e.g. `--dump-ir out/`");
            return Err(Failure::User);
        }
        if let Err(e) = std::fs::create_dir_all(dir) {
            eprintln!("error: cannot create the dump folder `{}`: {e}", dir.display());
            eprintln!("help: {}", qc_runtime::io_help::after_write(&e, dir));
            return Err(Failure::User);
        }
    }
    if stop.is_some_and(|s| s > last) {
        eprintln!(
            "note: --stop-after {} is past the last stage this qc has (`{last}`); running every stage",
            stop.map(|s| s.name()).unwrap_or("")
        );
    }
    let opts = RunOptions {
        stop_after: stop,
        print_after,
        print_after_all,
        verify: false,
        qat,
        progress: std::io::stderr().is_terminal().then_some(progress as fn(&str)),
        calibration_device,
        keys_only: false,
    };
    let sources = loaded.sources.clone();
    let mut write_error = None;
    let mut on_stage = |m: &Module| {
        let text = qc_compiler::printer::print(m, &sources);
        let nodes = m.graph.node_count();
        match dump_ir {
            Some(dir) => {
                let path = dir.join(format!("{:02}-{}.ir", m.stage.number(), m.stage.name()));
                if let Err(e) = qc_compiler::checkpoint::write_atomic(&path, text.as_bytes()) {
                    write_error.get_or_insert((
                        format!("cannot write `{}`: {e}", path.display()),
                        qc_runtime::io_help::after_write(&e, &path),
                    ));
                }
                println!(
                    "stage {:<10} {nodes:>4} nodes {:>4} params  -> {}",
                    m.stage.name(),
                    m.params.len(),
                    path.display()
                );
            }
            None => println!(
                "stage {:<10} {nodes:>4} nodes {:>4} params",
                m.stage.name(),
                m.params.len()
            ),
        }
    };
    let mut on_print = |pass: &str, m: &Module| {
        eprintln!("// ----- IR after {pass} -----");
        eprint!("{}", qc_compiler::printer::print(m, &sources));
    };
    match qc_compiler::compile(&loaded, &opts, &mut on_stage, &mut on_print) {
        Ok(module) => {
            if stats {
                match &module.rewrite {
                    Some(report) => print!("{}", report.render()),
                    None => println!("fuse: not run (the compile stopped before stage `fused`)"),
                }
            }
            if let Some((e, help)) = write_error {
                eprintln!("error: {e}");
                eprintln!("help: {help}");
                return Err(Failure::User);
            }
            match output {
                Some(out) => write_model(&module, &loaded, out),
                None => Ok(()),
            }
        }
        Err(e) => Err(fail(e, &loaded.sources)),
    }
}

/// `qc compile --why-not NODE`: compiles to stage `float`, then explains what the fusion rules
/// (in the mode of the compile, `--qat` or not) did to the node.
fn explain_fusion(file: &Path, node: &str, qat: bool) -> Outcome {
    use qc_compiler::why_not::WhyNotError;
    let loaded = load(file)?;
    let (module_name, explained) = match qc_compiler::pipeline::why_not(&loaded, node, qat) {
        Ok(r) => r,
        Err(e) => return Err(fail(e, &loaded.sources)),
    };
    match explained {
        Ok(explanation) => {
            print!("{}", explanation.render(&loaded.sources));
            Ok(())
        }
        Err(WhyNotError::UnknownNode { name, suggestion }) => {
            eprintln!(
                "error: --why-not `{name}` names no node of model `{}`{}",
                module_name,
                suggestion.map(|s| format!(" ({s})")).unwrap_or_default()
            );
            eprintln!(
                "help: nodes are named as at stage `float` (PyTorch module paths); `qc compile {} --stop-after float \
                 --print-after float` lists them",
                file.display()
            );
            Err(Failure::User)
        }
        Err(WhyNotError::Fuse(diags)) => Err(fail(CompileError::User(diags), &loaded.sources)),
    }
}

/// `qc run RECIPE --stage STAGE`: the recipe compiled up to `stage`, lowered (float stages to
/// float steps, which qc's reference interpreter runs) and ready to run as a compiled model is.
pub fn recipe_model(file: &Path, stage: &str) -> Result<qc_runtime::model::Model, Failure> {
    if stage == Stage::Parsed.name() {
        eprintln!("error: stage `parsed` has no weights bound yet, so there is nothing to run");
        eprintln!("help: run `--stage float` (the model as PyTorch has it) or a later stage");
        return Err(Failure::User);
    }
    let (module, sources) = module_at(file, stage, false)?;
    let program = match module.program.clone() {
        Some(p) => Ok(p),
        None => qc_compiler::lower::lower(&module),
    };
    let program = match program {
        Ok(p) => p,
        Err(e) => {
            eprintln!(
                "error: cannot run `{}` at stage `{}`: {e}",
                file.display(),
                module.stage
            );
            eprintln!(
                "help: `qc compile {} --stop-after {stage} --print-after {stage}` shows the module",
                file.display()
            );
            return Err(Failure::User);
        }
    };
    qc_runtime::model::Model::from_program(program, qc_compiler::pipeline::model_meta(&module, &sources)).map_err(|e| {
        eprintln!(
            "error: cannot run `{}` at stage `{}`: {e}",
            file.display(),
            module.stage
        );
        eprintln!("help: this is a bug in qc; please report it with the recipe");
        Failure::Bug
    })
}

/// Writes the lowered program of `module` as a `.qmodel` artifact (atomically), with the
/// model's name, the stage, whether it was calibrated for accuracy and a hash of the recipe's
/// sources.
fn write_model(module: &Module, loaded: &qc_dsl::Loaded, out: &Path) -> Outcome {
    let Some(program) = module.program.clone() else {
        eprintln!(
            "error: the compile stopped at `{}`, before a program was lowered",
            module.stage
        );
        eprintln!("help: drop --stop-after to write a compiled model");
        return Err(Failure::User);
    };
    let meta = qc_compiler::pipeline::model_meta(module, &loaded.sources);
    let steps = program.steps.len();
    let artifact = qc_runtime::artifact::Artifact::new(meta, program);
    match artifact.write(out) {
        Ok(()) => {
            let size = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
            println!("wrote {} ({steps} steps, {size} bytes)", out.display());
            if !module.calibrated_for_accuracy {
                println!(
                    "note: not calibrated for accuracy: {}",
                    module.calibration_note.as_deref().unwrap_or("no real data")
                );
            }
            Ok(())
        }
        Err(qc_runtime::artifact::WriteError::Io { source, .. }) => {
            eprintln!("error: cannot write `{}`: {source}", out.display());
            eprintln!("help: {}", qc_runtime::io_help::after_write(&source, out));
            Err(Failure::User)
        }
        Err(e) => {
            eprintln!("error: cannot write `{}`: {e}", out.display());
            eprintln!("help: this is a bug in qc; please report it with the recipe");
            Err(Failure::Bug)
        }
    }
}

/// Where `qc compile` calibrates.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CalibrationDevice {
    /// libtorch on CUDA when it sees a GPU, else on the CPU; the reference interpreter when this
    /// qc has no libtorch.
    Auto,
    Cpu,
    Cuda,
    /// qc's reference interpreter.
    Reference,
}

impl CalibrationDevice {
    fn resolve(self) -> Result<Option<qc_runtime::program::Device>, String> {
        use crate::train::DeviceArg;
        match self {
            CalibrationDevice::Reference => Ok(None),
            CalibrationDevice::Auto if !qc_runtime_host::torch::COMPILED => Ok(None),
            CalibrationDevice::Auto => DeviceArg::Auto.resolve().map(Some),
            CalibrationDevice::Cpu => DeviceArg::Cpu.resolve().map(Some),
            CalibrationDevice::Cuda => DeviceArg::Cuda.resolve().map(Some),
        }
    }
}

/// A long pass's progress, redrawn in place on stderr (only used when stderr is a terminal);
/// a line starting `calibrated` is the last of its bar.
fn progress(line: &str) {
    use std::io::Write;
    if line.starts_with("calibrated") {
        eprintln!("\r{line}\x1b[K");
    } else {
        eprint!("\r{line}\x1b[K");
        let _ = std::io::stderr().flush();
    }
}

fn plan(file: &Path, format: KeysFormat) -> Outcome {
    let loaded = load(file)?;
    match qc_compiler::plan(&loaded, &RunOptions::default()) {
        Ok((_, plan)) => {
            match format {
                KeysFormat::Table => print!("{}", plan.table(&loaded.sources)),
                KeysFormat::Tsv => print!("{}", plan.tsv(&loaded.sources)),
            }
            Ok(())
        }
        Err(e) => Err(fail(e, &loaded.sources)),
    }
}

/// Compiles a recipe up to `stage` (which must exist in this qc).
pub(crate) fn module_at(file: &Path, stage: &str, qat: bool) -> Result<(Module, Arc<SourceMap>), Failure> {
    let loaded = load(file)?;
    let stage = Stage::from_name(stage).expect("clap checked the stage");
    stage_exists(stage)?;
    // Calibrated where `qc compile` calibrates by default, so that a stage run here is the
    // compiled model: libtorch's float kernels and the reference interpreter may differ in the
    // last bits of an activation, and so in a calibrated scale.
    let opts = RunOptions {
        stop_after: Some(stage),
        qat,
        calibration_device: CalibrationDevice::Auto.resolve().unwrap_or(None),
        ..Default::default()
    };
    match qc_compiler::compile(&loaded, &opts, &mut |_| {}, &mut |_, _| {}) {
        Ok(m) => Ok((m, loaded.sources.clone())),
        Err(e) => Err(fail(e, &loaded.sources)),
    }
}

fn stage_exists(stage: Stage) -> Result<(), Failure> {
    let last = qc_compiler::last_stage();
    if stage > last {
        eprintln!("error: stage `{stage}` does not exist in this qc yet; it reaches `{last}`");
        eprintln!(
            "help: ask for one of: {}",
            Stage::ALL
                .iter()
                .filter(|s| **s <= last)
                .map(|s| s.name())
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Err(Failure::User);
    }
    Ok(())
}

/// `qc keys --check`: the checkpoint against the stage asked for; when it does not fit, the
/// stage it does fit (if any) is named. The keys of every stage come from one keys-only compile
/// per mode (`RunOptions::keys_only`: no checkpoint bound, no calibration data read), so a misfit
/// costs no more than a fit. A checkpoint that is the recipe's own `weights` file is read with
/// that line's `strip`/`rename`.
fn check_keys(file: &Path, stage: &str, ckpt: &Path, qat: bool) -> Outcome {
    use qc_compiler::pipeline::CheckpointCheckError;
    let loaded = load(file)?;
    let stage = Stage::from_name(stage).expect("clap checked the stage");
    stage_exists(stage)?;
    let checked = match qc_compiler::pipeline::check_checkpoint(&loaded, stage, ckpt, qat) {
        Ok(c) => c,
        Err(CheckpointCheckError::Read(e)) => {
            eprintln!("error: {}", e.message);
            eprintln!("help: {}", e.help);
            return Err(Failure::User);
        }
        Err(CheckpointCheckError::Compile(e)) => return Err(fail(e, &loaded.sources)),
        Err(CheckpointCheckError::NotReached(_)) => {
            eprintln!("error: stage `{stage}` was not reached");
            eprintln!("help: this is a bug in qc; please report it with the recipe");
            return Err(Failure::Bug);
        }
    };
    let qc_compiler::pipeline::CheckpointCheck {
        model,
        keys,
        problems,
        fits,
        until_last,
        own,
        remap,
    } = checked;
    let ckpt_name = ckpt.display().to_string();
    if problems.is_empty() {
        println!("`{ckpt_name}` fits stage `{stage}` of model `{model}`: {keys} keys");
        return Ok(());
    }
    for p in &problems {
        println!("{p}");
    }
    eprintln!(
        "error: `{ckpt_name}` does not fit stage `{stage}` of model `{model}`: {} problem{}",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    // The line to write names the checkpoint as the recipe does, when it is the recipe's.
    let line_name = own.map(|w| w.path.clone()).unwrap_or_else(|| ckpt_name.clone());
    let mut helped = false;
    if let Some(qc_compiler::keys::Problem::Prefix { prefix, total, fit }) = problems.first() {
        eprintln!(
            "help: strip the prefix in the recipe ({}): `{}`",
            qc_compiler::keys::prefix_outcome(*total, *fit),
            qc_compiler::remap::weights_line(&line_name, &remap, qc_compiler::remap::Addition::Strip(prefix))
        );
        helped = true;
    }
    let candidates = [qat, !qat]
        .into_iter()
        .flat_map(|q| Stage::ALL.into_iter().map(move |s| (s, q)))
        .filter(|&(s, q)| s >= Stage::Float && s <= until_last && (s, q) != (stage, qat));
    for (other, other_qat) in candidates {
        if !helped && fits.contains(&(other, other_qat, true)) {
            let mode = if other_qat { " with --qat" } else { "" };
            eprintln!(
                "help: it fits stage `{other}`{mode}: name it in the recipe (`weights \"{line_name}\"`) and qc binds it there and runs the later stages from it"
            );
            helped = true;
        }
    }
    let mut renames: Vec<(&str, &str)> = vec![];
    for r in problems.iter().filter_map(|p| p.rename()) {
        if !renames.contains(&r) {
            renames.push(r);
        }
    }
    if let Some(&(from, to)) = renames.first().filter(|_| !helped) {
        let more = match renames.len() - 1 {
            0 => String::new(),
            n => format!(
                " ({n} more `rename`{} in the list above)",
                if n == 1 { "" } else { "s" }
            ),
        };
        eprintln!(
            "help: `{from}` of the checkpoint has the shapes of the model's `{to}`; if it is the same layer, rename it in the recipe: `{}`{more}",
            qc_compiler::remap::weights_line(&line_name, &remap, qc_compiler::remap::Addition::Rename(from, to))
        );
        helped = true;
    }
    if !helped {
        eprintln!(
            "help: it fits no stage of this recipe in either mode; each line above names a key and what the stage has instead (`qc keys {} --stage {stage}` lists the stage's keys)",
            file.display()
        );
    }
    Err(Failure::User)
}

fn export_weights(file: &Path, stage: &str, output: &Path, qat: bool) -> Outcome {
    check_output("-o", output, &recipe_inputs(&load(file)?))?;
    let (module, _) = module_at(file, stage, qat)?;
    let (tensors, meta) = match qc_compiler::keys::export(&module) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            eprintln!("help: export a stage from `float` on; `parsed` has no values");
            return Err(Failure::User);
        }
    };
    match qc_compiler::checkpoint::write_safetensors_with_metadata(output, &tensors, Some(meta)) {
        Ok(()) => {
            println!(
                "wrote {} tensors of stage `{}` to {}",
                tensors.len(),
                module.stage,
                output.display()
            );
            Ok(())
        }
        Err(qc_compiler::checkpoint::CheckpointError::Write { source, .. }) => {
            eprintln!("error: cannot write `{}`: {source}", output.display());
            eprintln!("help: {}", qc_runtime::io_help::after_write(&source, output));
            Err(Failure::User)
        }
        Err(e) => {
            eprintln!("error: cannot write `{}`: {e}", output.display());
            eprintln!("help: this is a bug in qc; please report it with the recipe");
            Err(Failure::Bug)
        }
    }
}

fn keys(file: &Path, stage: &str, format: KeysFormat, check: Option<&Path>, qat: bool) -> Outcome {
    if let Some(ckpt) = check {
        return check_keys(file, stage, ckpt, qat);
    }
    let (module, _) = module_at(file, stage, qat)?;
    let rows: Vec<(String, String, String, String)> = module
        .params
        .iter()
        .map(|(k, p)| {
            let shape = if matches!(p.provenance, Provenance::Declared) {
                "?".to_string()
            } else {
                format!(
                    "[{}]",
                    p.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
                )
            };
            (k.clone(), p.dtype.to_string(), shape, p.provenance.to_string())
        })
        .collect();
    match format {
        KeysFormat::Tsv => {
            for (k, d, s, o) in rows {
                println!("{k}\t{d}\t{s}\t{o}");
            }
        }
        KeysFormat::Table => {
            let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(3).max(3);
            let w2 = rows.iter().map(|r| r.2.len()).max().unwrap_or(5).max(5);
            println!("{:<w0$}  {:<5}  {:<w2$}  origin", "key", "dtype", "shape");
            for (k, d, s, o) in &rows {
                println!("{k:<w0$}  {d:<5}  {s:<w2$}  {o}");
            }
            println!(
                "{} parameters at stage `{}` of model `{}`",
                rows.len(),
                module.stage,
                module.name
            );
            if module.stage > Stage::Float {
                let (float, _) = module_at(file, "float", qat)?;
                print_fates(&float, &module);
            }
        }
    }
    Ok(())
}

/// What became of each key of stage `float` at `later`'s stage, and what `later` added, with
/// the reasons read from provenance.
fn print_fates(float: &Module, later: &Module) {
    let (fates, added) = qc_compiler::keys::fates(float, later);
    println!();
    println!(
        "from the {} keys of stage `float` to the {} keys of stage `{}`:",
        float.params.len(),
        later.params.len(),
        later.stage
    );
    let w0 = fates.iter().map(|f| f.float_key.len()).max().unwrap_or(0);
    let into: Vec<String> = fates
        .iter()
        .map(|f| {
            if f.into.is_empty() {
                "(none)".to_string()
            } else {
                f.into.join(", ")
            }
        })
        .collect();
    let w1 = into.iter().map(|s| s.len()).max().unwrap_or(0);
    for (f, i) in fates.iter().zip(&into) {
        println!("  {:<w0$}  -> {i:<w1$}  {}", f.float_key, f.reason);
    }
    if !added.is_empty() {
        println!("added at later stages ({}):", added.len());
        let w = added.iter().map(|f| f.into[0].len()).max().unwrap_or(0);
        for f in &added {
            println!("  {:<w$}  {}", f.into[0], f.reason);
        }
    }
}

/// Refuses a `QC_ISA` that names no path, or one this CPU lacks, before any work.
fn check_isa_env() -> Outcome {
    match qc_runtime::kernels::fast::selected() {
        Ok(_) => Ok(()),
        Err(e) => {
            eprintln!("error: {e}");
            eprintln!("help: `qc backends` lists the paths this CPU runs; unset QC_ISA to run the best of them");
            Err(Failure::User)
        }
    }
}

fn backends() -> Outcome {
    use qc_runtime::kernels::fast::{detected, selected, Isa};
    println!("cpu    qc's own code (reference interpreter; int8 kernels): always available");
    println!("       int8 kernel paths (QC_ISA forces one):");
    for isa in Isa::ALL {
        match isa.check() {
            Ok(()) => println!("         {:<11} available", isa.name()),
            Err(why) => println!("         {:<11} not available: {why}", isa.name()),
        }
    }
    match selected() {
        Ok(isa) if isa == detected() => println!("       runs: {} (the best this CPU has)", isa.name()),
        Ok(isa) => println!(
            "       runs: {} (QC_ISA; the best this CPU has is {})",
            isa.name(),
            detected().name()
        ),
        Err(e) => println!("       runs: none: {e}"),
    }
    match qc_runtime_host::torch::info() {
        Ok(info) => {
            println!("torch  libtorch {} (tch): available", info.version);
            if info.cuda_available {
                println!("cuda   {} device(s) through libtorch: available", info.cuda_devices);
            } else {
                println!("cuda   not available (no CUDA device, or a CPU-only libtorch)");
            }
        }
        Err(e) => {
            println!("torch  not available: {e}");
            println!("       needed by: calibration and training through libtorch, and `--device cuda`");
            println!("       rebuild with the default features (`cargo build --release`) after `make setup`");
        }
    }
    Ok(())
}
