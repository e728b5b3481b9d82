//! Training through libtorch: float training and QAT (`train`), epochs, evaluation, the data as tensors, non-finite losses named by epoch, step and value.

use super::*;

/// The inputs of `data` (first `n` samples) as one f32 tensor (`u8` images scaled to [0, 1]),
/// normalized as the input declares.
pub(super) fn data_tensor(
    data: &LabeledData,
    n: usize,
    normalize: Option<&qc_runtime::normalize::Normalize>,
) -> Result<tch::Tensor, TorchError> {
    let mut t = data.inputs.batch_f32(0, n);
    if let Some(norm) = normalize {
        norm.apply(&mut t)
            .map_err(|e| TorchError::Train(format!("the data cannot be normalized: {e}")))?;
    }
    to_tch(&t)
}

/// Checks data against the program's single input and output; returns the sample count.
pub(super) fn check_data(
    program: &Program,
    data: &LabeledData,
    classes: usize,
    what: &str,
) -> Result<usize, TorchError> {
    let want: Vec<Option<usize>> = program.values[program.inputs[0]].shape[1..].to_vec();
    let got = data.inputs.sample_shape();
    let fits = got.len() == want.len() && got.iter().zip(&want).all(|(g, w)| w.is_none_or(|w| w == *g));
    if !fits {
        return Err(TorchError::Train(format!(
            "the {what} samples have shape {got:?}, but input `{}` takes {}",
            program.values[program.inputs[0]].name,
            program.values[program.inputs[0]].shape_string()
        )));
    }
    let n = data.inputs.samples();
    if data.labels.len() != n {
        return Err(TorchError::Train(format!(
            "the {what} data has {n} samples but {} labels",
            data.labels.len()
        )));
    }
    if let Some((i, l)) = data
        .labels
        .iter()
        .enumerate()
        .find(|(_, &l)| l < 0 || l as usize >= classes)
    {
        return Err(TorchError::Train(format!(
            "{what} label {i} is {l}, but the model has {classes} classes (0..{classes})"
        )));
    }
    Ok(n)
}

/// Top-1 accuracy of the program (inference mode; with `qat`, fake-quantized with the
/// observers still) on `x`/`y`, in batches.
pub(super) fn evaluate(
    program: &Program,
    consts: &[tch::Tensor],
    x: &tch::Tensor,
    y: &tch::Tensor,
    qat: Option<&QatPass>,
    dev: tch::Device,
) -> Result<f64, TorchError> {
    let _guard = tch::no_grad_guard();
    let n = x.size()[0];
    let mut correct = 0i64;
    let mut start = 0;
    while start < n {
        let len = EVAL_BATCH.min(n - start);
        let xb = x.f_narrow(0, start, len).map_err(err)?.to_device(dev);
        let yb = y.f_narrow(0, start, len).map_err(err)?.to_device(dev);
        let out = forward(program, consts, vec![xb], false, qat, Check::Nothing, None)?;
        correct += correct_count(&out[0], &yb)?;
        start += len;
    }
    Ok(correct as f64 / n.max(1) as f64)
}

pub(super) const EVAL_BATCH: i64 = 500;

pub(super) fn correct_count(logits: &tch::Tensor, y: &tch::Tensor) -> Result<i64, TorchError> {
    let hits = logits
        .f_argmax(-1, false)
        .and_then(|a| a.f_eq_tensor(y))
        .and_then(|e| e.f_sum(tch::Kind::Int64))
        .map_err(err)?;
    i64::try_from(&hits).map_err(err)
}

