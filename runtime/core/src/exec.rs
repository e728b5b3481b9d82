//! The executor: the one dispatcher that runs any [`Program`] on the CPU, float steps through the
//! reference interpreter ([`crate::interp`]) and int8 steps through the optimised kernels
//! ([`crate::kernels::fast`]: AVX2 where the CPU has it, else the scalar reference kernels of
//! [`crate::kernels::reference`]; both give the same bits).
//!
//! [`Executor::new`] validates the program once ([`crate::validate`]) and derives what the int8
//! kernels need from it (convolution and linear weights packed once with their per-channel
//! [`Requant`](crate::quant::Requant)s, [`QAdd`]s, concat parts), so that a malformed program is refused with a
//! [`ProgramError`] before anything runs. Each run checks the inputs,
//! runs [`crate::validate::infer`] on the actual shapes before every step (any batch size), and
//! frees every intermediate value after its last use.

use crate::interp;
use crate::kernels::fast::{self, Isa, PackedConv, PackedLinear};
use crate::kernels::reference as k;
use crate::kernels::vnni::AddLanes;
use crate::kernels::{
    requant_with_bias, ConcatPart, Conv2dGeom, KernelError, LayerBias, Pool2dGeom, QAdaptiveAvgPool2d, QAvgPool2d,
    QConcat, QConv2d, QGlobalAvgPool, QLinear,
};
use crate::program::{Layout, Program, ProgramError, QuantOp, RunError, Step, StepOp, Window};
use crate::quant::{dequantize_per_tensor, lut_table, quantize_per_tensor, QAdd, QMul, QParams};
use crate::tensor::{DType, Tensor, TensorData};
use crate::validate::{infer, validate};

/// What an int8 step needs beyond the program, derived once.
#[derive(Clone, Debug)]
enum Prepared {
    /// Float steps and int8 steps that read everything from the program.
    Nothing,
    /// `QConv`: weights packed with one requantization per output channel, the activation fused.
    Conv(Box<PackedConv>),
    /// `QLinear`: likewise.
    Linear(Box<PackedLinear>),
    Add(QAdd, Isa),
    /// `Quantize`, `Dequantize`, `QMaxPool`, `QAvgPool`, `QAdaptiveAvgPool`, `QClamp`: the
    /// kernels to run on.
    Isa(Isa),
    /// One part per input, channel counts filled in at run time; the kernels to run on.
    Concat(Vec<ConcatPart>, Isa),
    /// A `QConv` whose output only a later `QAdd` reads ([`fuse_residual_adds`]): the add runs
    /// in the convolution's epilogue ([`PackedConv::run_add`]) and writes the add's `output`;
    /// `residual` is the add's other input.
    ConvAdd {
        conv: Box<PackedConv>,
        add: Box<AddLanes>,
        residual: usize,
        output: usize,
    },
    /// `QLut`: the curve's table for the step's input and output parameters.
    Lut(Box<[u8; 256]>),
    /// `QMul`: the zero points and the output's requantization.
    Mul(QMul),
    /// A `QAdd` an earlier [`Prepared::ConvAdd`] computed; a traced run (which keeps every
    /// value) runs it as [`Prepared::Add`].
    FusedAway(QAdd, Isa),
}

/// Spare `u8` buffers of finished runs: an int8 step takes its output buffer from here, and a
/// value freed after its last use gives its buffer back, so that after the first run of a given
/// batch size the int8 steps allocate nothing (buffers are planned by reuse, run after run).
#[derive(Debug, Default)]
struct BufferPool {
    spare: Vec<Vec<u8>>,
}

impl BufferPool {
    /// A buffer of `n` bytes, the smallest spare one that holds it or a new one; its contents are
    /// unspecified (zeros or an earlier value's bytes): the step writes every byte.
    fn take(&mut self, n: usize) -> Vec<u8> {
        let best = (0..self.spare.len())
            .filter(|&i| self.spare[i].capacity() >= n)
            .min_by_key(|&i| self.spare[i].capacity());
        let mut v = match best {
            Some(i) => self.spare.swap_remove(i),
            None => Vec::with_capacity(n),
        };
        // Every kernel writes all of its output, so bytes left by an earlier use are not cleared
        // (only a grown part is zeroed).
        if v.len() >= n {
            v.truncate(n);
        } else {
            v.resize(n, 0);
        }
        v
    }

    /// Keeps the storage of a freed value (`u8` ones; others are dropped).
    fn give(&mut self, t: Tensor) {
        if let TensorData::U8(v) = t.data {
            self.spare.push(v);
        }
    }
}

