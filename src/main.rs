//! `qc`, the command line: check, compile and inspect `.qrecipe` files, and run compiled models.

mod cli;
mod compare;
mod eval;
mod exit;
mod input_range;
mod onnx_cmd;
mod run;
mod train;

/// Recipes nest (blocks, calls, expressions) and the front end recurses over them; a large stack
/// keeps deeply nested input an error message instead of a stack overflow. The parser also
/// refuses nesting deeper than `qc_dsl::parse::MAX_NESTING`.
const STACK_BYTES: usize = 512 << 20;

fn main() {
    quiet_on_closed_output();
    let code = std::thread::Builder::new()
        .name("qc".into())
        .stack_size(STACK_BYTES)
        .spawn(|| exit::code(cli::main()))
        .map(|h| h.join().unwrap_or(exit::BUG))
        .unwrap_or_else(|e| {
            eprintln!("error: cannot start qc's main thread: {e}");
            exit::BUG
        });
    std::process::exit(code);
}

/// `qc keys ... | head`, `qc check BAD 2>&1 | head -1`: when the reader of stdout or stderr goes
/// away, stop quietly (as a tool killed by SIGPIPE would) instead of reporting `println!`'s or
/// `eprintln!`'s panic as a qc bug.
fn quiet_on_closed_output() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        let printing =
            message.starts_with("failed printing to stdout") || message.starts_with("failed printing to stderr");
        if printing && message.contains("Broken pipe") {
            std::process::exit(exit::CLOSED_PIPE);
        }
        default(info);
    }));
}