/// Trains the program's `trainable` constants (one flag per constant; each must be `f32`)
/// with cross-entropy on its single output (logits `[N, classes]`) against the labels; with
/// `qat`, through the plan's fake quantizations (quantization-aware training). See
/// `docs/design-later-stages.md` (7, 7.1). `resume`: the state an earlier run reported after an
/// epoch; training goes on from the next epoch. `hooks.on_epoch` sees each epoch's statistics
/// and state as it ends. A non-finite loss stops training with [`TorchError::NonFinite`],
/// naming the first value that went non-finite.
#[allow(clippy::too_many_arguments)]
pub fn train(
    program: &Program,
    trainable: &[bool],
    qat: Option<&QatTraining>,
    config: &TrainConfig,
    train: LabeledData,
    test: Option<LabeledData>,
    resume: Option<&TrainState>,
    hooks: TrainHooks,
) -> Result<TrainResult, TorchError> {
    let classes = check_program(program, trainable)?;
    if config.batch_size == 0 {
        return Err(TorchError::Train("the batch size must be at least 1".into()));
    }
    let dev = tch_device(config.device)?;
    let available = check_data(program, &train, classes, "training")?;
    let n = config.max_samples.map_or(available, |m| m.min(available));
    if n == 0 {
        return Err(TorchError::Train("there are no training samples".into()));
    }
    if let Some(t) = config.threads {
        tch::set_num_threads(t.max(1) as i32);
    }
    tch::manual_seed(config.seed as i64);
    let x = data_tensor(&train, n, config.normalize.as_ref())?;
    let y = tch::Tensor::from_slice(&train.labels[..n]);
    let test_xy = match &test {
        Some(t) => {
            let m = check_data(program, t, classes, "test")?;
            Some((
                data_tensor(t, m, config.normalize.as_ref())?,
                tch::Tensor::from_slice(t.labels),
            ))
        }
        None => None,
    };
    let consts = initial_constants(program, trainable, resume, dev)?;
    let params: Vec<usize> = (0..consts.len()).filter(|&i| trainable[i]).collect();
    let mut opt = Optim::new(config.optimizer, config.weight_decay, params, &consts);
    let first_epoch = match resume {
        Some(r) => {
            opt.restore(&r.optimizer, r.steps, dev)?;
            r.epoch
        }
        None => 0,
    };
    if let Some(q) = qat {
        check_qat_sites(q, consts.len(), trainable)?;
    }
    let total_steps = opt.steps;
    let mut run = Trainer {
        program,
        qat,
        config,
        dev,
        consts,
        opt,
        x,
        y,
        n,
        total_steps,
    };
    let mut epochs = vec![];
    let mut hooks = hooks;
    for epoch in first_epoch..config.epochs {
        let (stats, state) = run.epoch(epoch, test_xy.as_ref(), &mut hooks)?;
        (hooks.on_epoch)(&stats, &state).map_err(TorchError::Train)?;
        epochs.push(stats);
    }
    Ok(TrainResult {
        constants: host_constants(&run.consts)?,
        epochs,
        steps: run.total_steps,
    })
}

/// Checks that `program` is a float model with one input and one output of logits `[N, classes]`
/// and one trainable flag per constant; returns `classes`.
fn check_program(program: &Program, trainable: &[bool]) -> Result<usize, TorchError> {
    float_only(program)?;
    if program.inputs.len() != 1 || program.outputs.len() != 1 {
        return Err(TorchError::Train(format!(
            "training takes a model with one input and one output (logits); this one has {} inputs and {} outputs",
            program.inputs.len(),
            program.outputs.len()
        )));
    }
    if trainable.len() != program.constants.len() {
        return Err(TorchError::Train(format!(
            "{} trainable flags for {} constants",
            trainable.len(),
            program.constants.len()
        )));
    }
    let out_info = &program.values[program.outputs[0]];
    match out_info.shape.as_slice() {
        [_, Some(c)] if *c >= 1 => Ok(*c),
        _ => Err(TorchError::Train(format!(
            "output `{}` is {}, not logits [N, classes]",
            out_info.name,
            out_info.shape_string()
        ))),
    }
}

/// The constants training starts from, on `dev`: the program's, or those of the state `resume`
/// names (checked against the program's shapes and dtypes); the trainable ones (`f32` only)
/// require gradients.
fn initial_constants(
    program: &Program,
    trainable: &[bool],
    resume: Option<&TrainState>,
    dev: tch::Device,
) -> Result<Vec<tch::Tensor>, TorchError> {
    let initial = match resume {
        Some(r) => {
            if r.constants.len() != program.constants.len() {
                return Err(TorchError::Train(format!(
                    "the saved state has {} constants, the program {}",
                    r.constants.len(),
                    program.constants.len()
                )));
            }
            &r.constants
        }
        None => &program.constants,
    };
    let mut consts = Vec::with_capacity(program.constants.len());
    for (i, ((c, start), &train_it)) in program.constants.iter().zip(initial).zip(trainable).enumerate() {
        if start.shape != c.shape || start.dtype() != c.dtype() {
            return Err(TorchError::Train(format!(
                "saved constant {i} is {} {:?}, the program's {} {:?}",
                start.dtype(),
                start.shape,
                c.dtype(),
                c.shape
            )));
        }
        let t = to_tch(start)?.to_device(dev);
        if train_it {
            if c.dtype() != qc_runtime::DType::F32 {
                return Err(TorchError::Train(format!(
                    "constant {i} is {}, only f32 is trainable",
                    c.dtype()
                )));
            }
            consts.push(t.f_set_requires_grad(true).map_err(err)?);
        } else {
            consts.push(t);
        }
    }
    Ok(consts)
}

