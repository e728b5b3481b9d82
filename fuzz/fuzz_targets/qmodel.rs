//! Fuzz target `qmodel`: a `.qmodel` through the artifact loader and program validation (`qc_fuzz_harness::qmodel`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| qc_fuzz_harness::qmodel(data));
