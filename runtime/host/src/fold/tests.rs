//! Tests of the folding arithmetic: identities against unfolded conv/linear → batch norm, errors.

use super::*;
use proptest::prelude::*;
use qc_runtime::quant::{float_rewrite_close, FLOAT_REWRITE_RTOL};
use qc_runtime::SplitMix64;

fn t(shape: &[usize], data: &[f32]) -> Tensor {
    Tensor::f32(shape.to_vec(), data.to_vec())
}

fn data(t: &Tensor) -> &[f32] {
    t.as_f32().unwrap()
}

fn bn<'a>(g: &'a [f32], b: &'a [f32], m: &'a [f32], v: &'a [f32], eps: f64) -> BatchNorm<'a> {
    BatchNorm {
        weight: Some(g),
        bias: Some(b),
        running_mean: m,
        running_var: v,
        eps,
    }
}

// ----- hand-computed folds -----

// γ = [3, −2], β = [0.5, −1], μ = [0.5, 0.5], σ² = [3, 0], ε = 1:
// √(σ²+ε) = [2, 1], γ/√(σ²+ε) = [1.5, −2].
const G: [f32; 2] = [3.0, -2.0];
const BETA: [f32; 2] = [0.5, -1.0];
const MU: [f32; 2] = [0.5, 0.5];
const VAR: [f32; 2] = [3.0, 0.0];

#[test]
fn conv_fold_by_hand() {
    let w = t(&[2, 1, 1, 2], &[2.0, 4.0, -1.0, 0.5]);
    let b = t(&[2], &[1.0, 0.5]);
    let f = fold_bn_into_conv(&w, Some(&b), &bn(&G, &BETA, &MU, &VAR, 1.0)).unwrap();
    assert_eq!(f.weight.shape, vec![2, 1, 1, 2]);
    assert_eq!(data(&f.weight), &[3.0, 6.0, 2.0, -1.0]);
    // (1 − 0.5)·1.5 + 0.5 = 1.25; (0.5 − 0.5)·(−2) − 1 = −1
    assert_eq!(data(&f.bias), &[1.25, -1.0]);
}

#[test]
fn conv_fold_without_bias_gets_one() {
    let w = t(&[2, 1, 1, 1], &[2.0, -1.0]);
    let f = fold_bn_into_conv(&w, None, &bn(&G, &BETA, &MU, &VAR, 1.0)).unwrap();
    assert_eq!(data(&f.weight), &[3.0, 2.0]);
    // −μ·s + β: −0.5·1.5 + 0.5 = −0.25; −0.5·(−2) − 1 = 0
    assert_eq!(f.bias.shape, vec![2]);
    assert_eq!(data(&f.bias), &[-0.25, 0.0]);
}

#[test]
fn conv1d_and_conv3d_and_groups() {
    // conv1d [2, 1, 3] and conv3d [2, 1, 1, 1, 2]: only axis 0 matters.
    let bnp = bn(&G, &BETA, &MU, &VAR, 1.0);
    let w1 = t(&[2, 1, 3], &[1.0, 2.0, 3.0, 1.0, 2.0, 3.0]);
    let f1 = fold_bn_into_conv(&w1, None, &bnp).unwrap();
    assert_eq!(data(&f1.weight), &[1.5, 3.0, 4.5, -2.0, -4.0, -6.0]);
    let w3 = t(&[2, 1, 1, 1, 2], &[2.0, 4.0, -1.0, 0.5]);
    let f3 = fold_bn_into_conv(&w3, None, &bnp).unwrap();
    assert_eq!(data(&f3.weight), &[3.0, 6.0, 2.0, -1.0]);
    assert_eq!(f3.weight.shape, vec![2, 1, 1, 1, 2]);
}

