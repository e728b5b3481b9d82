//! Reference kernels on cases computed by hand: layouts, quantize, convolutions, linear, add,
//! pools, concat, flatten, saturation and the accumulator bound.

use super::*;

// ----- hand-computed cases -----

#[test]
fn quantize_and_layouts_by_hand() {
    // NCHW [1, 2, 1, 2]: channel 0 = [0.0, 0.5], channel 1 = [1.0, -0.25]; s = 0.25, zp = 2:
    // q = rint(x · 4) + 2 = [2, 4] and [6, 1]; NHWC interleaves the channels: [2, 6, 4, 1].
    let p = qp(0.25, 2);
    let x = [0.0, 0.5, 1.0, -0.25];
    let mut q = [0u8; 4];
    quantize_nchw_to_nhwc(&x, [1, 2, 1, 2], &p, &mut q).unwrap();
    assert_eq!(q, [2, 6, 4, 1]);
    let mut back = [0f32; 4];
    dequantize_nhwc_to_nchw(&q, [1, 1, 2, 2], &p, &mut back).unwrap();
    assert_eq!(back, x);
    let mut flat = [0u8; 4];
    quantize_u8(&x, &p, &mut flat).unwrap();
    assert_eq!(flat, [2, 4, 6, 1]);
    let mut f = [0f32; 4];
    dequantize_u8(&flat, &p, &mut f).unwrap();
    assert_eq!(f, x);
    // Saturation and NaN: 1e9 → 255, -1e9 → 0, NaN → zp.
    quantize_nchw_to_nhwc(&[1e9, -1e9, f32::NAN, 0.0], [1, 1, 2, 2], &p, &mut q).unwrap();
    assert_eq!(q, [255, 0, 2, 2]);
    // Errors: lengths, a signed range into u8.
    assert!(quantize_nchw_to_nhwc(&x, [1, 2, 2, 2], &p, &mut q).is_err());
    let s = QParams::new(0.25, 0, QRange::I8).unwrap();
    assert!(quantize_nchw_to_nhwc(&x, [1, 2, 1, 2], &s, &mut q).is_err());
    assert!(quantize_u8(&x, &s, &mut q).is_err());
    // OIHW [2, 1, 1, 2] → OHWI [2, 1, 2, 1] (I = 1: unchanged); [1, 2, 1, 1] → [1, 1, 1, 2].
    let mut w = [0i8; 4];
    conv_weight_oihw_to_ohwi(&[1i8, 2, 3, 4], [2, 1, 1, 2], &mut w).unwrap();
    assert_eq!(w, [1, 2, 3, 4]);
    let mut w2 = [0i8; 2];
    conv_weight_oihw_to_ohwi(&[5i8, 6], [1, 2, 1, 1], &mut w2).unwrap();
    assert_eq!(w2, [5, 6]);
}

#[test]
fn quantize_nchw_equals_transpose_then_quantize() {
    let mut rng = SplitMix64::new(3);
    let shape = [2, 3, 4, 5];
    let x: Vec<f32> = (0..120).map(|_| rng.uniform(-3.0, 3.0)).collect();
    let p = qp(0.021, 117);
    let mut a = vec![0u8; 120];
    quantize_nchw_to_nhwc(&x, shape, &p, &mut a).unwrap();
    let mut b = vec![0u8; 120];
    quantize_u8(&to_nhwc(&x, shape), &p, &mut b).unwrap();
    assert_eq!(a, b);
    let mut fa = vec![0f32; 120];
    dequantize_nhwc_to_nchw(&a, [2, 4, 5, 3], &p, &mut fa).unwrap();
    let mut fb = vec![0f32; 120];
    dequantize_u8(&a, &p, &mut fb).unwrap();
    assert_eq!(fa, to_nchw(&fb, [2, 4, 5, 3]));
}

/// Input 1×3×3×1, codes 1..=9 with zp 1 (real values ∝ 0..=8):
/// ```text
/// 0 1 2
/// 3 4 5
/// 6 7 8
/// ```
fn three_by_three() -> Vec<u8> {
    (1..=9).collect()
}

