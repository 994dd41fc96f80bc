//! The CGI response: status, headers and a body, buffered until the handler is done.

use std::io::{self, Write};

use crate::error::{Error, ErrorKind, Result};

/// The response a handler builds. Writing to it (`write!(cx.response, ...)`) appends to the body.
///
/// The body is buffered, so a session change made late in the handler still gets its
/// `Set-Cookie` into the headers; [`crate::Context::stream`] sends the headers early for long
/// output. A `HEAD` request's response carries no body.
///
/// ```
/// use std::io::Write;
/// let mut out = Vec::new();
/// let mut response = pso::Response::new(&mut out, false);
/// response.set_status(404)?;
/// response.set_content_type("text/plain; charset=utf-8")?;
/// response.add_header("X-Robots-Tag", "noindex")?;
/// write!(response, "no such page")?;
/// assert!(response.add_header("X-Bad", "a\r\nSet-Cookie: x=1").is_err());
/// response.send(&[])?;
/// assert_eq!(
///     String::from_utf8(out)?,
///     "Status: 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 12\r\nX-Robots-Tag: noindex\r\n\r\nno such page"
/// );
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Response<'a> {
    status: u16,
    content_type: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    head: bool,
    streaming: bool,
    out: &'a mut dyn Write,
}

impl<'a> Response<'a> {
    /// A `200 OK` HTML response that will be written to `out`; `head` drops the body.
    pub fn new(out: &'a mut dyn Write, head: bool) -> Response<'a> {
        Response {
            status: 200,
            content_type: "text/html; charset=utf-8".to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
            head,
            streaming: false,
            out,
        }
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Sets the status code (100 to 599).
    pub fn set_status(&mut self, status: u16) -> Result<()> {
        if !(100..=599).contains(&status) {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!("{status} is not an HTTP status code"),
            ));
        }
        self.status = status;
        Ok(())
    }

    /// The `Content-Type`.
    pub fn content_type(&self) -> &str {
        &self.content_type
    }

    /// Sets the `Content-Type` (default `text/html; charset=utf-8`).
    pub fn set_content_type(&mut self, content_type: &str) -> Result<()> {
        check_value("Content-Type", content_type)?;
        self.content_type = content_type.to_owned();
        Ok(())
    }

    /// Adds a header. `Status` and `Content-Type` are set with their own methods; the name must
    /// be an HTTP token and the value must not contain line breaks (header injection).
    pub fn add_header(&mut self, name: &str, value: &str) -> Result<()> {
        check_name(name)?;
        check_value(name, value)?;
        if name.eq_ignore_ascii_case("Status") || name.eq_ignore_ascii_case("Content-Type") {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!("set {name} with its own method, not as a header"),
            ));
        }
        self.headers.push((name.to_owned(), value.to_owned()));
        Ok(())
    }

    /// Replaces every header called `name` (any case) by one with `value`.
    pub fn set_header(&mut self, name: &str, value: &str) -> Result<()> {
        check_name(name)?;
        check_value(name, value)?;
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.add_header(name, value)
    }

    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Removes the `Set-Cookie` headers the handler added for cookie `name`; returns how many.
    pub(crate) fn remove_cookie(&mut self, name: &str) -> usize {
        let before = self.headers.len();
        self.headers.retain(|(n, v)| {
            !(n.eq_ignore_ascii_case("Set-Cookie")
                && v.split_once('=')
                    .is_some_and(|(cookie, _)| cookie.trim() == name))
        });
        before - self.headers.len()
    }

    /// Redirects the client to `location` with `302 Found`.
    pub fn redirect(&mut self, location: &str) -> Result<()> {
        self.set_header("Location", location)?;
        self.status = 302;
        Ok(())
    }

    /// The body written so far (empty once streaming).
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Whether the headers have been sent and the body goes straight out.
    pub fn is_streaming(&self) -> bool {
        self.streaming
    }

    /// Writes the headers plus `extra` ones and the buffered body, then streams what follows.
    ///
    /// `whole`: the body is complete, so its length goes out as `Content-Length` (unless the
    /// handler set one), and the web server need not chunk it or wait for the end.
    pub(crate) fn send_head(&mut self, extra: &[(&str, &str)], whole: bool) -> io::Result<()> {
        let mut head = format!(
            "Status: {} {}\r\nContent-Type: {}\r\n",
            self.status,
            reason(self.status),
            self.content_type
        );
        if whole && self.header("Content-Length").is_none() {
            head.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        let pairs = self.headers.iter().map(|(n, v)| (n.as_str(), v.as_str()));
        for (name, value) in pairs.chain(extra.iter().copied()) {
            head.push_str(name);
            head.push_str(": ");
            head.push_str(value);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        if !self.head {
            bytes.append(&mut self.body);
        }
        self.body = Vec::new();
        self.streaming = true;
        self.out.write_all(&bytes)
    }

    /// Sends the whole response: headers plus `extra` ones, then the body. The front end
    /// that owns the output flushes it (a FastCGI front end sends the last of the response
    /// and the end of the request in one write).
    pub fn send(mut self, extra: &[(&str, &str)]) -> io::Result<()> {
        if !self.streaming {
            self.send_head(extra, true)?;
        }
        Ok(())
    }

    /// Replaces whatever was built with a short error page and sends it (no body if streaming
    /// had begun: the status is gone by then, and only the log can tell).
    pub(crate) fn send_error(mut self, status: u16, extra: &[(&str, &str)]) -> io::Result<()> {
        if self.streaming {
            return Ok(());
        }
        let text = format!("{status} {}", reason(status));
        self.status = status;
        self.content_type = "text/html; charset=utf-8".to_owned();
        self.headers.clear();
        self.body =
            format!("<!DOCTYPE html>\n<title>{text}</title>\n<h1>{text}</h1>\n").into_bytes();
        self.send(extra)
    }
}

impl Write for Response<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match (self.streaming, self.head) {
            (false, _) => self.body.extend_from_slice(bytes),
            (true, false) => return self.out.write(bytes),
            (true, true) => {}
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.streaming {
            self.out.flush()
        } else {
            Ok(())
        }
    }
}

