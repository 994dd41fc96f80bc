//! One HTTP/1.x request read from a connection and checked against what a CGI gateway must not
//! pass on; and the few responses the server writes itself.
//!
//! `httparse` parses; this module decides. Refused: a head over [`MAX_HEAD`] bytes or
//! [`MAX_HEADERS`] lines (431), any `Transfer-Encoding` (411, or 400 beside a
//! `Content-Length`: the ingredients of request smuggling), more than one `Content-Length` or
//! `Host`, a length that is not plain digits, control characters in a value, a target that is
//! not a path, a path with `%00` or an encoded `/`, or one that climbs above the root.

use std::io::{self, Read, Write};

/// The most bytes of request line and headers read.
pub const MAX_HEAD: usize = 16 * 1024;
/// The most header lines.
pub const MAX_HEADERS: usize = 64;
/// The largest body passed to a program.
pub const MAX_BODY: u64 = 64 << 20;

/// A request whose head was read and checked; its body, if any, is still on the connection
/// (after `body_start`).
#[derive(Debug)]
pub struct Request {
    /// The method, as sent (a token).
    pub method: String,
    /// The request target as sent, for `REQUEST_URI`.
    pub target: String,
    /// The path, percent-decoded, with `.` and `..` resolved; starts with `/`.
    pub path: String,
    /// What follows the first `?`, as sent.
    pub query: String,
    /// `HTTP/1.0` or `HTTP/1.1`.
    pub version: &'static str,
    /// Every header, names as sent, values as bytes.
    pub headers: Vec<(String, Vec<u8>)>,
    /// `Content-Length`, 0 without one.
    pub content_length: u64,
    /// Body bytes that arrived with the head.
    pub body_start: Vec<u8>,
}

impl Request {
    /// The value of the header `name` (the first, if several came), as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}

/// Why a request is not served: the status to answer with and a reason for the log.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub why: &'static str,
}

fn refuse<T>(status: u16, why: &'static str) -> Result<T, Refusal> {
    Err(Refusal { status, why })
}

/// What reading a request gave.
#[derive(Debug)]
pub enum Incoming {
    /// A request to serve.
    Request(Request),
    /// One to refuse.
    Refused(Refusal),
    /// The client closed the connection, or sent nothing in time, before a request began.
    Nothing,
}

/// Reads one request's head from `conn` (whose read timeout the caller set).
pub fn read_request(conn: &mut impl Read) -> Incoming {
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    loop {
        let room = (MAX_HEAD + 1 - buf.len()).min(chunk.len());
        let n = match conn.read(&mut chunk[..room]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) if buf.is_empty() => return Incoming::Nothing,
            Err(_) => {
                return Incoming::Refused(Refusal {
                    status: 408,
                    why: "the request head did not arrive in time",
                });
            }
        };
        if n == 0 {
            if buf.is_empty() {
                return Incoming::Nothing;
            }
            return Incoming::Refused(Refusal {
                status: 400,
                why: "the connection closed inside the request head",
            });
        }
        buf.extend_from_slice(&chunk[..n]);
        match parse(&buf) {
            Ok(Some(request)) => return Incoming::Request(request),
            Ok(None) if buf.len() > MAX_HEAD => {
                return Incoming::Refused(Refusal {
                    status: 431,
                    why: "the request head is too large",
                });
            }
            Ok(None) => {}
            Err(refusal) => return Incoming::Refused(refusal),
        }
    }
}

