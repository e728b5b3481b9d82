//! What a rewrite run did (`Report`, printed by `qc compile --stats`): owned by the IR's
//! `Module::rewrite`, filled in by the rewrite engine.

/// How a batch norm is fused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Post-training quantization: fold it into the weights (`fold_bn_into_conv/linear`).
    Ptq,
    /// Quantization-aware training: keep it inside the op (`conv1.bn.weight`, ...).
    Qat,
}

/// How often one rule fired.
#[derive(Clone, Debug, PartialEq)]
pub struct Fired {
    pub rule: String,
    /// `conv2d -> batch_norm -> relu`.
    pub chain: String,
    /// The first line of the rule's doc comment.
    pub summary: String,
    pub count: usize,
}

/// Why the driver stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// No rule matches any more.
    FixedPoint,
    /// Rules still matched after the last round allowed.
    Cap,
}

/// What a rewrite run did.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub mode: Mode,
    /// Every active rule, in priority order, with its count.
    pub fired: Vec<Fired>,
    /// Rules turned off by the recipe.
    pub off: Vec<String>,
    /// Rounds that applied patches.
    pub rounds: usize,
    pub max_rounds: usize,
    pub stop: Stop,
}

impl Report {
    /// How often a rule fired (0 for one that is not active).
    pub fn count(&self, rule: &str) -> usize {
        self.fired.iter().find(|f| f.rule == rule).map_or(0, |f| f.count)
    }

    /// Patches applied in all.
    pub fn total(&self) -> usize {
        self.fired.iter().map(|f| f.count).sum()
    }

    /// The `--stats` text: one line for the run, one per rule.
    pub fn render(&self) -> String {
        let mode = match self.mode {
            Mode::Ptq => "PTQ, batch norms folded",
            Mode::Qat => "QAT, batch norms kept",
        };
        let stop = match self.stop {
            Stop::FixedPoint => "stopped at a fixed point".to_string(),
            Stop::Cap => format!(
                "stopped at the cap ({} rounds) with rules still matching",
                self.max_rounds
            ),
        };
        let mut out = format!(
            "fuse ({mode}): {} patches in {} round{}, {stop}\n",
            self.total(),
            self.rounds,
            if self.rounds == 1 { "" } else { "s" }
        );
        let w = self
            .fired
            .iter()
            .map(|f| f.rule.len())
            .chain(self.off.iter().map(|o| o.len()))
            .max()
            .unwrap_or(4)
            .max(4);
        out.push_str(&format!("  {:<w$}  {:>5}  identity\n", "rule", "fired"));
        for f in &self.fired {
            out.push_str(&format!("  {:<w$}  {:>5}  {}\n", f.rule, f.count, f.summary));
        }
        for o in &self.off {
            out.push_str(&format!("  {o:<w$}  {:>5}  (turned off by `fuse off`)\n", "off"));
        }
        out
    }
}
