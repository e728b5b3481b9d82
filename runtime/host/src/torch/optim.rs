//! PyTorch's SGD and Adam written out on tch tensors, so their state is checkpointed and a resumed run continues exactly.

use super::*;

/// PyTorch's `torch.optim.SGD` / `Adam` (defaults otherwise: no dampening, Adam eps 1e-8, no
/// amsgrad; weight decay added to the gradient), written out so that its state can be saved
/// in a checkpoint and a resumed run continues exactly.
pub(super) struct Optim {
    pub(super) kind: Optimizer,
    pub(super) weight_decay: f64,
    /// The trainable constants.
    pub(super) params: Vec<usize>,
    /// Per trainable constant: SGD `[momentum buffer]`, Adam `[m, v]`.
    pub(super) state: Vec<Vec<tch::Tensor>>,
    /// Steps done (Adam's bias correction).
    pub(super) steps: usize,
    /// Trainable constants that this epoch does not update (frozen ranges): their values and
    /// optimizer state stay as they are.
    pub(super) frozen: Vec<usize>,
}

impl Optim {
    pub(super) fn new(kind: Optimizer, weight_decay: f64, params: Vec<usize>, consts: &[tch::Tensor]) -> Self {
        let per = match kind {
            Optimizer::Sgd { .. } => 1,
            Optimizer::Adam { .. } => 2,
        };
        let state = params
            .iter()
            .map(|&c| (0..per).map(|_| consts[c].zeros_like().detach()).collect())
            .collect();
        Optim {
            kind,
            weight_decay,
            params,
            state,
            steps: 0,
            frozen: vec![],
        }
    }

    pub(super) fn zero_grad(&self, consts: &mut [tch::Tensor]) {
        for &c in &self.params {
            consts[c].zero_grad();
        }
    }

    pub(super) fn step(&mut self, consts: &[tch::Tensor], lr: f64) -> Result<(), TorchError> {
        let _guard = tch::no_grad_guard();
        self.steps += 1;
        for (k, &c) in self.params.iter().enumerate() {
            let mut p = consts[c].shallow_clone();
            let g = p.grad();
            if !g.defined() || self.frozen.contains(&c) {
                continue;
            }
            let d = if self.weight_decay != 0.0 {
                g.f_add(&p.f_mul_scalar(self.weight_decay).map_err(err)?).map_err(err)?
            } else {
                g
            };
            match self.kind {
                Optimizer::Sgd { momentum, nesterov } => {
                    let update = if momentum != 0.0 {
                        let buf = &mut self.state[k][0];
                        // The first step's buffer is the gradient: 0 · momentum + d.
                        let _ = buf.f_mul_scalar_(momentum).and_then(|_| buf.f_add_(&d)).map_err(err)?;
                        if nesterov {
                            d.f_add(&buf.f_mul_scalar(momentum).map_err(err)?).map_err(err)?
                        } else {
                            buf.shallow_clone()
                        }
                    } else {
                        d
                    };
                    let _ = p.f_sub_(&update.f_mul_scalar(lr).map_err(err)?).map_err(err)?;
                }
                Optimizer::Adam { beta1, beta2 } => {
                    let t = self.steps as i32;
                    let (m, v) = {
                        let s = &mut self.state[k];
                        let (a, b) = s.split_at_mut(1);
                        (&mut a[0], &mut b[0])
                    };
                    let _ = m.f_lerp_(&d, 1.0 - beta1).map_err(err)?;
                    let _ = v
                        .f_mul_scalar_(beta2)
                        .and_then(|_| v.f_addcmul_(&d, &d.f_mul_scalar(1.0 - beta2)?))
                        .map_err(err)?;
                    let bc1 = 1.0 - beta1.powi(t);
                    let bc2 = 1.0 - beta2.powi(t);
                    let denom = v
                        .f_sqrt()
                        .and_then(|s| s.f_div_scalar(bc2.sqrt()))
                        .and_then(|s| s.f_add_scalar(1e-8))
                        .map_err(err)?;
                    let update = m.f_div(&denom).and_then(|u| u.f_mul_scalar(lr / bc1)).map_err(err)?;
                    let _ = p.f_sub_(&update).map_err(err)?;
                }
            }
        }
        Ok(())
    }

    pub(super) fn state(&self) -> Result<Vec<Tensor>, TorchError> {
        self.state.iter().flatten().map(from_tch).collect()
    }

    pub(super) fn restore(&mut self, saved: &[Tensor], steps: usize, device: tch::Device) -> Result<(), TorchError> {
        let n: usize = self.state.iter().map(Vec::len).sum();
        if saved.len() != n {
            return Err(TorchError::Train(format!(
                "the saved optimizer state has {} tensors, this optimizer needs {n}",
                saved.len()
            )));
        }
        for (slot, t) in self.state.iter_mut().flatten().zip(saved) {
            let t = to_tch(t)?.to_device(device);
            if t.size() != slot.size() {
                return Err(TorchError::Train(format!(
                    "a saved optimizer tensor is {:?}, its parameter {:?}",
                    t.size(),
                    slot.size()
                )));
            }
            *slot = t;
        }
        self.steps = steps;
        Ok(())
    }
}