#[test]
fn qconv2d_by_hand() {
    let x = three_by_three();
    let ones = [1i8; 4];
    // 2×2 kernel of ones, stride 1: window sums 0+1+3+4 = 8, 12, 20, 24; M = 0.5, zp 10:
    // 4, 6, 10, 12 → 14, 16, 20, 22.
    let a = Axis::new(2, 1, 0, 1);
    let p = QConv2d {
        geom: conv_geom([3, 3], [1, 1], a, a, 1),
        input_zero_point: 1,
        requant: vec![rq(0.5, 10)],
    };
    let mut out = [0u8; 4];
    qconv2d(&p, &x, &ones, None, &mut out).unwrap();
    assert_eq!(out, [14, 16, 20, 22]);
    // Padding 1, stride 2: windows start at -1 and 1. Padded taps read zp (real 0):
    // (-1,-1): only (0,0) = 0 → 0 → 10; (-1,1): 1+2 = 3 → 1.5 → 2 (half-up) → 12;
    // (1,-1): 3+6 = 9 → 4.5 → 5 → 15; (1,1): 4+5+7+8 = 24 → 12 → 22.
    let a = Axis::new(2, 2, 1, 1);
    let p = QConv2d {
        geom: conv_geom([3, 3], [1, 1], a, a, 1),
        ..p
    };
    qconv2d(&p, &x, &ones, None, &mut out).unwrap();
    assert_eq!(out, [10, 12, 15, 22]);
    // Bias -4 (acc units): 0-4, 3-4, 9-4, 24-4 → -2, -0.5 → 0 (half-up), 2.5 → 3, 10 → 8, 10, 13, 20.
    qconv2d(&p, &x, &ones, Some(&[-4]), &mut out).unwrap();
    assert_eq!(out, [8, 10, 13, 20]);
    // Dilation 2 on the 3×3 input, 2×2 kernel [[1, -1], [-1, 1]]: one output,
    // x00 - x02 - x20 + x22 = 0 - 2 - 6 + 8 = 0 → zp 10. With weights [[1, 0], [0, 2]]: 0 + 16 = 16 → 18.
    let a = Axis::new(2, 1, 0, 2);
    let p = QConv2d {
        geom: conv_geom([3, 3], [1, 1], a, a, 1),
        ..p
    };
    let mut one = [0u8; 1];
    qconv2d(&p, &x, &[1, -1, -1, 1], None, &mut one).unwrap();
    assert_eq!(one, [10]);
    qconv2d(&p, &x, &[1, 0, 0, 2], None, &mut one).unwrap();
    assert_eq!(one, [18]);
}

#[test]
fn qconv2d_groups_and_depthwise_by_hand() {
    // One pixel, 4 input channels [zp+1, zp+2, zp+3, zp+4] with zp = 100, 1×1 kernel.
    let x = [101u8, 102, 103, 104];
    let a = Axis::new(1, 1, 0, 1);
    // groups 2, 2 outputs per group: group 0 reads channels 0,1, group 1 reads 2,3.
    // Weights [Cout=4, 1, 1, 2]: co0 [1, 1] → 3; co1 [1, -1] → -1; co2 [2, 0] → 6; co3 [0, -3] → -12.
    let p = QConv2d {
        geom: conv_geom([1, 1], [4, 4], a, a, 2),
        input_zero_point: 100,
        requant: vec![rq(1.0, 50); 4],
    };
    let mut out = [0u8; 4];
    qconv2d(&p, &x, &[1, 1, 1, -1, 2, 0, 0, -3], None, &mut out).unwrap();
    assert_eq!(out, [53, 49, 56, 38]);
    // Depthwise (groups = Cin = 4, multiplier 1), weights [2, -3, 1, 127]: 2, -6, 3, 508.
    // The last saturates at 255; ReLU on the second clamps to zp = 50.
    let mut r = vec![rq(1.0, 50); 4];
    r[1] = r[1].with_relu();
    let p = QConv2d {
        geom: conv_geom([1, 1], [4, 4], a, a, 4),
        requant: r,
        ..p
    };
    qconv2d(&p, &x, &[2, -3, 1, 127], None, &mut out).unwrap();
    assert_eq!(out, [52, 50, 53, 255]);
    // Depthwise with multiplier 2 (Cout = 8): co 2c, 2c+1 read channel c.
    let p = QConv2d {
        geom: conv_geom([1, 1], [4, 8], a, a, 4),
        input_zero_point: 100,
        requant: vec![rq(1.0, 50); 8],
    };
    let mut out = [0u8; 8];
    qconv2d(&p, &x, &[1, -1, 1, -1, 1, -1, 1, -1], None, &mut out).unwrap();
    assert_eq!(out, [51, 49, 52, 48, 53, 47, 54, 46]);
}

