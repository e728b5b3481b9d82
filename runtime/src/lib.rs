//! qc-runtime
