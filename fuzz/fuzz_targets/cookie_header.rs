#![no_main]
//! Fuzzes the `Cookie` header: which session ids it offers under a name.
//! What it checks: `tests/properties/cookie_header.rs`, shared with the
//! proptest cases of `cargo test`.

#[path = "../../tests/properties/input.rs"]
mod input;
#[path = "../../tests/properties/cookie_header.rs"]
mod cookie_header;

libfuzzer_sys::fuzz_target!(|data: &[u8]| cookie_header::check(data));
