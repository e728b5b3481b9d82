//! Robustness: mutated example recipes must never make the front end or the checker panic.
//!
//! Each case takes one of `examples/*.qrecipe`, applies one to three random mutations (delete,
//! duplicate or swap tokens, replace a character (printable, brace, quote, digit or non-ASCII),
//! insert or substitute a token from a small dictionary of troublesome words, make a number
//! extreme (0, -1, 2^63, 10^20 ...), delete a line, truncate), then in-process:
//!
//!   loaded = qc_dsl::load_str(...); qc_compiler::check(&loaded); render_plain(diagnostics)
//!
//! and also renders whatever `check` reports. A panic anywhere is a failure; so is a
//! `CompileError::Internal` (a compiler bug by definition), a diagnostic with an empty help (every
//! diagnostic must say what to do) and a span outside the sources or off a character boundary.
//! At the end the test fails with every distinct failure (grouped by panic location), each with
//! its seed, its mutations, and a reproduction shrunk by delta debugging.
//!
//! Deterministic: a fixed seed and an inline SplitMix64. Override with `QC_ROBUSTNESS_SEED` and
//! `QC_ROBUSTNESS_CASES` to explore further. 30,000 cases take about 25 s on 2 cores (test
//! profile); a passing run prints per-example timings with `-- --nocapture`.
//!
//! A case that gives no result within 10 s is reported as a hang (cases run on a worker thread;
//! after a hang the run stops and reports). `pathological_recipes_do_not_crash_or_hang` runs the
//! `qc` binary on very deep or long expressions and a self-instantiating block (a stack overflow
//! aborts the process and a hang must be killed, neither of which works in-process).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use qc_compiler::CompileError;

const DEFAULT_SEED: u64 = 0x5eed_0f9c_2024;
const DEFAULT_CASES: usize = 30_000;

/// Relative weights per example: the small recipes are cheap, resnet18 and mobilenet_v2 expand
/// into many nodes; every example gets a share.
const EXAMPLES: &[(&str, u32)] = &[
    ("fashion_cnn.qrecipe", 6),
    ("conv1d_net.qrecipe", 6),
    ("inception_block.qrecipe", 4),
    ("resnet18.qrecipe", 3),
    ("mobilenet_v2.qrecipe", 2),
];

// ------------------------------------------------------------------------------------ RNG

struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

// ------------------------------------------------------------------------------------ tokens

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Space,
    Comment,
    Word,
    Str,
    Punct,
}

/// Byte ranges of the tokens of a recipe (a rough lexer: good enough to mutate with).
fn tokens(text: &str) -> Vec<(usize, usize, Kind)> {
    let b = text.as_bytes();
    let mut out = vec![];
    let mut i = 0;
    while i < b.len() {
        let start = i;
        let c = b[i];
        let kind = if c.is_ascii_whitespace() {
            while i < b.len() && b[i].is_ascii_whitespace() {
                i += 1;
            }
            Kind::Space
        } else if c == b'#' || (c == b'/' && b.get(i + 1) == Some(&b'/')) {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            Kind::Comment
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i = text[i + 2..].find("*/").map(|p| i + 2 + p + 2).unwrap_or(b.len());
            Kind::Comment
        } else if c == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' && b[i] != b'\n' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i = (i + 1).min(b.len());
            Kind::Str
        } else if c.is_ascii_alphanumeric() || c == b'_' || c == b'.' {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'.') {
                i += 1;
            }
            Kind::Word
        } else {
            if ["->", "==", "!=", "<=", ">="]
                .iter()
                .any(|op| b[i..].starts_with(op.as_bytes()))
            {
                i += 2;
            } else {
                i += text[i..].chars().next().map(char::len_utf8).unwrap_or(1);
            }
            Kind::Punct
        };
        while !text.is_char_boundary(i) {
            i += 1;
        }
        out.push((start, i, kind));
    }
    out
}

/// The tokens worth mutating: everything but whitespace and comments.
fn significant(text: &str) -> Vec<(usize, usize)> {
    tokens(text)
        .into_iter()
        .filter(|t| !matches!(t.2, Kind::Space | Kind::Comment))
        .map(|(s, e, _)| (s, e))
        .collect()
}

// ------------------------------------------------------------------------------------ mutations