/// Every fake quantization of the QAT plan names existing constants, trainable exactly where it
/// is a learnable scale.
fn check_qat_sites(q: &QatTraining, constants: usize, trainable: &[bool]) -> Result<(), TorchError> {
    for site in &q.plan.sites {
        let bad = [
            site.observer_enabled,
            site.fake_quant_enabled,
            site.min_val,
            site.max_val,
            site.scale,
            site.zero_point,
        ]
        .into_iter()
        .find(|&c| c >= constants || (trainable[c] != (site.learnable && c == site.scale)));
        if let Some(c) = bad {
            return Err(TorchError::Train(format!(
                "fake quantization `{}` names constant {c}, which is missing, or trainable where it must not be (only a learnable scale is)",
                site.name
            )));
        }
    }
    Ok(())
}

/// A training run in progress: the program, its constants on the device, the optimizer, the
/// training samples (`n` of them) and the optimizer steps taken.
struct Trainer<'a> {
    program: &'a Program,
    qat: Option<&'a QatTraining>,
    config: &'a TrainConfig,
    dev: tch::Device,
    consts: Vec<tch::Tensor>,
    opt: Optim,
    x: tch::Tensor,
    y: tch::Tensor,
    n: usize,
    total_steps: usize,
}

/// One step's batch: samples `[first, end)` of the epoch's order, on the device.
struct Batch {
    x: tch::Tensor,
    y: tch::Tensor,
    first: usize,
    end: usize,
}

impl Trainer<'_> {
    /// Epoch `epoch` (from 0): every step in the epoch's sample order, then the test accuracy;
    /// returns its statistics and the state to resume from after it.
    fn epoch(
        &mut self,
        epoch: usize,
        test_xy: Option<&(tch::Tensor, tch::Tensor)>,
        hooks: &mut TrainHooks,
    ) -> Result<(EpochStats, TrainState), TorchError> {
        let (config, dev, n) = (self.config, self.dev, self.n);
        let started = std::time::Instant::now();
        let lr = config.schedule.lr(config.lr, epoch, config.epochs);
        let bn_training = self.qat.is_none_or(|q| q.freeze_bn_after.is_none_or(|f| epoch < f));
        let ranges_frozen = self
            .qat
            .is_some_and(|q| q.freeze_ranges_after.is_some_and(|f| epoch >= f));
        if let Some(q) = self.qat {
            if ranges_frozen || q.freeze_observers_after.is_some_and(|f| epoch >= f) {
                for site in &q.plan.sites {
                    let _ = self.consts[site.observer_enabled].f_fill_(0).map_err(err)?;
                }
            }
        }
        self.opt.frozen = match self.qat {
            Some(q) if ranges_frozen => q.plan.sites.iter().filter(|s| s.learnable).map(|s| s.scale).collect(),
            _ => vec![],
        };
        let pass = self.qat.map(|q| QatPass::new(&q.plan, false, dev));
        let order = epoch_order(n, config.seed, epoch);
        let bs = config.batch_size;
        let steps = n.div_ceil(bs);
        let (mut loss_sum, mut correct) = (0.0f64, 0i64);
        for step in 0..steps {
            let (first, end) = (step * bs, ((step + 1) * bs).min(n));
            let idx = tch::Tensor::from_slice(&order[first..end]);
            let batch = Batch {
                x: self.x.f_index_select(0, &idx).map_err(err)?.to_device(dev),
                y: self.y.f_index_select(0, &idx).map_err(err)?.to_device(dev),
                first,
                end,
            };
            let (value, hits) = self
                .step(&batch, bn_training, pass.as_ref(), lr)
                .map_err(|e| e.at(epoch, step, steps))?;
            loss_sum += value * (end - first) as f64;
            correct += hits;
            self.total_steps += 1;
            (hooks.on_step)(&StepProgress {
                epoch: epoch + 1,
                epochs: config.epochs,
                step: step + 1,
                steps,
                loss: loss_sum / end as f64,
                accuracy: correct as f64 / end as f64,
                samples_per_second: end as f64 / started.elapsed().as_secs_f64().max(1e-9),
            });
        }
        let seconds = started.elapsed().as_secs_f64();
        let eval_started = std::time::Instant::now();
        let test_accuracy = match test_xy {
            Some((x, y)) => {
                let quiet = self.qat.map(|q| QatPass::new(&q.plan, true, dev));
                Some(evaluate(self.program, &self.consts, x, y, quiet.as_ref(), dev)?)
            }
            None => None,
        };
        let stats = EpochStats {
            epoch: epoch + 1,
            lr,
            loss: loss_sum / n as f64,
            train_accuracy: correct as f64 / n as f64,
            test_accuracy,
            seconds,
            eval_seconds: eval_started.elapsed().as_secs_f64(),
        };
        let state = TrainState {
            epoch: epoch + 1,
            steps: self.total_steps,
            constants: host_constants(&self.consts)?,
            optimizer: self.opt.state()?,
        };
        Ok((stats, state))
    }

    /// One optimizer step on `batch`: forward, cross-entropy, backward, update. Returns the
    /// batch's mean loss and correct count; a non-finite loss is [`StepFailure::NonFinite`].
    fn step(
        &mut self,
        batch: &Batch,
        bn_training: bool,
        pass: Option<&QatPass>,
        lr: f64,
    ) -> Result<(f64, i64), StepFailure> {
        let out = forward(
            self.program,
            &self.consts,
            vec![batch.x.shallow_clone()],
            bn_training,
            pass,
            Check::Nothing,
            None,
        )?;
        let loss = out[0]
            .f_cross_entropy_loss::<tch::Tensor>(&batch.y, None, tch::Reduction::Mean, -100, 0.0)
            .map_err(err)?;
        let value = f64::try_from(&loss).map_err(err)?;
        if !value.is_finite() {
            return Err(StepFailure::NonFinite {
                loss: value,
                value: self.first_non_finite(batch),
                first: batch.first,
                end: batch.end,
            });
        }
        self.opt.zero_grad(&mut self.consts);
        loss.f_backward().map_err(err)?;
        self.opt.step(&self.consts, lr)?;
        let _guard = tch::no_grad_guard();
        Ok((value, correct_count(&out[0], &batch.y)?))
    }

    /// Runs `batch` again, checked, to name the first value that went non-finite.
    fn first_non_finite(&self, batch: &Batch) -> Option<String> {
        let _guard = tch::no_grad_guard();
        let quiet = self.qat.map(|q| QatPass::new(&q.plan, true, self.dev));
        let x = vec![batch.x.shallow_clone()];
        match forward(self.program, &self.consts, x, false, quiet.as_ref(), Check::All, None) {
            Err(TorchError::NonFiniteValue { value }) => Some(value),
            _ => None,
        }
    }
}

