//! The shipped ResNet-18 example compiled by `qc compile`, run by the executor on each CPU kernel
//! path: the VNNI-layout paths (AVX-512 VNNI's and AMX's program-level behaviour through their
//! emulated lanes and tiles on every CPU, and every real path this CPU has) give the scalar
//! reference's bits, and
//! each of the network's eight residual adds runs in the epilogue of the convolution before it.

use std::process::Command;

use qc_runtime::exec::Executor;
use qc_runtime::kernels::fast::Isa;
use qc_runtime::model::Model;
use qc_runtime::{SplitMix64, Tensor};

#[test]
fn resnet18_gives_the_same_bits_on_every_path_with_its_residual_adds_fused() {
    let dir = tempfile::tempdir().unwrap();
    let model_path = dir.path().join("resnet18.qmodel");
    let out = Command::new(env!("CARGO_BIN_EXE_qc"))
        .args(["compile", "examples/resnet18.qrecipe", "-o"])
        .arg(&model_path)
        .env_remove("QC_ISA")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let program = Model::load(&model_path).unwrap().program().clone();
    let rng = &mut SplitMix64::new(18);
    let x = Tensor::f32(
        vec![1, 3, 224, 224],
        (0..3 * 224 * 224).map(|_| rng.uniform(0.0, 1.0)).collect(),
    );
    let x = std::slice::from_ref(&x);
    let want = Executor::with_isa(program.clone(), Isa::Scalar)
        .unwrap()
        .run(x)
        .unwrap();

    let fused = |e: &Executor| {
        e.step_kernels()
            .iter()
            .filter(|k| k.as_deref() == Some("added by the convolution before"))
            .count()
    };
    for (what, emulated) in [
        (
            "emulated VNNI lanes",
            Executor::with_emulated_vnni(program.clone()).unwrap(),
        ),
        (
            "emulated AMX tiles",
            Executor::with_emulated_amx(program.clone()).unwrap(),
        ),
    ] {
        assert_eq!(emulated.run(x).unwrap(), want, "{what}");
        assert_eq!(fused(&emulated), 8, "{what}");
    }

    for isa in Isa::ALL.into_iter().filter(|i| i.check().is_ok()) {
        let exec = Executor::with_isa(program.clone(), isa).unwrap();
        assert_eq!(exec.run(x).unwrap(), want, "{isa:?}");
        let expect_fused = if isa >= Isa::AvxVnni { 8 } else { 0 };
        assert_eq!(fused(&exec), expect_fused, "{isa:?}");
    }
}
