//! Testing a handler without a web server: a [`Client`] sends it requests as a browser would,
//! keeping the cookies it is given, through the path every front end takes (CGI and FastCGI
//! alike), over sessions kept in memory.
//!
//! ```
//! use std::io::Write;
//! use pso::testing::Client;
//!
//! fn counter(cx: &mut pso::Context) -> Result<(), pso::BoxError> {
//!     let n: u64 = cx.session.get("n")?.unwrap_or(0) + 1;
//!     cx.session.set("n", &n)?;
//!     write!(cx.response, "visit {n}")?;
//!     Ok(())
//! }
//!
//! let mut browser = Client::new(counter);
//! assert_eq!(browser.get("/cgi-bin/app").text(), "visit 1");
//! assert_eq!(browser.get("/cgi-bin/app").text(), "visit 2");
//! // Another browser has a session of its own.
//! assert_eq!(Client::new(counter).get("/cgi-bin/app").text(), "visit 1");
//! ```

#[cfg(test)]
mod site;
#[cfg(test)]
pub(crate) use site::*;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::environment::Environment;
use crate::runner::Handler;
use crate::service::Service;
use crate::store::MemoryStore;

/// A browser for one handler: it sends requests, keeps the cookies the answers set (and drops
/// those they revoke), and has a clock of its own that tests can move on.
///
/// Every request comes from `127.0.0.1` to host `localhost`, as `/cgi-bin/app` (so the
/// session cookie is `app`, unless `PSOServiceId` says otherwise); [`Client::env`] sets
/// anything else, PSO variables included, as `SetEnv` would.
pub struct Client<H: Handler> {
    handler: H,
    store: MemoryStore,
    env: Vec<(String, String)>,
    cookies: BTreeMap<String, String>,
    now: SystemTime,
}

impl<H: Handler> Client<H> {
    /// A browser for `handler`, with no cookies, over a new memory store, at the time now.
    pub fn new(handler: H) -> Client<H> {
        Client {
            handler,
            store: MemoryStore::new(),
            env: vec![
                ("GATEWAY_INTERFACE".into(), "CGI/1.1".into()),
                ("SCRIPT_NAME".into(), "/cgi-bin/app".into()),
                ("SERVER_NAME".into(), "localhost".into()),
                ("SERVER_PORT".into(), "80".into()),
                ("HTTP_HOST".into(), "localhost".into()),
                ("REMOTE_ADDR".into(), "127.0.0.1".into()),
            ],
            cookies: BTreeMap::new(),
            now: SystemTime::now(),
        }
    }

    /// Sets a variable for every request from now on (a CGI variable such as `SCRIPT_NAME`
    /// or `REMOTE_ADDR`, or a PSO one such as `PSOSessionExpire`), as `SetEnv` would.
    ///
    /// ```
    /// # use std::io::Write;
    /// let mut browser = pso::testing::Client::new(|cx: &mut pso::Context| {
    ///     cx.session.set("seen", &true)?;
    ///     Ok(())
    /// })
    /// .env("PSOServiceId", "shop");
    /// browser.get("/");
    /// assert!(browser.cookie("shop").is_some());
    /// ```
    pub fn env(mut self, name: &str, value: &str) -> Client<H> {
        self.env.retain(|(set, _)| set != name);
        self.env.push((name.into(), value.into()));
        self
    }

    /// The sessions, for a look at what the handler stored, or to share them with another
    /// client (see [`Client::with_store`]).
    pub fn store(&self) -> &MemoryStore {
        &self.store
    }

    /// The same site seen by another browser: sessions in `store` (another client's, say).
    pub fn with_store(mut self, store: MemoryStore) -> Client<H> {
        self.store = store;
        self
    }

    /// Moves this browser's clock on: sessions idle out and expire as they would.
    pub fn advance(&mut self, by: Duration) {
        self.now += by;
    }

