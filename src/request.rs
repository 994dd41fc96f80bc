//! The CGI request (RFC 3875): its meta-variables and its body.

use std::borrow::Cow;
use std::io::{Read, Take};

use crate::environment::Environment;

/// The most fields a form body may have: far more than any form a person fills in, and a
/// bound on what parsing a body can cost.
pub const MAX_FORM_FIELDS: usize = 1_000;

/// One request, as the web server describes it in meta-variables, with its body.
///
/// ```
/// let env = pso::Environment::from_pairs([
///     ("REQUEST_METHOD", "POST"),
///     ("QUERY_STRING", "page=2&q=spam%20eggs"),
///     ("HTTP_USER_AGENT", "curl/8"),
///     ("CONTENT_LENGTH", "5"),
/// ]);
/// let mut input: &[u8] = b"hello, and more than CONTENT_LENGTH";
/// let mut request = pso::Request::new(&env, &mut input);
/// assert_eq!(request.method(), "POST");
/// assert_eq!(request.query("q").as_deref(), Some("spam eggs"));
/// assert_eq!(request.header("User-Agent"), Some("curl/8"));
/// let mut body = String::new();
/// std::io::Read::read_to_string(request.body(), &mut body)?;
/// assert_eq!(body, "hello");
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Request<'a> {
    env: &'a Environment,
    body: Take<&'a mut dyn Read>,
    length: u64,
    /// The form body, once read.
    form: Option<Vec<(String, String)>>,
}

