#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| rtmpx_core::fuzzing::server_handshake(data));
