//! Form tokens for a visitor the store holds nothing for: bound to a cookie, not to a session.
//!
//! A form token kept in the session makes a stored session of every visitor who merely sees a
//! form: a sign-in page fetched a million times would leave a million files (Django's
//! CVE-2015-5143 was this pattern). So until a visitor has a stored session, a token is tied
//! to a random secret in a cookie of its own instead (Django's CSRF cookie): the token is the
//! secret under a fresh random mask, so every form gets a different token and the secret never
//! appears in a page (BREACH), and checking one needs nothing stored. Nothing stored also means
//! nothing remembers a token once used: such a token is good until the secret changes (at
//! `regenerate_id()`, or when the browser closes), like Django's.
//!
//! Someone who can set cookies for the site (a sibling subdomain, or a network attacker on
//! plain HTTP) could plant a secret of their own and forge a matching token. Two things stop
//! that: under HTTPS the cookie is `__Host-` (no other host can set it, nor plain HTTP), and a
//! token of this kind is accepted only from a request the browser marks as coming from the
//! site itself (`Sec-Fetch-Site`, or else `Origin`, as Go's `CrossOriginProtection` checks).

use crate::error::Result;
use crate::id::{SessionId, same_secret};
use crate::request::Request;

/// Length of a token bound to the form cookie: a random mask and the masked secret, in hex.
/// Tokens kept in a session are half as long, so the two kinds never meet.
pub(crate) const COOKIE_TOKEN_LEN: usize = 2 * crate::id::GENERATED_ID_LEN;

/// What the form cookie of one request holds, and what becomes of it.
#[derive(Debug, Default)]
pub(crate) struct FormCookie {
    /// The secret tokens are checked against: the one the request brought, or one issued in
    /// this request; none once it is spent.
    secret: Option<SessionId>,
    /// The secret changed in this request: the response sets the cookie (or revokes it).
    changed: bool,
    /// The request does not come from the site itself: no token of this kind is accepted.
    cross_site: bool,
}

/// What the response tells the browser about its form cookie.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum FormCookieChange {
    /// Keep this secret (until the browser closes).
    Set(SessionId),
    /// Drop the cookie: its secret is void.
    Revoke,
}

impl FormCookie {
    /// The form cookie of a request: the secret its `Cookie` header brings under `name`
    /// (none if it brings several: tossed cookies decide nothing), and whether the request
    /// comes from another site.
    pub fn of_request(cookie_header: &[u8], name: &str, request: &Request<'_>) -> FormCookie {
        let offered = crate::cookies::offered_ids(cookie_header, name);
        if offered.ids.len() > 1 || offered.too_many {
            log::warn!("several form cookies {name} came (cookie tossing?); none is used");
        }
        let secret = match offered.ids.as_slice() {
            [one] => Some(one.clone()),
            _ => None,
        };
        FormCookie {
            secret,
            cross_site: cross_site(request),
            ..FormCookie::default()
        }
    }

    /// A new token for a form: the secret (issued now if there is none, unless the response
    /// head is out and a new cookie could no longer reach the browser) under a fresh mask.
    pub fn token(&mut self, head_sent: bool) -> Result<String> {
        let secret = match &self.secret {
            Some(secret) => secret.clone(),
            None if head_sent => {
                return Err(crate::Error::new(
                    crate::ErrorKind::Invalid,
                    "the response is streaming: a form token for a visitor without a stored session needs a cookie, and it is too late to send one",
                ));
            }
            None => {
                let secret = SessionId::generate()?;
                self.secret = Some(secret.clone());
                self.changed = true;
                secret
            }
        };
        let pad = SessionId::generate()?;
        let masked = xor_hex(pad.as_str(), secret.as_str());
        Ok(format!("{}{masked}", pad.as_str()))
    }

    /// Whether `token` masks this browser's secret, from a request of the site's own. The
    /// secret stays (as Django's CSRF cookie does): spending it on every post would refuse the
    /// other tabs' forms after a mistyped password. It changes at `regenerate_id()`.
    pub fn take(&self, token: &str) -> bool {
        let Some(secret) = &self.secret else {
            return false;
        };
        if token.len() != COOKIE_TOKEN_LEN || !token.is_char_boundary(COOKIE_TOKEN_LEN / 2) {
            return false;
        }
        let (pad, masked) = token.split_at(COOKIE_TOKEN_LEN / 2);
        let valid = is_lower_hex(pad)
            && is_lower_hex(masked)
            && same_secret(xor_hex(pad, masked).as_bytes(), secret.as_str().as_bytes());
        if !valid {
            return false;
        }
        if self.cross_site {
            log::warn!(
                "suspicious: a form token bound to the form cookie came from another site; refused"
            );
            return false;
        }
        true
    }

    /// Forgets the secret (a new id at sign-in): earlier tokens are void, and the response
    /// drops the cookie.
    pub fn void(&mut self) {
        if self.secret.take().is_some() {
            self.changed = true;
        }
    }

