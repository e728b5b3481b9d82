//! `qc`, the command line: check, compile and inspect `.qrecipe` files, and run compiled models.

mod cli;
mod run;
mod train;

/// Recipes nest (blocks, calls, expressions) and the front end recurses over them; a large stack
/// keeps deeply nested input an error message instead of a stack overflow. The parser also
/// refuses nesting deeper than `qc_dsl::parse::MAX_NESTING`.
const STACK_BYTES: usize = 512 << 20;

fn main() {
    let code = std::thread::Builder::new()
        .name("qc".into())
        .stack_size(STACK_BYTES)
        .spawn(cli::main)
        .map(|h| h.join().unwrap_or(70))
        .unwrap_or_else(|e| {
            eprintln!("error: cannot start qc's main thread: {e}");
            70
        });
    std::process::exit(code);
}
