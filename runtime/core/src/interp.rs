//! The float reference interpreter: evaluates a `Program`'s float steps in plain Rust, PyTorch
//! semantics, NCHW (the executor, `exec.rs`, dispatches to it; int8 steps go to the kernels). It is
//! the oracle the tch backend and every rewrite are checked against, and the home of float
//! fallback ops. Simple loops, f64 accumulation, rayon across batch items for convolutions.

use std::ops::ControlFlow;

use rayon::prelude::*;

use crate::program::{broadcast_shape, window_out, FloatOp, Program, RunError, ValueId, Window};
use crate::tensor::Tensor;

/// Runs a program (float steps here, int8 steps through the kernels: [`crate::exec::run`], the one
/// dispatcher) and returns the outputs in declaration order. A non-finite float value stops the
/// run, naming the step that produced it.
pub fn run(program: &Program, inputs: &[Tensor]) -> Result<Vec<Tensor>, RunError> {
    crate::exec::run(program, inputs)
}

/// [`run`], calling `on_value(value, tensor)` with every step's output as soon as it is computed
/// and before it is checked for non-finite elements, so that a caller (calibration) can see
/// every value, a non-finite one included. `ControlFlow::Break` stops the run with
/// [`RunError::Stopped`]; the caller keeps its own reason.
pub fn run_with(
    program: &Program,
    inputs: &[Tensor],
    on_value: &mut dyn FnMut(ValueId, &Tensor) -> ControlFlow<()>,
) -> Result<Vec<Tensor>, RunError> {
    crate::exec::run_with(program, inputs, on_value)
}

fn data(t: &Tensor) -> &[f32] {
    t.as_f32().expect("validated: float steps carry f32 tensors")
}

/// Evaluates one float op. The executor calls it only on a validated program, after
/// [`crate::validate::infer`] accepted the argument shapes.
pub(crate) fn eval(op: &FloatOp, constants: &[Tensor], args: &[&Tensor]) -> Tensor {
    let c = |id: usize| data(&constants[id]);
    let x = args[0];
    match op {
        FloatOp::Conv {
            window,
            groups,
            weight,
            bias,
        } => conv(x, &constants[*weight], bias.map(c), window, *groups),
        FloatOp::BatchNorm {
            eps,
            weight,
            bias,
            mean,
            var,
        } => {
            let (w, b, m, v) = (c(*weight), c(*bias), c(*mean), c(*var));
            let ch = x.shape[1];
            let inner: usize = x.shape[2..].iter().product();
            let out = data(x)
                .iter()
                .enumerate()
                .map(|(i, &xv)| {
                    let k = (i / inner) % ch;
                    let inv = 1.0 / (v[k] as f64 + *eps as f64).sqrt();
                    ((xv as f64 - m[k] as f64) * inv * w[k] as f64 + b[k] as f64) as f32
                })
                .collect();
            Tensor::f32(x.shape.clone(), out)
        }
        FloatOp::Relu => map(x, |v| v.max(0.0)),
        FloatOp::Clamp { min, max } => map(x, |v| v.max(*min).min(*max)),
        FloatOp::Identity => x.clone(),
        FloatOp::MaxPool { window } => pool(x, window, |vals, _| {
            vals.iter().copied().fold(f64::NEG_INFINITY, f64::max)
        }),
        FloatOp::AvgPool {
            window,
            count_include_pad,
        } => {
            let cip = *count_include_pad;
            pool(x, window, move |vals, counts| {
                vals.iter().sum::<f64>() / if cip { counts.0 } else { counts.1 } as f64
            })
        }
        FloatOp::AdaptiveAvgPool { output } => adaptive_avg(x, output),
        FloatOp::Flatten { start_dim, end_dim } => {
            let mut shape = x.shape[..*start_dim].to_vec();
            shape.push(x.shape[*start_dim..=*end_dim].iter().product());
            shape.extend_from_slice(&x.shape[end_dim + 1..]);
            Tensor::f32(shape, data(x).to_vec())
        }
        FloatOp::Linear { weight, bias } => {
            let w = &constants[*weight];
            let (out_f, in_f) = (w.shape[0], w.shape[1]);
            let wd = data(w);
            let b = bias.map(c);
            let rows = x.len() / in_f;
            let xd = data(x);
            let mut out = vec![0f32; rows * out_f];
            out.par_chunks_mut(out_f).enumerate().for_each(|(r, row)| {
                let xr = &xd[r * in_f..(r + 1) * in_f];
                for (o, y) in row.iter_mut().enumerate() {
                    let wr = &wd[o * in_f..(o + 1) * in_f];
                    let acc: f64 = xr.iter().zip(wr).map(|(a, b)| *a as f64 * *b as f64).sum();
                    *y = (acc + b.map_or(0.0, |b| b[o] as f64)) as f32;
                }
            });
            let mut shape = x.shape.clone();
            *shape.last_mut().expect("rank >= 2") = out_f;
            Tensor::f32(shape, out)
        }
        FloatOp::Add => {
            let y = data(args[1]);
            Tensor::f32(x.shape.clone(), data(x).iter().zip(y).map(|(a, b)| a + b).collect())
        }
        FloatOp::Curve(curve) => map(x, |v| curve.eval(v)),
        FloatOp::Mul => mul(x, args[1]),
        FloatOp::Concat { dim } => {
            let outer: usize = x.shape[..*dim].iter().product();
            let inners: Vec<usize> = args.iter().map(|t| t.shape[*dim..].iter().product()).collect();
            let mut out = Vec::with_capacity(args.iter().map(|t| t.len()).sum());
            for o in 0..outer {
                for (t, inner) in args.iter().zip(&inners) {
                    out.extend_from_slice(&data(t)[o * inner..(o + 1) * inner]);
                }
            }
            let mut shape = x.shape.clone();
            shape[*dim] = args.iter().map(|t| t.shape[*dim]).sum();
            Tensor::f32(shape, out)
        }
    }
}

