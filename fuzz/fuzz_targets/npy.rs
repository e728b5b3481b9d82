//! Fuzz target `npy`: a NumPy `.npy` array through its reader (`qc_fuzz_harness::npy`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| qc_fuzz_harness::npy(data));
