#![no_main]
//! Fuzz target: see `sipedge::fuzz_logic::pair::run` (a remote user, the edge and a pool
//! member's Director on simulated time; every request answered once the timers run out).
libfuzzer_sys::fuzz_target!(|data: &[u8]| sipedge::fuzz_logic::pair::run(data));
