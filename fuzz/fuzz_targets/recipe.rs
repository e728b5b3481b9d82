//! Fuzz target `recipe`: recipe text through `qc check`'s parse, sections, rendering and the compiler's check (`qc_fuzz_harness::recipe`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| qc_fuzz_harness::recipe(data));
