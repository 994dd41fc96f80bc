#![no_main]
//! Fuzzes form bodies, directly and through the service's body cap.
//! What it checks: `tests/properties/form_body.rs`, shared with the
//! proptest cases of `cargo test`.

#[path = "../../tests/properties/input.rs"]
mod input;
#[path = "../../tests/properties/cgi_response.rs"]
mod cgi_response;
#[path = "../../tests/properties/form_body.rs"]
mod form_body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| form_body::check(data));