/// Words and numbers that tend to reach corners: keywords, ops, sections, extreme numbers.
const DICTIONARY: &[&str] = &[
    "model",
    "block",
    "input",
    "output",
    "if",
    "else",
    "and",
    "or",
    "not",
    "true",
    "false",
    "include",
    "weights",
    "quantize",
    "qat",
    "train",
    "scheme",
    "fuse",
    "observe",
    "calibrate",
    "layer",
    "skip",
    "op(conv2d)",
    "x",
    "N",
    "relu",
    "add",
    "conv2d",
    "conv1d",
    "linear",
    "flatten",
    "concat",
    "batch_norm",
    "max_pool2d",
    "global_avg_pool",
    "0",
    "1",
    "-1",
    "2",
    "3",
    "64",
    "1.5",
    "1e-5",
    "1e999",
    "-0",
    "0.0",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551615",
    "99999999999999999999",
    "\"\"",
    "\"*\"",
    "\"../\"",
    "\"examples/fashion_cnn.qrecipe\"",
    "[]",
    "[0]",
    "[1, 1]",
    "[-1, 2]",
    "(",
    ")",
    "{",
    "}",
    "[",
    "]",
    ",",
    ";",
    ":",
    "=",
    "==",
    "->",
    "-",
    "*",
    "/",
    "%",
    ".",
    ".0",
    "f32",
    "i8",
    "int8",
    "uint8",
    "int1",
    "per_channel",
    "histogram(bins: 0)",
    "out:",
    "kernel:",
    "stride:",
    "pad:",
    "groups:",
    "dim:",
    "epochs:",
    "lr:",
    "\\",
];

/// Characters a replaced character becomes.
const BRACES: &[char] = &['{', '}', '(', ')', '[', ']'];
const NON_ASCII: &[char] = &['é', 'ß', 'λ', '→', '中', '🦀', '\u{00a0}', '\u{200b}', '\u{feff}', 'Å'];

#[derive(Clone, Debug)]
#[allow(dead_code)] // the fields are read by `Debug`, in the failure report
enum Mutation {
    DeleteToken {
        at: usize,
        token: String,
    },
    DuplicateToken {
        at: usize,
        token: String,
    },
    SwapTokens {
        at: usize,
        first: String,
        second: String,
    },
    ReplaceChar {
        at: usize,
        old: char,
        new: char,
    },
    InsertWord {
        at: usize,
        word: &'static str,
    },
    SubstituteToken {
        at: usize,
        token: String,
        word: &'static str,
    },
    ReplaceNumber {
        at: usize,
        old: String,
        new: &'static str,
    },
    DeleteLine {
        line: usize,
    },
    Truncate {
        at: usize,
    },
}

/// Numbers that overflow, vanish or go negative in sizes, strides, pads and dims.
const EXTREME_NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1",
    "3037000500",
    "4294967296",
    "4611686018427387904",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999",
    "1e308",
    "1e999",
    "0.5",
    "-9223372036854775808",
];