/// Parses and checks a head; `Ok(None)` while it is incomplete.
pub fn parse(buf: &[u8]) -> Result<Option<Request>, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let head_len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return refuse(431, "too many header lines"),
        Err(_) => return refuse(400, "the request head does not parse"),
    };
    if head_len > MAX_HEAD {
        return refuse(431, "the request head is too large");
    }
    let (Some(method), Some(target), Some(minor)) = (parsed.method, parsed.path, parsed.version)
    else {
        return refuse(400, "the request line is incomplete");
    };
    let version = if minor == 0 { "HTTP/1.0" } else { "HTTP/1.1" };

    let mut content_length = None;
    let mut transfer_encoding = false;
    let mut hosts = 0;
    let mut kept = Vec::with_capacity(parsed.headers.len());
    for header in parsed.headers.iter() {
        if header
            .value
            .iter()
            .any(|&b| b == b'\r' || b == b'\n' || b == 0 || (b < 0x20 && b != b'\t') || b == 0x7f)
        {
            return refuse(400, "a header value holds a control character");
        }
        let name = header.name;
        if name.eq_ignore_ascii_case("Transfer-Encoding") {
            transfer_encoding = true;
        } else if name.eq_ignore_ascii_case("Content-Length") {
            if content_length.is_some() {
                return refuse(400, "more than one Content-Length");
            }
            content_length = Some(parse_length(header.value)?);
        } else if name.eq_ignore_ascii_case("Host") {
            hosts += 1;
        }
        kept.push((name.to_string(), header.value.to_vec()));
    }
    if hosts > 1 {
        return refuse(400, "more than one Host");
    }
    if transfer_encoding {
        if content_length.is_some() {
            return refuse(400, "both Transfer-Encoding and Content-Length");
        }
        return refuse(
            411,
            "a body without Content-Length (chunked) cannot go to a CGI program",
        );
    }
    let content_length = content_length.unwrap_or(0);
    if content_length > MAX_BODY {
        return refuse(413, "the body is larger than the server takes");
    }

    let (raw_path, query) = target.split_once('?').unwrap_or((target, ""));
    if !raw_path.starts_with('/') {
        return refuse(400, "the request target is not a path");
    }
    let path = normalize(raw_path)?;
    Ok(Some(Request {
        method: method.to_string(),
        target: target.to_string(),
        path,
        query: query.to_string(),
        version,
        headers: kept,
        content_length,
        body_start: buf[head_len..].to_vec(),
    }))
}

fn parse_length(value: &[u8]) -> Result<u64, Refusal> {
    // Plain digits only: no sign, no list, no spaces inside. 19 digits always fit a u64.
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return refuse(400, "Content-Length is not a number");
    }
    let text = std::str::from_utf8(value).map_err(|_| Refusal {
        status: 400,
        why: "Content-Length is not a number",
    })?;
    text.parse().map_err(|_| Refusal {
        status: 400,
        why: "Content-Length is not a number",
    })
}

/// Decodes `%XX`, then resolves `.` and `..` segments (RFC 3986, 5.2.4), keeping a trailing
/// `/`. What decides "is this a program" sees only this one form.
pub fn normalize(raw: &str) -> Result<String, Refusal> {
    let decoded = percent_decode(raw)?;
    let mut segments: Vec<&str> = Vec::new();
    let parts: Vec<&str> = decoded.split('/').skip(1).collect();
    let last = parts.len().saturating_sub(1);
    for (i, segment) in parts.iter().enumerate() {
        match *segment {
            "." => {}
            ".." => {
                if segments.pop().is_none() {
                    return refuse(400, "the path climbs above the root");
                }
            }
            "" if i != last => {}
            s => segments.push(s),
        }
        if i == last && (*segment == "." || *segment == "..") {
            segments.push("");
        }
    }
    Ok(format!("/{}", segments.join("/")))
}

fn percent_decode(raw: &str) -> Result<String, Refusal> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            // Two hex digits, nothing else: from_str_radix alone would take a sign ("%+f").
            let hex = bytes
                .get(i + 1..i + 3)
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match hex {
                Some(0) => return refuse(400, "the path holds %00"),
                // Apache's AllowEncodedSlashes Off: an encoded `/` could pose as a separator.
                Some(b'/') => return refuse(404, "the path holds an encoded /"),
                Some(byte) => out.push(byte),
                None => return refuse(400, "the path holds a bad % escape"),
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Refusal {
        status: 400,
        why: "the path is not UTF-8",
    })
}

/// A Host header's name, without its port (`[::1]:8080` is `[::1]`).
pub fn host_name(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// Whether a Host header names this machine (`localhost`, `127.x.y.z`, `[::1]`, any port):
/// a server on loopback answers to nothing else, so that a web page cannot reach it through
/// DNS rebinding (a name of the attacker's that resolves to 127.0.0.1).
pub fn loopback_host(host: Option<&str>) -> bool {
    let Some(host) = host else { return false };
    let name = host_name(host);
    name.eq_ignore_ascii_case("localhost")
        || name == "[::1]"
        || name
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The reason phrase of a status the server itself answers with.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        205 => "Reset Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

/// Writes a whole response of the server's own, and closes the exchange.
pub fn respond(
    conn: &mut impl Write,
    status: u16,
    content_type: &str,
    extra_headers: &[(&str, &str)],
    body: &[u8],
    head_only: bool,
) -> io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        reason(status),
        body.len()
    );
    for (name, value) in extra_headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("Cache-Control: no-store\r\nConnection: close\r\n\r\n");
    let mut bytes = out.into_bytes();
    if !head_only {
        bytes.extend_from_slice(body);
    }
    conn.write_all(&bytes)
}