#[test]
fn linear_fold_by_hand() {
    let w = t(&[2, 3], &[1.0, 2.0, -2.0, 0.25, -0.5, 1.0]);
    let b = t(&[2], &[0.5, 2.5]);
    let f = fold_bn_into_linear(&w, Some(&b), &bn(&G, &BETA, &MU, &VAR, 1.0)).unwrap();
    assert_eq!(data(&f.weight), &[1.5, 3.0, -3.0, -0.5, 1.0, -2.0]);
    // (0.5 − 0.5)·1.5 + 0.5 = 0.5; (2.5 − 0.5)·(−2) − 1 = −5
    assert_eq!(data(&f.bias), &[0.5, -5.0]);
    // A conv weight is not a linear weight and vice versa.
    assert!(matches!(
        fold_bn_into_linear(&t(&[2, 1, 1], &[1.0, 1.0]), None, &bn(&G, &BETA, &MU, &VAR, 1.0)),
        Err(FoldError::BadShape {
            param: FoldParam::Weight,
            ..
        })
    ));
    assert!(matches!(
        fold_bn_into_conv(&w, None, &bn(&G, &BETA, &MU, &VAR, 1.0)),
        Err(FoldError::BadShape {
            param: FoldParam::Weight,
            ..
        })
    ));
}

#[test]
fn non_affine_bn_is_gamma_one_beta_zero() {
    let m = [1.0f32, -1.0];
    let v = [0.0f32, 3.0];
    let plain = BatchNorm {
        weight: None,
        bias: None,
        running_mean: &m,
        running_var: &v,
        eps: 1.0,
    };
    let f = fold_bn_into_linear(&t(&[2, 1], &[4.0, 4.0]), None, &plain).unwrap();
    assert_eq!(data(&f.weight), &[4.0, 2.0]);
    assert_eq!(data(&f.bias), &[-1.0, 0.5]);
    let ones = [1.0f32, 1.0];
    let zeros = [0.0f32, 0.0];
    let explicit = fold_bn_into_linear(&t(&[2, 1], &[4.0, 4.0]), None, &bn(&ones, &zeros, &m, &v, 1.0)).unwrap();
    assert_eq!(f, explicit);
}

#[test]
fn rounds_once_from_f64() {
    // γ/√(σ²+ε) = 1/√3 is not an f32; the folded weight is the f64 product rounded once, which
    // can differ from the f32 chain w·fl(fl(1/fl(√3))).
    let w = [0.1f32, 0.7, 1.3, 3.3];
    let g = [1.0f32];
    let (z, v) = ([0.0f32], [3.0f32]);
    let (fw, fb) = fold_bn(&w, None, &bn(&g, &z, &z, &v, 0.0)).unwrap();
    for (a, b) in w.iter().zip(&fw) {
        assert_eq!(*b, (*a as f64 * (1.0 / 3f64.sqrt())) as f32);
    }
    assert_eq!(fb, vec![0.0]);
}

#[test]
fn bn_from_tensors() {
    let (g, b, m, v) = (t(&[2], &G), t(&[2], &BETA), t(&[2], &MU), t(&[2], &VAR));
    let p = BatchNorm::from_tensors(Some(&g), Some(&b), &m, &v, 1.0).unwrap();
    assert_eq!(p, bn(&G, &BETA, &MU, &VAR, 1.0));
    let i = Tensor::zeros(DType::I64, vec![2]);
    assert_eq!(
        BatchNorm::from_tensors(Some(&g), Some(&b), &m, &i, 1.0),
        Err(FoldError::NotF32 {
            param: FoldParam::RunningVar,
            dtype: DType::I64
        })
    );
    let m2 = t(&[1, 2], &MU);
    assert!(matches!(
        BatchNorm::from_tensors(None, None, &m2, &v, 1.0),
        Err(FoldError::BadShape {
            param: FoldParam::RunningMean,
            ..
        })
    ));
    let broken = Tensor {
        shape: vec![3],
        data: qc_runtime::TensorData::F32(vec![1.0, 2.0]),
    };
    assert_eq!(
        BatchNorm::from_tensors(Some(&broken), None, &m, &v, 1.0),
        Err(FoldError::DataLength {
            param: FoldParam::BnWeight,
            shape: vec![3],
            len: 2,
            needed: 3
        })
    );
}

