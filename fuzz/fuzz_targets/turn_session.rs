#![no_main]
//! Fuzz target: see `sipedge::fuzz_logic::turn_session::run`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| sipedge::fuzz_logic::turn_session::run(data));
