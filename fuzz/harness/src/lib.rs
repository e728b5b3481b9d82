//! One function per fuzz target (`fuzz/fuzz_targets/`): each takes the raw bytes of one input
//! and does with them what qc does with a file of that kind, short of the command line. Every
//! error is a value and is dropped; a panic, an abort, a hang or an allocation past the fuzzer's
//! limits is the bug being looked for. `tests/replay.rs` runs every file of
//! `fuzz/regressions/<target>/` through [`run`], so `make test` replays them.

use std::path::Path;
use std::sync::Arc;

use qc_compiler::CompileError;

/// The targets, by the name of their folder under `fuzz/regressions/` and `fuzz/corpus/`.
pub const TARGETS: &[&str] = &["recipe", "pth", "safetensors", "qmodel", "npy", "npz", "idx", "onnx"];

/// Runs the target named `target` on `data`; `false` for an unknown target name.
pub fn run(target: &str, data: &[u8]) -> bool {
    match target {
        "recipe" => recipe(data),
        "pth" => pth(data),
        "safetensors" => safetensors(data),
        "qmodel" => qmodel(data),
        "npy" => npy(data),
        "npz" => npz(data),
        "idx" => idx(data),
        "onnx" => onnx(data),
        _ => return false,
    }
    true
}

/// The recipe as if in a folder that does not exist: an include or weights path relative to it
/// fails to read instead of reading this machine's files.
const RECIPE_PATH: &str = "/nonexistent-qc-fuzz/fuzz.qrecipe";

/// The stack `qc`'s main thread runs on (`src/main.rs`), which the front end's recursion over
/// nested input relies on.
const QC_STACK_BYTES: usize = 512 << 20;

/// `qc check` on recipe text, short of reading the files it names: parse, sections, diagnostics
/// rendered as on a terminal and in a pipe, then the compiler's check (rules, expansion, shapes).
/// Text that is not UTF-8 is refused by `qc_dsl::read_recipe_text` before any of this; a string
/// that starts with `/` (or an escape) could name an absolute path, so such inputs are skipped.
pub fn recipe(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if text.contains("\"/") || text.contains("\"\\") {
        return;
    }
    let text = text.to_string();
    std::thread::Builder::new()
        .stack_size(QC_STACK_BYTES)
        .spawn(move || check_recipe(text))
        .expect("spawning the check thread")
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
}

fn check_recipe(text: String) {
    let loaded = qc_dsl::load_str(RECIPE_PATH, Path::new(RECIPE_PATH), text);
    let diagnostics = match qc_compiler::check(&loaded) {
        Ok(_) => return,
        Err(CompileError::User(d)) => d,
        Err(CompileError::Internal { pass, message }) => {
            panic!("the verifier failed after pass `{pass}` (a compiler bug): {message}")
        }
    };
    render(&diagnostics, &loaded.sources);
}

fn render(diagnostics: &[qc_dsl::Diagnostic], sources: &Arc<qc_dsl::SourceMap>) {
    let plain = qc_dsl::diag::render_plain(diagnostics, sources);
    assert!(!plain.is_empty(), "diagnostics render to nothing");
    let handler = miette::GraphicalReportHandler::new().with_links(false);
    qc_dsl::diag::render_with(&handler, diagnostics, sources);
}

/// A `.pth` (`torch.save` of a state dict) read as `qc` binds it: the archive and pickle, then
/// every value as a checkpoint value (quantization schemes included).
pub fn pth(data: &[u8]) {
    let _ = qc_compiler::pth::read_pth_bytes(data);
    let _ = qc_compiler::checkpoint::checkpoint_from_bytes("fuzz.pth", data);
}

/// A `.safetensors` file read as `qc` binds it.
pub fn safetensors(data: &[u8]) {
    let _ = qc_compiler::checkpoint::safetensors_from_bytes("fuzz.safetensors", data);
}

/// A `.qmodel` loaded as `qc run` loads it: every check of the artifact, then the program
/// validated and its weights packed. The bytes are tried as they are and with their trailing
/// checksum made right, so that mutations reach the header and the program behind it.
pub fn qmodel(data: &[u8]) {
    load_model(data);
    if data.len() >= 8 {
        let (body, _) = data.split_at(data.len() - 8);
        let mut sealed = body.to_vec();
        sealed.extend_from_slice(&qc_runtime::artifact::checksum(body).to_le_bytes());
        load_model(&sealed);
    }
}

fn load_model(bytes: &[u8]) {
    if let Ok(a) = qc_runtime::artifact::Artifact::from_bytes(bytes) {
        let _ = qc_runtime::model::Model::from_program(a.program, a.meta);
    }
}

/// A `.npy` array read and its first samples taken as calibration and `qc run` take them.
pub fn npy(data: &[u8]) {
    if let Ok(a) = qc_runtime_host::data::npy_from_bytes(Path::new("fuzz.npy"), data) {
        a.batch_f32(0, 2);
    }
}

/// A `.npz` archive read, each array's first samples taken.
pub fn npz(data: &[u8]) {
    if let Ok(arrays) = qc_runtime_host::data::npz_from_bytes(Path::new("fuzz.npz"), data) {
        for (_, a) in arrays {
            a.batch_f32(0, 2);
        }
    }
}

/// An IDX file (gzip-compressed or plain) read, its first samples taken.
pub fn idx(data: &[u8]) {
    if let Ok(a) = qc_runtime_host::data::idx_from_bytes(Path::new("fuzz-idx3-ubyte"), data) {
        a.batch_f32(0, 2);
    }
}

/// An ONNX model imported as `qc import` imports it (decoding, layers, names, blocks, recipe
/// text, weights), its external data looked for in a folder that does not exist; the recipe it
/// writes is then checked as `qc check` would (weights line dropped: nothing is on disk).
pub fn onnx(data: &[u8]) {
    let opts = qc_onnx::import::Options {
        model: "fuzz",
        source: "fuzz.onnx",
        base_dir: Some(Path::new("/nonexistent-qc-fuzz")),
        weights: "fuzz.safetensors",
    };
    if let Ok(imported) = qc_onnx::import::import(data, &opts) {
        let text: String = imported
            .recipe
            .lines()
            .filter(|l| !l.starts_with("weights "))
            .map(|l| format!("{l}\n"))
            .collect();
        recipe(text.as_bytes());
    }
}
