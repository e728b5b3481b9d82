//! Fuzz target `npz`: a NumPy `.npz` archive through its reader (`qc_fuzz_harness::npz`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| qc_fuzz_harness::npz(data));
