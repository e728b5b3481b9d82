//! Fuzz target `safetensors`: a `.safetensors` checkpoint through its reader (`qc_fuzz_harness::safetensors`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| qc_fuzz_harness::safetensors(data));
