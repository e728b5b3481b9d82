//! `qc export --onnx` (a compiled model, or with `--qat` a QAT recipe's fake-quantized model, as
//! QDQ ONNX) and `qc import` (a float ONNX graph as a recipe and its weights).

use std::path::{Path, PathBuf};

use qc_compiler::Stage;

use crate::cli::{check_output, module_at, path_from_recipe, recipe_model};
use crate::exit::{Failure, Outcome};

pub fn export_onnx(model_path: &Path, output: &Path, qat: bool) -> Outcome {
    check_output("--onnx", output, &[model_path.to_path_buf()])?;
    let is_recipe = model_path.extension().is_some_and(|e| e == "qrecipe");
    if qat && !is_recipe {
        eprintln!(
            "error: `--qat` exports a recipe's QAT model, and `{}` is not a .qrecipe",
            model_path.display()
        );
        eprintln!("help: give the recipe whose `weights` line names the `qc train --qat` checkpoint, or drop `--qat` to export the compiled model");
        return Err(Failure::User);
    }
    let exported = if qat {
        let (model, plan) = qat_model(model_path)?;
        let proto = qc_onnx::export_qat(&model, &plan);
        (model, proto, "the fake-quantized QAT model")
    } else {
        let model = if is_recipe {
            recipe_model(model_path, Stage::Lowered.name())?
        } else {
            crate::run::load_model(model_path)?
        };
        let proto = qc_onnx::export(&model);
        (model, proto, "the int8 program")
    };
    let (model, proto, what) = exported;
    let bytes = match proto {
        Ok(p) => qc_onnx::encode(&p),
        Err(e) => {
            eprintln!("error: cannot export `{}` to ONNX: {e}", model_path.display());
            if qat {
                eprintln!("help: the QAT export covers conv, linear, batch norm, relu, clamp, pools (global adaptive), flatten to 2-d, add, mul, concat, hardswish, hardsigmoid, sigmoid and 8-bit fake quantization");
            } else {
                eprintln!("help: the ONNX export covers fully int8 programs (quantize, dequantize, qconv, qlinear, qadd, qmul, qmax_pool, qavg_pool, global qadaptive_avg_pool, qconcat, qflatten, qclamp, lookup tables); keep every layer int8 in the recipe");
            }
            return Err(Failure::User);
        }
    };
    if let Err(source) = qc_runtime::fsutil::write_atomic(output, &bytes) {
        eprintln!("error: cannot write `{}`: {source}", output.display());
        eprintln!("help: {}", qc_runtime::io_help::after_write(&source, output));
        return Err(Failure::User);
    }
    println!(
        "wrote {} ({} steps of {what} as QDQ ONNX, opset {}, {} bytes)",
        output.display(),
        model.program().steps.len(),
        qc_onnx::export::OPSET,
        bytes.len()
    );
    Ok(())
}

/// The QAT program of a recipe (stage `observed` compiled with `--qat`, its weights a
/// `qc train --qat` checkpoint) as a model, with the plan of its fake quantizations: what
/// `qc run --stage observed --qat` evaluates and `qc export --qat` writes.
pub fn qat_model(file: &Path) -> Result<(qc_runtime::model::Model, qc_runtime::program::QatPlan), Failure> {
    let (module, sources) = module_at(file, Stage::Observed.name(), true)?;
    if !qc_compiler::calibrate::trained_fake_quant_state(&module) {
        eprintln!(
            "error: the weights of `{}` hold no trained fake-quant state (every `activation_post_process.scale` and `zero_point` from a QAT checkpoint)",
            file.display()
        );
        eprintln!("help: train it first, `qc train {} --qat -o qat.safetensors`, and name that file in the recipe's `weights` line", file.display());
        return Err(Failure::User);
    }
    // Learnable or not, a scale fake-quantizes the same in evaluation.
    let (program, _, plan) = match qc_compiler::lower::lower_qat(&module, false) {
        Ok(lowered) => lowered,
        Err(e) => {
            eprintln!("error: cannot lower the QAT model of `{}`: {e}", file.display());
            eprintln!(
                "help: `qc compile {} --qat --stop-after observed --print-after observed` shows the module",
                file.display()
            );
            return Err(Failure::User);
        }
    };
    let model = qc_runtime::model::Model::from_program(program, qc_compiler::pipeline::model_meta(&module, &sources))
        .map_err(|e| {
        eprintln!("error: cannot run the QAT model of `{}`: {e}", file.display());
        eprintln!("help: this is a bug in qc; please report it with the recipe");
        Failure::Bug
    })?;
    Ok((model, plan))
}

