//! Shape rules: each op's output type from its input types, and the size limits.

use super::*;

impl Op {
    /// The output type from the input types; an error sentence when they do not fit.
    pub fn infer(&self, inputs: &[&TensorType]) -> Result<TensorType, String> {
        let x = inputs.first().copied();
        match self {
            Op::Input { .. } => Err("an input's type is declared, not inferred".into()),
            Op::Conv(c) | Op::QConv(c) => {
                let x = x.expect("arity checked");
                expect_rank(x, c.rank + 2, self.name())?;
                let cin = fixed(&x.dims[1], "input channels", self.name())?;
                if cin % c.groups != 0 || c.out_channels % c.groups != 0 {
                    return Err(format!(
                        "groups = {} must divide both the input channels ({cin}) and `out` ({})",
                        c.groups, c.out_channels
                    ));
                }
                let mut dims = vec![x.dims[0].clone(), Dim::Fixed(c.out_channels)];
                for i in 0..c.rank {
                    let n = fixed(&x.dims[2 + i], "spatial size", self.name())?;
                    dims.push(Dim::Fixed(window_out(
                        n,
                        c.kernel[i],
                        c.stride[i],
                        c.pad[i],
                        c.dilation[i],
                        false,
                        self.name(),
                    )?));
                }
                Ok(TensorType::new(x.dtype, dims))
            }
            Op::BatchNorm(_) => {
                let x = x.expect("arity checked");
                if !(2..=4).contains(&x.dims.len()) {
                    return Err(format!(
                        "batch_norm needs a [N, C], [N, C, L] or [N, C, H, W] input, found {x}"
                    ));
                }
                fixed(&x.dims[1], "channels", self.name())?;
                Ok(x.clone())
            }
            Op::Relu
            | Op::Relu6
            | Op::Clamp { .. }
            | Op::Identity
            | Op::Dropout { .. }
            | Op::Observe(_)
            | Op::FakeQuant { .. } => Ok(x.expect("arity checked").clone()),
            Op::Curve(_) | Op::QCurve(_) => Ok(x.expect("arity checked").plain()),
            Op::Mul | Op::QMul => {
                let (a, b) = (inputs[0], inputs[1]);
                if a.dtype != b.dtype {
                    return Err(format!("mul needs inputs of one dtype, found {a} and {b}"));
                }
                let dims = broadcast(&a.dims, &b.dims).ok_or_else(|| {
                    format!(
                        "mul cannot broadcast {a} with {b}: aligned at the right, each pair of dims must be equal or one of them 1"
                    )
                })?;
                Ok(TensorType::new(a.dtype, dims))
            }
            Op::Quantize { dtype } => Ok(TensorType::new(*dtype, x.expect("arity checked").dims.clone())),
            Op::Dequantize => Ok(TensorType::new(DType::F32, x.expect("arity checked").dims.clone())),
            Op::MaxPool(p) | Op::AvgPool(p) => {
                let x = x.expect("arity checked");
                expect_rank(x, p.rank + 2, self.name())?;
                let mut dims = x.dims[..2].to_vec();
                for i in 0..p.rank {
                    let n = fixed(&x.dims[2 + i], "spatial size", self.name())?;
                    dims.push(Dim::Fixed(window_out(
                        n,
                        p.kernel[i],
                        p.stride[i],
                        p.pad[i],
                        p.dilation[i],
                        p.ceil_mode,
                        self.name(),
                    )?));
                }
                Ok(TensorType::new(x.dtype, dims))
            }
            Op::AdaptiveAvgPool { output } => {
                let x = x.expect("arity checked");
                expect_rank(x, output.len() + 2, self.name())?;
                let mut dims = x.dims[..2].to_vec();
                dims.extend(output.iter().map(|&o| Dim::Fixed(o)));
                Ok(TensorType::new(x.dtype, dims))
            }
            Op::GlobalAvgPool => {
                let x = x.expect("arity checked");
                if x.dims.len() < 3 {
                    return Err(format!("global_avg_pool needs spatial dims ([N, C, ...]), found {x}"));
                }
                let mut dims = x.dims[..2].to_vec();
                dims.extend(std::iter::repeat_n(Dim::Fixed(1), x.dims.len() - 2));
                Ok(TensorType::new(x.dtype, dims))
            }
            Op::Flatten { start_dim, end_dim } => {
                let x = x.expect("arity checked");
                let r = x.dims.len() as i64;
                let s = if *start_dim < 0 { start_dim + r } else { *start_dim };
                let e = if *end_dim < 0 { end_dim + r } else { *end_dim };
                if s < 0 || e >= r || s > e {
                    return Err(format!(
                        "flatten(start_dim: {start_dim}, end_dim: {end_dim}) does not fit a rank-{r} input {x}"
                    ));
                }
                let (s, e) = (s as usize, e as usize);
                let mut prod = 1usize;
                for d in &x.dims[s..=e] {
                    prod = prod
                        .checked_mul(fixed(d, "flattened dim", self.name())?)
                        .filter(|n| *n <= MAX_ELEMENTS)
                        .ok_or_else(|| format!("flatten of {x} has more than {MAX_ELEMENTS} elements"))?;
                }
                let mut dims = x.dims[..s].to_vec();
                dims.push(Dim::Fixed(prod));
                dims.extend_from_slice(&x.dims[e + 1..]);
                Ok(TensorType::new(x.dtype, dims))
            }
            Op::Linear(l) | Op::QLinear(l) => {
                let x = x.expect("arity checked");
                if x.dims.len() < 2 {
                    return Err(format!("linear needs at least [N, features], found {x}"));
                }
                fixed(x.dims.last().expect("rank checked"), "input features", self.name())?;
                let mut dims = x.dims.clone();
                *dims.last_mut().expect("rank checked") = Dim::Fixed(l.out_features);
                Ok(TensorType::new(x.dtype, dims))
            }
            Op::Add { .. } | Op::QAdd { .. } => {
                let (a, b) = (inputs[0], inputs[1]);
                if !a.same_shape(b) {
                    return Err(format!("add needs inputs of the same type, found {a} and {b}"));
                }
                Ok(a.plain())
            }
            Op::Concat { dim } | Op::QConcat { dim } => {
                let first = inputs[0];
                let r = first.dims.len() as i64;
                let d = if *dim < 0 { dim + r } else { *dim };
                if d < 0 || d >= r {
                    return Err(format!("concat dim {dim} is out of range for rank {r}"));
                }
                let d = d as usize;
                let mut total = 0;
                for (i, t) in inputs.iter().enumerate() {
                    if t.dims.len() != first.dims.len() || t.dtype != first.dtype {
                        return Err(format!(
                            "concat input {} is {t}, which does not match input 1 ({first})",
                            i + 1
                        ));
                    }
                    for (k, (a, b)) in t.dims.iter().zip(&first.dims).enumerate() {
                        if k != d && a != b {
                            return Err(format!(
                                "concat inputs must agree on every dim but {d}: input {} is {t}, input 1 is {first}",
                                i + 1
                            ));
                        }
                    }
                    total = fixed(&t.dims[d], "concatenated dim", self.name())?
                        .checked_add(total)
                        .filter(|n| *n <= MAX_ELEMENTS)
                        .ok_or_else(|| format!("concat along dim {d} is larger than {MAX_ELEMENTS}"))?;
                }
                let mut dims = first.dims.clone();
                dims[d] = Dim::Fixed(total);
                Ok(TensorType::new(first.dtype, dims))
            }
        }
    }
}

