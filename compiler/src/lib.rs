//! qc-compiler