#[test]
fn qconv1d_by_hand() {
    // NLC [1, 5, 1] codes 1..=5, zp 0; kernel 2 with dilation 2, weights [1, -1]:
    // x[i] - x[i+2] = -2 for i = 0, 1, 2. M = 1, zp 100 → 98; with ReLU → 100.
    let x = [1u8, 2, 3, 4, 5];
    let geom = Conv2dGeom::conv1d(1, 5, 1, 1, Axis::new(2, 1, 0, 2), 1);
    let mut p = QConv2d {
        geom,
        input_zero_point: 0,
        requant: vec![rq(1.0, 100)],
    };
    let mut out = [0u8; 3];
    qconv1d(&p, &x, &[1, -1], None, &mut out).unwrap();
    assert_eq!(out, [98; 3]);
    p.requant[0] = p.requant[0].with_relu();
    qconv1d(&p, &x, &[1, -1], None, &mut out).unwrap();
    assert_eq!(out, [100; 3]);
    // ReLU6 with s_out = 0.5, zp 3 clamps to [3, 3 + rint(6 / 0.5)] = [3, 15]. Kernel 1, weight 4,
    // M = 1: 4, 8, 12, 16, 20 → 7, 11, 15, 15, 15.
    let out_p = qp(0.5, 3);
    let r = Activation::Relu6.fuse(rq(1.0, 3), &out_p);
    let p = QConv2d {
        geom: Conv2dGeom::conv1d(1, 5, 1, 1, Axis::new(1, 1, 0, 1), 1),
        input_zero_point: 0,
        requant: vec![r],
    };
    let mut out = [0u8; 5];
    qconv1d(&p, &x, &[4], None, &mut out).unwrap();
    assert_eq!(out, [7, 11, 15, 15, 15]);
    // A 2-D geometry is refused.
    let p2 = QConv2d {
        geom: conv_geom([3, 3], [1, 1], Axis::new(2, 1, 0, 1), Axis::new(2, 1, 0, 1), 1),
        ..p
    };
    assert!(qconv1d(&p2, &three_by_three(), &[1; 4], None, &mut [0u8; 4]).is_err());
}

#[test]
fn qlinear_by_hand() {
    // x = [3, 5] with zp 1 → [2, 4]. Rows: [1, 2] + bias 1 → 11; [-1, 0] → -2 (clamps to 0);
    // [127, 127] → 762 (saturates at 255). M = 1, zp 0.
    let p = linear_params(1, 2, 1, vec![rq(1.0, 0); 3]);
    let mut out = [0u8; 3];
    qlinear(&p, &[3, 5], &[1, 2, -1, 0, 127, 127], Some(&[1, 0, 0]), &mut out).unwrap();
    assert_eq!(out, [11, 0, 255]);
    // Two input rows [4, 4], [1, 10] with zp 1 → [3, 3], [0, 9]; weight rows [1, 1], [-1, 1]; M = 0.25,
    // zp 8: row 0: 6 → 1.5 → 2 (half-up) → 10, 0 → 8; row 1: 9 → 2.25 → 2 → 10, 9 → 10.
    let p = linear_params(2, 2, 1, vec![rq(0.25, 8); 2]);
    let mut out = [0u8; 4];
    qlinear(&p, &[4, 4, 1, 10], &[1, 1, -1, 1], None, &mut out).unwrap();
    assert_eq!(out, [10, 8, 10, 10]);
    // Shape errors.
    assert!(qlinear(&p, &[4, 4, 1], &[1, 1, -1, 1], None, &mut out).is_err());
    assert!(qlinear(&p, &[4, 4, 1, 10], &[1, 1, -1, 1], Some(&[0]), &mut out).is_err());
}