/// A validated program, ready to run any number of times, from any number of threads at once.
#[derive(Clone, Debug)]
pub struct Executor {
    program: Program,
    prepared: Vec<Prepared>,
    /// For each value, the last step reading it (`None`: never read, or a program output).
    last_use: Vec<Option<usize>>,
    /// One pool per concurrent run (a run takes one and puts it back).
    pools: std::sync::Arc<std::sync::Mutex<Vec<BufferPool>>>,
}

impl Executor {
    /// Validates `program` and prepares its int8 steps for the best kernels of this CPU, or for
    /// those `QC_ISA` names ([`fast::selected`]; refused when this CPU lacks them).
    pub fn new(program: Program) -> Result<Executor, ProgramError> {
        Executor::with_isa(program, fast::selected()?)
    }

    /// [`Executor::new`] for the kernels of `isa` (the scalar reference ones if this CPU lacks
    /// it): [`Isa::Scalar`] runs every int8 step on [`crate::kernels::reference`].
    pub fn with_isa(program: Program, isa: Isa) -> Result<Executor, ProgramError> {
        validate(&program)?;
        let mut prepared = prepare(&program, isa, Emulation::None)?;
        fuse_residual_adds(&program, &mut prepared);
        let last_use = program.last_uses();
        Ok(Executor {
            program,
            prepared,
            last_use,
            pools: Default::default(),
        })
    }