/// Applies one random mutation; `None` when the text offers nothing to mutate.
fn mutate(text: &str, rng: &mut SplitMix64) -> Option<(String, Mutation)> {
    let toks = significant(text);
    if toks.is_empty() {
        return None;
    }
    let choice = rng.below(100);
    Some(match choice {
        0..=17 => {
            let (s, e) = *rng.pick(&toks);
            (
                format!("{}{}", &text[..s], &text[e..]),
                Mutation::DeleteToken {
                    at: s,
                    token: text[s..e].to_string(),
                },
            )
        }
        18..=29 => {
            let (s, e) = *rng.pick(&toks);
            let sep = if rng.below(2) == 0 { " " } else { "" };
            let t = &text[s..e];
            (
                format!("{}{t}{sep}{t}{}", &text[..s], &text[e..]),
                Mutation::DuplicateToken {
                    at: s,
                    token: t.to_string(),
                },
            )
        }
        30..=41 => {
            if toks.len() < 2 {
                return None;
            }
            let i = rng.below(toks.len() - 1);
            let ((s1, e1), (s2, e2)) = (toks[i], toks[i + 1]);
            let (a, between, b) = (&text[s1..e1], &text[e1..s2], &text[s2..e2]);
            (
                format!("{}{b}{between}{a}{}", &text[..s1], &text[e2..]),
                Mutation::SwapTokens {
                    at: s1,
                    first: a.to_string(),
                    second: b.to_string(),
                },
            )
        }
        42..=61 => {
            // A character, anywhere (comments included), on a character boundary.
            let mut at = rng.below(text.len());
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            let old = text[at..].chars().next().expect("a character");
            let new = match rng.below(5) {
                0 => (0x20 + rng.below(0x5f) as u8) as char,
                1 => *rng.pick(BRACES),
                2 => '"',
                3 => (b'0' + rng.below(10) as u8) as char,
                _ => *rng.pick(NON_ASCII),
            };
            let mut out = String::with_capacity(text.len() + 4);
            out.push_str(&text[..at]);
            out.push(new);
            out.push_str(&text[at + old.len_utf8()..]);
            (out, Mutation::ReplaceChar { at, old, new })
        }
        62..=71 => {
            let (s, _) = *rng.pick(&toks);
            let word = *rng.pick(DICTIONARY);
            (
                format!("{}{word} {}", &text[..s], &text[s..]),
                Mutation::InsertWord { at: s, word },
            )
        }
        72..=83 => {
            let (s, e) = *rng.pick(&toks);
            let word = *rng.pick(DICTIONARY);
            (
                format!("{}{word}{}", &text[..s], &text[e..]),
                Mutation::SubstituteToken {
                    at: s,
                    token: text[s..e].to_string(),
                    word,
                },
            )
        }
        84..=89 => {
            // A number (a size, a stride, a dim) becomes an extreme one.
            let numbers: Vec<(usize, usize)> = toks
                .iter()
                .copied()
                .filter(|&(s, e)| text[s..e].bytes().all(|b| b.is_ascii_digit()))
                .collect();
            if numbers.is_empty() {
                return None;
            }
            let (s, e) = *rng.pick(&numbers);
            let new = *rng.pick(EXTREME_NUMBERS);
            (
                format!("{}{new}{}", &text[..s], &text[e..]),
                Mutation::ReplaceNumber {
                    at: s,
                    old: text[s..e].to_string(),
                    new,
                },
            )
        }
        90..=95 => {
            let lines: Vec<&str> = text.split_inclusive('\n').collect();
            let line = rng.below(lines.len());
            let out: String = lines
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != line)
                .map(|(_, l)| *l)
                .collect();
            (out, Mutation::DeleteLine { line: line + 1 })
        }
        _ => {
            let mut at = rng.below(text.len() + 1);
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            (text[..at].to_string(), Mutation::Truncate { at })
        }
    })
}

// ------------------------------------------------------------------------------------ the oracle

thread_local! {
    /// The last panic on this thread: "message at file:line:col".
    static LAST_PANIC: RefCell<Option<(String, String)>> = const { RefCell::new(None) };
    /// Whether this thread is inside `run_one` (whose panics are recorded, not printed).
    static IN_CASE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The first `at FILE:LINE:COL` of a backtrace that is in this workspace (not std, not a
/// dependency, not this test), relative to the workspace root.
fn first_qc_frame(backtrace: &str) -> Option<String> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/");
    backtrace
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("at "))
        .find(|at| !at.starts_with("/rustc/") && !at.contains("/.cargo/") && !at.contains("tests/robustness.rs"))
        .map(|at| at.trim_start_matches(root).trim_start_matches("./").to_string())
}

/// What went wrong with one input: a short key (to group failures) and a description.
#[derive(Clone, Debug)]
struct Failure {
    key: String,
    detail: String,
}