// ----- errors -----

#[test]
fn errors_name_the_parameter() {
    let w = t(&[2, 1, 1, 1], &[1.0, 1.0]);
    let good = bn(&G, &BETA, &MU, &VAR, 1.0);
    let fold = |b: &BatchNorm<'_>| fold_bn_into_conv(&w, None, b);

    assert_eq!(
        fold(&BatchNorm { eps: 0.0, ..good }),
        Err(FoldError::NonPositiveVariance {
            index: 1,
            var: 0.0,
            eps: 0.0
        })
    );
    let neg = [3.0f32, -2.0];
    assert_eq!(
        fold(&BatchNorm {
            running_var: &neg,
            ..good
        }),
        Err(FoldError::NonPositiveVariance {
            index: 1,
            var: -2.0,
            eps: 1.0
        })
    );
    let nan = [1.0f32, f32::NAN];
    let err = fold(&BatchNorm {
        weight: Some(&nan),
        ..good
    })
    .unwrap_err();
    assert!(
        matches!(err, FoldError::NonFinite { param: FoldParam::BnWeight, index: 1, value } if value.is_nan()),
        "{err}"
    );
    assert_eq!(err.to_string(), "`bn.weight`[1] is NaN, not a finite number");
    let inf = [f32::INFINITY, 0.0];
    assert_eq!(
        fold(&BatchNorm {
            running_mean: &inf,
            ..good
        }),
        Err(FoldError::NonFinite {
            param: FoldParam::RunningMean,
            index: 0,
            value: f64::INFINITY
        })
    );
    assert!(matches!(
        fold(&BatchNorm { eps: f64::NAN, ..good }),
        Err(FoldError::NonFinite {
            param: FoldParam::Eps,
            ..
        })
    ));
    let three = [1.0f32, 1.0, 1.0];
    assert_eq!(
        fold(&BatchNorm {
            bias: Some(&three),
            ..good
        }),
        Err(FoldError::ChannelMismatch {
            param: FoldParam::BnBias,
            expected: 2,
            got: 3
        })
    );
    let w3 = t(&[3, 1, 1, 1], &[1.0, 1.0, 1.0]);
    assert_eq!(
        fold_bn_into_conv(&w3, None, &good),
        Err(FoldError::ChannelMismatch {
            param: FoldParam::RunningMean,
            expected: 3,
            got: 2
        })
    );
    assert!(matches!(
        fold_bn_into_conv(&w, Some(&t(&[1, 2], &[0.0, 0.0])), &good),
        Err(FoldError::BadShape {
            param: FoldParam::Bias,
            ..
        })
    ));
    let wnan = t(&[2, 1, 1, 1], &[1.0, f32::NEG_INFINITY]);
    assert!(matches!(
        fold_bn_into_conv(&wnan, None, &good),
        Err(FoldError::NonFinite {
            param: FoldParam::Weight,
            index: 1,
            ..
        })
    ));
    let bnan = t(&[2], &[f32::NAN, 0.0]);
    assert!(matches!(
        fold_bn_into_conv(&w, Some(&bnan), &good),
        Err(FoldError::NonFinite {
            param: FoldParam::Bias,
            index: 0,
            ..
        })
    ));
    // γ/√(σ²+ε) = 3e38/1e-3 does not fit in f32.
    let huge = [3e38f32, 1.0];
    let tiny = [0.0f32, 1.0];
    assert!(matches!(
        fold(&BatchNorm {
            weight: Some(&huge),
            running_var: &tiny,
            eps: 1e-6,
            ..good
        }),
        Err(FoldError::Overflow {
            param: FoldParam::Weight,
            index: 0,
            ..
        })
    ));
    // Slices: a weight that does not split into rows per channel.
    assert_eq!(
        fold_bn(&[1.0, 2.0, 3.0], None, &good),
        Err(FoldError::NotRows { len: 3, channels: 2 })
    );
}

// ----- QAT form -----

