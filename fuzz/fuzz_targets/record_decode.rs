#![no_main]
//! Fuzzes the session record's decoder and encoder.
//! What it checks: `tests/properties/record_decode.rs`, shared with the
//! proptest cases of `cargo test`.

#[path = "../../tests/properties/input.rs"]
mod input;
#[path = "../../tests/properties/record_decode.rs"]
mod record_decode;

libfuzzer_sys::fuzz_target!(|data: &[u8]| record_decode::check(data));
