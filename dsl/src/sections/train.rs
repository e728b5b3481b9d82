//! Checks a `train` or `qat` section: the training-loop settings, the optimizer and the schedule
//! (a `normalize` here is refused: it belongs to the model's `input` line, `inputs`).

use super::data::DataUse;
use super::values::Bounds;
use super::{
    defaults, key_help, list_words, suggest, Checker, Optimizer, QatSettings, Schedule, Seen, Spanned, TrainSettings,
    BAD_VALUE, MISSING_ARGUMENT, UNKNOWN_SETTING,
};
use crate::ast::{Expr, KwArg, Settings};
use crate::diag::did_you_mean;

const COMMON_KEYS: &[&str] = &[
    "epochs",
    "lr",
    "optimizer",
    "batch_size",
    "weight_decay",
    "schedule",
    "seed",
    "threads",
    "data",
    "test_data",
    "normalize",
    "limit",
];
const QAT_ONLY_KEYS: &[&str] = &[
    "freeze_bn_after",
    "freeze_observers_after",
    "freeze_ranges_after",
    "learnable_scales",
];

impl Checker<'_> {
    /// A `qat` or `train` section; for `train` only `.training` is filled.
    pub(super) fn loop_settings(&mut self, s: &Settings, section: &str) -> QatSettings {
        let qat = section == "qat";
        let default_lr = if qat { defaults::QAT_LR } else { defaults::TRAIN_LR };
        let mut f = QatSettings {
            training: TrainSettings {
                default_lr,
                span: s.span,
                ..Default::default()
            },
            ..Default::default()
        };
        let mut seen = Seen::default();
        for KwArg { key, value } in &s.entries {
            let name = key.name.as_str();
            let allowed = COMMON_KEYS.contains(&name) || (qat && QAT_ONLY_KEYS.contains(&name));
            if !allowed {
                let all: Vec<&str> = COMMON_KEYS
                    .iter()
                    .chain(if qat { QAT_ONLY_KEYS } else { &[] })
                    .copied()
                    .collect();
                let (message, help) = if QAT_ONLY_KEYS.contains(&name) {
                    (
                        format!("`{name}` is a `qat` setting; `train` does not take it"),
                        format!("move it to the `qat` section; `train` takes {}", list_words(&all)),
                    )
                } else {
                    (
                        format!("unknown setting `{name}` in `{section}`"),
                        suggest(
                            did_you_mean(name, all.iter().copied()),
                            format!("`{section}` takes {}", list_words(&all)),
                        ),
                    )
                };
                self.error(UNKNOWN_SETTING, key.span, message, "unknown setting", help);
                continue;
            }
            if !self.first_time(&mut seen, name, key.span, &format!("`{section}`")) {
                continue;
            }
            let span = key.span.to(value.span);
            let what = format!("`{name}`");
            let help = key_help(name);
            let sp = |v| Some(Spanned::new(v, span));
            match name {
                "epochs" => f.epochs = self.int_value(value, &what, 1, help).and_then(sp),
                "batch_size" => f.batch_size = self.int_value(value, &what, 1, help).and_then(sp),
                "threads" => f.threads = self.int_value(value, &what, 1, help).and_then(sp),
                "limit" => f.limit = self.int_value(value, &what, 1, help).and_then(sp),
                "seed" => f.seed = self.int_value(value, &what, 0, help).and_then(sp),
                "freeze_bn_after" => f.freeze_bn_after = self.int_value(value, &what, 0, help).and_then(sp),
                "freeze_observers_after" => {
                    f.freeze_observers_after = self.int_value(value, &what, 0, help).and_then(sp)
                }
                "freeze_ranges_after" => f.freeze_ranges_after = self.int_value(value, &what, 0, help).and_then(sp),
                "lr" => {
                    f.lr = self
                        .float_value(value, &what, Bounds::POSITIVE, help)
                        .map(|v| Spanned::new(v, span))
                }
                "weight_decay" => {
                    f.weight_decay = self
                        .float_value(value, &what, Bounds::NON_NEGATIVE, help)
                        .map(|v| Spanned::new(v, span))
                }
                "learnable_scales" => {
                    f.learnable_scales = self.bool_value(value, &what, help).map(|v| Spanned::new(v, span))
                }
                "optimizer" => f.optimizer = self.optimizer(value).map(|v| Spanned::new(v, span)),
                "schedule" => f.schedule = self.schedule(value).map(|v| Spanned::new(v, span)),
                "normalize" => self.moved_normalize(section, key.span, value),
                "data" => {
                    f.data = self
                        .data_value(value, DataUse::Data, name)
                        .map(|v| Spanned::new(v, span))
                }
                "test_data" => {
                    f.test_data = self
                        .data_value(value, DataUse::TestData, name)
                        .map(|v| Spanned::new(v, span))
                }
                _ => {}
            }
        }
        f
    }

    /// A bare word or a call, as the call it names (`sgd` = `sgd()`); reports anything else.
    fn optimizer(&mut self, e: &Expr) -> Option<Optimizer> {
        let help = key_help("optimizer");
        let call = self.word_or_call(e, "`optimizer`", help)?;
        match call.callee.name.as_str() {
            "sgd" => {
                let (_, named) = self.call_args(&call, &["momentum", "nesterov"], 0, "", &mut Seen::default());
                let mut momentum = Optimizer::DEFAULT_MOMENTUM;
                let mut momentum_span = call.span;
                let mut nesterov = false;
                let mut ok = true;
                for (key, value) in named {
                    if key.name == "momentum" {
                        match self.float_value(value, "`momentum`", Bounds::UNIT_HALF_OPEN, key_help("momentum")) {
                            Some(v) => (momentum, momentum_span) = (v, value.span),
                            None => ok = false,
                        }
                    } else {
                        match self.bool_value(value, "`nesterov`", key_help("nesterov")) {
                            Some(v) => nesterov = v,
                            None => ok = false,
                        }
                    }
                }
                if ok && nesterov && momentum == 0.0 {
                    self.error(
                        BAD_VALUE,
                        momentum_span,
                        "Nesterov momentum needs a momentum above 0".into(),
                        "momentum is 0",
                        "set `momentum` above 0 (e.g. `sgd(momentum: 0.9, nesterov: true)`) or drop `nesterov`".into(),
                    );
                    ok = false;
                }
                ok.then_some(Optimizer::Sgd { momentum, nesterov })
            }
            "adam" => {
                let (_, named) = self.call_args(&call, &["beta1", "beta2"], 0, "", &mut Seen::default());
                let (mut beta1, mut beta2) = (Optimizer::DEFAULT_BETA1, Optimizer::DEFAULT_BETA2);
                let mut ok = true;
                for (key, value) in named {
                    let what = format!("`{}`", key.name);
                    match self.float_value(value, &what, Bounds::UNIT_HALF_OPEN, key_help("beta1")) {
                        Some(v) if key.name == "beta1" => beta1 = v,
                        Some(v) => beta2 = v,
                        None => ok = false,
                    }
                }
                ok.then_some(Optimizer::Adam { beta1, beta2 })
            }
            _ => {
                self.unknown_choice(&call, "optimizer", &["sgd", "adam"], help);
                None
            }
        }
    }

    fn schedule(&mut self, e: &Expr) -> Option<Schedule> {
        let help = key_help("schedule");
        let call = self.word_or_call(e, "`schedule`", help)?;
        match call.callee.name.as_str() {
            name @ ("constant" | "cosine") => {
                self.call_args(&call, &[], 0, "", &mut Seen::default());
                Some(if name == "constant" {
                    Schedule::Constant
                } else {
                    Schedule::Cosine
                })
            }
            "step" => {
                let (_, named) = self.call_args(&call, &["every", "gamma"], 0, "", &mut Seen::default());
                let mut every = None;
                let mut gamma = 0.1;
                let mut ok = true;
                for (key, value) in named {
                    if key.name == "every" {
                        match self.int_value(value, "`every`", 1, key_help("every")) {
                            Some(v) => every = Some(v),
                            None => ok = false,
                        }
                    } else {
                        match self.float_value(value, "`gamma`", Bounds::POSITIVE, key_help("gamma")) {
                            Some(v) => gamma = v,
                            None => ok = false,
                        }
                    }
                }
                let every_written = call
                    .args
                    .iter()
                    .any(|a| a.name.as_ref().is_some_and(|n| n.name == "every"));
                if every.is_none() && !every_written {
                    self.error(
                        MISSING_ARGUMENT,
                        call.span,
                        "`step` needs `every`".into(),
                        "no `every`",
                        key_help("every").into(),
                    );
                }
                match every {
                    Some(every) if ok => Some(Schedule::Step { every, gamma }),
                    _ => None,
                }
            }
            _ => {
                self.unknown_choice(&call, "schedule", &["constant", "cosine", "step"], help);
                None
            }
        }
    }
}