    /// The value of the cookie `name` this browser holds.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.cookies.get(name).map(String::as_str)
    }

    /// Sets the cookie `name` as if a page had (`None`: forgets it), to bring an id from
    /// elsewhere.
    pub fn set_cookie(&mut self, name: &str, value: Option<&str>) {
        match value {
            Some(value) => self.cookies.insert(name.into(), value.into()),
            None => self.cookies.remove(name),
        };
    }

    /// A `GET` of `url`: a path with a query, if any (`/cgi-bin/app?page=2`).
    pub fn get(&mut self, url: &str) -> Reply {
        self.send("GET", url, &[], Vec::new())
    }

    /// A form posted to `url` from one of the site's own pages, as a browser sends it
    /// (`application/x-www-form-urlencoded`).
    ///
    /// ```
    /// # use std::io::Write;
    /// let mut browser = pso::testing::Client::new(|cx: &mut pso::Context| {
    ///     if let Some(token) = cx.request.form_value("token")? {
    ///         let ok = cx.session.take_form_token(&token)?;
    ///         write!(cx.response, "{}", if ok { "done" } else { "refused" })?;
    ///     } else {
    ///         let token = cx.session.create_form_token()?;
    ///         write!(cx.response, r#"<input type="hidden" name="token" value="{token}">"#)?;
    ///     }
    ///     Ok(())
    /// });
    /// let token = browser.get("/form").input_value("token").unwrap();
    /// assert_eq!(browser.post_form("/form", &[("token", &token)]).text(), "done");
    /// assert_eq!(browser.post_form("/form", &[("token", "forged")]).text(), "refused");
    /// ```
    pub fn post_form(&mut self, url: &str, fields: &[(&str, &str)]) -> Reply {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish()
            .into_bytes();
        let headers = [
            ("CONTENT_TYPE", "application/x-www-form-urlencoded"),
            ("HTTP_ORIGIN", "http://localhost"),
            ("HTTP_SEC_FETCH_SITE", "same-origin"),
        ];
        self.send("POST", url, &headers, body)
    }

    fn send(&mut self, method: &str, url: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Reply {
        let query = url.split_once('?').map_or("", |(_, query)| query);
        let mut env: Vec<(String, String)> = self.env.clone();
        let length = body.len().to_string();
        let cookies = self
            .cookies
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join("; ");
        let mut set = |name: &str, value: &str| {
            env.retain(|(set, _)| set != name);
            env.push((name.into(), value.into()));
        };
        set("REQUEST_METHOD", method);
        set("REQUEST_URI", url);
        set("QUERY_STRING", query);
        if !cookies.is_empty() {
            set("HTTP_COOKIE", &cookies);
        }
        if !body.is_empty() {
            set("CONTENT_LENGTH", &length);
        }
        for (name, value) in headers {
            set(name, value);
        }
        let service = Service::new(Environment::default()).with_store(Arc::new(self.store.clone()));
        let mut output = Vec::new();
        // Neither the input (a slice) nor the output (a vector) can fail.
        service
            .serve(
                &Environment::from_pairs(env),
                &mut body.as_slice(),
                &mut output,
                &self.handler,
                self.now,
            )
            .expect("serving from memory into memory cannot fail");
        let reply = Reply::parse(&output);
        self.keep_cookies(&reply);
        reply
    }

    /// Keeps the cookies an answer sets, drops those it revokes, as a browser does.
    fn keep_cookies(&mut self, reply: &Reply) {
        for header in reply.headers("Set-Cookie") {
            let Ok(cookie) = cookie::Cookie::parse(header.to_owned()) else {
                continue;
            };
            let revoked = cookie.max_age().is_some_and(|age| age.is_zero())
                || cookie
                    .expires_datetime()
                    .is_some_and(|at| SystemTime::from(at) <= self.now);
            if revoked {
                self.cookies.remove(cookie.name());
            } else {
                self.cookies
                    .insert(cookie.name().to_owned(), cookie.value().to_owned());
            }
        }
    }
}

