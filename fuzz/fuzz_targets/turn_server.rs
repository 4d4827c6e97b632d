#![no_main]
//! Fuzz target: see `sipedge::fuzz_logic::turn_server`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| sipedge::fuzz_logic::turn_server(data));