    fn take_pool(&self) -> BufferPool {
        self.pools
            .lock()
            .map(|mut p| p.pop())
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    /// Puts a run's pool back with the storage of every value it still holds (not the outputs).
    fn return_pool(&self, mut pool: BufferPool, values: Vec<Option<Tensor>>) {
        for t in values.into_iter().flatten() {
            pool.give(t);
        }
        if let Ok(mut pools) = self.pools.lock() {
            pools.push(pool);
        }
    }

    /// Spare buffers kept for later runs (for tests: after a run there are some).
    pub fn spare_buffers(&self) -> usize {
        self.pools
            .lock()
            .map(|p| p.iter().map(|b| b.spare.len()).sum())
            .unwrap_or(0)
    }

    pub fn program(&self) -> &Program {
        &self.program
    }

    pub fn into_program(self) -> Program {
        self.program
    }

    /// Runs on `inputs` (in `program.inputs` order, any batch size); returns the outputs in
    /// `program.outputs` order.
    pub fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, RunError> {
        self.run_pooled(inputs, &mut |_, _| std::ops::ControlFlow::Continue(()))
    }

    /// [`Executor::with_isa`] with every convolution and linear layer on the VNNI-layout kernels
    /// with emulated lanes (`PackedConv::emulated_vnni`), residual adds fused: the AVX-512 VNNI
    /// path's program-level behaviour, runnable on any x86_64 CPU (for tests).
    #[doc(hidden)]
    #[cfg(target_arch = "x86_64")]
    pub fn with_emulated_vnni(program: Program) -> Result<Executor, ProgramError> {
        Executor::emulated(program, Emulation::Vnni)
    }

    /// [`Executor::with_emulated_vnni`] on the AMX driver with emulated tiles
    /// (`PackedConv::emulated_amx`): the AMX path's program-level behaviour (for tests).
    #[doc(hidden)]
    #[cfg(target_arch = "x86_64")]
    pub fn with_emulated_amx(program: Program) -> Result<Executor, ProgramError> {
        Executor::emulated(program, Emulation::Amx)
    }

    #[cfg(target_arch = "x86_64")]
    fn emulated(program: Program, emulation: Emulation) -> Result<Executor, ProgramError> {
        validate(&program)?;
        let mut prepared = prepare(&program, Isa::Scalar, emulation)?;
        fuse_residual_adds(&program, &mut prepared);
        let last_use = program.last_uses();
        Ok(Executor {
            program,
            prepared,
            last_use,
            pools: Default::default(),
        })
    }

    /// Which kernels each step runs on (indexed like `program.steps`; `None` for float steps):
    /// the instruction set's name, and for AVX2 convolutions the kernel (`qc run --profile`).
    pub fn step_kernels(&self) -> Vec<Option<String>> {
        self.prepared
            .iter()
            .map(|p| match p {
                Prepared::Nothing => None,
                Prepared::Conv(c) => Some(c.kernel()),
                Prepared::Linear(l) => Some(l.kernel()),
                Prepared::Add(_, isa) | Prepared::Isa(isa) | Prepared::Concat(_, isa) => {
                    Some(if isa.has_avx2() { Isa::Avx2 } else { Isa::Scalar }.name().to_string())
                }
                Prepared::ConvAdd { conv, output, .. } => Some(format!(
                    "{}, `{}` added in its epilogue",
                    conv.kernel(),
                    self.program.value_name(*output)
                )),
                Prepared::FusedAway(..) => Some("added by the convolution before".to_string()),
                Prepared::Lut(_) | Prepared::Mul(_) => Some(Isa::Scalar.name().to_string()),
            })
            .collect()
    }

    /// Runs like [`Executor::run`] and also returns how long each step took (indexed like
    /// `program.steps`): `qc run --profile`.
    pub fn run_profiled(&self, inputs: &[Tensor]) -> Result<(Vec<Tensor>, Vec<std::time::Duration>), RunError> {
        let mut times = Vec::with_capacity(self.program.steps.len());
        let mut last = std::time::Instant::now();
        let outputs = self.run_pooled(inputs, &mut |_, _| {
            let now = std::time::Instant::now();
            times.push(now - last);
            last = now;
            std::ops::ControlFlow::Continue(())
        })?;
        Ok((outputs, times))
    }

    /// One run with a buffer pool of its own (returned afterwards), freeing values after their
    /// last use; `on_value` sees every step's output.
    fn run_pooled(&self, inputs: &[Tensor], on_value: OnValue) -> Result<Vec<Tensor>, RunError> {
        let mut pool = self.take_pool();
        let mut values = execute_with(
            &self.program,
            &self.prepared,
            inputs,
            Some(&self.last_use),
            on_value,
            &mut pool,
        )?;
        let outputs = self
            .program
            .outputs
            .iter()
            .map(|&id| values[id].take().unwrap_or_else(|| Tensor::zeros(DType::F32, vec![0])))
            .collect();
        self.return_pool(pool, values);
        Ok(outputs)
    }

    /// Runs and returns every value (indexed like `program.values`; `None` for values no step
    /// computed): for tests and debugging.
    pub fn run_traced(&self, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>, RunError> {
        execute(&self.program, &self.prepared, inputs, None)
    }
}

/// Validates and runs `program` once (see [`Executor`] to run it many times).
pub fn run(program: &Program, inputs: &[Tensor]) -> Result<Vec<Tensor>, RunError> {
    validate(program)?;
    let prepared = prepare(program, fast::selected().map_err(ProgramError::from)?, Emulation::None)?;
    let mut values = execute(program, &prepared, inputs, None)?;
    Ok(program
        .outputs
        .iter()
        .map(|&id| values[id].take().unwrap_or_else(|| Tensor::zeros(DType::F32, vec![0])))
        .collect())
}

fn quant_of(p: &Program, id: usize) -> Option<QParams> {
    p.values.get(id).and_then(|v| v.quant)
}

/// Derives each int8 step's integer parameters and packs its weights (validated program); with
/// an `emulation`, convolutions and linear layers on that emulated driver.
fn prepare(p: &Program, isa: Isa, emulated: Emulation) -> Result<Vec<Prepared>, ProgramError> {
    p.steps
        .iter()
        .enumerate()
        .map(|(index, step)| {
            let fail = |message: String| ProgramError::Step {
                index,
                step: p.value_name(step.output).to_string(),
                op: step.op.name(),
                message,
            };
            let StepOp::Quant(op) = &step.op else {
                return Ok(Prepared::Nothing);
            };
            let params = |id: usize| quant_of(p, id).ok_or_else(|| fail("a quantized value without parameters".into()));
            Ok(match op {
                QuantOp::QConv {
                    weight,
                    weight_scales,
                    bias,
                    act,
                    requantize,
                    ..
                }
                | QuantOp::QLinear {
                    weight,
                    weight_scales,
                    bias,
                    act,
                    requantize,
                } => {
                    let (input, output) = (params(step.inputs[0])?, params(step.output)?);
                    let scales = p.constants[*weight_scales].as_f32().unwrap_or(&[]);
                    let bias = bias
                        .map(|b| {
                            LayerBias::of(&p.constants[b]).ok_or_else(|| fail("the bias is neither i32 nor f32".into()))
                        })
                        .transpose()?;
                    let (requant, bias) = requant_with_bias(&input, scales, &output, *act, *requantize, bias)
                        .map_err(|e| fail(format!("requantization: {e}")))?;
                    let w = &p.constants[*weight];
                    let wd = w.as_i8().ok_or_else(|| fail("weights are not i8".into()))?;
                    let packed = if let QuantOp::QConv { window, groups, .. } = op {
                        // Batch and input size are placeholders: `PackedConv::run` takes the real ones.
                        let (h, w_axis) = axes(window);
                        let in_c = w.shape.last().copied().unwrap_or(0) * groups;
                        let geom = Conv2dGeom {
                            batch: 1,
                            in_h: 1,
                            in_w: 1,
                            in_c,
                            out_c: requant.len(),
                            h,
                            w: w_axis,
                            groups: *groups,
                        };
                        let params = QConv2d {
                            geom,
                            input_zero_point: input.zero_point(),
                            requant,
                        };
                        pack_conv(&params, wd, bias, (isa, input.range()), emulated)
                            .map(|c| Prepared::Conv(Box::new(c)))
                    } else {
                        let params = QLinear {
                            batch: 1,
                            in_features: w.shape[1..].iter().product::<usize>(),
                            out_features: requant.len(),
                            input_zero_point: input.zero_point(),
                            requant,
                        };
                        pack_linear(&params, wd, bias, (isa, input.range()), emulated)
                            .map(|l| Prepared::Linear(Box::new(l)))
                    };
                    packed.map_err(|e| fail(e.to_string()))?
                }
                QuantOp::QAdd { relu } => {
                    let add = QAdd::new(
                        &params(step.inputs[0])?,
                        &params(step.inputs[1])?,
                        &params(step.output)?,
                    )
                    .map_err(|e| fail(e.to_string()))?;
                    Prepared::Add(if *relu { add.with_relu() } else { add }, isa)
                }
                QuantOp::QConcat => {
                    let out = params(step.output)?;
                    let parts = step
                        .inputs
                        .iter()
                        .map(|&i| ConcatPart::new(0, &params(i)?, &out).map_err(|e| fail(e.to_string())))
                        .collect::<Result<_, _>>()?;
                    Prepared::Concat(parts, isa)
                }
                QuantOp::QLut(curve) => Prepared::Lut(Box::new(lut_table(
                    *curve,
                    &params(step.inputs[0])?,
                    &params(step.output)?,
                ))),
                QuantOp::QMul => Prepared::Mul(
                    QMul::new(
                        &params(step.inputs[0])?,
                        &params(step.inputs[1])?,
                        &params(step.output)?,
                    )
                    .map_err(|e| fail(e.to_string()))?,
                ),
                QuantOp::Quantize
                | QuantOp::Dequantize
                | QuantOp::QMaxPool { .. }
                | QuantOp::QAvgPool { .. }
                | QuantOp::QAdaptiveAvgPool { .. }
                | QuantOp::QClamp { .. } => Prepared::Isa(isa),
                _ => Prepared::Nothing,
            })
        })
        .collect()
}

/// Which emulated driver a test executor packs convolutions and linear layers for (`None`: the
/// real kernels of the path).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Emulation {
    None,
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Vnni,
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Amx,
}

/// [`PackedConv::with_input_range`], or (x86_64) an emulated driver's pack.
fn pack_conv(
    p: &QConv2d,
    w: &[i8],
    bias: Option<&[i32]>,
    (isa, range): (Isa, crate::quant::QRange),
    emulation: Emulation,
) -> Result<PackedConv, KernelError> {
    match emulation {
        #[cfg(target_arch = "x86_64")]
        Emulation::Vnni => PackedConv::emulated_vnni(p, w, bias),
        #[cfg(target_arch = "x86_64")]
        Emulation::Amx => PackedConv::emulated_amx(p, w, bias),
        _ => PackedConv::with_input_range(p, w, bias, isa, range),
    }
}

/// [`PackedLinear::with_input_range`], or (x86_64) an emulated driver's pack.
fn pack_linear(
    p: &QLinear,
    w: &[i8],
    bias: Option<&[i32]>,
    (isa, range): (Isa, crate::quant::QRange),
    emulation: Emulation,
) -> Result<PackedLinear, KernelError> {
    match emulation {
        #[cfg(target_arch = "x86_64")]
        Emulation::Vnni => PackedLinear::emulated_vnni(p, w, bias),
        #[cfg(target_arch = "x86_64")]
        Emulation::Amx => PackedLinear::emulated_amx(p, w, bias),
        _ => PackedLinear::with_input_range(p, w, bias, isa, range),
    }
}

/// Fuses each `QAdd` into the `QConv` before it where the convolution's kernels add in their
/// epilogue ([`PackedConv::fuses_add`]): the add reads the convolution's output, which nothing
/// else reads and which is no program output, and its other input (the residual) is a program
/// input or computed before the convolution. ResNet's `conv → add → relu` then writes its output
/// once instead of writing the convolution's and reading it back.
fn fuse_residual_adds(p: &Program, prepared: &mut [Prepared]) {
    let mut readers = vec![0usize; p.values.len()];
    let mut producer = vec![None; p.values.len()];
    for (i, step) in p.steps.iter().enumerate() {
        for &v in &step.inputs {
            readers[v] += 1;
        }
        producer[step.output] = Some(i);
    }
    for (j, step) in p.steps.iter().enumerate() {
        let (StepOp::Quant(QuantOp::QAdd { .. }), [a, b]) = (&step.op, step.inputs.as_slice()) else {
            continue;
        };
        let Prepared::Add(prepared_add, isa) = prepared[j] else {
            continue;
        };
        let add = prepared_add;
        // The convolution's output as the add's first input (addition commutes: swap the sides).
        let candidates = [(*a, *b, add), (*b, *a, swap_sides(&add))];
        for (conv_out, residual, add) in candidates {
            let Some(i) = producer[conv_out] else { continue };
            let Prepared::Conv(conv) = &prepared[i] else { continue };
            let residual_ready = producer[residual].is_none_or(|k| k < i);
            if conv_out == residual
                || readers[conv_out] != 1
                || p.outputs.contains(&conv_out)
                || !residual_ready
                || !conv.fuses_add()
            {
                continue;
            }
            let Prepared::Conv(conv) = std::mem::replace(&mut prepared[i], Prepared::Nothing) else {
                unreachable!("matched above")
            };
            prepared[i] = Prepared::ConvAdd {
                conv,
                add: Box::new(AddLanes::new(&add)),
                residual,
                output: step.output,
            };
            prepared[j] = Prepared::FusedAway(prepared_add, isa);
            break;
        }
    }
}

/// `add` with its inputs swapped: the same sum.
fn swap_sides(add: &QAdd) -> QAdd {
    QAdd {
        a_zero_point: add.b_zero_point,
        a_multiplier: add.b_multiplier,
        a_shift: add.b_shift,
        b_zero_point: add.a_zero_point,
        b_multiplier: add.a_multiplier,
        b_shift: add.a_shift,
        out: add.out,
    }
}

/// Runs the steps; `free` (the last use of each value) drops intermediates as soon as possible.
/// A per-value hook: sees every step's output (before the non-finite check), and may stop the
/// run (`ControlFlow::Break` gives [`RunError::Stopped`]).
pub type OnValue<'a> = &'a mut dyn FnMut(usize, &Tensor) -> std::ops::ControlFlow<()>;

/// Validates and runs `program` once, calling `on_value` with every step's output as soon as it
/// is computed (calibration reads observers this way, non-finite values included).
/// Each value is dropped after its last use, so a run holds only the values still to be read.
pub fn run_with(program: &Program, inputs: &[Tensor], on_value: OnValue) -> Result<Vec<Tensor>, RunError> {
    validate(program)?;
    let prepared = prepare(program, fast::selected().map_err(ProgramError::from)?, Emulation::None)?;
    let last_use = program.last_uses();
    let mut values = execute_with(
        program,
        &prepared,
        inputs,
        Some(&last_use),
        on_value,
        &mut BufferPool::default(),
    )?;
    Ok(program
        .outputs
        .iter()
        .map(|&id| values[id].take().unwrap_or_else(|| Tensor::zeros(DType::F32, vec![0])))
        .collect())
}

fn execute(
    p: &Program,
    prepared: &[Prepared],
    inputs: &[Tensor],
    free: Option<&[Option<usize>]>,
) -> Result<Vec<Option<Tensor>>, RunError> {
    execute_with(
        p,
        prepared,
        inputs,
        free,
        &mut |_, _| std::ops::ControlFlow::Continue(()),
        &mut BufferPool::default(),
    )
}

/// Gives back to `pool` the values whose last use (`free`) is step `index`.
fn free_last_uses(
    step: &Step,
    index: usize,
    free: Option<&[Option<usize>]>,
    values: &mut [Option<Tensor>],
    pool: &mut BufferPool,
) {
    if let Some(last) = free {
        for &i in &step.inputs {
            if last.get(i) == Some(&Some(index)) {
                if let Some(t) = values[i].take() {
                    pool.give(t);
                }
            }
        }
    }
}

fn execute_with(
    p: &Program,
    prepared: &[Prepared],
    inputs: &[Tensor],
    free: Option<&[Option<usize>]>,
    on_value: OnValue,
    pool: &mut BufferPool,
) -> Result<Vec<Option<Tensor>>, RunError> {
    p.check_inputs(inputs)?;
    let mut values: Vec<Option<Tensor>> = vec![None; p.values.len()];
    // The inputs are read in place (not copied in): a run's values hold only what its steps compute,
    // and the inputs are copied into the result at the end where a caller reads them.
    let mut input_at: Vec<Option<&Tensor>> = vec![None; p.values.len()];
    for (t, &id) in inputs.iter().zip(&p.inputs) {
        input_at[id] = Some(t);
    }
    for (index, step) in p.steps.iter().enumerate() {
        let prep = prepared.get(index).unwrap_or(&Prepared::Nothing);
        // A fused step writes the add's output; the add itself only frees its inputs. A traced
        // run (no `free`: every value kept) runs both steps on their own.
        let fused = free.is_some();
        let (output, residual) = match prep {
            Prepared::ConvAdd { residual, output, .. } if fused => (*output, Some(*residual)),
            Prepared::FusedAway(..) if fused => {
                free_last_uses(step, index, free, &mut values, pool);
                continue;
            }
            _ => (step.output, None),
        };
        let name = || p.value_name(output).to_string();
        let args: Vec<&Tensor> = step
            .inputs
            .iter()
            .chain(&residual)
            .map(|&i| {
                values
                    .get(i)
                    .and_then(|v| v.as_ref())
                    .or_else(|| input_at.get(i).copied().flatten())
                    .ok_or_else(|| {
                        RunError::Invalid(ProgramError::NotYetComputed {
                            index,
                            step: name(),
                            value: p.value_name(i).to_string(),
                        })
                    })
            })
            .collect::<Result<_, _>>()?;
        let shapes: Vec<&[usize]> = args[..step.inputs.len()].iter().map(|t| t.shape.as_slice()).collect();
        let out_shape = infer(p, step, &shapes).map_err(|message| RunError::Shape { step: name(), message })?;
        let out = match &step.op {
            StepOp::Float(op) => interp::eval(op, &p.constants, &args),
            StepOp::Quant(op) => eval_quant(p, step, op, prep, &args, out_shape.clone(), pool)
                .map_err(|error| RunError::Kernel { step: name(), error })?,
        };
        if on_value(output, &out).is_break() {
            return Err(RunError::Stopped { node: name() });
        }
        if let Some((i, v)) = out.as_f32().and_then(first_non_finite) {
            return Err(RunError::NonFinite {
                node: name(),
                index: i,
                value: *v,
            });
        }
        if out.shape != out_shape {
            return Err(RunError::Shape {
                step: name(),
                message: format!("produced {:?}, expected {out_shape:?}", out.shape),
            });
        }
        let unused = free.is_some_and(|last| last[output].is_none() && !p.outputs.contains(&output));
        if unused {
            pool.give(out);
        } else {
            values[output] = Some(out);
        }
        free_last_uses(step, index, free, &mut values, pool);
    }
    for (t, &id) in inputs.iter().zip(&p.inputs) {
        if free.is_none() || p.outputs.contains(&id) {
            values[id] = Some(t.clone());
        }
    }
    Ok(values)
}

/// The first non-finite element and its index. Blocks of 64 are tested without branching (the
/// compiler vectorises the test); only a block with a non-finite element is searched.
fn first_non_finite(v: &[f32]) -> Option<(usize, &f32)> {
    let finite = |c: &[f32]| c.iter().fold(true, |a, x| a & x.is_finite());
    let mut base = 0;
    for c in v.chunks(64) {
        if !finite(c) {
            return c
                .iter()
                .enumerate()
                .find(|(_, x)| !x.is_finite())
                .map(|(i, x)| (base + i, x));
        }
        base += c.len();
    }
    None
}

fn bad(what: &str) -> KernelError {
    KernelError::Geometry(format!("{what} (the program was not validated)"))
}

/// `[N, C, H, W]` / `[N, C, L]` dims of a rank-3/4 shape in `layout`, as 4 dims (`H = 1` for 1-D).
fn dims4(shape: &[usize], layout: Layout) -> Result<[usize; 4], KernelError> {
    match (layout, shape) {
        (Layout::Torch, &[n, c, l]) => Ok([n, c, 1, l]),
        (Layout::Torch, &[n, c, h, w]) => Ok([n, c, h, w]),
        (Layout::ChannelsLast, &[n, l, c]) => Ok([n, 1, l, c]),
        (Layout::ChannelsLast, &[n, h, w, c]) => Ok([n, h, w, c]),
        _ => Err(bad("a layout change needs rank 3 or 4")),
    }
}

/// Moves data of physical shape `shape` from layout `from` to layout `to`.
fn relayout<T: Copy + Default + 'static>(
    x: &[T],
    shape: &[usize],
    from: Layout,
    to: Layout,
) -> Result<Vec<T>, KernelError> {
    if from == to {
        return Ok(x.to_vec());
    }
    let mut out = vec![T::default(); x.len()];
    relayout_into(x, shape, from, &mut out)?;
    Ok(out)
}

