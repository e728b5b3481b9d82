//! The one place that picks qc's exit codes. Commands print their own messages and return an
//! [`Outcome`]; `main` turns it into the process's exit status here.

/// Success.
pub const OK: i32 = 0;
/// A user error (the recipe, a file, an option): reported with a help line.
pub const USER: i32 = 1;
/// Bad command-line usage (clap's errors).
pub const USAGE: i32 = 2;
/// A bug in qc (a verifier failure, a panic).
pub const BUG: i32 = 70;
/// The reader of stdout went away (`qc keys … | head`): quiet, as a tool killed by SIGPIPE.
pub const CLOSED_PIPE: i32 = 141;

/// How a command failed, once it has said why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The user's input or request is at fault.
    User,
    /// The command line itself is malformed.
    Usage,
    /// qc is at fault.
    Bug,
}

/// What a command returns.
pub type Outcome = Result<(), Failure>;

/// The exit status of a command's outcome.
pub fn code(outcome: Outcome) -> i32 {
    match outcome {
        Ok(()) => OK,
        Err(Failure::User) => USER,
        Err(Failure::Usage) => USAGE,
        Err(Failure::Bug) => BUG,
    }
}
