//! Pass `bind-checkpoint`: binds a checkpoint saved at a later stage than `float` (a QAT or
//! converted PyTorch checkpoint, left in `Ctx::pending` by `bind-weights`) once the module
//! reaches the first stage whose keys it fits.

use qc_dsl::Diagnostic;

use crate::ir::Module;
use crate::pass::{Changed, Ctx, Pass, PassError};

/// Runs at the end of every stage (`StageDef::reached`); does nothing when no checkpoint waits or
/// the waiting one does not fit this stage.
pub struct BindCheckpoint;

impl Pass for BindCheckpoint {
    fn name(&self) -> &'static str {
        "bind-checkpoint"
    }

    fn run(&self, module: &mut Module, cx: &mut Ctx) -> Result<Changed, PassError> {
        let Some(p) = &cx.pending else {
            return Ok(Changed::No);
        };
        if !crate::keys::fits_stage(module, &crate::keys::entries(&p.values)) {
            return Ok(Changed::No);
        }
        let p = cx.pending.take().expect("checked above");
        crate::keys::bind(module, &p.values, &p.file, &p.origins).map_err(|m| {
            PassError::User(vec![Diagnostic::new("qc::weights-bind", p.span, m)
                .label("this checkpoint")
                .help("the checkpoint's keys fit this stage but a value does not; re-export it")])
        })?;
        Ok(Changed::Yes)
    }
}