/// Moves data of physical shape `shape` out of layout `from` into the other layout.
fn relayout_into<T: Copy + 'static>(x: &[T], shape: &[usize], from: Layout, out: &mut [T]) -> Result<(), KernelError> {
    match from {
        Layout::Torch => fast::nchw_to_nhwc(x, dims4(shape, from)?, out),
        Layout::ChannelsLast => fast::nhwc_to_nchw(x, dims4(shape, from)?, out),
    }
}

fn axes(w: &Window) -> (crate::kernels::Axis, crate::kernels::Axis) {
    use crate::kernels::Axis;
    let a = |i: usize| Axis::new(w.kernel[i], w.stride[i], w.pad[i], w.dilation[i]);
    if w.kernel.len() == 1 {
        (Axis::new(1, 1, 0, 1), a(0))
    } else {
        (a(0), a(1))
    }
}

/// Channels-last `[N, (H,) W, C]` as `(n, h, w, c)`.
fn nhwc(x: &[usize]) -> Result<(usize, usize, usize, usize), KernelError> {
    match *x {
        [n, l, c] => Ok((n, 1, l, c)),
        [n, h, w, c] => Ok((n, h, w, c)),
        _ => Err(bad("a channels-last value has rank 3 or 4")),
    }
}

fn u8s(t: &Tensor) -> Result<&[u8], KernelError> {
    t.as_u8().ok_or_else(|| bad("an int8 op reads u8 values"))
}