    /// What the response must say about the cookie, if anything.
    pub fn change(&self) -> Option<FormCookieChange> {
        if !self.changed {
            return None;
        }
        Some(match &self.secret {
            Some(secret) => FormCookieChange::Set(secret.clone()),
            None => FormCookieChange::Revoke,
        })
    }
}

/// Whether the browser says the request comes from another site: `Sec-Fetch-Site` other than
/// `same-origin` or `none` (typed by the user), or without it, an `Origin` whose host is not
/// the request's `Host`. A request with neither (an old browser, or no browser at all) is not
/// judged cross-site: the token check alone stands then.
pub(crate) fn cross_site(request: &Request<'_>) -> bool {
    if let Some(site) = request.header("Sec-Fetch-Site") {
        return !matches!(site.trim(), "same-origin" | "none");
    }
    let Some(origin) = request.header("Origin") else {
        return false;
    };
    let origin_host = origin
        .split_once("://")
        .map_or("", |(_, authority)| authority.trim_end_matches('/'));
    let host = request.header("Host").unwrap_or("");
    origin_host.is_empty() || !origin_host.eq_ignore_ascii_case(host.trim())
}

fn is_lower_hex(text: &str) -> bool {
    text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Two equally long lowercase hex strings combined digit by digit with XOR.
fn xor_hex(a: &str, b: &str) -> String {
    a.bytes()
        .zip(b.bytes())
        .map(|(x, y)| {
            let digit = hex_value(x) ^ hex_value(y);
            char::from_digit(u32::from(digit), 16).unwrap_or('0')
        })
        .collect()
}

fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::environment::Environment;

    fn request_with<'a>(env: &'a Environment, input: &'a mut dyn std::io::Read) -> Request<'a> {
        Request::new(env, input)
    }

    fn judged(headers: &[(&str, &str)]) -> bool {
        let env = Environment::from_pairs(headers.iter().copied());
        let mut input = std::io::empty();
        cross_site(&request_with(&env, &mut input))
    }

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
            assert_eq!(judged(headers), *expected, "{headers:?}");
        }
    }

    #[test]
    fn a_token_masks_the_secret_differently_every_time_and_is_good_until_voided() {
        let mut form = FormCookie::default();
        let first = form.token(false).unwrap();
        let second = form.token(false).unwrap();
        assert_ne!(first, second, "a fresh mask per form");
        assert_eq!(first.len(), COOKIE_TOKEN_LEN);
        let Some(FormCookieChange::Set(secret)) = form.change() else {
            panic!("a new secret is sent");
        };
        assert!(!first.contains(secret.as_str()), "the secret never shows");
        assert!(form.take(&second));
        assert!(form.take(&first), "another tab's form still posts");
        form.void();
        assert!(
            !form.take(&first) && !form.take(&second),
            "void after regenerate_id"
        );
        assert_eq!(form.change(), Some(FormCookieChange::Revoke));
    }

    #[test]
    fn a_secret_brought_back_checks_the_tokens_made_from_it() {
        let mut first = FormCookie::default();
        let token = first.token(false).unwrap();
        let Some(FormCookieChange::Set(secret)) = first.change() else {
            panic!("a new secret is sent");
        };
        let header = format!("app.form={secret}");
        let env = Environment::from_pairs([("HTTP_SEC_FETCH_SITE", "same-origin")]);
        let mut input = std::io::empty();
        let request = request_with(&env, &mut input);
        let back = FormCookie::of_request(header.as_bytes(), "app.form", &request);
        assert_eq!(back.change(), None, "nothing to send until used");
        let mut forged = token.clone().into_bytes();
        forged[COOKIE_TOKEN_LEN - 1] ^= 1;
        for bad in [
            String::from_utf8(forged).unwrap(),
            token.to_uppercase(),
            token[..COOKIE_TOKEN_LEN - 1].to_owned(),
            format!("{token}0"),
            secret.to_string(),
            "é".repeat(COOKIE_TOKEN_LEN / 2),
            String::new(),
        ] {
            assert!(!back.take(&bad), "{bad}");
        }
        assert!(back.take(&token));

        // Two different secrets tossed in: none counts.
        let other = SessionId::generate().unwrap();
        let tossed = format!("app.form={secret}; app.form={other}");
        let two = FormCookie::of_request(tossed.as_bytes(), "app.form", &request);
        assert!(!two.take(&token));

        // The right token from another site is refused.
        let env = Environment::from_pairs([("HTTP_SEC_FETCH_SITE", "cross-site")]);
        let mut input = std::io::empty();
        let request = request_with(&env, &mut input);
        let cross = FormCookie::of_request(header.as_bytes(), "app.form", &request);
        assert!(!cross.take(&token));
    }

    #[test]
    fn no_new_secret_once_the_head_is_out() {
        let mut form = FormCookie::default();
        assert!(form.token(true).is_err());
    }
}
