#![no_main]
//! Fuzzes FastCGI name-value pairs.
//! What it checks: `tests/properties/fastcgi_params.rs`, shared with the
//! proptest cases of `cargo test`.

#[path = "../../tests/properties/input.rs"]
mod input;
#[path = "../../tests/properties/fastcgi_params.rs"]
mod fastcgi_params;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fastcgi_params::check(data));
