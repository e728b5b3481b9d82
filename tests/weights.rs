//! Binding a safetensors checkpoint: a recipe that includes an example and names a checkpoint
//! gets every value from it (with checkpoint provenance); a checkpoint that does not fit is
//! reported key by key (a DataParallel prefix once, a renamed layer with the `rename` to write);
//! `strip`/`rename` on the `weights` line remap the keys; `qc keys --check` explains a misfit.

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

/// The two-layer model of `tests/ui/data/make_remap_data.py`, in a temporary folder, binding
/// `weights_line` (paths in it are relative to `tests/ui/data/`).
fn mlp_recipe(dir: &Path, weights_line: &str) -> std::path::PathBuf {
    let data = std::fs::canonicalize("tests/ui/data").unwrap();
    let recipe = dir.join("mlp.qrecipe");
    let line = weights_line.replacen("weights \"", &format!("weights \"{}/", data.display()), 1);
    std::fs::write(
        &recipe,
        format!(
            "model m {{\n  input x: f32[N, 8]\n  fc1 = linear(x, out: 4)\n  fc2 = linear(fc1, out: 2)\n  output fc2\n}}\n{line}\n"
        ),
    )
    .unwrap();
    recipe
}

fn values_of(m: &Module) -> IndexMap<String, Tensor> {
    m.params
        .iter()
        .map(|(k, p)| (k.clone(), p.value.clone().unwrap()))
        .collect()
}

#[test]
fn strip_and_rename_bind_a_dataparallel_pth_and_a_renamed_layer() {
    let dir = tempfile::tempdir().unwrap();
    let dp = compile_file(&mlp_recipe(
        dir.path(),
        "weights \"mlp_dataparallel.pth\" { strip: \"module.\" }",
    ))
    .unwrap();
    assert_eq!(
        dp.params.keys().collect::<Vec<_>>(),
        ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    );
    // Provenance names each key as the file does.
    for (key, p) in &dp.params {
        assert!(
            matches!(&p.provenance, Provenance::Checkpoint { key: k, .. } if *k == format!("module.{key}")),
            "{key}: {:?}",
            p.provenance
        );
    }
    // The same tensors through a safetensors file, a layer renamed back: `head` -> `fc2`.
    let renamed = compile_file(&mlp_recipe(
        dir.path(),
        "weights \"mlp_renamed.safetensors\" { rename: \"head\" -> \"fc2\" }",
    ))
    .unwrap();
    assert_eq!(values_of(&dp), values_of(&renamed));
    // A longer `rename` wins over a shorter one, and a whole key can be renamed.
    let both = compile_file(&mlp_recipe(
        dir.path(),
        "weights \"mlp_dataparallel.safetensors\" { strip: \"module.\", rename: \"fc2.bias\" -> \"fc2.bias\" }",
    ))
    .unwrap();
    assert_eq!(values_of(&dp), values_of(&both));
}

fn user_errors(recipe: &Path) -> Vec<qc_dsl::Diagnostic> {
    match compile_file(recipe) {
        Err(CompileError::User(d)) => d,
        other => panic!("expected user errors, got {:?}", other.map(|m| m.name)),
    }
}

#[test]
fn a_dataparallel_checkpoint_is_one_error_with_the_strip_to_write() {
    let dir = tempfile::tempdir().unwrap();
    let d = user_errors(&mlp_recipe(dir.path(), "weights \"mlp_dataparallel.pth\""));
    assert_eq!(d.len(), 1, "{d:#?}");
    assert_eq!(d[0].code, "qc::checkpoint-prefix");
    assert!(d[0].help.contains("DataParallel"), "{}", d[0].help);
    assert!(d[0].help.contains("every key has a name of the model"), "{}", d[0].help);
    let line = format!(
        "`weights \"{}/mlp_dataparallel.pth\" {{ strip: \"module.\" }}`",
        std::fs::canonicalize("tests/ui/data").unwrap().display()
    );
    assert!(d[0].help.ends_with(&line), "{}", d[0].help);
}

