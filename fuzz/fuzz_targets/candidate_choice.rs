#![no_main]
//! Fuzzes which session a request gets from the ids its `Cookie` header names, end to end.
//! What it checks: `tests/properties/candidate_choice.rs`, shared with the
//! proptest cases of `cargo test`.

#[path = "../../tests/properties/input.rs"]
mod input;
#[path = "../../tests/properties/cgi_response.rs"]
mod cgi_response;
#[path = "../../tests/properties/candidate_choice.rs"]
mod candidate_choice;

libfuzzer_sys::fuzz_target!(|data: &[u8]| candidate_choice::check(data));
