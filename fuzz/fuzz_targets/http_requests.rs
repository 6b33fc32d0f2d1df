#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    rtmpx::fuzzing::http_requests(data);
});
