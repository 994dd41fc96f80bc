#![no_main]
//! Fuzzes the session file's slot reader and writer.
//! What it checks: `tests/properties/file_layout.rs`, shared with the
//! proptest cases of `cargo test`.

#[path = "../../tests/properties/input.rs"]
mod input;
#[path = "../../tests/properties/file_layout.rs"]
mod file_layout;

libfuzzer_sys::fuzz_target!(|data: &[u8]| file_layout::check(data));