#[test]
fn qadd_by_hand() {
    // a: s 0.5, zp 0; b: s 0.25, zp 4; out: s 1, zp 0.
    let (a, b, o) = (qp(0.5, 0), qp(0.25, 4), qp(1.0, 0));
    let add = QAdd::new(&a, &b, &o).unwrap();
    let mut out = [0u8; 3];
    // 4 → 2.0, 10 → 1.5: 3.5 → 4. 2 → 1.0, 10 → 1.5: 2.5 → 3 (half-up; PyTorch's rint gives 2).
    // 255 → 127.5, 255 → 62.75: 190.25 → 190.
    qadd(&add, &[4, 2, 255], &[10, 10, 255], &mut out).unwrap();
    assert_eq!(out, [4, 3, 190]);
    // With zp 100 and ReLU: 0 + (0 - 4)·0.25 = -1 → 99, ReLU → 100.
    let o2 = qp(1.0, 100);
    let add = QAdd::new(&a, &b, &o2).unwrap();
    let mut one = [0u8; 1];
    qadd(&add, &[0], &[0], &mut one).unwrap();
    assert_eq!(one, [99]);
    qadd(&add.with_relu(), &[0], &[0], &mut one).unwrap();
    assert_eq!(one, [100]);
    assert!(qadd(&add, &[0, 1], &[0], &mut one).is_err());
}

#[test]
fn qmaxpool_by_hand() {
    let x = three_by_three(); // codes 1..=9
    let mut out = [0u8; 4];
    // k2 s2, ceil_mode: windows {1,2,4,5}, {3,6}, {7,8}, {9} → 5, 6, 8, 9.
    qmaxpool2d(&pool_geom([3, 3], 1, Axis::new(2, 2, 0, 1), true), &x, &mut out).unwrap();
    assert_eq!(out, [5, 6, 8, 9]);
    // Without ceil_mode: one window {1,2,4,5} → 5.
    let mut one = [0u8; 1];
    qmaxpool2d(&pool_geom([3, 3], 1, Axis::new(2, 2, 0, 1), false), &x, &mut one).unwrap();
    assert_eq!(one, [5]);
    // Padding 1 never wins: windows {1}, {2,3}, {4,7}, {5,6,8,9} → 1, 3, 7, 9.
    qmaxpool2d(&pool_geom([3, 3], 1, Axis::new(2, 2, 1, 1), false), &x, &mut out).unwrap();
    assert_eq!(out, [1, 3, 7, 9]);
    // Dilation 2, k2, s1 on 3×3: taps (0,0), (0,2), (2,0), (2,2) → max(1, 3, 7, 9) = 9.
    qmaxpool2d(&pool_geom([3, 3], 1, Axis::new(2, 1, 0, 2), false), &x, &mut one).unwrap();
    assert_eq!(one, [9]);
    // Two channels stay apart: NLC [1, 4, 2] = [(1, 9), (2, 8), (3, 7), (4, 6)], k2 s2 → (2, 9), (4, 7).
    let g = Pool2dGeom::pool1d(1, 4, 2, Axis::new(2, 2, 0, 1), false);
    qmaxpool1d(&g, &[1, 9, 2, 8, 3, 7, 4, 6], &mut out).unwrap();
    assert_eq!(out, [2, 9, 4, 7]);
}