pub fn import_onnx(model_path: &Path, output: &Path, weights: Option<PathBuf>) -> Outcome {
    let weights = weights.unwrap_or_else(|| output.with_extension("safetensors"));
    check_output("-o", output, &[model_path.to_path_buf()])?;
    check_output("--weights", &weights, &[model_path.to_path_buf(), output.to_path_buf()])?;
    let same = |a: &Path, b: &Path| std::path::absolute(a).ok() == std::path::absolute(b).ok();
    if same(&weights, output) {
        eprintln!(
            "error: cannot write --weights `{}`: it is the recipe `-o` writes",
            weights.display()
        );
        eprintln!("help: name another file for the weights, e.g. `--weights model.safetensors`");
        return Err(Failure::User);
    }
    let bytes = match std::fs::read(model_path) {
        Ok(b) => b,
        Err(source) => {
            eprintln!("error: cannot read `{}`: {source}", model_path.display());
            eprintln!(
                "help: {}",
                qc_runtime::io_help::after_read(&source, model_path, "give the .onnx file `torch.onnx.export` wrote")
            );
            return Err(Failure::User);
        }
    };
    let stem = output.file_stem().and_then(|s| s.to_str()).unwrap_or("model");
    let source = model_path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let opts = qc_onnx::import::Options {
        model: &qc_onnx::import::model_name(stem),
        source: &format!("`{source}`"),
        base_dir: model_path.parent(),
        weights: &path_from_recipe(output, &weights),
    };
    let imported = match qc_onnx::import::import(&bytes, &opts) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: cannot import `{}`: {e}", model_path.display());
            eprintln!("help: {}", e.help());
            return Err(Failure::User);
        }
    };
    if let Some(tensors) = &imported.weights {
        let map: indexmap::IndexMap<String, qc_runtime::tensor::Tensor> = tensors.iter().cloned().collect();
        if let Err(e) = qc_compiler::checkpoint::write_safetensors(&weights, &map) {
            eprintln!("error: cannot write `{}`: {e}", weights.display());
            if let qc_compiler::checkpoint::CheckpointError::Write { source, .. } = &e {
                eprintln!("help: {}", qc_runtime::io_help::after_write(source, &weights));
            } else {
                eprintln!("help: this is a bug in qc; please report it with the model");
            }
            return Err(Failure::User);
        }
    }
    if let Err(source) = qc_runtime::fsutil::write_atomic(output, imported.recipe.as_bytes()) {
        eprintln!("error: cannot write `{}`: {source}", output.display());
        eprintln!("help: {}", qc_runtime::io_help::after_write(&source, output));
        return Err(Failure::User);
    }
    let blocks: Vec<String> = imported.blocks.iter().map(|(b, n)| format!("{b} x{n}")).collect();
    let bn = if imported.folded_bn {
        "batch norm folded into the convolutions".to_string()
    } else {
        format!("{} batch norms", imported.batch_norms)
    };
    println!(
        "wrote {} ({} layers, {} parameter keys, {bn}; blocks: {})",
        output.display(),
        imported.layers,
        imported.keys,
        if blocks.is_empty() {
            "none".to_string()
        } else {
            blocks.join(", ")
        }
    );
    match (&imported.weights, &imported.no_weights) {
        (Some(t), _) => println!(
            "wrote {} ({} tensors under their PyTorch keys)",
            weights.display(),
            t.len()
        ),
        (None, Some(why)) => println!("no weights written: {why}; the recipe has no `weights` line"),
        (None, None) => {}
    }
    Ok(())
}
