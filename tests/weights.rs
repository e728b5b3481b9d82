//! Binding a safetensors checkpoint: a recipe that includes an example and names a checkpoint
//! gets every value from it (with checkpoint provenance); a checkpoint that does not fit is
//! reported key by key.

use std::path::Path;

use indexmap::IndexMap;
use qc_compiler::ir::{Module, Provenance, Stage};
use qc_compiler::{CompileError, RunOptions};
use qc_runtime::Tensor;

fn compile_file(path: &Path) -> Result<Module, CompileError> {
    let loaded = qc_dsl::load(path).expect("readable");
    let opts = RunOptions {
        stop_after: Some(Stage::Float),
        verify: true,
        ..Default::default()
    };
    qc_compiler::compile(&loaded, &opts, &mut |_| {}, &mut |_, _| {})
}

/// The float parameters of an example, as a checkpoint.
fn example_tensors(example: &str) -> IndexMap<String, Tensor> {
    let m = compile_file(&Path::new("examples").join(format!("{example}.qrecipe"))).unwrap();
    m.params
        .iter()
        .map(|(k, p)| (k.clone(), p.value.clone().unwrap()))
        .collect()
}

/// A recipe in a temporary folder that includes the example and binds `weights.safetensors`.
fn recipe_with_checkpoint(dir: &Path, example: &str, tensors: &IndexMap<String, Tensor>) -> std::path::PathBuf {
    let example_path = std::fs::canonicalize(Path::new("examples").join(format!("{example}.qrecipe"))).unwrap();
    qc_compiler::checkpoint::write_safetensors(&dir.join("weights.safetensors"), tensors).unwrap();
    let recipe = dir.join("with_weights.qrecipe");
    std::fs::write(
        &recipe,
        format!(
            "include \"{}\"\nweights \"weights.safetensors\"\n",
            example_path.display()
        ),
    )
    .unwrap();
    recipe
}

#[test]
fn a_fitting_checkpoint_binds_every_key_with_its_provenance() {
    let dir = tempfile::tempdir().unwrap();
    let mut tensors = example_tensors("conv1d_net");
    // Change one value so that the binding is seen to come from the file.
    if let qc_runtime::TensorData::F32(v) = &mut tensors["fc1.bias"].data {
        v[0] = 42.0;
    }
    let m = compile_file(&recipe_with_checkpoint(dir.path(), "conv1d_net", &tensors)).unwrap();
    assert_eq!(m.params.len(), 30);
    for (key, p) in &m.params {
        assert_eq!(
            p.provenance,
            Provenance::Checkpoint {
                file: "weights.safetensors".into(),
                key: key.clone()
            },
            "{key}"
        );
        assert_eq!(p.value.as_ref(), Some(&tensors[key]), "{key}");
    }
}

#[test]
fn a_checkpoint_that_does_not_fit_is_reported_key_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut tensors = example_tensors("fashion_cnn");
    let w = tensors.shift_remove("bn1.running_var").unwrap();
    tensors.insert("bn1.running_varr".into(), w);
    tensors.insert("fc2.bias".into(), Tensor::f32(vec![11], vec![0.0; 11]));
    let recipe = recipe_with_checkpoint(dir.path(), "fashion_cnn", &tensors);
    let loaded = qc_dsl::load(&recipe).unwrap();
    let err = qc_compiler::compile(&loaded, &RunOptions::default(), &mut |_| {}, &mut |_, _| {}).unwrap_err();
    let CompileError::User(diags) = err else {
        panic!("expected user errors")
    };
    let mut found: Vec<(&str, &str)> = diags.iter().map(|d| (d.code, d.message.as_str())).collect();
    found.sort();
    assert_eq!(found.len(), 3, "{found:#?}");
    assert!(found
        .iter()
        .any(|(c, m)| *c == "qc::checkpoint-missing" && m.contains("`bn1.running_var`")));
    assert!(found
        .iter()
        .any(|(c, m)| *c == "qc::checkpoint-unexpected" && m.contains("`bn1.running_varr`")));
    assert!(found
        .iter()
        .any(|(c, m)| *c == "qc::checkpoint-shape" && m.contains("`fc2.bias`")));
    let missing = diags.iter().find(|d| d.code == "qc::checkpoint-missing").unwrap();
    assert!(
        missing.help.contains("`bn1.running_varr`"),
        "closest candidate named: {}",
        missing.help
    );
    // Every one points at the `weights` line.
    for d in &diags {
        assert_eq!(loaded.sources.text(d.span), "\"weights.safetensors\"");
    }
}