fn check_name(name: &str) -> Result<()> {
    let token = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if token {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Invalid,
            format!("{name:?} is not a header name"),
        ))
    }
}

fn check_value(name: &str, value: &str) -> Result<()> {
    if value
        .bytes()
        .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
    {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Invalid,
            format!("the value of {name} contains a control character"),
        ))
    }
}

/// The reason phrase for a status code.
fn reason(status: u16) -> &'static str {
    let known = match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        410 => "Gone",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    };
    match (known, status / 100) {
        ("", 1) => "Informational",
        ("", 2) => "Success",
        ("", 3) => "Redirection",
        ("", 4) => "Client Error",
        ("", _) => "Server Error",
        (known, _) => known,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_requests_get_no_body() {
        let mut out = Vec::new();
        let mut response = Response::new(&mut out, true);
        write!(response, "hidden").unwrap();
        response.send(&[("Set-Cookie", "a=b")]).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("Set-Cookie: a=b\r\n\r\n"), "{text:?}");
    }

    #[test]
    fn streaming_sends_the_head_once_then_writes_through() {
        let mut out = Vec::new();
        let mut response = Response::new(&mut out, false);
        write!(response, "a").unwrap();
        response.send_head(&[], false).unwrap();
        write!(response, "b").unwrap();
        response.send(&[("X", "ignored once streaming")]).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("\r\n\r\nab"), "{text:?}");
        assert!(!text.contains("ignored"));
    }

    #[test]
    fn headers_are_validated() {
        let mut out = Vec::new();
        let mut response = Response::new(&mut out, false);
        for (name, value) in [
            ("", "x"),
            ("A B", "x"),
            ("X", "a\nb"),
            ("X", "a\0"),
            ("Status", "200"),
        ] {
            assert!(
                response.add_header(name, value).is_err(),
                "{name:?}: {value:?}"
            );
        }
        assert!(response.set_content_type("text/html\r\nX: y").is_err());
        assert!(response.set_status(99).is_err() && response.set_status(600).is_err());
        response.redirect("/next").unwrap();
        response.redirect("/again").unwrap();
        assert_eq!(
            (response.status(), response.header("location")),
            (302, Some("/again"))
        );
    }

    #[test]
    fn error_pages_replace_what_was_built() {
        let mut out = Vec::new();
        let mut response = Response::new(&mut out, false);
        response.add_header("X-Partial", "1").unwrap();
        write!(response, "half a page").unwrap();
        response.send_error(500, &[]).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("Status: 500 Internal Server Error\r\n"));
        assert!(!text.contains("half a page") && !text.contains("X-Partial"));
    }
}
