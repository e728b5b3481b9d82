//! qc's scalar reference int8 kernels against PyTorch 2.11's x86 quantized engine, on the committed
//! fixtures of `tests/data/torch_ops/` (written by its `generate.py`, documented in its
//! `GENERATE.md`): quantized conv2d / conv1d (plain, strided, dilated, grouped, depthwise, 1×1,
//! fused ReLU), linear (with and without ReLU), add and add_relu, max / average / adaptive average
//! pooling. Each case feeds qc PyTorch's own input codes and weights (layouts converted, the bias
//! quantized as qc does with `quantize_bias`) and compares output codes: at least 99% equal and
//! never more than one step apart (pooling against PyTorch's channels_last kernels; PyTorch's NCHW
//! average pools and a deliberately tie-heavy add only need each difference explained, see
//! [`check`]). PyTorch requantizes in f32 with `nearbyint` (and keeps the bias
//! in float), qc with an integer multiplier and shift (docs/numerics.md), so a few one-step
//! differences at rounding boundaries are expected; two steps would be a bug.
//!
//! Run with `cargo test -p qc-runtime --test torch_x86_crosscheck -- --nocapture` to see the
//! per-case and per-op agreement.

use std::collections::BTreeMap;
use std::path::PathBuf;

use qc_runtime::kernels::reference::{
    conv_weight_oihw_to_ohwi, nchw_to_nhwc, nhwc_to_nchw, qadaptive_avgpool2d, qadd, qavgpool2d, qconv1d, qconv2d,
    qglobal_avgpool, qlinear, qmaxpool2d,
};
use qc_runtime::kernels::{
    Activation, Axis, Conv2dGeom, Pool2dGeom, QAdaptiveAvgPool2d, QAvgPool2d, QConv2d, QGlobalAvgPool, QLinear,
};
use qc_runtime::quant::{quantize_bias, QAdd, QParams, QRange, RequantRule};
use serde_json::Value;

/// The required agreement per case.
const MIN_EQUAL_FRACTION: f64 = 0.99;
const MAX_STEP_DIFF: u32 = 1;

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/torch_ops")
}

