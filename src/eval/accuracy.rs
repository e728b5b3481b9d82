//! One row of `qc eval`'s table: a model's top-1 (and top-5) accuracy on the evaluation data, its
//! latency per image (batch 1, median) and its size as a `.qmodel`. Models run on qc's CPU
//! runtime (`Model::run`: int8 kernels, float steps on the reference interpreter), or with
//! `--device cuda` through libtorch (float programs as `run_program`, int8 as `Int8Session`).

use std::time::{Duration, Instant};

use qc_runtime::program::Device;
use qc_runtime::Tensor;
use qc_runtime_host::torch;

use super::data::EvalData;
use super::variants::Variant;

/// Images per batch when scoring.
const BATCH: usize = 256;
/// Timed batch-1 runs (after 3 warm-up runs).
const LATENCY_RUNS: usize = 30;

/// A model's scores.
#[derive(Clone, Debug)]
pub struct Score {
    pub name: String,
    pub top1: f64,
    /// With more than 10 classes.
    pub top5: Option<f64>,
    /// Median seconds per image at batch 1.
    pub latency: Duration,
    /// Bytes of the model as a `.qmodel` file (`None`: a simulation, no file).
    pub size: Option<usize>,
    /// Where it ran, for the table's note.
    pub backend: String,
}

/// Where models run.
pub enum Backend {
    /// qc's CPU runtime.
    Cpu,
    /// libtorch on this device.
    Torch(Device),
}

/// Scores `v` on `data`.
pub fn score(v: &Variant, data: &EvalData, backend: &Backend) -> Result<Score, String> {
    let runner = Runner::new(v, backend)?;
    score_with(
        &v.name,
        Some(v.size),
        &runner.describe(),
        &|x: &Tensor| runner.run(x),
        data,
    )
}

/// Scores a model that `run` runs (raw samples in, logits out) on `data`.
pub fn score_with(
    name: &str,
    size: Option<usize>,
    backend: &str,
    run: &dyn Fn(&Tensor) -> Result<Tensor, String>,
    data: &EvalData,
) -> Result<Score, String> {
    let (x, labels) = &data.samples;
    let mut top1 = 0usize;
    let mut top5 = 0usize;
    let mut classes = 0usize;
    for start in (0..labels.len()).step_by(BATCH) {
        let n = BATCH.min(labels.len() - start);
        let logits = run(&x.batch_f32(start, n))?;
        let shape = &logits.shape;
        if shape.len() != 2 || shape[0] != n {
            return Err(format!(
                "`{name}`'s output is {shape:?}; scoring needs logits [N, classes]"
            ));
        }
        classes = shape[1];
        let values = logits.as_f32().ok_or("the output is not f32")?;
        for (row, &label) in values.chunks(classes).zip(&labels[start..start + n]) {
            let rank = rank_of(row, label as usize);
            top1 += usize::from(rank == 0);
            top5 += usize::from(rank < 5);
        }
    }
    let samples = labels.len().max(1);
    let one = x.batch_f32(0, 1);
    for _ in 0..3 {
        run(&one)?;
    }
    let mut times: Vec<Duration> = (0..LATENCY_RUNS)
        .map(|_| {
            let t = Instant::now();
            run(&one).map(|_| t.elapsed())
        })
        .collect::<Result<_, _>>()?;
    times.sort();
    Ok(Score {
        name: name.into(),
        top1: top1 as f64 / samples as f64,
        top5: (classes > 10).then(|| top5 as f64 / samples as f64),
        latency: times[times.len() / 2],
        size,
        backend: backend.into(),
    })
}

/// How many logits beat the label's (0: top-1); ties count against it, NaN ranks last.
fn rank_of(row: &[f32], label: usize) -> usize {
    let Some(&mine) = row.get(label) else { return usize::MAX };
    if mine.is_nan() {
        return usize::MAX;
    }
    row.iter()
        .enumerate()
        .filter(|&(i, &v)| i != label && (v > mine || (v == mine && i < label)))
        .count()
}

/// A model ready to run on its backend.
enum Runner<'a> {
    Cpu(&'a Variant),
    TorchFloat(&'a Variant, Device),
    TorchInt8(&'a Variant, Box<torch::Int8Session>, Device),
}

impl<'a> Runner<'a> {
    fn new(v: &'a Variant, backend: &Backend) -> Result<Runner<'a>, String> {
        Ok(match backend {
            Backend::Cpu => Runner::Cpu(v),
            Backend::Torch(d) if v.float => Runner::TorchFloat(v, *d),
            Backend::Torch(d) => Runner::TorchInt8(
                v,
                Box::new(torch::Int8Session::new(v.model.program().clone(), *d).map_err(|e| e.to_string())?),
                *d,
            ),
        })
    }

    fn run(&self, raw: &Tensor) -> Result<Tensor, String> {
        let inputs = std::slice::from_ref(raw);
        let out = match self {
            Runner::Cpu(v) => v.model.run(inputs).map_err(|e| e.to_string())?,
            Runner::TorchFloat(v, d) => {
                let x = v.model.normalize(inputs).map_err(|e| e.to_string())?;
                torch::run_program(v.model.program(), &x, *d).map_err(|e| e.to_string())?
            }
            Runner::TorchInt8(v, s, _) => {
                let x = v.model.normalize(inputs).map_err(|e| e.to_string())?;
                s.run(&x).map_err(|e| e.to_string())?
            }
        };
        out.into_iter()
            .next()
            .ok_or_else(|| "the model has no output".to_string())
    }

    fn describe(&self) -> String {
        match self {
            Runner::Cpu(v) if v.float => "qc CPU runtime (float: reference interpreter)".into(),
            Runner::Cpu(_) => format!(
                "qc CPU runtime ({} kernels)",
                qc_runtime::kernels::fast::selected().map_or("default", |i| i.name())
            ),
            Runner::TorchFloat(_, d) | Runner::TorchInt8(_, _, d) => match d {
                Device::Cpu => "libtorch CPU".into(),
                Device::Cuda => "libtorch CUDA".into(),
            },
        }
    }
}
