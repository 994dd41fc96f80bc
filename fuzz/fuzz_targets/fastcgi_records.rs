#![no_main]
//! Fuzzes the FastCGI record stream.
//! What it checks: `tests/properties/fastcgi_records.rs`, shared with the
//! proptest cases of `cargo test`.

#[path = "../../tests/properties/fastcgi_records.rs"]
mod fastcgi_records;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fastcgi_records::check(data));
