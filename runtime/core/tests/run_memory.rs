//! A run holds only the values still to be read: a chain of 400 relus over 4 MiB activations
//! (1.6 GiB if every activation stayed alive, as calibration once kept them) peaks at a few of
//! them. Alone in its test binary, so that no other test's memory counts.

use std::ops::ControlFlow;

use qc_runtime::program::{FloatOp, Program, Step, ValueInfo};
use qc_runtime::tensor::Tensor;

/// The process's peak resident memory (`VmHWM`), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmHWM line");
    kb * 1024
}

#[test]
fn a_long_chain_keeps_only_live_values() {
    const LINKS: usize = 400;
    const ELEMENTS: usize = 1 << 20;
    let values = (0..=LINKS)
        .map(|i| ValueInfo::float(format!("v{i}"), vec![None, Some(ELEMENTS)]))
        .collect();
    let steps = (0..LINKS)
        .map(|i| Step {
            op: FloatOp::Relu.into(),
            inputs: vec![i],
            output: i + 1,
        })
        .collect();
    let program = Program {
        values,
        inputs: vec![0],
        outputs: vec![LINKS],
        steps,
        constants: vec![],
    };
    let x = Tensor::f32(vec![1, ELEMENTS], (0..ELEMENTS).map(|i| i as f32 - 1000.0).collect());
    let before = peak_rss();
    let mut seen = 0;
    let out = qc_runtime::exec::run_with(&program, &[x], &mut |_, _| {
        seen += 1;
        ControlFlow::Continue(())
    })
    .expect("the chain runs");
    let grown = peak_rss().saturating_sub(before);
    assert_eq!(seen, LINKS, "the hook sees every value");
    assert_eq!(out[0].as_f32().unwrap()[999], 0.0);
    assert_eq!(out[0].as_f32().unwrap()[1001], 1.0);
    let activation = (ELEMENTS * 4) as u64;
    assert!(
        grown < 16 * activation,
        "the run's peak grew by {} MiB; {} activations of {} MiB each were held",
        grown >> 20,
        grown / activation,
        activation >> 20
    );
}
