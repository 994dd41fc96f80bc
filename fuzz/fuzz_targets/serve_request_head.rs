#![no_main]
//! Fuzzes the request head `pso serve` reads.
//! What it checks: `tests/properties/serve_request_head.rs`, shared with the
//! proptest cases of `cargo test`.

#[path = "../../tests/properties/input.rs"]
mod input;
#[path = "../../tests/properties/serve_request_head.rs"]
mod serve_request_head;

libfuzzer_sys::fuzz_target!(|data: &[u8]| serve_request_head::check(data));
