//! `qc`, the command line: check, compile and inspect `.qrecipe` files.

mod cli;

fn main() {
    std::process::exit(cli::main());
}