fn load(stem: &str) -> Value {
    let path = data_dir().join(format!("{stem}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(v["engine"], "x86", "{stem}: fixtures must come from the x86 engine");
    assert!(
        v["torch"].as_str().unwrap().starts_with("2.11."),
        "{stem}: fixtures must come from PyTorch 2.11"
    );
    v
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

fn ints(v: &Value) -> Vec<i64> {
    v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect()
}

/// An f32 from its IEEE-754 bit pattern (the fixtures write every float both ways, and the bits
/// are exact whatever the JSON parser does with decimals).
fn f32_bits(v: &Value) -> f32 {
    f32::from_bits(u32::try_from(v.as_u64().unwrap()).unwrap())
}

fn f32s_bits(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(f32_bits).collect()
}

/// A quantized tensor of a fixture: PyTorch's shape and codes in PyTorch's (NCHW / NCL / NK) order.
struct QTensor {
    shape: Vec<usize>,
    params: QParams,
    codes: Vec<u8>,
}

fn activation(v: &Value) -> QTensor {
    let shape = usizes(&v["shape"]);
    let scale = f32_bits(&v["scale_bits"]);
    assert!((scale as f64 - v["scale"].as_f64().unwrap()).abs() <= 1e-6 * scale as f64);
    let zp = v["zero_point"].as_i64().unwrap() as i32;
    let codes: Vec<u8> = ints(&v["q"]).into_iter().map(|q| u8::try_from(q).unwrap()).collect();
    assert_eq!(codes.len(), shape.iter().product::<usize>());
    QTensor {
        shape,
        params: QParams::new(scale, zp, QRange::U8).unwrap(),
        codes,
    }
}

/// A per-channel symmetric qint8 weight: shape, scales, codes (PyTorch order).
struct QWeight {
    shape: Vec<usize>,
    scales: Vec<f32>,
    codes: Vec<i8>,
}

fn weight(v: &Value) -> QWeight {
    assert_eq!(v["axis"], 0, "per output channel");
    assert!(ints(&v["zero_points"]).iter().all(|&z| z == 0), "symmetric weights");
    let shape = usizes(&v["shape"]);
    let scales = f32s_bits(&v["scales_bits"]);
    assert_eq!(scales.len(), shape[0]);
    let codes: Vec<i8> = ints(&v["q"]).into_iter().map(|q| i8::try_from(q).unwrap()).collect();
    assert_eq!(codes.len(), shape.iter().product::<usize>());
    QWeight { shape, scales, codes }
}

/// The bias quantized exactly as qc's compiler does: `quantize_bias(b, s_in, s_w[c])`.
fn bias(v: &Value, input: &QParams, w: &QWeight) -> Option<Vec<i32>> {
    if v.is_null() {
        return None;
    }
    let b = f32s_bits(v);
    assert_eq!(b.len(), w.scales.len());
    Some(
        b.iter()
            .zip(&w.scales)
            .map(|(&b, &s_w)| {
                let q = quantize_bias(b, input.scale(), s_w).unwrap();
                assert!(!q.saturated);
                q.value
            })
            .collect(),
    )
}

/// Agreement of one case: elements, how many are equal, the largest difference in steps.
#[derive(Clone, Copy, Default)]
struct Agreement {
    elements: usize,
    equal: usize,
    max_diff: u32,
}

impl Agreement {
    fn of(qc: &[u8], torch: &[u8]) -> Agreement {
        assert_eq!(qc.len(), torch.len());
        Agreement {
            elements: qc.len(),
            equal: qc.iter().zip(torch).filter(|(a, b)| a == b).count(),
            max_diff: qc
                .iter()
                .zip(torch)
                .map(|(&a, &b)| a.abs_diff(b) as u32)
                .max()
                .unwrap_or(0),
        }
    }

    fn add(&mut self, o: Agreement) {
        self.elements += o.elements;
        self.equal += o.equal;
        self.max_diff = self.max_diff.max(o.max_diff);
    }

    fn fraction(&self) -> f64 {
        self.equal as f64 / self.elements as f64
    }

    fn ok(&self) -> bool {
        self.fraction() >= MIN_EQUAL_FRACTION && self.max_diff <= MAX_STEP_DIFF
    }
}

fn nchw_to_nhwc_vec<T: Copy + Default>(x: &[T], [n, c, h, w]: [usize; 4]) -> Vec<T> {
    let mut out = vec![T::default(); x.len()];
    nchw_to_nhwc(x, [n, c, h, w], &mut out).unwrap();
    out
}

fn nhwc_to_nchw_vec<T: Copy + Default>(x: &[T], [n, h, w, c]: [usize; 4]) -> Vec<T> {
    let mut out = vec![T::default(); x.len()];
    nhwc_to_nchw(x, [n, h, w, c], &mut out).unwrap();
    out
}

/// `[N, C, H, W]` of a rank-4 shape, `[N, C, 1, L]` of a rank-3 one.
fn as_nchw(shape: &[usize]) -> [usize; 4] {
    match *shape {
        [n, c, h, w] => [n, c, h, w],
        [n, c, l] => [n, c, 1, l],
        _ => panic!("rank 3 or 4 expected, got {shape:?}"),
    }
}

fn axes(cfg: &Value, i: usize) -> Axis {
    Axis::new(
        usizes(&cfg["kernel"])[i],
        usizes(&cfg["stride"])[i],
        usizes(&cfg["padding"])[i],
        cfg.get("dilation").map_or(1, |d| usizes(d)[i]),
    )
}

fn relu(cfg: &Value) -> Activation {
    if cfg["relu"].as_bool().unwrap() {
        Activation::Relu
    } else {
        Activation::None
    }
}

/// Runs one case through qc's reference kernels; returns qc's output in PyTorch's order and
/// PyTorch's output (`"output"`).
fn run_case(case: &Value) -> (Vec<u8>, Vec<u8>) {
    let op = case["op"].as_str().unwrap();
    let cfg = &case["config"];
    let x = activation(&case["input"]);
    let y = activation(&case["output"]);
    let qc = match op {
        "conv2d" | "conv1d" => {
            let w = weight(&case["weight"]);
            let [n, c, h, wd] = as_nchw(&x.shape);
            let [o, i, kh, kw] = as_nchw(&w.shape);
            let groups = cfg["groups"].as_u64().unwrap() as usize;
            let geom = if op == "conv2d" {
                let g = Conv2dGeom {
                    batch: n,
                    in_h: h,
                    in_w: wd,
                    in_c: c,
                    out_c: o,
                    h: axes(cfg, 0),
                    w: axes(cfg, 1),
                    groups,
                };
                assert_eq!([g.h.kernel, g.w.kernel], [kh, kw]);
                g
            } else {
                Conv2dGeom::conv1d(n, wd, c, o, axes(cfg, 0), groups)
            };
            assert_eq!(i * groups, c);
            let p = QConv2d::new(geom, &x.params, &w.scales, &y.params, relu(cfg), RequantRule::Float).unwrap();
            let b = bias(&case["bias_bits"], &x.params, &w);
            let xs = nchw_to_nhwc_vec(&x.codes, [n, c, h, wd]);
            let mut ws = vec![0i8; w.codes.len()];
            conv_weight_oihw_to_ohwi(&w.codes, [o, i, kh, kw], &mut ws).unwrap();
            let [oh, ow] = geom.out_hw().unwrap();
            assert_eq!(as_nchw(&y.shape), [n, o, oh, ow], "output shape");
            let mut out = vec![0u8; y.codes.len()];
            if op == "conv2d" {
                qconv2d(&p, &xs, &ws, b.as_deref(), &mut out).unwrap();
            } else {
                qconv1d(&p, &xs, &ws, b.as_deref(), &mut out).unwrap();
            }
            nhwc_to_nchw_vec(&out, [n, oh, ow, o])
        }
        "linear" => {
            let w = weight(&case["weight"]);
            let (batch, k) = (x.shape[0], x.shape[1]);
            assert_eq!(w.shape[1], k);
            let p = QLinear::new(batch, k, &x.params, &w.scales, &y.params, relu(cfg), RequantRule::Float).unwrap();
            let b = bias(&case["bias_bits"], &x.params, &w);
            let mut out = vec![0u8; y.codes.len()];
            qlinear(&p, &x.codes, &w.codes, b.as_deref(), &mut out).unwrap();
            out
        }
        "add" => {
            let xb = activation(&case["input_b"]);
            assert_eq!(x.shape, xb.shape);
            let mut p = QAdd::new(&x.params, &xb.params, &y.params).unwrap();
            if cfg["relu"].as_bool().unwrap() {
                p = p.with_relu();
            }
            // Elementwise: any layout, so PyTorch's order is used as is.
            let mut out = vec![0u8; y.codes.len()];
            qadd(&p, &x.codes, &xb.codes, &mut out).unwrap();
            out
        }
        "max_pool2d" | "avg_pool2d" | "adaptive_avg_pool2d" => {
            assert_eq!(
                (y.params.scale(), y.params.zero_point()),
                (x.params.scale(), x.params.zero_point())
            );
            let [n, c, h, wd] = as_nchw(&x.shape);
            let [_, _, oh, ow] = as_nchw(&y.shape);
            let xs = nchw_to_nhwc_vec(&x.codes, [n, c, h, wd]);
            let mut out = vec![0u8; y.codes.len()];
            if op == "adaptive_avg_pool2d" {
                assert_eq!(usizes(&cfg["output_size"]), [oh, ow]);
                let p = QAdaptiveAvgPool2d::new(n, [h, wd], [oh, ow], c, &x.params);
                qadaptive_avgpool2d(&p, &xs, &mut out).unwrap();
                if [oh, ow] == [1, 1] {
                    // The global pool must give the same bits.
                    let mut global = vec![0u8; out.len()];
                    qglobal_avgpool(&QGlobalAvgPool::new(n, h * wd, c, &x.params), &xs, &mut global).unwrap();
                    assert_eq!(global, out, "{}: global vs adaptive 1×1", case["name"]);
                }
            } else {
                let geom = Pool2dGeom {
                    batch: n,
                    in_h: h,
                    in_w: wd,
                    channels: c,
                    h: axes(cfg, 0),
                    w: axes(cfg, 1),
                    ceil_mode: cfg["ceil_mode"].as_bool().unwrap(),
                };
                assert_eq!(geom.out_hw().unwrap(), [oh, ow], "output shape");
                if op == "max_pool2d" {
                    qmaxpool2d(&geom, &xs, &mut out).unwrap();
                } else {
                    let incl = cfg["count_include_pad"].as_bool().unwrap();
                    qavgpool2d(&QAvgPool2d::new(geom, incl, &x.params), &xs, &mut out).unwrap();
                }
            }
            nhwc_to_nchw_vec(&out, [n, oh, ow, c])
        }
        other => panic!("unknown op {other}"),
    };
    (qc, y.codes)
}

/// For an add, whether qc's code `q` is the correctly rounded result: `|v - (q - zp_out)| <= 1/2`
/// for the real `v = ((qa - zp_a)·s_a + (qb - zp_b)·s_b) / s_out`, or `q` is a clamp bound (saturated
/// or ReLU). Evaluated as `|num - k·s_out| <= s_out / 2` in f64, where `num`, `k·s_out` and `s_out/2`
/// are exact (products of a 9-bit integer and an f32), so only the final subtraction rounds.
fn add_correctly_rounded(case: &Value, i: usize, q: u8) -> bool {
    let (a, b, y) = (
        activation(&case["input"]),
        activation(&case["input_b"]),
        activation(&case["output"]),
    );
    let relu = case["config"]["relu"].as_bool().unwrap();
    let lo = if relu { y.params.zero_point() } else { 0 };
    let q = q as i32;
    if q == lo || q == 255 {
        return true;
    }
    let num = (a.codes[i] as i32 - a.params.zero_point()) as f64 * a.params.scale() as f64
        + (b.codes[i] as i32 - b.params.zero_point()) as f64 * b.params.scale() as f64;
    let k = (q - y.params.zero_point()) as f64;
    let s_out = y.params.scale() as f64;
    (num - k * s_out).abs() <= 0.5 * s_out
}

/// How a PyTorch reference is checked.
enum Rule {
    /// The requirement: at least 99% of the codes equal, none more than one step apart.
    Requirement,
    /// At most one step apart, and every differing element explained by the given reason (the
    /// 99% figure is printed, not required).
    Explained(&'static str),
}

/// Runs every case of `stems`, prints per-case and per-op agreement, and fails listing every case
/// that breaks its rule:
/// - conv, linear and add: the requirement; for add, every difference must also be one where
///   qc is the correctly rounded result ([`add_correctly_rounded`]). Cases marked `tie_heavy`
///   (results within f32 error of rounding ties, where PyTorch's f32 arithmetic picks either side)
///   need only that, not 99%.
/// - pooling: the requirement against PyTorch's channels_last (NHWC) kernels, qc's layout; against
///   its NCHW kernels, which round average-pool ties on the uncentred code (`rint(Σq / n)`,
///   qc and the NHWC kernels on the centred one, `rint((Σq - n·zp) / n) + zp`), every difference
///   must be an element where PyTorch's two paths disagree with each other.
fn check(stems: &[&str]) {
    let mut per_op: BTreeMap<String, Agreement> = BTreeMap::new();
    let mut failures = Vec::new();
    for stem in stems {
        let file = load(stem);
        let cases = file["cases"].as_array().unwrap();
        assert!(!cases.is_empty(), "{stem}: no cases");
        for case in cases {
            let (qc, torch) = run_case(case);
            let op = case["op"].as_str().unwrap();
            let name = case["name"].as_str().unwrap();
            let mut refs: Vec<(String, Vec<u8>, Rule)> = Vec::new();
            if case["output_channels_last"].is_null() {
                let rule = if case["tie_heavy"].as_bool() == Some(true) {
                    Rule::Explained("qc correctly rounded")
                } else {
                    Rule::Requirement
                };
                refs.push((String::new(), torch, rule));
            } else {
                let cl = activation(&case["output_channels_last"]).codes;
                let split: Vec<bool> = torch.iter().zip(&cl).map(|(a, b)| a != b).collect();
                refs.push(("/channels_last".into(), cl, Rule::Requirement));
                refs.push((
                    "/nchw".into(),
                    torch,
                    Rule::Explained("PyTorch's NCHW and NHWC paths disagree"),
                ));
                // Differences from the NCHW path must lie where the two paths split.
                let last = refs.last().unwrap();
                for (i, (&q, &t)) in qc.iter().zip(&last.1).enumerate() {
                    if q != t && !split[i] {
                        failures.push(format!("{op}/nchw/{name}: element {i} differs but not the paths"));
                    }
                }
            }
            for (suffix, torch, rule) in refs {
                let a = Agreement::of(&qc, &torch);
                let label = format!("{op}{suffix}/{name}");
                let note = match rule {
                    Rule::Requirement => String::new(),
                    Rule::Explained(why) => format!("  (differences: {why})"),
                };
                println!(
                    "{label:<50} {:>6} elements  {:>8.4}% equal  {:>4} differ  max diff {}{note}",
                    a.elements,
                    100.0 * a.fraction(),
                    a.elements - a.equal,
                    a.max_diff
                );
                let ok = match rule {
                    Rule::Requirement => a.ok(),
                    Rule::Explained(_) => a.max_diff <= MAX_STEP_DIFF,
                };
                if !ok {
                    failures.push(label.clone());
                }
                if op == "add" {
                    for (i, (&q, &t)) in qc.iter().zip(&torch).enumerate() {
                        if q != t && !add_correctly_rounded(case, i, q) {
                            failures.push(format!(
                                "{label}: element {i}: qc {q} is not correctly rounded (PyTorch {t})"
                            ));
                        }
                    }
                }
                per_op.entry(format!("{op}{suffix}")).or_default().add(a);
            }
        }
    }
    for (op, a) in &per_op {
        println!(
            "op {op:<32} {:>7} elements  {:>8.4}% equal  {:>4} differ  max diff {}",
            a.elements,
            100.0 * a.fraction(),
            a.elements - a.equal,
            a.max_diff
        );
    }
    assert!(failures.is_empty(), "failed: {failures:#?}");
}

#[test]
fn conv2d_matches_pytorch_x86() {
    check(&["conv2d"]);
}

#[test]
fn conv1d_matches_pytorch_x86() {
    check(&["conv1d"]);
}

#[test]
fn linear_matches_pytorch_x86() {
    check(&["linear"]);
}

#[test]
fn add_matches_pytorch_x86() {
    check(&["add"]);
}

#[test]
fn pooling_matches_pytorch_x86() {
    check(&["pool"]);
}

/// Max pooling moves codes without arithmetic: it must agree exactly, on both PyTorch paths.
#[test]
fn max_pooling_is_exact() {
    let file = load("pool");
    for case in file["cases"].as_array().unwrap() {
        if case["op"] == "max_pool2d" {
            let (qc, torch) = run_case(case);
            assert_eq!(qc, torch, "{}", case["name"]);
            assert_eq!(qc, activation(&case["output_channels_last"]).codes, "{}", case["name"]);
        }
    }
}