#[test]
fn qavgpool_by_hand() {
    let x = three_by_three(); // zp 1 → real ∝ 0..=8
    let mut out = [0u8; 4];
    let avg = |a: Axis, ceil: bool, include: bool| QAvgPool2d {
        geom: pool_geom([3, 3], 1, a, ceil),
        count_include_pad: include,
        zero_point: 1,
        range: QRange::U8,
    };
    // k2 s2 p1, count_include_pad: windows (centred) {0}/4 = 0 → 1; {1,2}/4 = 0.75 → 1 → 2;
    // {3,6}/4 = 2.25 → 2 → 3; {4,5,7,8}/4 = 6 → 7.
    qavgpool2d(&avg(Axis::new(2, 2, 1, 1), false, true), &x, &mut out).unwrap();
    assert_eq!(out, [1, 2, 3, 7]);
    // Same without counting padding: 0/1 → 1; 3/2 = 1.5 → 2 (even) → 3; 9/2 = 4.5 → 4 (even) → 5; 6 → 7.
    qavgpool2d(&avg(Axis::new(2, 2, 1, 1), false, false), &x, &mut out).unwrap();
    assert_eq!(out, [1, 3, 5, 7]);
    // ceil_mode k2 s2 p0: the overhang beyond the input never counts, even with
    // count_include_pad: {0,1,3,4}/4 = 2 → 3; {2,5}/2 = 3.5 → 4 → 5; {6,7}/2 = 6.5 → 6 → 7; {8}/1 → 9.
    qavgpool2d(&avg(Axis::new(2, 2, 0, 1), true, true), &x, &mut out).unwrap();
    assert_eq!(out, [3, 5, 7, 9]);
    // Dilation is refused.
    assert!(qavgpool2d(&avg(Axis::new(2, 1, 0, 2), false, true), &x, &mut [0u8; 1]).is_err());
    // 1-D, NLC [1, 4, 1] codes [10, 11, 13, 20] with zp 10 (centred 0, 1, 3, 10); k3 s1 p1,
    // padding counted: {pad, 0, 1}/3 = 0.33 → 0 → 10; {0, 1, 3}/3 = 1.33 → 1 → 11;
    // {1, 3, 10}/3 = 4.67 → 5 → 15; {3, 10, pad}/3 = 4.33 → 4 → 14.
    let p = QAvgPool2d {
        geom: Pool2dGeom::pool1d(1, 4, 1, Axis::new(3, 1, 1, 1), false),
        count_include_pad: true,
        zero_point: 10,
        range: QRange::U8,
    };
    qavgpool1d(&p, &[10, 11, 13, 20], &mut out).unwrap();
    assert_eq!(out, [10, 11, 15, 14]);
}

#[test]
fn qglobal_avgpool_by_hand() {
    // NHWC [1, 2, 2, 2]: channel 0 codes [1, 2, 3, 5], channel 1 [0, 0, 0, 255]; zp 1:
    // c0: (0+1+2+4)/4 = 1.75 → 2 → 3; c1: (-1-1-1+254)/4 = 62.75 → 63 → 64.
    let p = QGlobalAvgPool {
        batch: 1,
        spatial: 4,
        channels: 2,
        zero_point: 1,
        range: QRange::U8,
    };
    let mut out = [0u8; 2];
    qglobal_avgpool(&p, &[1, 0, 2, 0, 3, 0, 5, 255], &mut out).unwrap();
    assert_eq!(out, [3, 64]);
    // A tie: (0 + 1)/2 = 0.5 → 0 (even) → zp.
    let p = QGlobalAvgPool {
        spatial: 2,
        channels: 1,
        ..p
    };
    let mut one = [0u8; 1];
    qglobal_avgpool(&p, &[1, 2], &mut one).unwrap();
    assert_eq!(one, [1]);
    let p0 = QGlobalAvgPool { spatial: 0, ..p };
    assert!(qglobal_avgpool(&p0, &[], &mut one).is_err());
}

