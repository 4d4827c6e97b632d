#![no_main]
//! Fuzz target: see `sipedge::fuzz_logic::outsider::run` (whole external connections with
//! learned tokens against real sessions; the trust boundary's properties after every step).
libfuzzer_sys::fuzz_target!(|data: &[u8]| sipedge::fuzz_logic::outsider::run(data));