fn map(x: &Tensor, f: impl Fn(f32) -> f32) -> Tensor {
    Tensor::f32(x.shape.clone(), data(x).iter().map(|&v| f(v)).collect())
}

/// `a * b` in f32 with PyTorch's broadcasting ([`broadcast_shape`]; checked by `validate::infer`).
fn mul(a: &Tensor, b: &Tensor) -> Tensor {
    let shape = broadcast_shape(&a.shape, &b.shape).expect("validated: the shapes broadcast");
    let rank = shape.len();
    // Each input's stride per output dim (0 where it repeats), its shape padded with leading 1s.
    let strides = |s: &[usize]| {
        let mut st = vec![0usize; rank];
        let mut step = 1;
        for k in (0..s.len()).rev() {
            let o = k + rank - s.len();
            st[o] = if s[k] == 1 { 0 } else { step };
            step *= s[k];
        }
        st
    };
    let (sa, sb) = (strides(&a.shape), strides(&b.shape));
    let (ad, bd) = (data(a), data(b));
    let n: usize = shape.iter().product();
    let mut out = Vec::with_capacity(n);
    let mut idx = vec![0usize; rank];
    let (mut ia, mut ib) = (0usize, 0usize);
    for _ in 0..n {
        out.push(ad[ia] * bd[ib]);
        for k in (0..rank).rev() {
            idx[k] += 1;
            ia += sa[k];
            ib += sb[k];
            if idx[k] < shape[k] {
                break;
            }
            ia -= sa[k] * shape[k];
            ib -= sb[k] * shape[k];
            idx[k] = 0;
        }
    }
    Tensor::f32(shape, out)
}

/// Sees a 1-D op as 2-D with height 1: shapes `[N, C, L]` become `[N, C, 1, L]`.
fn as_2d(shape: &[usize], w: &Window) -> (Vec<usize>, Window) {
    if shape.len() == 4 {
        return (shape.to_vec(), w.clone());
    }
    let one = |v: &[usize], fill: usize| vec![fill, v[0]];
    (
        vec![shape[0], shape[1], 1, shape[2]],
        Window {
            kernel: one(&w.kernel, 1),
            stride: one(&w.stride, 1),
            pad: one(&w.pad, 0),
            dilation: one(&w.dilation, 1),
            ceil_mode: w.ceil_mode,
        },
    )
}

fn out_dims(h: usize, wd: usize, win: &Window) -> (usize, usize) {
    let f = |n, i: usize| {
        window_out(
            n,
            win.kernel[i],
            win.stride[i],
            win.pad[i],
            win.dilation[i],
            win.ceil_mode,
        )
        .expect("shapes were inferred")
    };
    (f(h, 0), f(wd, 1))
}

fn restore_rank(rank: usize, n: usize, c: usize, oh: usize, ow: usize) -> Vec<usize> {
    if rank == 3 {
        vec![n, c, ow]
    } else {
        vec![n, c, oh, ow]
    }
}

