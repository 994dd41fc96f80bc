#![no_main]
//! Fuzzes the choice among the verdicts on a request's candidate sessions.
//! What it checks: `tests/properties/adoption_decide.rs`, shared with the
//! proptest cases of `cargo test`.

#[path = "../../tests/properties/input.rs"]
mod input;
#[path = "../../tests/properties/adoption_decide.rs"]
mod adoption_decide;

libfuzzer_sys::fuzz_target!(|data: &[u8]| adoption_decide::check(data));
