//! Per-step profile of a `.qmodel` on one thread, every step (not only the slowest 15 that
//! `qc run --profile` prints), median over runs: `cargo run --release -p qc-runtime --example
//! profile_qmodel -- MODEL.qmodel INPUT.npy [RUNS]`. Builds without the `qc` binary (faster to
//! iterate on kernels).
use std::path::Path;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let model = qc_runtime::model::Model::load(Path::new(&args[1])).expect("model");
    let x = qc_runtime_host::data::read_npy(Path::new(&args[2])).expect("input");
    let runs: usize = args.get(3).map_or(50, |s| s.parse().expect("runs"));
    let input = x.batch_f32(0, x.samples());
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let mut per_step: Vec<Vec<f64>> = Vec::new();
    let mut totals = Vec::new();
    pool.install(|| {
        for _ in 0..3 {
            model.run(std::slice::from_ref(&input)).expect("run");
        }
        for _ in 0..runs {
            let t = std::time::Instant::now();
            let (_, times) = model.run_profiled(std::slice::from_ref(&input)).expect("run");
            totals.push(t.elapsed().as_secs_f64() * 1e3);
            per_step.resize(times.len(), Vec::new());
            for (s, t) in per_step.iter_mut().zip(times) {
                s.push(t.as_secs_f64() * 1e3);
            }
        }
    });
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let program = model.program();
    let mut sum = 0.0;
    for (i, s) in per_step.iter_mut().enumerate() {
        let m = median(s);
        sum += m;
        let out = &program.values[program.steps[i].output];
        println!(
            "{:>8.3} ms  {} = {} {:?}",
            m,
            out.name,
            program.steps[i].op.name(),
            out.shape_string()
        );
    }
    println!(
        "sum of step medians {:.3} ms, median run {:.3} ms",
        sum,
        median(&mut totals)
    );
}