#[test]
fn qconcat_by_hand() {
    // a: s 0.5, zp 0, codes [2, 4] (1.0, 2.0); b: s 1, zp 10, code 11 (1.0); out: s 0.25, zp 1:
    // a → 4 + 1 = 5, 8 + 1 = 9; b → 4 + 1 = 5. Two pixels.
    let (a, b, o) = (qp(0.5, 0), qp(1.0, 10), qp(0.25, 1));
    let p = QConcat {
        outer: 2,
        parts: vec![ConcatPart::new(2, &a, &o).unwrap(), ConcatPart::new(1, &b, &o).unwrap()],
    };
    let mut out = [0u8; 6];
    qconcat_channels(&p, &[&[2, 4, 0, 255], &[11, 0]], &mut out).unwrap();
    // Second pixel: a 0 → 1, 255 → 127.5/0.25 = 510 → 255; b 0 → -10/0.25 = -40 → 0.
    assert_eq!(out, [5, 9, 5, 1, 255, 0]);
    // Ties round half-up: a code 1 (0.5) into s 1, zp 7 → 0.5 → 1 → 8; code 3 (1.5) → 2 → 9.
    let p = QConcat {
        outer: 1,
        parts: vec![ConcatPart::new(2, &a, &qp(1.0, 7)).unwrap()],
    };
    let mut two = [0u8; 2];
    qconcat_channels(&p, &[&[1, 3]], &mut two).unwrap();
    assert_eq!(two, [8, 9]);
    assert!(qconcat_channels(&p, &[&[1, 3], &[1]], &mut two).is_err());
}

#[test]
fn flatten_by_hand() {
    // NHWC [1, 1, 2, 3]: pixels (a0 b0 c0) (a1 b1 c1) = [0, 1, 2, 10, 11, 12].
    // PyTorch flattens NCHW: a0 a1 b0 b1 c0 c1 = [0, 10, 1, 11, 2, 12].
    let x = [0u8, 1, 2, 10, 11, 12];
    let mut out = [0u8; 6];
    flatten_nhwc_to_torch_order(&x, [1, 1, 2, 3], &mut out).unwrap();
    assert_eq!(out, [0, 10, 1, 11, 2, 12]);
    // Weight columns in PyTorch's (c, w) order [c0w0 c0w1 c1w0 c1w1 c2w0 c2w1] go to (w, c).
    let w = [1i8, 2, 3, 4, 5, 6];
    let mut w2 = [0i8; 6];
    linear_weight_torch_to_nhwc_flatten(&w, 1, [3, 1, 2], &mut w2).unwrap();
    assert_eq!(w2, [1, 3, 5, 2, 4, 6]);
}

#[test]
fn flatten_then_linear_matches_pytorch_order_both_ways() {
    let mut rng = SplitMix64::new(11);
    let ([n, h, w, c], m) = ([2, 3, 2, 4], 5);
    let k = h * w * c;
    let x = data_u8(&mut rng, n * k, 37);
    let wt = data_i8(&mut rng, m * k); // PyTorch order (c, h, w) per row
    let p = linear_params(n, k, 37, vec![rq(1.0 / 512.0, 128); m]);
    // Reference: data into PyTorch's order, PyTorch's weights.
    let mut flat = vec![0u8; x.len()];
    flatten_nhwc_to_torch_order(&x, [n, h, w, c], &mut flat).unwrap();
    let mut a = vec![0u8; n * m];
    qlinear(&p, &flat, &wt, None, &mut a).unwrap();
    // Permuted weights on the NHWC data as is.
    let mut w2 = vec![0i8; wt.len()];
    linear_weight_torch_to_nhwc_flatten(&wt, m, [c, h, w], &mut w2).unwrap();
    let mut b = vec![0u8; n * m];
    qlinear(&p, &x, &w2, None, &mut b).unwrap();
    assert_eq!(a, b);
    // And a plain reshape with PyTorch's weights is (in general) wrong.
    let mut wrong = vec![0u8; n * m];
    qlinear(&p, &x, &wt, None, &mut wrong).unwrap();
    assert_ne!(a, wrong);
}