fn eval_quant(
    p: &Program,
    step: &Step,
    op: &QuantOp,
    prep: &Prepared,
    args: &[&Tensor],
    out_shape: Vec<usize>,
    pool: &mut BufferPool,
) -> Result<Tensor, KernelError> {
    let x = args[0];
    let in_info = &p.values[step.inputs[0]];
    let out_info = &p.values[step.output];
    let in_q = in_info.quant;
    let out_q = out_info.quant;
    let n_out: usize = out_shape.iter().product();
    let mut out = pool.take(n_out);
    let isa = match prep {
        Prepared::Isa(isa) => *isa,
        _ => Isa::Scalar,
    };
    match op {
        QuantOp::Quantize => {
            let q = out_q.ok_or_else(|| bad("quantize needs output parameters"))?;
            let xf = x.as_f32().ok_or_else(|| bad("quantize reads f32"))?;
            // Quantization is elementwise: quantize in the input's layout, then move the bytes
            // (a quarter of the floats' traffic).
            let data = match out_info.dtype {
                DType::I8 => {
                    let mut o = vec![0i8; n_out];
                    quantize_per_tensor(xf, &q, &mut o)?;
                    TensorData::I8(relayout(&o, &x.shape, in_info.layout, out_info.layout)?)
                }
                _ if in_info.layout == out_info.layout => {
                    fast::quantize_u8_with(isa, xf, &q, &mut out)?;
                    TensorData::U8(out)
                }
                _ => {
                    let mut staged = pool.take(n_out);
                    fast::quantize_u8_with(isa, xf, &q, &mut staged)?;
                    relayout_into(&staged, &x.shape, in_info.layout, &mut out)?;
                    pool.spare.push(staged);
                    TensorData::U8(out)
                }
            };
            return Ok(Tensor { shape: out_shape, data });
        }
        QuantOp::Dequantize => {
            let q = in_q.ok_or_else(|| bad("dequantize needs input parameters"))?;
            // Move the bytes first (a quarter of the floats' traffic), then dequantize in place.
            pool.spare.push(out);
            let mut f = vec![0f32; x.len()];
            match &x.data {
                TensorData::U8(v) if in_info.layout == out_info.layout => fast::dequantize_u8_with(isa, v, &q, &mut f)?,
                TensorData::U8(v) => {
                    let mut moved = pool.take(v.len());
                    relayout_into(v, &x.shape, in_info.layout, &mut moved)?;
                    fast::dequantize_u8_with(isa, &moved, &q, &mut f)?;
                    pool.spare.push(moved);
                }
                TensorData::I8(v) => {
                    let moved = relayout(v, &x.shape, in_info.layout, out_info.layout)?;
                    dequantize_per_tensor(&moved, &q, &mut f)?
                }
                _ => return Err(bad("dequantize reads u8 or i8")),
            }
            return Ok(Tensor::f32(out_shape, f));
        }
        QuantOp::QConv { window, groups, .. } => {
            let (Prepared::Conv(packed) | Prepared::ConvAdd { conv: packed, .. }) = prep else {
                return Err(bad("qconv is not prepared"));
            };
            let (n, h, w, c) = nhwc(&x.shape)?;
            let (ah, aw) = axes(window);
            let geom = Conv2dGeom {
                batch: n,
                in_h: h,
                in_w: w,
                in_c: c,
                out_c: packed.params().geom.out_c,
                h: ah,
                w: aw,
                groups: *groups,
            };
            match (prep, args.get(1)) {
                (Prepared::ConvAdd { add, .. }, Some(residual)) => {
                    packed.run_add(&geom, u8s(x)?, add, u8s(residual)?, &mut out)?
                }
                _ => packed.run(&geom, u8s(x)?, &mut out)?,
            }
        }
        QuantOp::QLinear { .. } => {
            let Prepared::Linear(packed) = prep else {
                return Err(bad("qlinear is not prepared"));
            };
            let kf = *x.shape.last().ok_or_else(|| bad("rank 0"))?;
            packed.run(x.len() / kf.max(1), u8s(x)?, &mut out)?;
        }
        QuantOp::QAdd { .. } => {
            let (Prepared::Add(add, isa) | Prepared::FusedAway(add, isa)) = prep else {
                return Err(bad("qadd is not prepared"));
            };
            let b = args.get(1).ok_or_else(|| bad("qadd takes two inputs"))?;
            fast::qadd_with(*isa, add, u8s(x)?, u8s(b)?, &mut out)?;
        }
        QuantOp::QMaxPool { window } | QuantOp::QAvgPool { window, .. } => {
            let (n, h, w, c) = nhwc(&x.shape)?;
            let (ah, aw) = axes(window);
            let geom = Pool2dGeom {
                batch: n,
                in_h: h,
                in_w: w,
                channels: c,
                h: ah,
                w: aw,
                ceil_mode: window.ceil_mode,
            };
            if let QuantOp::QAvgPool { count_include_pad, .. } = op {
                let q = in_q.ok_or_else(|| bad("pooling needs input parameters"))?;
                fast::qavgpool2d_with(isa, &QAvgPool2d::new(geom, *count_include_pad, &q), u8s(x)?, &mut out)?;
            } else {
                fast::qmaxpool2d_with(isa, &geom, u8s(x)?, &mut out)?;
            }
        }
        QuantOp::QAdaptiveAvgPool { output } => {
            let q = in_q.ok_or_else(|| bad("pooling needs input parameters"))?;
            let (n, h, w, c) = nhwc(&x.shape)?;
            if output.iter().all(|&o| o == 1) {
                fast::qglobal_avgpool_with(isa, &QGlobalAvgPool::new(n, h * w, c, &q), u8s(x)?, &mut out)?;
            } else {
                let out_hw = match output[..] {
                    [l] => [1, l],
                    [oh, ow] => [oh, ow],
                    _ => return Err(bad("adaptive pooling over 1 or 2 dims")),
                };
                let p = QAdaptiveAvgPool2d::new(n, [h, w], out_hw, c, &q);
                fast::qadaptive_avgpool2d_with(isa, &p, u8s(x)?, &mut out)?;
            }
        }
        QuantOp::QConcat => {
            let Prepared::Concat(parts, isa) = prep else {
                return Err(bad("qconcat is not prepared"));
            };
            let outer = x.len() / x.shape.last().copied().unwrap_or(1).max(1);
            let parts = parts
                .iter()
                .zip(args)
                .map(|(part, t)| ConcatPart {
                    channels: t.shape.last().copied().unwrap_or(0),
                    ..*part
                })
                .collect();
            let datas: Vec<&[u8]> = args.iter().map(|t| u8s(t)).collect::<Result<_, _>>()?;
            fast::qconcat_channels_with(*isa, &QConcat { outer, parts }, &datas, &mut out)?;
        }
        QuantOp::QFlatten => {
            let xs = u8s(x)?;
            if in_info.layout == Layout::ChannelsLast {
                let (n, h, w, c) = nhwc(&x.shape)?;
                k::flatten_nhwc_to_torch_order(xs, [n, h, w, c], &mut out)?;
            } else {
                out.copy_from_slice(xs);
            }
        }
        QuantOp::QClamp { act } => {
            let q = in_q.ok_or_else(|| bad("clamp needs input parameters"))?;
            fast::qclamp_with(isa, *act, &q, u8s(x)?, &mut out)?;
        }
        QuantOp::QLut(_) => {
            let Prepared::Lut(table) = prep else {
                return Err(bad("qlut is not prepared"));
            };
            k::qlut(table, u8s(x)?, &mut out)?;
        }
        QuantOp::QMul => {
            let Prepared::Mul(mul) = prep else {
                return Err(bad("qmul is not prepared"));
            };
            let b = args.get(1).ok_or_else(|| bad("qmul takes two inputs"))?;
            k::qmul(mul, (u8s(x)?, &x.shape), (u8s(b)?, &b.shape), &mut out, &out_shape)?;
        }
    }
    Ok(Tensor::u8(out_shape, out))
}
