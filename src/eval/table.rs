//! `qc eval`'s text: the accuracy table (one row per model) and the per-layer table (worst SQNR
//! first), and the shared formatting of their numbers (the HTML report uses it too).

use std::fmt::Write;

use super::accuracy::Score;
use super::layers::{Kind, LayerStat};

/// `89.15%`.
pub fn percent(x: f64) -> String {
    format!("{:.2}%", x * 100.0)
}

/// `-0.13` points of top-1 against the first (FP32) row; `—` for the first row itself.
pub fn gap(score: &Score, fp32: &Score) -> String {
    if std::ptr::eq(score, fp32) {
        return "—".into();
    }
    format!("{:+.2}", (score.top1 - fp32.top1) * 100.0)
}

/// `0.083 ms`.
pub fn latency(s: &Score) -> String {
    format!("{:.3} ms", s.latency.as_secs_f64() * 1e3)
}

/// `107.3 KiB`, or `—` for a simulation.
pub fn size(s: &Score) -> String {
    match s.size {
        Some(b) if b >= 1 << 20 => format!("{:.2} MiB", b as f64 / (1u64 << 20) as f64),
        Some(b) => format!("{:.1} KiB", b as f64 / 1024.0),
        None => "—".into(),
    }
}

/// `31.4 dB`, `exact` when there is no noise.
pub fn db(x: f64) -> String {
    if x == f64::INFINITY {
        "exact".into()
    } else {
        format!("{x:.1} dB")
    }
}

/// `[-1.23, 4.56]`.
pub fn range(r: (f32, f32)) -> String {
    format!("[{}, {}]", short(r.0), short(r.1))
}

/// A number in 4 significant digits.
pub fn short(x: f32) -> String {
    if x == 0.0 {
        return "0".into();
    }
    let digits = (3 - x.abs().log10().floor() as i32).clamp(0, 6) as usize;
    format!("{x:.digits$}")
}

/// `act` or `weight`.
pub fn kind(k: Kind) -> &'static str {
    match k {
        Kind::Activation => "activation",
        Kind::Weight => "weight",
    }
}

/// The accuracy table.
pub fn scores(model: &str, scores: &[Score], data: &str) -> String {
    let top5 = scores.iter().any(|s| s.top5.is_some());
    let mut out = String::new();
    let _ = writeln!(out, "{model}: accuracy on {data}");
    let mut header = format!("{:<18} {:>9}", "model", "top-1");
    if top5 {
        let _ = write!(header, " {:>9}", "top-5");
    }
    let _ = write!(
        header,
        " {:>10} {:>13} {:>11}  runs on",
        "vs FP32", "latency/img", "size"
    );
    let _ = writeln!(out, "{header}");
    for s in scores {
        let mut line = format!("{:<18} {:>9}", s.name, percent(s.top1));
        if top5 {
            let _ = write!(line, " {:>9}", s.top5.map(percent).unwrap_or_else(|| "—".into()));
        }
        let _ = write!(
            line,
            " {:>10} {:>13} {:>11}  {}",
            gap(s, &scores[0]),
            latency(s),
            size(s),
            s.backend
        );
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(
        out,
        "(vs FP32: top-1 difference in percentage points; latency: median of 30 runs at batch 1)"
    );
    out
}

/// The per-layer table, rows as given (worst first).
pub fn layers(rows: &[LayerStat], bits: u8) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "per layer, worst first: SQNR between float and {bits}-bit values (higher is better), the range quantization chose, the share of float values outside it"
    );
    let w = rows.iter().map(|r| r.node.len()).max().unwrap_or(4).max(4);
    let _ = writeln!(
        out,
        "{:<w$} {:<10} {:>9} {:>22} {:>8}  {:<44} decided by",
        "node", "tensor", "SQNR", "range", "clipped", "quantization"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<w$} {:<10} {:>9} {:>22} {:>7.3}%  {:<44} {}",
            r.node,
            kind(r.kind),
            db(r.sqnr_db),
            range(r.range),
            r.clipped * 100.0,
            r.scheme,
            r.decided_by
        );
    }
    out
}
