//! `qc run --compare REF.npy`: how far the first output is from an earlier run's (another model,
//! device, the fake-quantized QAT model, ONNX Runtime), in steps of the output's quantization.

use std::path::Path;

use qc_runtime::program::{FloatOp, Program, QatPlan, QuantOp, StepOp};
use qc_runtime::{Tensor, TensorData};
use qc_runtime_host::data::ArrayData;

/// What the comparison found.
#[derive(Debug, PartialEq)]
pub struct Agreement {
    pub elements: usize,
    pub equal: usize,
    /// Elements at most one step apart (with a step).
    pub within_one_step: usize,
    pub max_difference: f64,
    /// Samples whose top-1 class is the same (`[N, classes]` outputs).
    pub same_top1: Option<(usize, usize)>,
}

/// The quantization step of the program's first output: the scale of the value its final
/// dequantize reads, or of the fake quantization that produces it (QAT; its quantizing scale).
pub fn output_step(program: &Program, qat: Option<&QatPlan>) -> Option<f32> {
    let out = *program.outputs.first()?;
    let last = program.steps.iter().find(|s| s.output == out)?;
    match (&last.op, qat) {
        (StepOp::Quant(QuantOp::Dequantize), _) => program.values[*last.inputs.first()?].quant.map(|q| q.scale()),
        (StepOp::Float(FloatOp::Identity), Some(plan)) => {
            let site = plan
                .sites
                .iter()
                .find(|s| s.at == qc_runtime::program::FakeQuantAt::Value(out))?;
            let scale = program.constants.get(site.scale)?.as_f32()?.first().copied()?;
            Some(site.quantizing_scale(scale))
        }
        _ => None,
    }
}

/// Compares `got` with the `.npy` at `reference`.
pub fn agreement(reference: &Path, got: &Tensor, step: Option<f32>) -> Result<Agreement, String> {
    let array = qc_runtime_host::data::read_npy(reference).map_err(|e| e.to_string())?;
    let want: Vec<f64> = match &array.data {
        ArrayData::F32(v) => v.iter().map(|&x| x as f64).collect(),
        ArrayData::F64(v) => v.clone(),
        ArrayData::U8(_) => return Err(format!("`{}` holds u8, not an output", reference.display())),
    };
    let TensorData::F32(values) = &got.data else {
        return Err("the first output is not f32".into());
    };
    if array.shape != got.shape {
        return Err(format!(
            "`{}` has shape {:?}, the output {:?}",
            reference.display(),
            array.shape,
            got.shape
        ));
    }
    let diffs: Vec<f64> = values.iter().zip(&want).map(|(&a, &b)| (a as f64 - b).abs()).collect();
    let one_step = step.map_or(0.0, |s| s as f64 * 1.001);
    let same_top1 = match got.shape.as_slice() {
        [n, c] if *c > 1 => {
            let argmax = |row: &[f64]| (0..row.len()).fold(0, |best, i| if row[i] > row[best] { i } else { best });
            let got64: Vec<f64> = values.iter().map(|&x| x as f64).collect();
            let same = (0..*n)
                .filter(|&i| argmax(&got64[i * c..(i + 1) * c]) == argmax(&want[i * c..(i + 1) * c]))
                .count();
            Some((same, *n))
        }
        _ => None,
    };
    Ok(Agreement {
        elements: diffs.len(),
        equal: diffs.iter().filter(|&&d| d == 0.0).count(),
        within_one_step: diffs.iter().filter(|&&d| d <= one_step).count(),
        max_difference: diffs.iter().copied().fold(0.0, f64::max),
        same_top1,
    })
}

/// The line `qc run --compare` prints.
pub fn describe(reference: &Path, a: &Agreement, step: Option<f32>) -> String {
    let pct = |k: usize, n: usize| 100.0 * k as f64 / n.max(1) as f64;
    let mut line = format!(
        "against {}: {:.2}% of {} elements equal",
        reference.display(),
        pct(a.equal, a.elements),
        a.elements
    );
    match step {
        Some(s) => {
            let steps = (a.max_difference / s as f64).round();
            line.push_str(&format!(
                ", {:.2}% within one step ({s}), at most {steps} step{} apart",
                pct(a.within_one_step, a.elements),
                if steps == 1.0 { "" } else { "s" }
            ))
        }
        None => line.push_str(&format!(", largest difference {:e}", a.max_difference)),
    }
    if let Some((same, n)) = a.same_top1 {
        line.push_str(&format!(
            "; the same top-1 class on {:.2}% of {n} samples",
            pct(same, n)
        ));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_equal_elements_steps_and_top1() {
        let dir = tempfile::tempdir().unwrap();
        let reference = dir.path().join("r.npy");
        let want = [0.0f32, 0.5, 0.25, 0.25, 0.25, -0.5];
        std::fs::write(&reference, qc_runtime_host::data::npy_f32_bytes(&[2, 3], &want)).unwrap();
        let got = Tensor::f32(vec![2, 3], vec![0.0, 0.5, 0.75, 0.25, -0.25, -0.5]);
        let a = agreement(&reference, &got, Some(0.25)).unwrap();
        assert_eq!(
            a,
            Agreement {
                elements: 6,
                equal: 4,
                within_one_step: 4,
                max_difference: 0.5,
                same_top1: Some((1, 2)),
            }
        );
        let line = describe(&reference, &a, Some(0.25));
        assert!(line.ends_with(": 66.67% of 6 elements equal, 66.67% within one step (0.25), at most 2 steps apart; the same top-1 class on 50.00% of 2 samples"), "{line}");
        let wrong = Tensor::f32(vec![3, 2], got.as_f32().unwrap().to_vec());
        assert!(agreement(&reference, &wrong, None)
            .unwrap_err()
            .contains("shape [2, 3]"));
    }
}