#[test]
fn qat_scale_factor_and_weight_by_hand() {
    let w = t(&[2, 1, 1, 2], &[2.0, 4.0, -1.0, 0.5]);
    let q = qat_fold(&w, &bn(&G, &BETA, &MU, &VAR, 1.0)).unwrap();
    assert_eq!(q.scale_factor, vec![1.5, -2.0]);
    assert_eq!(data(&q.scaled_weight), &[3.0, 6.0, 2.0, -1.0]);
    // The correction: conv / sf + b along axis 1 of [N=1, C=2, L=2].
    let y = [3.0f32, -6.0, 4.0, 1.0];
    let out = qat_output_correction(&y, &[1, 2, 2], &q.scale_factor, Some(&[1.0, 0.5])).unwrap();
    assert_eq!(out, vec![3.0, -3.0, -1.5, 0.0]);
    let out = qat_output_correction(&y, &[1, 2, 2], &q.scale_factor, None).unwrap();
    assert_eq!(out, vec![2.0, -4.0, -2.0, -0.5]);
    // Linear [out, in] and an activation [N, C] (no spatial axes).
    let lw = t(&[2, 2], &[1.0, 1.0, 1.0, 1.0]);
    assert_eq!(
        data(&qat_scale_weight(&lw, &q.scale_factor).unwrap()),
        &[1.5, 1.5, -2.0, -2.0]
    );
    assert_eq!(
        qat_output_correction(&[3.0, 4.0, 1.5, -2.0], &[2, 2], &q.scale_factor, None).unwrap(),
        vec![2.0, -2.0, 1.0, 1.0]
    );
}

#[test]
fn qat_errors() {
    let zero = [0.0f32, 1.0];
    let b = bn(&zero, &BETA, &MU, &VAR, 1.0);
    assert_eq!(qat_scale_factor(&b), Err(FoldError::ZeroScaleFactor { index: 0 }));
    let w = t(&[2, 1, 1, 1], &[1.0, 1.0]);
    assert_eq!(
        qat_scale_weight(&w, &[1.0]),
        Err(FoldError::ChannelMismatch {
            param: FoldParam::ScaleFactor,
            expected: 2,
            got: 1
        })
    );
    assert!(matches!(
        qat_scale_weight(&t(&[2], &[1.0, 1.0]), &[1.0, 1.0]),
        Err(FoldError::BadShape { .. })
    ));
    assert!(matches!(
        qat_output_correction(&[1.0; 3], &[1, 2, 2], &[1.0, 1.0], None),
        Err(FoldError::DataLength { len: 3, needed: 4, .. })
    ));
    assert!(matches!(
        qat_output_correction(&[1.0; 4], &[1, 2, 2], &[1.0, 0.0], None),
        Err(FoldError::ZeroScaleFactor { index: 1, .. })
    ));
    assert!(matches!(
        qat_output_correction(&[1.0; 4], &[4], &[1.0], None),
        Err(FoldError::BadShape {
            param: FoldParam::ConvOutput,
            ..
        })
    ));
}

// ----- a naive N-d convolution, generic over the accumulator type -----

#[derive(Debug, Clone)]
struct Conv {
    n: usize,
    cin: usize,
    cout: usize,
    groups: usize,
    input: Vec<usize>,
    kernel: Vec<usize>,
    stride: Vec<usize>,
    pad: Vec<usize>,
    dilation: Vec<usize>,
}

impl Conv {
    fn out_spatial(&self) -> Vec<usize> {
        (0..self.input.len())
            .map(|d| {
                let span = self.dilation[d] * (self.kernel[d] - 1) + 1;
                (self.input[d] + 2 * self.pad[d] - span) / self.stride[d] + 1
            })
            .collect()
    }
    fn weight_shape(&self) -> Vec<usize> {
        let mut s = vec![self.cout, self.cin / self.groups];
        s.extend(&self.kernel);
        s
    }
    fn input_len(&self) -> usize {
        self.n * self.cin * self.input.iter().product::<usize>()
    }
    fn output_shape(&self) -> Vec<usize> {
        let mut s = vec![self.n, self.cout];
        s.extend(self.out_spatial());
        s
    }
}

