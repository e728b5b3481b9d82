//! Number formatting shared by the IR text, op attributes and types: shortest round-trip floats.

/// Shortest round-trip text of a float, always with a `.`, an exponent, or `inf`/`nan`.
pub fn fmt_f64(v: f64) -> String {
    let s = format!("{v}");
    if v.is_finite() && !s.contains(['.', 'e', 'E']) {
        format!("{s}.0")
    } else {
        s
    }
}