impl<'a> Request<'a> {
    /// A request described by `env`, whose body (if any) is read from `input`.
    pub fn new(env: &'a Environment, input: &'a mut dyn Read) -> Request<'a> {
        let length = content_length(env);
        Request {
            env,
            body: input.take(length),
            length,
            form: None,
        }
    }

    /// `CONTENT_LENGTH`: the body's announced size; 0 without one (or with one that is not a
    /// number, which is logged).
    pub fn content_length(&self) -> u64 {
        self.length
    }

    /// `REQUEST_METHOD`; `GET` when unset (a program run from a terminal).
    pub fn method(&self) -> &str {
        self.env.get("REQUEST_METHOD").unwrap_or("GET")
    }

    /// Whether this is a `HEAD` request, whose response has no body.
    pub fn is_head(&self) -> bool {
        self.method().eq_ignore_ascii_case("HEAD")
    }

    /// Any meta-variable or server-set variable.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.env.get(name)
    }

    /// The whole environment of the request.
    pub fn env(&self) -> &Environment {
        self.env
    }

    /// A request header by its HTTP name (`User-Agent` is `HTTP_USER_AGENT`).
    pub fn header(&self, name: &str) -> Option<&str> {
        let upper = name.to_ascii_uppercase().replace('-', "_");
        match upper.as_str() {
            "CONTENT_TYPE" | "CONTENT_LENGTH" => self.env.get(&upper),
            _ => self.env.get(&format!("HTTP_{upper}")),
        }
    }

    /// `QUERY_STRING`, still URL-encoded.
    pub fn query_string(&self) -> &str {
        self.env.get("QUERY_STRING").unwrap_or("")
    }

    /// The query string's name/value pairs, decoded.
    pub fn query_pairs(&self) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
        form_urlencoded::parse(self.query_string().as_bytes())
    }

    /// The first value of query parameter `name`.
    pub fn query(&self, name: &str) -> Option<String> {
        self.query_pairs()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.into_owned())
    }

    /// `SCRIPT_NAME`: the URL path of the program.
    pub fn script_name(&self) -> &str {
        self.env.get("SCRIPT_NAME").unwrap_or("")
    }

    /// `PATH_INFO`: the URL path after the program's.
    pub fn path_info(&self) -> &str {
        self.env.get("PATH_INFO").unwrap_or("")
    }

    /// `REMOTE_ADDR`: the client's address.
    pub fn remote_addr(&self) -> Option<&str> {
        self.env.get("REMOTE_ADDR")
    }

    /// Whether the browser says the request comes from another site: `Sec-Fetch-Site` other
    /// than `same-origin` or `none` (typed by the user, a bookmark), or without it, an
    /// `Origin` whose host is not the request's `Host` (compared without the scheme, as Go's
    /// `CrossOriginProtection` does). A request with neither (an old browser, or no browser
    /// at all) is not judged to come from another site. A sibling subdomain counts as another
    /// site: it may be someone else's.
    ///
    /// ```
    /// let env = pso::Environment::from_pairs([("HTTP_SEC_FETCH_SITE", "cross-site")]);
    /// let mut body = std::io::empty();
    /// let request = pso::Request::new(&env, &mut body);
    /// assert!(request.from_another_site());
    /// ```
    pub fn from_another_site(&self) -> bool {
        if let Some(site) = self.header("Sec-Fetch-Site") {
            return !matches!(site.trim(), "same-origin" | "none");
        }
        let Some(origin) = self.header("Origin") else {
            return false;
        };
        let origin_host = origin
            .split_once("://")
            .map_or("", |(_, authority)| authority.trim_end_matches('/'));
        let host = self.header("Host").unwrap_or("");
        origin_host.is_empty() || !origin_host.eq_ignore_ascii_case(host.trim())
    }

    /// Whether the browser says the request comes from one of the site's own pages:
    /// `Sec-Fetch-Site: same-origin`, or without that header, an `Origin`, or else a `Referer`,
    /// naming the request's `Host`. A request that says nothing (typed, bookmarked, pasted; a
    /// plain-HTTP site, to which browsers send no `Sec-Fetch-Site`; a page that sends no
    /// `Referer`) is not. Stricter than the negation of [`Request::from_another_site`]: for
    /// what must not happen unless the site itself asked for it.
    ///
    /// ```
    /// let env = pso::Environment::from_pairs([
    ///     ("HTTP_HOST", "shop.example"),
    ///     ("HTTP_REFERER", "http://shop.example/cart"),
    /// ]);
    /// let mut body = std::io::empty();
    /// assert!(pso::Request::new(&env, &mut body).from_the_site_itself());
    /// let bare = pso::Environment::from_pairs([("HTTP_HOST", "shop.example")]);
    /// assert!(!pso::Request::new(&bare, &mut body).from_the_site_itself());
    /// ```
    pub fn from_the_site_itself(&self) -> bool {
        if let Some(site) = self.header("Sec-Fetch-Site") {
            return site.trim() == "same-origin";
        }
        let host = self.header("Host").unwrap_or("").trim();
        let names_this_host = |url: &str| {
            let authority = url.split_once("://").map_or("", |(_, rest)| rest);
            let authority = authority.split(['/', '?', '#']).next().unwrap_or("");
            !host.is_empty() && authority.eq_ignore_ascii_case(host)
        };
        match (self.header("Origin"), self.header("Referer")) {
            (Some(origin), _) => names_this_host(origin),
            (None, Some(referer)) => names_this_host(referer),
            (None, None) => false,
        }
    }

    /// Whether the request came over HTTPS (`HTTPS=on`, or `REQUEST_SCHEME=https`).
    pub fn is_https(&self) -> bool {
        let on = |name| {
            self.env.get(name).is_some_and(|v| {
                matches!(
                    v.to_ascii_lowercase().as_str(),
                    "on" | "1" | "true" | "https"
                )
            })
        };
        on("HTTPS") || on("REQUEST_SCHEME")
    }

    /// The request body: at most `CONTENT_LENGTH` bytes, none without it (RFC 3875 §4.2).
    pub fn body(&mut self) -> &mut impl Read {
        &mut self.body
    }

    /// The fields of an HTML form sent as `application/x-www-form-urlencoded` (a `POST`): the
    /// body, read whole (at most `CONTENT_LENGTH` bytes, which `PSOMaxBodyBytes` caps: a
    /// request announcing more gets a 413 before the handler runs), then kept. Empty for any
    /// other content type; a form sent with `GET` is in [`Request::query`]. More than
    /// [`MAX_FORM_FIELDS`] fields is an error (`InvalidData`).
    ///
    /// ```
    /// let env = pso::Environment::from_pairs([
    ///     ("REQUEST_METHOD", "POST"),
    ///     ("CONTENT_TYPE", "application/x-www-form-urlencoded; charset=UTF-8"),
    ///     ("CONTENT_LENGTH", "26"),
    /// ]);
    /// let mut input: &[u8] = b"user=eggs&password=sp%26am";
    /// let mut request = pso::Request::new(&env, &mut input);
    /// assert_eq!(request.form_value("user")?.as_deref(), Some("eggs"));
    /// assert_eq!(request.form_value("password")?.as_deref(), Some("sp&am"));
    /// assert_eq!(request.form_value("missing")?, None);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn form(&mut self) -> std::io::Result<&[(String, String)]> {
        if self.form.is_none() {
            let is_form = self.env.get("CONTENT_TYPE").is_some_and(|kind| {
                kind.split(';').next().is_some_and(|kind| {
                    kind.trim()
                        .eq_ignore_ascii_case("application/x-www-form-urlencoded")
                })
            });
            let mut bytes = Vec::new();
            if is_form {
                self.body.read_to_end(&mut bytes)?;
            }
            let mut fields = Vec::new();
            for field in form_urlencoded::parse(&bytes) {
                if fields.len() == MAX_FORM_FIELDS {
                    // A megabyte of `&a&a` would be half a million strings.
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("the form has more than {MAX_FORM_FIELDS} fields"),
                    ));
                }
                let (name, value) = field;
                fields.push((name.into_owned(), value.into_owned()));
            }
            self.form = Some(fields);
        }
        Ok(self.form.as_deref().unwrap_or_default())
    }

    /// The first value of the form field `name` (see [`Request::form`]).
    pub fn form_value(&mut self, name: &str) -> std::io::Result<Option<String>> {
        Ok(self
            .form()?
            .iter()
            .find(|(field, _)| field == name)
            .map(|(_, value)| value.clone()))
    }
}