#[test]
fn a_renamed_layer_of_the_same_shape_is_paired_with_the_rename_to_write() {
    // fashion_cnn's `fc2` saved as `head`: the layer-level rename, not a key-by-key guess.
    let dir = tempfile::tempdir().unwrap();
    let tensors: IndexMap<String, Tensor> = example_tensors("fashion_cnn")
        .into_iter()
        .map(|(k, v)| (k.replace("fc2.", "head."), v))
        .collect();
    let recipe = recipe_with_checkpoint(dir.path(), "fashion_cnn", &tensors);
    let d = user_errors(&recipe);
    assert_eq!(d.len(), 4, "{d:#?}");
    for diag in &d {
        assert!(
            diag.help
                .contains("`weights \"weights.safetensors\" { rename: \"head\" -> \"fc2\" }`"),
            "{}: {}",
            diag.message,
            diag.help
        );
    }
    let missing = d.iter().find(|x| x.message.contains("no `fc2.weight`")).unwrap();
    assert!(missing
        .help
        .contains("the checkpoint has `head.weight`, of the same shape"));
}

#[test]
fn an_integer_weight_is_a_dtype_error_naming_both_dtypes() {
    let dir = tempfile::tempdir().unwrap();
    let d = user_errors(&mlp_recipe(dir.path(), "weights \"mlp_int64.safetensors\""));
    assert_eq!(d.len(), 1, "{d:#?}");
    assert_eq!(d[0].code, "qc::checkpoint-dtype");
    assert!(
        d[0].message.starts_with("`fc1.weight` is i64 in `") && d[0].message.contains("the model needs f32"),
        "{}",
        d[0].message
    );
}

fn qc(args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_qc"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn keys_check_explains_a_misfit_without_calibrating() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = "examples/fashion_cnn.qrecipe";
    let tensors = example_tensors("fashion_cnn");
    let write = |name: &str, t: &IndexMap<String, Tensor>| {
        let p = dir.path().join(name);
        qc_compiler::checkpoint::write_safetensors(&p, t).unwrap();
        p.display().to_string()
    };
    let fits = write("fits.safetensors", &tensors);
    let (code, out, err) = qc(&["keys", recipe, "--stage", "float", "--check", &fits]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.ends_with("fits stage `float` of model `fashion_cnn`: 18 keys\n"),
        "{out}"
    );

    let renamed: IndexMap<String, Tensor> = tensors
        .iter()
        .map(|(k, v)| (k.replace("fc1.", "hidden."), v.clone()))
        .collect();
    let renamed = write("renamed.safetensors", &renamed);
    let (code, out, err) = qc(&["keys", recipe, "--stage", "float", "--check", &renamed]);
    assert_eq!(code, Some(1));
    assert_eq!(out.lines().count(), 4, "{out}");
    assert!(
        out.contains("same shape: `rename: \"hidden\" -> \"fc1\"` binds it"),
        "{out}"
    );
    assert!(
        err.contains(&format!(
            "help: `hidden` of the checkpoint has the shapes of the model's `fc1`; if it is the same layer, rename it in the recipe: `weights \"{renamed}\" {{ rename: \"hidden\" -> \"fc1\" }}`"
        )),
        "{err}"
    );

    let dp: IndexMap<String, Tensor> = tensors
        .iter()
        .map(|(k, v)| (format!("module.{k}"), v.clone()))
        .collect();
    let dp = write("dp.safetensors", &dp);
    let (code, out, err) = qc(&["keys", recipe, "--stage", "float", "--check", &dp]);
    assert_eq!(code, Some(1));
    assert_eq!(
        out,
        "prefix      all 18 keys start with `module.`, which no key of the stage has; stripped, every key has a name of the model\n"
    );
    assert!(err.contains("{ strip: \"module.\" }`"), "{err}");

    // A checkpoint of another stage is named without calibration data being read.
    let (code, _, err) = qc(&["keys", recipe, "--stage", "observed", "--check", &fits]);
    assert_eq!(code, Some(1));
    assert!(err.contains("help: it fits stage `float`"), "{err}");
}

#[test]
fn keys_check_reads_the_recipes_own_checkpoint_with_its_remapping() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = mlp_recipe(dir.path(), "weights \"mlp_dataparallel.pth\" { strip: \"module.\" }");
    let ckpt = std::fs::canonicalize("tests/ui/data/mlp_dataparallel.pth").unwrap();
    let (code, out, err) = qc(&[
        "keys",
        &recipe.display().to_string(),
        "--stage",
        "float",
        "--check",
        &ckpt.display().to_string(),
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("fits stage `float` of model `m`: 4 keys"), "{out}");
}
