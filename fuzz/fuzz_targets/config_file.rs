#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| orchd_host::fuzzing::config_file(data));
