#![no_main]
//! Fuzzes expiry expressions, HTTP and formatted dates, collection probabilities.
//! What it checks: `tests/properties/expiry.rs`, shared with the
//! proptest cases of `cargo test`.

#[path = "../../tests/properties/input.rs"]
mod input;
#[path = "../../tests/properties/expiry.rs"]
mod expiry;

libfuzzer_sys::fuzz_target!(|data: &[u8]| expiry::check(data));