/// An answer, read back: its status, headers and body.
#[derive(Clone, Debug)]
pub struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    /// Reads a CGI answer (`Status:` and other header lines, a blank line, the body).
    fn parse(output: &[u8]) -> Reply {
        let split = output
            .windows(4)
            .position(|window| window == b"\r\n\r\n")
            .map_or((output, &[][..]), |at| (&output[..at], &output[at + 4..]));
        let head = String::from_utf8_lossy(split.0);
        let mut status = 200;
        let mut headers = Vec::new();
        for line in head.split("\r\n") {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim().to_owned();
            if name.eq_ignore_ascii_case("Status") {
                status = value
                    .split(' ')
                    .next()
                    .and_then(|code| code.parse().ok())
                    .unwrap_or(500);
            } else {
                headers.push((name.to_owned(), value));
            }
        }
        Reply {
            status,
            headers,
            body: split.1.to_vec(),
        }
    }

    /// The status code: `200`, `303`, `409`, ...
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The first header named `name` (in any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers(name).into_iter().next()
    }

    /// Every header named `name` (in any case), in order: `Set-Cookie` comes once per cookie.
    pub fn headers(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(header, _)| header.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
            .collect()
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The body as text (bytes that are not UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `value` of the first `<input>` of the body whose `name` is `name`, for a form token
    /// or another hidden field: attributes quoted with `"` or `'`, in any order, HTML entities
    /// `&amp; &lt; &gt; &quot; &#39;` decoded.
    pub fn input_value(&self, name: &str) -> Option<String> {
        let text = self.text();
        let lower = text.to_ascii_lowercase();
        let mut from = 0;
        while let Some(start) = lower[from..].find("<input").map(|at| from + at) {
            let end = lower[start..].find('>').map_or(text.len(), |at| start + at);
            let tag = &text[start..end];
            if attribute(tag, "name").as_deref() == Some(name) {
                return attribute(tag, "value");
            }
            from = end;
        }
        None
    }
}

/// The value of attribute `wanted` in an HTML tag's text, decoded.
fn attribute(tag: &str, wanted: &str) -> Option<String> {
    let lower = tag.to_ascii_lowercase();
    let mut from = 0;
    while let Some(at) = lower[from..].find(wanted).map(|at| from + at) {
        from = at + wanted.len();
        // A whole attribute name: after white space, before `=`.
        let before = lower[..at].chars().next_back();
        let after = lower[from..].trim_start();
        if !before.is_some_and(char::is_whitespace) || !after.starts_with('=') {
            continue;
        }
        let value = after[1..].trim_start();
        let quote = value.chars().next()?;
        let value = if quote == '"' || quote == '\'' {
            let rest = &tag[tag.len() - value.len() + 1..];
            &rest[..rest.find(quote)?]
        } else {
            let rest = &tag[tag.len() - value.len()..];
            &rest[..rest.find(char::is_whitespace).unwrap_or(rest.len())]
        };
        return Some(
            value
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&#39;", "'")
                .replace("&amp;", "&"),
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_found_whatever_their_attributes_order_and_quotes() {
        let reply = Reply::parse(
            b"Status: 200 OK\r\nContent-Type: text/html\r\n\r\n\
              <form><INPUT type=hidden value='a&amp;b' name='t'>\
              <input name=\"x\" value=\"1\"><input data-name=\"y\" name=\"y\" value=2></form>",
        );
        assert_eq!(reply.input_value("t").as_deref(), Some("a&b"));
        assert_eq!(reply.input_value("x").as_deref(), Some("1"));
        assert_eq!(reply.input_value("y").as_deref(), Some("2"));
        assert_eq!(reply.input_value("z"), None);
        assert_eq!(reply.status(), 200);
        assert_eq!(reply.header("content-type"), Some("text/html"));
    }

    #[test]
    fn a_revoked_cookie_is_forgotten_and_the_clock_ends_sessions() {
        let mut browser = Client::new(|cx: &mut crate::Context<'_>| {
            if cx.request.query("out").is_some() {
                cx.session.expire(crate::Expiry::Now)?;
            } else {
                cx.session.set("in", &true)?;
            }
            Ok(())
        })
        .env("PSOSessionIdle", "60");
        browser.get("/");
        assert!(browser.cookie("app").is_some());
        browser.get("/?out");
        assert_eq!(browser.cookie("app"), None);
        browser.get("/");
        let first = browser.cookie("app").unwrap().to_owned();
        browser.advance(Duration::from_secs(61));
        browser.get("/");
        assert_ne!(browser.cookie("app"), Some(first.as_str()), "idled out");
    }
}