fn unravel(mut i: usize, dims: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; dims.len()];
    for d in (0..dims.len()).rev() {
        idx[d] = i % dims[d];
        i /= dims[d];
    }
    idx
}

/// `y[n, co, o...] = b[co] + Σ_{ci in group, k...} x[n, ci, o·s − p + k·d] · w[co, ci, k...]`,
/// accumulated in `T` (f64: the reference; f32: what a float kernel does).
fn conv<T>(g: &Conv, x: &[f32], w: &[f32], b: &[f32]) -> Vec<T>
where
    T: Copy + From<f32> + std::ops::Add<Output = T> + std::ops::Mul<Output = T>,
{
    let out = g.out_spatial();
    let (n_out, n_k, n_in) = (
        out.iter().product::<usize>(),
        g.kernel.iter().product::<usize>(),
        g.input.iter().product::<usize>(),
    );
    let (cin_g, cout_g) = (g.cin / g.groups, g.cout / g.groups);
    let mut y = Vec::with_capacity(g.n * g.cout * n_out);
    for n in 0..g.n {
        for co in 0..g.cout {
            let group = co / cout_g;
            for o in 0..n_out {
                let opos = unravel(o, &out);
                let mut acc = T::from(b[co]);
                for cl in 0..cin_g {
                    let ci = group * cin_g + cl;
                    'k: for k in 0..n_k {
                        let kpos = unravel(k, &g.kernel);
                        let mut flat = 0;
                        for d in 0..out.len() {
                            let p = (opos[d] * g.stride[d] + kpos[d] * g.dilation[d]) as isize - g.pad[d] as isize;
                            if p < 0 || p >= g.input[d] as isize {
                                continue 'k;
                            }
                            flat = flat * g.input[d] + p as usize;
                        }
                        let xv = x[(n * g.cin + ci) * n_in + flat];
                        let wv = w[(co * cin_g + cl) * n_k + k];
                        acc = acc + T::from(xv) * T::from(wv);
                    }
                }
                y.push(acc);
            }
        }
    }
    y
}

/// Inference batch norm over axis 1 of `y` (`inner` elements per channel and image), in f64.
fn bn_f64(y: &[f64], c: usize, inner: usize, p: &BatchNorm<'_>) -> Vec<f64> {
    y.iter()
        .enumerate()
        .map(|(i, &v)| {
            let ch = (i / inner) % c;
            let s = p.weight.unwrap()[ch] as f64 / (p.running_var[ch] as f64 + p.eps).sqrt();
            (v - p.running_mean[ch] as f64) * s + p.bias.unwrap()[ch] as f64
        })
        .collect()
}

/// Uniform magnitude in `[lo, hi)` with a random sign (γ away from 0: QAT divides by it).
fn signed(rng: &mut SplitMix64, lo: f32, hi: f32) -> f32 {
    let m = rng.uniform(lo, hi);
    if rng.next_u64() & 1 == 0 {
        m
    } else {
        -m
    }
}

fn to_f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

fn conv_strategy() -> impl Strategy<Value = Conv> {
    (1usize..=3, 1usize..=2, 1usize..=3, 1usize..=3, 1usize..=2).prop_flat_map(|(rank, groups, cin_g, cout_g, n)| {
        let dims = prop::collection::vec((1usize..=3, 1usize..=2, 0usize..=1, 1usize..=2, 0usize..=3), rank);
        dims.prop_map(move |dims| {
            let mut g = Conv {
                n,
                cin: cin_g * groups,
                cout: cout_g * groups,
                groups,
                input: vec![],
                kernel: vec![],
                stride: vec![],
                pad: vec![],
                dilation: vec![],
            };
            for (k, s, p, d, extra) in dims {
                // Input at least as large as the dilated kernel, so every output size is ≥ 1.
                g.input.push(d * (k - 1) + 1 + extra);
                g.kernel.push(k);
                g.stride.push(s);
                g.pad.push(p);
                g.dilation.push(d);
            }
            g
        })
    })
}

