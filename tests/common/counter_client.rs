//! A keep-alive HTTP/1.1 client for the reload counter behind a web server.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

/// A keep-alive HTTP/1.1 client for the counter: one connection, requests one after another.
pub struct Client {
    port: u16,
    stream: Option<BufReader<TcpStream>>,
}

impl Client {
    pub fn new(port: u16) -> Client {
        Client { port, stream: None }
    }

    /// GET the counter with `cookie` (if any): the count and the `Set-Cookie` pair.
    pub fn get(&mut self, cookie: Option<&str>) -> (u64, Option<String>) {
        let reader = self.stream.get_or_insert_with(|| {
            BufReader::new(TcpStream::connect(("127.0.0.1", self.port)).unwrap())
        });
        let cookie_line = cookie
            .map(|c| format!("Cookie: {c}\r\n"))
            .unwrap_or_default();
        let request =
            format!("GET /cgi-bin/reload HTTP/1.1\r\nHost: localhost\r\n{cookie_line}\r\n");
        reader.get_mut().write_all(request.as_bytes()).unwrap();
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        assert!(status.starts_with("HTTP/1.1 200"), "{status:?}");
        let (mut length, mut set_cookie, mut close) = (None, None, false);
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = Some(value.trim().parse::<usize>().unwrap()),
                "set-cookie" => {
                    set_cookie = Some(value.trim().split(';').next().unwrap().to_owned())
                }
                "connection" => close = value.trim().eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
        let mut body = vec![0u8; length.expect("pso sends Content-Length")];
        reader.read_exact(&mut body).unwrap();
        if close {
            self.stream = None;
        }
        let body = String::from_utf8(body).unwrap();
        let count = body
            .split("You reloaded: ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("not the counter: {body}"));
        (count, set_cookie)
    }
}
