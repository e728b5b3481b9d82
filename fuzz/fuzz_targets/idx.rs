//! Fuzz target `idx`: an IDX file (plain or gzip) through its reader (`qc_fuzz_harness::idx`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| qc_fuzz_harness::idx(data));