fn check_fold(g: &Conv, seed: u64, with_bias: bool, eps: f64) -> (f32, f32) {
    let mut rng = SplitMix64::new(seed);
    let ws = g.weight_shape();
    let w: Vec<f32> = (0..ws.iter().product::<usize>())
        .map(|_| rng.uniform(-1.0, 1.0))
        .collect();
    let b: Vec<f32> = (0..g.cout).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let x: Vec<f32> = (0..g.input_len()).map(|_| rng.uniform(-2.0, 2.0)).collect();
    let gamma: Vec<f32> = (0..g.cout).map(|_| signed(&mut rng, 0.1, 2.0)).collect();
    let beta: Vec<f32> = (0..g.cout).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let mean: Vec<f32> = (0..g.cout).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let var: Vec<f32> = (0..g.cout).map(|_| rng.uniform(0.01, 10.0)).collect();
    let p = bn(&gamma, &beta, &mean, &var, eps);
    let zeros = vec![0.0f32; g.cout];
    let conv_bias = if with_bias { &b } else { &zeros };

    let inner: usize = g.out_spatial().iter().product();
    let reference = to_f32s(&bn_f64(&conv::<f64>(g, &x, &w, conv_bias), g.cout, inner, &p));
    let wt = Tensor::f32(ws.clone(), w.clone());
    let bt = Tensor::f32(vec![g.cout], b.clone());
    let f = fold_bn_into_conv(&wt, with_bias.then_some(&bt), &p).unwrap();
    let folded64 = to_f32s(&conv::<f64>(g, &x, data(&f.weight), data(&f.bias)));
    let folded32 = conv::<f32>(g, &x, data(&f.weight), data(&f.bias));
    assert!(float_rewrite_close(&reference, &folded64), "{g:?}");
    assert!(float_rewrite_close(&reference, &folded32), "{g:?}");

    // The QAT path with frozen BN: bn(conv(x, W·sf)/sf + b) over running statistics.
    let q = qat_fold(&wt, &p).unwrap();
    let scaled = conv::<f32>(g, &x, data(&q.scaled_weight), &zeros);
    let orig = qat_output_correction(&scaled, &g.output_shape(), &q.scale_factor, with_bias.then_some(&b[..])).unwrap();
    let orig64: Vec<f64> = orig.iter().map(|&v| v as f64).collect();
    let qat = to_f32s(&bn_f64(&orig64, g.cout, inner, &p));
    assert!(float_rewrite_close(&reference, &qat), "{g:?}");

    let max = reference.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let worst = reference
        .iter()
        .zip(&folded32)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    (worst, max)
}

