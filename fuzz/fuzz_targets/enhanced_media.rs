#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| rtmpx_core::fuzzing::enhanced_media(data));