/// How a training step failed: a libtorch error, or a non-finite loss (which [`StepFailure::at`]
/// turns into [`TorchError::NonFinite`] with the epoch and step).
enum StepFailure {
    Torch(TorchError),
    NonFinite {
        loss: f64,
        value: Option<String>,
        first: usize,
        end: usize,
    },
}

impl From<TorchError> for StepFailure {
    fn from(e: TorchError) -> StepFailure {
        StepFailure::Torch(e)
    }
}

impl StepFailure {
    /// The error, for step `step` of `steps` (from 0) in epoch `epoch` (from 0).
    fn at(self, epoch: usize, step: usize, steps: usize) -> TorchError {
        match self {
            StepFailure::Torch(e) => e,
            StepFailure::NonFinite {
                loss,
                value,
                first,
                end,
            } => TorchError::NonFinite {
                epoch: epoch + 1,
                step: step + 1,
                steps,
                first,
                end,
                loss,
                value,
            },
        }
    }
}

pub(super) fn host_constants(consts: &[tch::Tensor]) -> Result<Vec<Tensor>, TorchError> {
    consts.iter().map(|c| from_tch(&c.f_detach().map_err(err)?)).collect()
}

/// [`train`] without fake quantization, resumption or per-step progress.
pub fn train_float(
    program: &Program,
    trainable: &[bool],
    config: &TrainConfig,
    train_data: LabeledData,
    test: Option<LabeledData>,
    on_epoch: &mut dyn FnMut(&EpochStats),
) -> Result<TrainResult, TorchError> {
    train(
        program,
        trainable,
        None,
        config,
        train_data,
        test,
        None,
        TrainHooks {
            on_step: &mut |_| {},
            on_epoch: &mut |s, _| {
                on_epoch(s);
                Ok(())
            },
        },
    )
}