/// Loads, checks and renders `text` as the recipe `examples/<name>`; `None` when all is well.
fn run_one(name: &str, text: &str) -> Option<Failure> {
    let path = PathBuf::from("examples").join(name);
    LAST_PANIC.with(|p| p.borrow_mut().take());
    IN_CASE.with(|c| c.set(true));
    let result = panic::catch_unwind(AssertUnwindSafe(|| -> Option<Failure> {
        let loaded = qc_dsl::load_str(name, Path::new(&path), text.to_string());
        let mut all = loaded.diagnostics.clone();
        let checked = qc_compiler::check(&loaded);
        let _ = qc_dsl::diag::render_plain(&loaded.diagnostics, &loaded.sources);
        match checked {
            Ok(_) => {}
            Err(CompileError::User(diags)) => {
                let _ = qc_dsl::diag::render_plain(&diags, &loaded.sources);
                all.extend(diags);
            }
            Err(CompileError::Internal { pass, message }) => {
                return Some(Failure {
                    key: format!("internal error after pass `{pass}`"),
                    detail: format!("CompileError::Internal from pass `{pass}`: {message}"),
                });
            }
        }
        for d in &all {
            if d.help.trim().is_empty() {
                return Some(Failure {
                    key: format!("empty help in {}", d.code),
                    detail: format!("diagnostic {} {:?} has no help line", d.code, d.message),
                });
            }
            let files = loaded.sources.files();
            let file = files
                .iter()
                .rev()
                .find(|f| f.base <= d.span.start && d.span.start <= f.base + f.text.len());
            let ok = d.span.start <= d.span.end
                && file.is_some_and(|f| {
                    d.span.end <= f.base + f.text.len()
                        && f.text.is_char_boundary(d.span.start - f.base)
                        && f.text.is_char_boundary(d.span.end - f.base)
                });
            if !ok {
                return Some(Failure {
                    key: format!("bad span in {}", d.code),
                    detail: format!(
                        "diagnostic {} {:?} has span {:?}, outside the sources or off a char boundary",
                        d.code, d.message, d.span
                    ),
                });
            }
        }
        None
    }));
    IN_CASE.with(|c| c.set(false));
    match result {
        Ok(f) => f,
        Err(payload) => {
            let (message, location) = LAST_PANIC.with(|p| p.borrow_mut().take()).unwrap_or_else(|| {
                let m = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "<non-string panic>".into());
                (m, "<unknown location>".into())
            });
            Some(Failure {
                key: format!("panic at {location}"),
                detail: format!("panicked at {location}: {message}"),
            })
        }
    }
}