fn conv(x: &Tensor, weight: &Tensor, bias: Option<&[f32]>, window: &Window, groups: usize) -> Tensor {
    let (shape, win) = as_2d(&x.shape, window);
    let (n, cin, h, wd) = (shape[0], shape[1], shape[2], shape[3]);
    let cout = weight.shape[0];
    let (kh, kw) = (win.kernel[0], win.kernel[1]);
    let (oh, ow) = out_dims(h, wd, &win);
    let cin_g = cin / groups;
    let cout_g = cout / groups;
    let (xd, wdat) = (data(x), data(weight));
    let mut out = vec![0f32; n * cout * oh * ow];
    // One task per output plane (batch item, output channel): the same arithmetic as a loop over
    // planes, spread over every core even for a batch of one.
    out.par_chunks_mut(oh * ow).enumerate().for_each(|(plane, ob)| {
        let (b, co) = (plane / cout, plane % cout);
        {
            let g = co / cout_g;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = bias.map_or(0.0, |b| b[co] as f64);
                    for ci in 0..cin_g {
                        let cix = g * cin_g + ci;
                        for ky in 0..kh {
                            let iy = (oy * win.stride[0] + ky * win.dilation[0]) as isize - win.pad[0] as isize;
                            if iy < 0 || iy >= h as isize {
                                continue;
                            }
                            for kx in 0..kw {
                                let ix = (ox * win.stride[1] + kx * win.dilation[1]) as isize - win.pad[1] as isize;
                                if ix < 0 || ix >= wd as isize {
                                    continue;
                                }
                                let xv = xd[((b * cin + cix) * h + iy as usize) * wd + ix as usize];
                                let wv = wdat[((co * cin_g + ci) * kh + ky) * kw + kx];
                                acc += xv as f64 * wv as f64;
                            }
                        }
                    }
                    ob[oy * ow + ox] = acc as f32;
                }
            }
        }
    });
    Tensor::f32(restore_rank(x.shape.len(), n, cout, oh, ow), out)
}

/// Pooling: `reduce(values in the window, (count with padding, count without))`. Follows
/// PyTorch: a window is clipped to the padded input for the padded count, then to the input.
fn pool(x: &Tensor, window: &Window, reduce: impl Fn(&[f64], (usize, usize)) -> f64) -> Tensor {
    let (shape, win) = as_2d(&x.shape, window);
    let (n, c, h, wd) = (shape[0], shape[1], shape[2], shape[3]);
    let (oh, ow) = out_dims(h, wd, &win);
    let xd = data(x);
    let mut out = Vec::with_capacity(n * c * oh * ow);
    let mut vals = Vec::new();
    for plane in 0..n * c {
        for oy in 0..oh {
            for ox in 0..ow {
                let y0 = (oy * win.stride[0]) as isize - win.pad[0] as isize;
                let x0 = (ox * win.stride[1]) as isize - win.pad[1] as isize;
                let y_end = (y0 + ((win.kernel[0] - 1) * win.dilation[0] + 1) as isize).min((h + win.pad[0]) as isize);
                let x_end = (x0 + ((win.kernel[1] - 1) * win.dilation[1] + 1) as isize).min((wd + win.pad[1]) as isize);
                let padded_count = ((y_end - y0) * (x_end - x0)) as usize;
                vals.clear();
                for ky in 0..win.kernel[0] {
                    let iy = y0 + (ky * win.dilation[0]) as isize;
                    if iy < 0 || iy >= h as isize {
                        continue;
                    }
                    for kx in 0..win.kernel[1] {
                        let ix = x0 + (kx * win.dilation[1]) as isize;
                        if ix < 0 || ix >= wd as isize {
                            continue;
                        }
                        vals.push(xd[(plane * h + iy as usize) * wd + ix as usize] as f64);
                    }
                }
                out.push(reduce(&vals, (padded_count, vals.len())) as f32);
            }
        }
    }
    Tensor::f32(restore_rank(x.shape.len(), n, c, oh, ow), out)
}

fn adaptive_avg(x: &Tensor, output: &[usize]) -> Tensor {
    let rank = x.shape.len();
    let (n, c) = (x.shape[0], x.shape[1]);
    let (h, wd, oh, ow) = if rank == 3 {
        (1, x.shape[2], 1, output[0])
    } else {
        (x.shape[2], x.shape[3], output[0], output[1])
    };
    let xd = data(x);
    let mut out = Vec::with_capacity(n * c * oh * ow);
    for plane in 0..n * c {
        for oy in 0..oh {
            let (ys, ye) = (oy * h / oh, ((oy + 1) * h).div_ceil(oh));
            for ox in 0..ow {
                let (xs, xe) = (ox * wd / ow, ((ox + 1) * wd).div_ceil(ow));
                let mut acc = 0f64;
                for iy in ys..ye {
                    for ix in xs..xe {
                        acc += xd[(plane * h + iy) * wd + ix] as f64;
                    }
                }
                out.push((acc / ((ye - ys) * (xe - xs)) as f64) as f32);
            }
        }
    }
    Tensor::f32(restore_rank(rank, n, c, oh, ow), out)
}
