//! The request head `pso serve` reads from a connection (`cli/src/serve/http.rs`, a
//! module of the helper binary, compiled in here from its source).
//!
//! Input: a mode; then how a connection delivers the bytes (the sizes of its reads) and the
//! bytes, or a path to normalize. Checked: nothing panics; a request taken has a path of one
//! form (starting with `/`, no `.`, `..` or empty segments, normalized again to itself), at
//! most one `Host` and `Content-Length`, no `Transfer-Encoding`, no control character in a
//! value, a length within the cap, the bytes after its head as the start of its body; printed
//! back as a head it parses to the same request; read from a connection in any pieces it is
//! the same request, or the same refusal, as from the whole buffer.

use std::io::Read;

use crate::input::Input;

#[allow(dead_code)]
#[path = "../../cli/src/serve/http.rs"]
mod http;

use http::{Incoming, MAX_BODY, MAX_HEAD, Request, normalize, parse, read_request};

/// A connection that delivers its bytes in reads of the given sizes, then the rest.
struct Pieces<'a> {
    data: &'a [u8],
    sizes: Vec<usize>,
}

impl Read for Pieces<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let size = if self.sizes.is_empty() {
            self.data.len()
        } else {
            self.sizes.remove(0)
        };
        let n = size.max(1).min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fn same_request(a: &Request, b: &Request) -> bool {
    (
        &a.method,
        &a.target,
        &a.path,
        &a.query,
        a.version,
        &a.headers,
        a.content_length,
    ) == (
        &b.method,
        &b.target,
        &b.path,
        &b.query,
        b.version,
        &b.headers,
        b.content_length,
    )
}

pub fn check(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.byte();
    if mode & 1 == 1 {
        path(&format!("/{}", String::from_utf8_lossy(input.rest())));
        return;
    }
    let sizes: Vec<usize> = input.chunk().iter().map(|&b| usize::from(b)).collect();
    head(input.rest(), sizes);
}

pub fn path(raw: &str) {
    let Ok(path) = normalize(raw) else {
        return;
    };
    assert!(path.starts_with('/'), "{raw:?} gave {path:?}");
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    for (i, segment) in segments.iter().enumerate() {
        assert!(*segment != "." && *segment != "..", "{raw:?} gave {path:?}");
        assert!(!segment.is_empty() || i == last, "{raw:?} gave {path:?}");
    }
    if !path.contains('%') {
        assert_eq!(normalize(&path).as_ref(), Ok(&path), "{raw:?}");
    }
}

pub fn head(bytes: &[u8], sizes: Vec<usize>) {
    let bytes = &bytes[..bytes.len().min(MAX_HEAD)];
    let whole = parse(bytes);
    match &whole {
        Ok(Some(request)) => taken(request, bytes),
        Ok(None) => {}
        Err(refusal) => assert!(
            [400, 404, 411, 413, 431].contains(&refusal.status),
            "{refusal:?}"
        ),
    }
    // However the connection cuts it, the same outcome.
    let mut connection = Pieces { data: bytes, sizes };
    match (read_request(&mut connection), whole) {
        (Incoming::Request(piecewise), Ok(Some(request))) => {
            assert!(
                same_request(&piecewise, &request),
                "{piecewise:?} / {request:?}"
            );
            assert!(request.body_start.starts_with(&piecewise.body_start));
        }
        (Incoming::Refused(piecewise), Err(refusal)) => assert_eq!(piecewise, refusal),
        (Incoming::Refused(piecewise), Ok(None)) => assert_eq!(piecewise.status, 400),
        (Incoming::Nothing, Ok(None)) => assert!(bytes.is_empty()),
        (piecewise, whole) => panic!("in pieces {piecewise:?}, whole {whole:?}"),
    }
}

fn taken(request: &Request, bytes: &[u8]) {
    let context = || format!("{:?}: {request:?}", String::from_utf8_lossy(bytes));
    path(&request.path);
    assert!(request.target.starts_with('/'), "{}", context());
    let (_, query) = request
        .target
        .split_once('?')
        .unwrap_or((&request.target, ""));
    assert_eq!(request.query, query, "{}", context());
    assert!(request.content_length <= MAX_BODY, "{}", context());
    let named = |name: &str| {
        request
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    };
    assert!(
        named("Host") <= 1 && named("Content-Length") <= 1,
        "{}",
        context()
    );
    assert_eq!(named("Transfer-Encoding"), 0, "{}", context());
    for (_, value) in &request.headers {
        assert!(
            value
                .iter()
                .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f)),
            "{}",
            context()
        );
    }
    assert!(bytes.ends_with(&request.body_start), "{}", context());

    // Printed back, it is the same request.
    let mut printed = format!(
        "{} {} {}\r\n",
        request.method, request.target, request.version
    )
    .into_bytes();
    for (name, value) in &request.headers {
        printed.extend_from_slice(name.as_bytes());
        printed.extend_from_slice(b": ");
        printed.extend_from_slice(value);
        printed.extend_from_slice(b"\r\n");
    }
    printed.extend_from_slice(b"\r\n");
    printed.extend_from_slice(&request.body_start);
    match parse(&printed) {
        Ok(Some(again)) => {
            assert!(
                same_request(&again, request),
                "{}: printed {again:?}",
                context()
            );
            assert_eq!(again.body_start, request.body_start);
        }
        other => panic!("printed back, {other:?}: {}", context()),
    }
}
