//! Tests of `load` and `config` that need certificates: the dev PKI makes them, and `dev`
//! depends on both, so these tests live above all three rather than inside the modules
//! they test (`tls`'s files then import each other one way only).

mod config;
mod load;
