//! The PyTorch 2.11 fixtures of `tests/data/` (eager FP32, QAT-prepared and converted
//! `state_dict`s of `fashion_cnn`, `conv1d_net` and `inception_block`, see `GENERATE.md`) load at
//! their stage and every later one: each compile binds the checkpoint at the stage whose keys it
//! fits (`float`, `observed` in QAT mode, `quantized`), runs to `lowered`, and the lowered program
//! runs. Calibration is cut to one random batch of one sample so that the test stays quick; what
//! is checked is where every value comes from, not accuracy.

use std::path::{Path, PathBuf};

use qc_compiler::ir::{Module, Provenance, Stage};
use qc_compiler::RunOptions;
use qc_runtime::{SplitMix64, Tensor};

const EXAMPLES: &[&str] = &["fashion_cnn", "conv1d_net", "inception_block"];

/// The example's recipe with `weights` naming the fixture and a one-sample random calibration.
fn recipe_for(dir: &Path, example: &str, kind: &str) -> PathBuf {
    let text = std::fs::read_to_string(Path::new("examples").join(format!("{example}.qrecipe"))).unwrap();
    let mut out = String::new();
    let mut replaced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("calibrate ") {
            out.push_str("  calibrate random(batches: 1) batch_size: 1\n");
            replaced = true;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(replaced, "{example} has a calibrate line");
    let fixture = std::fs::canonicalize(format!("tests/data/{example}.{kind}.pth")).unwrap();
    out.push_str(&format!("weights \"{}\"\n", fixture.display()));
    let path = dir.join(format!("{example}_{kind}.qrecipe"));
    std::fs::write(&path, out).unwrap();
    path
}

/// Compiles to the last stage; returns every stage's module.
fn compile_all(recipe: &Path, qat: bool) -> Vec<Module> {
    let loaded = qc_dsl::load(recipe).unwrap();
    let opts = RunOptions {
        qat,
        verify: true,
        ..Default::default()
    };
    let mut stages = vec![];
    qc_compiler::compile(&loaded, &opts, &mut |m| stages.push(m.clone()), &mut |_, _| {})
        .unwrap_or_else(|e| panic!("{} does not compile: {e:?}", recipe.display()));
    stages
}

fn checkpoint_keys(module: &Module) -> Vec<&str> {
    module
        .params
        .iter()
        .filter(|(_, p)| matches!(p.provenance, Provenance::Checkpoint { .. }))
        .map(|(k, _)| k.as_str())
        .collect()
}

/// The fixture's keys, as the checkpoint reader lists them.
fn fixture_keys(example: &str, kind: &str) -> Vec<String> {
    let path = PathBuf::from(format!("tests/data/{example}.{kind}.pth"));
    qc_compiler::keys::read_checkpoint(&path)
        .unwrap()
        .keys()
        .cloned()
        .collect()
}

/// Runs the lowered program on one random input per model input; every output is finite.
fn run_lowered(module: &Module) {
    let program = module.program.as_ref().expect("stage lowered has a program");
    let model = qc_runtime::model::Model::from_program(
        program.clone(),
        qc_runtime::artifact::Meta::new(&module.name, "lowered", false, "test"),
    )
    .unwrap();
    let mut rng = SplitMix64::new(7);
    let inputs: Vec<Tensor> = program
        .inputs
        .iter()
        .map(|&v| {
            let shape: Vec<usize> = program.values[v].shape.iter().map(|d| d.unwrap_or(1)).collect();
            let n = shape.iter().product();
            Tensor::f32(shape, (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect())
        })
        .collect();
    let outputs = model.run(&inputs).unwrap();
    for out in outputs {
        let qc_runtime::TensorData::F32(v) = &out.data else {
            panic!("outputs are f32")
        };
        assert!(v.iter().all(|x| x.is_finite()), "{}: non-finite output", module.name);
    }
}

fn stage_of(stages: &[Module], stage: Stage) -> &Module {
    stages.iter().find(|m| m.stage == stage).unwrap()
}

#[test]
fn fp32_fixtures_bind_at_float_and_reach_lowered() {
    let dir = tempfile::tempdir().unwrap();
    for example in EXAMPLES {
        let stages = compile_all(&recipe_for(dir.path(), example, "fp32"), false);
        let float = stage_of(&stages, Stage::Float);
        assert_eq!(
            checkpoint_keys(float),
            fixture_keys(example, "fp32"),
            "{example}: every float key comes from the fixture"
        );
        let last = stages.last().unwrap();
        assert_eq!(last.stage, Stage::Lowered, "{example}");
        run_lowered(last);
    }
}

#[test]
fn qat_fixtures_bind_at_observed_and_reach_lowered() {
    let dir = tempfile::tempdir().unwrap();
    for example in EXAMPLES {
        let stages = compile_all(&recipe_for(dir.path(), example, "qat"), true);
        let observed = stage_of(&stages, Stage::Observed);
        let mut want = fixture_keys(example, "qat");
        let mut got: Vec<String> = checkpoint_keys(observed).into_iter().map(String::from).collect();
        want.sort();
        got.sort();
        assert_eq!(got, want, "{example}: every observed key comes from the QAT fixture");
        // The trained fake-quant scales are kept (no recalibration), and become the converted
        // model's output scales.
        let calibrated = stage_of(&stages, Stage::Calibrated);
        let quantized = stage_of(&stages, Stage::Quantized);
        let trained = &calibrated.params["quant.activation_post_process.scale"];
        assert!(matches!(trained.provenance, Provenance::Checkpoint { .. }), "{example}");
        assert_eq!(
            quantized.params["quant.scale"].value, trained.value,
            "{example}: the input's scale is the trained one"
        );
        let last = stages.last().unwrap();
        assert_eq!(last.stage, Stage::Lowered, "{example}");
        run_lowered(last);
    }
}

#[test]
fn int8_fixtures_bind_at_quantized_and_reach_lowered() {
    let dir = tempfile::tempdir().unwrap();
    for example in EXAMPLES {
        let stages = compile_all(&recipe_for(dir.path(), example, "int8"), false);
        let quantized = stage_of(&stages, Stage::Quantized);
        let bound = checkpoint_keys(quantized);
        // `_packed_params._packed_params` holds the weight and bias of a quantized Linear, and
        // `_packed_params.dtype` is a dtype, not a parameter: the others are keys as they are.
        for key in fixture_keys(example, "int8") {
            if key.ends_with("._packed_params._packed_params") {
                let owner = key.trim_end_matches("._packed_params._packed_params");
                assert!(
                    bound.contains(&format!("{owner}._packed_params.weight").as_str()),
                    "{example}: {key}"
                );
            } else if !key.ends_with("._packed_params.dtype") {
                assert!(bound.contains(&key.as_str()), "{example}: `{key}` is not bound");
            }
        }
        let last = stages.last().unwrap();
        assert_eq!(last.stage, Stage::Lowered, "{example}");
        run_lowered(last);
    }
}

#[test]
fn conv1d_net_float_keys_become_the_quantized_set_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let stages = compile_all(&recipe_for(dir.path(), "conv1d_net", "fp32"), false);
    let float = stage_of(&stages, Stage::Float);
    let quantized = stage_of(&stages, Stage::Quantized);
    assert_eq!(float.params.len(), 30);
    let (fates, added) = qc_compiler::keys::fates(float, quantized);
    assert_eq!(fates.len(), 30);
    let fate = |k: &str| fates.iter().find(|f| f.float_key == k).unwrap();
    assert_eq!(fate("bn1.weight").into, ["conv1.weight", "conv1.bias"]);
    assert!(fate("bn1.weight").reason.contains("batch norm folded"));
    assert!(fate("conv1.weight").reason.contains("quantized per output channel"));
    assert!(fate("bn1.num_batches_tracked").into.is_empty());
    assert_eq!(fate("fc1.weight").into, ["fc1._packed_params.weight"]);
    assert!(fate("fc1.weight").reason.contains("packed"));
    let added: Vec<&str> = added.iter().map(|f| f.into[0].as_str()).collect();
    for k in [
        "quant.scale",
        "quant.zero_point",
        "conv1.scale",
        "conv1.zero_point",
        "fc1.scale",
    ] {
        assert!(added.contains(&k), "{k} is added");
    }
    // The quantized key set is the converted PyTorch model's.
    let mut want = fixture_keys("conv1d_net", "int8");
    want.retain(|k| !k.ends_with("._packed_params.dtype") && !k.ends_with("._packed_params._packed_params"));
    want.extend([
        "fc1._packed_params.weight".to_string(),
        "fc1._packed_params.bias".to_string(),
    ]);
    let mut got: Vec<String> = quantized.params.keys().cloned().collect();
    want.sort();
    got.sort();
    assert_eq!(got, want);
}