#[test]
fn folded_conv_matches_conv_then_bn_fixed_cases() {
    // A 2-d grouped, strided, padded, dilated case and a 3-d one, and the margin to the tolerance.
    let g2 = Conv {
        n: 2,
        cin: 4,
        cout: 6,
        groups: 2,
        input: vec![7, 6],
        kernel: vec![3, 2],
        stride: vec![2, 1],
        pad: vec![1, 0],
        dilation: vec![1, 2],
    };
    let g3 = Conv {
        n: 1,
        cin: 3,
        cout: 2,
        groups: 1,
        input: vec![3, 4, 3],
        kernel: vec![2, 3, 2],
        stride: vec![1, 1, 2],
        pad: vec![0, 1, 1],
        dilation: vec![1, 1, 1],
    };
    for (g, seed) in [(&g2, 1), (&g3, 2), (&g2, 3)] {
        let (worst, max) = check_fold(g, seed, seed != 3, 1e-5);
        assert!(worst * 10.0 < FLOAT_REWRITE_RTOL * max, "worst {worst} max {max}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn prop_folded_conv_matches_conv_then_bn(
        g in conv_strategy(),
        seed in any::<u64>(),
        with_bias: bool,
        eps in prop::sample::select(vec![1e-5, 1e-3, 0.0]),
    ) {
        check_fold(&g, seed, with_bias, eps);
    }

    #[test]
    fn prop_folded_linear_matches_linear_then_bn(
        out in 1usize..6, inp in 1usize..20, n in 1usize..4, seed in any::<u64>(), with_bias: bool,
    ) {
        // A linear layer is a 1x1 conv over [N, in, 1]: reuse the reference.
        let g = Conv {
            n, cin: inp, cout: out, groups: 1,
            input: vec![1], kernel: vec![1], stride: vec![1], pad: vec![0], dilation: vec![1],
        };
        let mut rng = SplitMix64::new(seed);
        let w: Vec<f32> = (0..out * inp).map(|_| rng.uniform(-1.0, 1.0)).collect();
        let b: Vec<f32> = (0..out).map(|_| rng.uniform(-1.0, 1.0)).collect();
        let x: Vec<f32> = (0..n * inp).map(|_| rng.uniform(-2.0, 2.0)).collect();
        let gamma: Vec<f32> = (0..out).map(|_| signed(&mut rng, 0.1, 2.0)).collect();
        let beta: Vec<f32> = (0..out).map(|_| rng.uniform(-1.0, 1.0)).collect();
        let mean: Vec<f32> = (0..out).map(|_| rng.uniform(-1.0, 1.0)).collect();
        let var: Vec<f32> = (0..out).map(|_| rng.uniform(0.01, 10.0)).collect();
        let p = bn(&gamma, &beta, &mean, &var, 1e-5);
        let zeros = vec![0.0f32; out];
        let reference = to_f32s(&bn_f64(&conv::<f64>(&g, &x, &w, if with_bias { &b } else { &zeros }), out, 1, &p));
        let bt = Tensor::f32(vec![out], b.clone());
        let f = fold_bn_into_linear(&Tensor::f32(vec![out, inp], w), with_bias.then_some(&bt), &p).unwrap();
        let folded = conv::<f32>(&g, &x, data(&f.weight), data(&f.bias));
        prop_assert!(float_rewrite_close(&reference, &folded));
    }
}

#[test]
fn wrong_folds_are_caught_by_the_tolerance() {
    // The tolerance is not so loose that a folding bug passes: forgetting μ, or scaling by the
    // wrong channel, fails the same comparison.
    let g = Conv {
        n: 1,
        cin: 2,
        cout: 3,
        groups: 1,
        input: vec![5, 5],
        kernel: vec![3, 3],
        stride: vec![1, 1],
        pad: vec![1, 1],
        dilation: vec![1, 1],
    };
    let mut rng = SplitMix64::new(9);
    let w: Vec<f32> = (0..3 * 2 * 9).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let x: Vec<f32> = (0..2 * 25).map(|_| rng.uniform(-2.0, 2.0)).collect();
    let (gamma, beta, mean, var) = (
        [1.5f32, -0.7, 2.0],
        [0.1f32, 0.2, -0.3],
        [0.8f32, -0.6, 0.5],
        [0.5f32, 2.0, 4.0],
    );
    let p = bn(&gamma, &beta, &mean, &var, 1e-5);
    let zeros = [0.0f32; 3];
    let reference = to_f32s(&bn_f64(&conv::<f64>(&g, &x, &w, &zeros), 3, 25, &p));
    let (fw, fb) = fold_bn(&w, None, &p).unwrap();
    assert!(float_rewrite_close(&reference, &conv::<f32>(&g, &x, &fw, &fb)));
    let no_mean = bn(&gamma, &beta, &zeros, &var, 1e-5);
    let (_, bad_b) = fold_bn(&w, None, &no_mean).unwrap();
    assert!(!float_rewrite_close(&reference, &conv::<f32>(&g, &x, &fw, &bad_b)));
    let rolled_gamma = [gamma[1], gamma[2], gamma[0]];
    let (bad_w, _) = fold_bn(&w, None, &bn(&rolled_gamma, &beta, &mean, &var, 1e-5)).unwrap();
    assert!(!float_rewrite_close(&reference, &conv::<f32>(&g, &x, &bad_w, &fb)));
}
