#![no_main]
//! Fuzz target: see `sipedge::fuzz_logic::pool_messages` (what pool members publish through
//! Redis, and TLS session tickets under the pool ring).
libfuzzer_sys::fuzz_target!(|data: &[u8]| sipedge::fuzz_logic::pool_messages(data));
