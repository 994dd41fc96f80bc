//! The least a Rust CGI program does: print a response, without pso.
use std::io::Write;

fn main() {
    let _ = std::io::stdout().write_all(
        b"Status: 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\r\nHello World!",
    );
}