/// PyTorch's broadcast of two shapes: aligned at the right (the shorter one padded with leading
/// 1s), each pair of dims equal (symbols by name) or one of them the number 1.
fn broadcast(a: &[Dim], b: &[Dim]) -> Option<Vec<Dim>> {
    let rank = a.len().max(b.len());
    let one = Dim::Fixed(1);
    let dim = |s: &[Dim], k: usize| {
        if k + s.len() < rank {
            one.clone()
        } else {
            s[k + s.len() - rank].clone()
        }
    };
    (0..rank)
        .map(|k| match (dim(a, k), dim(b, k)) {
            (x, y) if x == y || y == one => Some(x),
            (x, y) if x == one => Some(y),
            _ => None,
        })
        .collect()
}

/// qc refuses tensors of more elements than this (2^34): a typo such as `out: 10000000` should be
/// an error message, not an allocation that takes the machine down.
pub const MAX_ELEMENTS: usize = 1 << 34;

/// Elements of a shape, or `None` when the product passes `MAX_ELEMENTS`.
pub fn elements(shape: &[usize]) -> Option<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d).filter(|n| *n <= MAX_ELEMENTS))
}

fn expect_rank(x: &TensorType, rank: usize, op: &str) -> Result<(), String> {
    if x.dims.len() != rank {
        let want = match rank {
            3 => "[N, C, L]",
            4 => "[N, C, H, W]",
            _ => "a different rank",
        };
        return Err(format!("{op} needs a rank-{rank} input {want}, found {x}"));
    }
    Ok(())
}

fn fixed(d: &Dim, what: &str, op: &str) -> Result<usize, String> {
    match d {
        Dim::Fixed(n) => Ok(*n),
        Dim::Symbol(s) => Err(format!("{op} needs a known {what}, found the symbolic size `{s}`")),
    }
}

/// Output length of a sliding window (PyTorch's formula, `ceil_mode` included), with the error
/// sentence the shape rule reports; the formula is `qc_runtime::program::window_out`.
pub fn window_out(
    n: usize,
    k: usize,
    s: usize,
    p: usize,
    d: usize,
    ceil_mode: bool,
    op: &str,
) -> Result<usize, String> {
    qc_runtime::program::window_out(n, k, s, p, d, ceil_mode).ok_or_else(|| {
        let span = d.saturating_mul(k.saturating_sub(1)).saturating_add(1);
        format!(
            "{op}: the window ({span} wide with dilation {d}) does not fit the input ({n} plus padding {p} on each side); the output would be empty"
        )
    })
}