fn content_length(env: &Environment) -> u64 {
    match env.get("CONTENT_LENGTH").map(str::trim) {
        None | Some("") => 0,
        Some(text) => text.parse().unwrap_or_else(|_| {
            log::warn!("CONTENT_LENGTH {text:?} is not a number; reading no body");
            0
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_browser_says_where_a_request_comes_from() {
        let cases: &[(&[(&str, &str)], bool)] = &[
            (&[], false),
            (&[("HTTP_SEC_FETCH_SITE", "same-origin")], false),
            (&[("HTTP_SEC_FETCH_SITE", "none")], false),
            (&[("HTTP_SEC_FETCH_SITE", "same-site")], true),
            (&[("HTTP_SEC_FETCH_SITE", "cross-site")], true),
            (&[("HTTP_SEC_FETCH_SITE", "")], true),
            // Sec-Fetch-Site decides when it is there, whatever Origin says.
            (
                &[
                    ("HTTP_SEC_FETCH_SITE", "same-origin"),
                    ("HTTP_ORIGIN", "https://evil.example"),
                    ("HTTP_HOST", "shop.example"),
                ],
                false,
            ),
            (
                &[
                    ("HTTP_ORIGIN", "https://shop.example"),
                    ("HTTP_HOST", "shop.example"),
                ],
                false,
            ),
            (
                &[
                    ("HTTP_ORIGIN", "http://SHOP.example:8080"),
                    ("HTTP_HOST", "shop.example:8080"),
                ],
                false,
            ),
            (
                &[
                    ("HTTP_ORIGIN", "https://evil.example"),
                    ("HTTP_HOST", "shop.example"),
                ],
                true,
            ),
            (
                &[
                    ("HTTP_ORIGIN", "https://a.shop.example"),
                    ("HTTP_HOST", "shop.example"),
                ],
                true,
            ),
            (
                &[("HTTP_ORIGIN", "null"), ("HTTP_HOST", "shop.example")],
                true,
            ),
            (&[("HTTP_ORIGIN", "https://shop.example")], true),
        ];
        for (headers, expected) in cases {
            let env = Environment::from_pairs(headers.iter().copied());
            let mut input = std::io::empty();
            let request = Request::new(&env, &mut input);
            assert_eq!(request.from_another_site(), *expected, "{headers:?}");
        }
    }

    #[test]
    fn only_the_sites_own_pages_count_as_the_site_itself() {
        let cases: &[(&[(&str, &str)], bool)] = &[
            (&[], false),
            (&[("HTTP_HOST", "shop.example")], false),
            (&[("HTTP_SEC_FETCH_SITE", "same-origin")], true),
            (&[("HTTP_SEC_FETCH_SITE", "none")], false),
            (&[("HTTP_SEC_FETCH_SITE", "same-site")], false),
            (
                &[
                    ("HTTP_SEC_FETCH_SITE", "cross-site"),
                    ("HTTP_HOST", "shop.example"),
                    ("HTTP_REFERER", "http://shop.example/"),
                ],
                false,
            ),
            (
                &[
                    ("HTTP_HOST", "shop.example"),
                    ("HTTP_REFERER", "http://shop.example/a?b"),
                ],
                true,
            ),
            (
                &[
                    ("HTTP_HOST", "shop.example:8080"),
                    ("HTTP_REFERER", "http://SHOP.example:8080/"),
                ],
                true,
            ),
            (
                &[
                    ("HTTP_HOST", "shop.example"),
                    ("HTTP_REFERER", "http://shop.example.evil.test/"),
                ],
                false,
            ),
            (
                &[
                    ("HTTP_HOST", "shop.example"),
                    ("HTTP_REFERER", "http://evil.test/?shop.example"),
                ],
                false,
            ),
            (
                &[
                    ("HTTP_HOST", "shop.example"),
                    ("HTTP_REFERER", "http://user@shop.example/"),
                ],
                false,
            ),
            (
                &[
                    ("HTTP_HOST", "shop.example"),
                    ("HTTP_ORIGIN", "http://shop.example"),
                    ("HTTP_REFERER", "http://evil.test/"),
                ],
                true,
            ),
            (
                &[
                    ("HTTP_HOST", "shop.example"),
                    ("HTTP_ORIGIN", "null"),
                    ("HTTP_REFERER", "http://shop.example/"),
                ],
                false,
            ),
            (&[("HTTP_REFERER", "http://shop.example/")], false),
        ];
        for (headers, expected) in cases {
            let env = Environment::from_pairs(headers.iter().copied());
            let mut input = std::io::empty();
            let request = Request::new(&env, &mut input);
            assert_eq!(request.from_the_site_itself(), *expected, "{headers:?}");
        }
    }
}
