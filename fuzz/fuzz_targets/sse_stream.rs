#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| orchd_adapter_http::fuzzing::sse_stream(data));