/// Runs cases on a worker thread so that a case that never ends (or grows without bound) is
/// noticed: after `limit` without a result the runner gives up, reports a hang, and is dead (its
/// thread is abandoned, still running, until the test process exits; nothing more is run).
struct Runner {
    jobs: std::sync::mpsc::Sender<(&'static str, String)>,
    results: std::sync::mpsc::Receiver<Option<Failure>>,
    dead: bool,
}

enum Outcome {
    Done(Option<Failure>),
    Hung,
}

impl Runner {
    fn new() -> Runner {
        let (jobs, job_rx) = std::sync::mpsc::channel::<(&'static str, String)>();
        let (result_tx, results) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("robustness-case".into())
            .stack_size(8 << 20) // like a main thread: the recipes are checked as `qc` would
            .spawn(move || {
                for (name, text) in job_rx {
                    if result_tx.send(run_one(name, &text)).is_err() {
                        break;
                    }
                }
            })
            .expect("spawn the case thread");
        Runner {
            jobs,
            results,
            dead: false,
        }
    }

    fn run(&mut self, name: &'static str, text: &str, limit: Duration) -> Outcome {
        if self.dead {
            return Outcome::Hung;
        }
        self.jobs
            .send((name, text.to_string()))
            .expect("the case thread is alive");
        match self.results.recv_timeout(limit) {
            Ok(f) => Outcome::Done(f),
            Err(_) => {
                self.dead = true;
                Outcome::Hung
            }
        }
    }
}

/// How long one case may take before it counts as a hang (a normal one takes milliseconds).
const CASE_LIMIT: Duration = Duration::from_secs(10);
const SHRINK_LIMIT: Duration = Duration::from_secs(5);

/// Shrinks `text` while it still fails with the same key: delta debugging over lines, then over
/// tokens, then over single characters, within a budget of runs.
/// A candidate that hung is returned in `hung` (and shrinking stops: the runner is dead).
fn shrink(
    runner: &mut Runner,
    name: &'static str,
    text: &str,
    key: &str,
    budget: &mut usize,
    hung: &mut Option<String>,
) -> String {
    let mut still_fails = |candidate: &str, budget: &mut usize| -> bool {
        if *budget == 0 || hung.is_some() || runner.dead {
            return false;
        }
        *budget -= 1;
        if env_or("QC_ROBUSTNESS_TRACE", 0) >= 2 {
            eprintln!("shrink candidate: {candidate:?}");
        }
        match runner.run(name, candidate, SHRINK_LIMIT) {
            Outcome::Done(f) => f.is_some_and(|f| f.key == key),
            Outcome::Hung => {
                *hung = Some(candidate.to_string());
                *budget = 0;
                false
            }
        }
    };
    let mut best = text.to_string();
    // Units of one granularity: line ranges, then token ranges (whitespace kept with its token),
    // then characters.
    for level in 0..3 {
        let units = |t: &str| -> Vec<(usize, usize)> {
            match level {
                0 => {
                    let mut v = vec![];
                    let mut start = 0;
                    for l in t.split_inclusive('\n') {
                        v.push((start, start + l.len()));
                        start += l.len();
                    }
                    v
                }
                1 => tokens(t).into_iter().map(|(s, e, _)| (s, e)).collect(),
                _ => t.char_indices().map(|(i, c)| (i, i + c.len_utf8())).collect(),
            }
        };
        let mut chunk = units(&best).len().div_ceil(2).max(1);
        loop {
            let u = units(&best);
            if u.is_empty() {
                break;
            }
            let mut removed = false;
            let mut i = 0;
            while i < u.len() {
                let (s, e) = (u[i].0, u[(i + chunk).min(u.len()) - 1].1);
                let candidate = format!("{}{}", &best[..s], &best[e..]);
                if still_fails(&candidate, budget) {
                    best = candidate;
                    removed = true;
                    break;
                }
                i += chunk;
            }
            if removed {
                continue;
            }
            if chunk == 1 || *budget == 0 {
                break;
            }
            chunk = chunk.div_ceil(2);
        }
    }
    best
}

// ------------------------------------------------------------------------------------ the test

/// A number from the environment (decimal, or hex with `0x`), or the default.
fn env_or(key: &str, default: u64) -> u64 {
    let Ok(v) = std::env::var(key) else { return default };
    let v = v.trim().replace('_', "");
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    parsed.unwrap_or_else(|_| panic!("{key}={v} is not a number"))
}

struct Found {
    count: usize,
    /// The first case that hit it: case seed, example, mutations, text.
    seed: u64,
    example: &'static str,
    mutations: Vec<Mutation>,
    text: String,
    detail: String,
}

#[test]
fn mutated_examples_never_panic() {
    let seed = env_or("QC_ROBUSTNESS_SEED", DEFAULT_SEED);
    let cases = env_or("QC_ROBUSTNESS_CASES", DEFAULT_CASES as u64) as usize;
    // QC_ROBUSTNESS_TRACE=1 prints every case before it runs (to find one that hangs or aborts).
    let trace = env_or("QC_ROBUSTNESS_TRACE", 0) != 0;
    // How many distinct failures get a shrunk reproduction (QC_ROBUSTNESS_SHRINK=0: none).
    let shrink_count = env_or("QC_ROBUSTNESS_SHRINK", 8) as usize;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    std::env::set_current_dir(&root).expect("cd to the repository root");

    let sources: Vec<(&'static str, String)> = EXAMPLES
        .iter()
        .map(|(n, _)| {
            (
                *n,
                std::fs::read_to_string(root.join("examples").join(n)).expect("read an example"),
            )
        })
        .collect();
    // Every example must be sound before mutation, or the test proves nothing.
    for (name, text) in &sources {
        let loaded = qc_dsl::load_str(name, &PathBuf::from("examples").join(name), text.clone());
        assert!(loaded.diagnostics.is_empty(), "{name} has diagnostics unmutated");
        assert!(qc_compiler::check(&loaded).is_ok(), "{name} does not check unmutated");
    }
    let total_weight: u32 = EXAMPLES.iter().map(|(_, w)| w).sum();

    // Record the panics of the cases quietly (message and location): the failures are reported
    // at the end. Any other panic (a bug in this test) goes to the usual hook.
    let previous_hook: std::sync::Arc<dyn Fn(&panic::PanicHookInfo<'_>) + Send + Sync> = panic::take_hook().into();
    let fallback = previous_hook.clone();
    panic::set_hook(Box::new(move |info| {
        if !IN_CASE.with(|c| c.get()) {
            return fallback(info);
        }
        let mut location = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
            .unwrap_or_default();
        if location.starts_with("/rustc/") || location.contains("/.cargo/") {
            // A panic inside std or a dependency (an overflowing `product()`...): name the
            // first frame of qc's own code too, so that distinct bugs are told apart.
            if let Some(frame) = first_qc_frame(&std::backtrace::Backtrace::force_capture().to_string()) {
                location = format!("{frame} (in {location})");
            }
        }
        let message = info
            .payload()
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "<non-string panic>".into());
        LAST_PANIC.with(|p| *p.borrow_mut() = Some((message, location)));
    }));

    let started = Instant::now();
    let mut found: BTreeMap<String, Found> = BTreeMap::new();
    let mut per_example: BTreeMap<&str, (usize, Duration)> = BTreeMap::new();
    let mut master = SplitMix64(seed);
    let mut ran = 0;
    let mut runner = Runner::new();
    for _ in 0..cases {
        let case_seed = master.next();
        let mut rng = SplitMix64(case_seed);
        let mut pick = rng.below(total_weight as usize) as u32;
        let index = EXAMPLES
            .iter()
            .position(|(_, w)| {
                if pick < *w {
                    true
                } else {
                    pick -= w;
                    false
                }
            })
            .expect("a weighted pick");
        let (name, original) = &sources[index];
        let rounds = match rng.below(10) {
            0..=5 => 1,
            6..=8 => 2,
            _ => 3,
        };
        let mut text = original.clone();
        let mut mutations = vec![];
        for _ in 0..rounds {
            if let Some((t, m)) = mutate(&text, &mut rng) {
                text = t;
                mutations.push(m);
            }
        }
        if trace {
            eprintln!("case {ran}: seed {case_seed:#018x}, examples/{name}, {mutations:?}");
        }
        let t0 = Instant::now();
        let outcome = runner.run(name, &text, CASE_LIMIT);
        let entry = per_example.entry(name).or_default();
        entry.0 += 1;
        entry.1 += t0.elapsed();
        ran += 1;
        let failure = match outcome {
            Outcome::Done(f) => f,
            Outcome::Hung => Some(Failure {
                key: "hang".into(),
                detail: format!(
                    "no result after {} s (a loop, or unbounded time or memory)",
                    CASE_LIMIT.as_secs()
                ),
            }),
        };
        if let Some(f) = failure {
            let e = found.entry(f.key.clone()).or_insert_with(|| Found {
                count: 0,
                seed: case_seed,
                example: name,
                mutations: mutations.clone(),
                text: text.clone(),
                detail: f.detail.clone(),
            });
            e.count += 1;
        }
        if runner.dead {
            break; // nothing more can run; report what was found
        }
    }
    let fuzz_time = started.elapsed();

    // Shrink the first case of every distinct failure (the first 8 of them; the rest are
    // reported as found).
    let mut report = String::new();
    for (i, (key, f)) in found.iter().enumerate() {
        let mut budget = if i < shrink_count { 3000 } else { 0 };
        if trace {
            eprintln!("shrinking {key}");
        }
        let mut hung = None;
        let small = shrink(&mut runner, f.example, &f.text, key, &mut budget, &mut hung);
        if let Some(h) = hung {
            report.push_str(&format!(
                "\n=== hang while shrinking the case below: this input gave no result after {} s\n----8<----\n{h}\n----8<----\n",
                SHRINK_LIMIT.as_secs()
            ));
        }
        report.push_str(&format!(
            "\n=== {key}  ({} case{})\n{}\nfirst case: seed {:#018x}, examples/{}, mutations {:?}\nreproduction ({} bytes, shrunk from {}):\n----8<----\n{}\n----8<----\n",
            f.count,
            if f.count == 1 { "" } else { "s" },
            f.detail,
            f.seed,
            f.example,
            f.mutations,
            small.len(),
            f.text.len(),
            small,
        ));
    }
    panic::set_hook(Box::new(move |info| previous_hook(info)));

    let timing: Vec<String> = per_example
        .iter()
        .map(|(n, (c, d))| format!("{n}: {c} cases, {:.1} ms/case", d.as_secs_f64() * 1e3 / *c as f64))
        .collect();
    eprintln!(
        "robustness: {ran} cases (seed {seed:#x}) in {:.1} s, total {:.1} s\n  {}",
        fuzz_time.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        timing.join("\n  ")
    );
    let failing: usize = found.values().map(|f| f.count).sum();
    assert!(
        found.is_empty() && !runner.dead,
        "{failing} of {ran} mutated recipes failed, {} distinct failure(s):{report}\n(rerun: QC_ROBUSTNESS_SEED={seed:#x}; each reproduction is the whole recipe text)",
        found.len()
    );
}

/// Pathological recipes, run as a child `qc check` because an in-process failure here cannot be
/// caught: a stack overflow aborts the process, and a case that never ends must be killed.
///
/// Deeply nested or very long expressions (the parser and the expander recurse on the expression
/// tree; the sizes are large for a hand-written recipe and small for a generated one), and a
/// block that instantiates itself more than once (the depth limit alone lets the instances grow
/// exponentially). Any outcome but a crash or a hang is fine: accepted (exit 0) or a diagnostic
/// such as "nested too deeply" (exit 1), within 20 s.
#[test]
fn pathological_recipes_do_not_crash_or_hang() {
    fn model(expr: &str) -> String {
        format!("model m {{\n  input x: f32[N, 8]\n  y = {expr}\n  output y\n}}\n")
    }
    let n = 2_000;
    let cases: Vec<(&str, String)> = vec![
        (
            "2000 nested calls relu(relu(...x...))",
            model(&format!("{}x{}", "relu(".repeat(n), ")".repeat(n))),
        ),
        (
            "2000 nested parentheses ((...x...))",
            model(&format!("{}x{}", "(".repeat(n), ")".repeat(n))),
        ),
        (
            "1000 nested if",
            model(&format!(
                "{}x{}",
                "if true { ".repeat(n / 2),
                " } else { x }".repeat(n / 2)
            )),
        ),
        (
            "2000 nested lists",
            model(&format!(
                "linear(x, out: 2, bias: {}true{})",
                "[".repeat(n),
                "]".repeat(n)
            )),
        ),
        (
            "a sum of 20000 terms",
            model(&format!("linear(x, out: {})", vec!["1"; 20_000].join(" + "))),
        ),
        (
            "20000 unary minus",
            model(&format!("linear(x, out: {}4)", "-".repeat(20_000))),
        ),
        (
            "20000 `not`",
            model(&format!("if {}true {{ x }} else {{ x }}", "not ".repeat(20_000))),
        ),
        (
            "20000 statements in a chain",
            format!(
                "model m {{\n  input x: f32[N, 8]\n  y0 = relu(x)\n{}  output y19999\n}}\n",
                (1..20_000)
                    .map(|i| format!("  y{i} = relu(y{})\n", i - 1))
                    .collect::<String>()
            ),
        ),
        (
            "a block that instantiates itself twice (2^64 instances before the depth limit)",
            "block b(x) {\n  y1 = b(x)\n  y2 = b(x)\n}\nmodel m {\n  input x: f32[N, 8]\n  y = b(x)\n  output y\n}\n"
                .to_string(),
        ),
    ];
    let limit = Duration::from_secs(20);
    let dir = tempfile::tempdir().expect("a temporary folder");
    let mut failures = vec![];
    for (i, (what, text)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("case{i}.qrecipe"));
        std::fs::write(&path, text).expect("write the recipe");
        // stderr to a file, not a pipe: a child that prints a lot must not block on it.
        let err_path = dir.path().join(format!("case{i}.stderr"));
        let err_file = std::fs::File::create(&err_path).expect("create the stderr file");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_qc"))
            .arg("check")
            .arg(&path)
            .env_remove("RUST_BACKTRACE")
            .stdout(std::process::Stdio::null())
            .stderr(err_file)
            .spawn()
            .expect("run qc");
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for qc") {
                break Some(status);
            }
            if started.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stderr = std::fs::read(&err_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let last: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = last[last.len().saturating_sub(2)..].join(" | ");
        match status {
            None => failures.push(format!("{what}: no result after {} s (killed)", limit.as_secs())),
            Some(status)
                if !matches!(status.code(), Some(0 | 1))
                    || stderr.contains("panicked at")
                    || stderr.contains("overflowed its stack") =>
            {
                failures.push(format!("{what}: qc check ended with {status} ({tail})"))
            }
            Some(_) => {}
        }
    }
    assert!(
        failures.is_empty(),
        "qc crashed or hung on {} of {} pathological recipes:\n  {}",
        failures.len(),
        cases.len(),
        failures.join("\n  ")
    );
}

/// `qc keys ... | head -1`: a reader that goes away ends qc quietly (exit 141, as SIGPIPE
/// would), with no panic report.
#[test]
fn a_closed_stdout_is_not_a_crash() {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_qc"))
        .args(["keys", "examples/resnet18.qrecipe", "--stage", "float"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Close the reading end before qc has compiled anything: its first write fails.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(141), "{stderr}");
}