/// Writes an error page for `status`.
pub fn respond_error(conn: &mut impl Write, status: u16, why: &str) -> io::Result<()> {
    let body = format!("{status} {}\n{why}\n", reason(status));
    respond(
        conn,
        status,
        "text/plain; charset=utf-8",
        &[],
        body.as_bytes(),
        false,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(bytes: &[u8]) -> Incoming {
        read_request(&mut &bytes[..])
    }

    fn status_of(bytes: &[u8]) -> u16 {
        match read(bytes) {
            Incoming::Request(_) => 0,
            Incoming::Refused(refusal) => refusal.status,
            Incoming::Nothing => 1,
        }
    }

    #[test]
    fn reads_a_request_and_what_came_of_its_body() {
        let Incoming::Request(request) = read(
            b"POST /cgi-bin/app/x%20y?a=1&b HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nCookie: a=1\r\n\r\nab",
        ) else {
            panic!()
        };
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/cgi-bin/app/x y");
        assert_eq!(request.query, "a=1&b");
        assert_eq!(request.target, "/cgi-bin/app/x%20y?a=1&b");
        assert_eq!(request.content_length, 5);
        assert_eq!(request.body_start, b"ab");
        assert_eq!(request.header("cookie"), Some("a=1"));
        assert_eq!(request.version, "HTTP/1.1");
    }

    #[test]
    fn refuses_what_a_gateway_must_not_pass_on() {
        let cases: &[(&[u8], u16)] = &[
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                411,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
                400,
            ),
            (b"POST / HTTP/1.1\r\nContent-Length: 3, 4\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n", 400),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n",
                413,
            ),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nX: a\0b\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", 400),
            (b"GET http://evil/ HTTP/1.1\r\n\r\n", 400),
            (b"GET /a/../../etc/passwd HTTP/1.1\r\n\r\n", 400),
            (b"GET /cgi-bin/%2e%2e/%2e%2e/x HTTP/1.1\r\n\r\n", 400),
            (b"GET /cgi-bin%2freload HTTP/1.1\r\n\r\n", 404),
            (b"GET /a%00b HTTP/1.1\r\n\r\n", 400),
            (b"GET /a%zz HTTP/1.1\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\n folded: x\r\n\r\n", 400),
            (b"BAD REQUEST\r\n\r\n", 400),
        ];
        for (bytes, status) in cases {
            assert_eq!(
                status_of(bytes),
                *status,
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn caps_the_head() {
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_HEAD));
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(status_of(&big), 431);
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: a\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(status_of(&many), 431);
    }

    #[test]
    fn an_unfinished_head_is_refused_and_silence_is_nothing() {
        assert_eq!(status_of(b"GET / HTTP/1.1\r\nHost: a\r\n"), 400);
        assert_eq!(status_of(b""), 1);
    }

    #[test]
    fn only_loopback_names_are_loopback_hosts() {
        for host in [
            "127.0.0.1:8080",
            "localhost:8080",
            "LOCALHOST",
            "[::1]:80",
            "127.0.0.2",
        ] {
            assert!(loopback_host(Some(host)), "{host}");
        }
        for host in [
            "evil.example:8080",
            "10.0.0.1",
            "",
            "localhost.evil.example",
            "[::2]",
        ] {
            assert!(!loopback_host(Some(host)), "{host}");
        }
        assert!(!loopback_host(None));
    }

    #[test]
    fn normalizes_paths_to_one_form() {
        for (raw, want) in [
            ("/", "/"),
            ("/cgi-bin/reload", "/cgi-bin/reload"),
            ("/cgi-bin//reload", "/cgi-bin/reload"),
            ("/cgi-bin/./reload", "/cgi-bin/reload"),
            ("/x/../cgi-bin/reload", "/cgi-bin/reload"),
            ("/cgi-bin/", "/cgi-bin/"),
            ("/cgi-bin/x/..", "/cgi-bin/"),
            ("/%63gi-bin/reload", "/cgi-bin/reload"),
        ] {
            assert_eq!(normalize(raw).unwrap(), want, "{raw}");
        }
        assert!(normalize("/..").is_err());
    }
}
