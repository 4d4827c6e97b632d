#![no_main]
//! Fuzz target: see `sipedge::fuzz_logic::channel_data`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| sipedge::fuzz_logic::channel_data(data));
