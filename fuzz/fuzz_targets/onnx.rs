//! Fuzz target `onnx`: an ONNX model through `qc import` and the recipe it writes through `qc check` (`qc_fuzz_harness::onnx`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| qc_fuzz_harness::onnx(data));