#[test]
fn saturation_extremes() {
    // 3×3 conv over 8 channels, every code at an extreme: acc = ±72·255·128 saturates both ways.
    let a = Axis::new(3, 1, 0, 1);
    let geom = conv_geom([3, 3], [8, 2], a, a, 1);
    let p = QConv2d {
        geom,
        input_zero_point: 0,
        requant: vec![rq(1e-3, 128); 2],
    };
    let x = vec![255u8; 72];
    let mut w = vec![127i8; 72];
    w.extend(vec![-128i8; 72]);
    let mut out = [0u8; 2];
    qconv2d(&p, &x, &w, None, &mut out).unwrap();
    assert_eq!(out, [255, 0]);
    // Zero point 255 and codes 0: (0 - 255)·(-128) positive.
    let p = QConv2d {
        input_zero_point: 255,
        ..p
    };
    qconv2d(&p, &[0u8; 72], &w, None, &mut out).unwrap();
    assert_eq!(out, [0, 255]);
}

#[test]
fn accumulator_at_quant_bound_is_exact() {
    // K = 65793 is the largest K with accumulator_fits for u8 × i8 and zero bias: the worst
    // case |x - zp|·|w| = 255·128 gives 65793 · 32640 = 2147483520 <= 2^31 - 1.
    let k = 65793usize;
    assert!(accumulator_fits(k as u64, QRange::U8, 255, QRange::I8, 0));
    assert!(!accumulator_fits(k as u64 + 1, QRange::U8, 255, QRange::I8, 0));
    let m = 2f64.powi(-24);
    let x0 = vec![0u8; k];
    let x255 = vec![255u8; k];
    let w = vec![-128i8; k];
    let mut out = [0u8; 1];
    // zp 255, codes 0: acc = +2147483520 → ·2^-24 = 127.99999 → 128.
    let p = linear_params(1, k, 255, vec![rq(m, 0)]);
    qlinear(&p, &x0, &w, None, &mut out).unwrap();
    assert_eq!(out[0] as i32, rq(m, 0).apply(2_147_483_520));
    assert_eq!(out, [128]);
    // zp 0, codes 255: acc = -2147483520 → -128, out zp 255 → 127.
    let p = linear_params(1, k, 0, vec![rq(m, 255)]);
    qlinear(&p, &x255, &w, None, &mut out).unwrap();
    assert_eq!(out, [127]);
    // The bias may use up the last 127; one more is refused, as is K + 1.
    let p = linear_params(1, k, 255, vec![rq(m, 0)]);
    qlinear(&p, &x0, &w, Some(&[127]), &mut out).unwrap();
    assert_eq!(out[0] as i32, rq(m, 0).apply(i32::MAX));
    assert!(matches!(
        qlinear(&p, &x0, &w, Some(&[128]), &mut out),
        Err(KernelError::AccumulatorMayOverflow { .. })
    ));
    let p1 = linear_params(1, k + 1, 255, vec![rq(m, 0)]);
    assert!(matches!(
        qlinear(&p1, &[0u8; 65794], &[-128i8; 65794], None, &mut out),
        Err(KernelError::AccumulatorMayOverflow { .. })
    ));
    // A conv reducing over 3·3·7310 = 65790 terms, worst case everywhere: exact too.
    let a = Axis::new(3, 1, 0, 1);
    let geom = conv_geom([3, 3], [7310, 1], a, a, 1);
    let p = QConv2d {
        geom,
        input_zero_point: 255,
        requant: vec![rq(m, 0)],
    };
    qconv2d(&p, &vec![0u8; 65790], &vec![-128i8; 65790], None, &mut out).unwrap();
    assert_eq!(out[0] as i32, rq(m, 0).apply(65790 * 32640));
}
