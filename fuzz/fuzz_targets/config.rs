#![no_main]
//! Fuzzes the configuration read from an environment of any names and bytes.
//! What it checks: `tests/properties/config.rs`, shared with the
//! proptest cases of `cargo test`.

#[path = "../../tests/properties/input.rs"]
mod input;
#[path = "../../tests/properties/config.rs"]
mod config;

libfuzzer_sys::fuzz_target!(|data: &[u8]| config::check(data));
