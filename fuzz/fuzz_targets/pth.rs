//! Fuzz target `pth`: a `.pth` (torch.save) checkpoint through the archive, pickle and state-dict readers (`qc_fuzz_harness::pth`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| qc_fuzz_harness::pth(data));
