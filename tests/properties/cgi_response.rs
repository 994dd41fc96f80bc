//! What a CGI program prints, checked as a web server reads it (RFC 3875 §6).

// Each target uses a part.
#![allow(dead_code)]

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// Every value of the header `name`.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Checks that `output` is one well-formed response and returns it: a `Status` line first,
/// then `Name: value` lines (a token for a name, no control character in a value), one
/// `Content-Type`, a blank line, and a body as long as a `Content-Length` says (none after a
/// `HEAD`, whose `Content-Length` is that of the body a `GET` would get).
pub fn parse(output: &[u8], head_request: bool) -> Response {
    let end = output
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of the head: {:?}", String::from_utf8_lossy(output)));
    let head = std::str::from_utf8(&output[..end]).expect("a head in UTF-8");
    let body = output[end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap_or("");
    let status_line = first
        .strip_prefix("Status: ")
        .unwrap_or_else(|| panic!("the head does not start with Status: {head:?}"));
    let status: u16 = status_line
        .get(..3)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status code: {first:?}"));
    assert!((100..600).contains(&status), "{first:?}");
    let is_token = |name: &str| {
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(": ")
            .unwrap_or_else(|| panic!("a header line without ': ': {line:?}"));
        assert!(is_token(name), "a header name that is no token: {line:?}");
        assert!(
            value
                .bytes()
                .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f)),
            "a control character in a header value: {line:?}"
        );
        headers.push((name.to_owned(), value.to_owned()));
    }
    let response = Response {
        status,
        headers,
        body,
    };
    assert_eq!(response.all("Content-Type").len(), 1, "{head:?}");
    assert!(
        response.all("Status").is_empty(),
        "a second Status: {head:?}"
    );
    let lengths = response.all("Content-Length");
    assert!(lengths.len() <= 1, "{head:?}");
    if let ([length], false) = (&lengths[..], head_request) {
        assert_eq!(length.parse().ok(), Some(response.body.len()), "{head:?}");
    }
    if head_request {
        assert!(response.body.is_empty(), "a body after HEAD: {head:?}");
    }
    response
}
