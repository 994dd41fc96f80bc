//! The session cookie: which ids a `Cookie` header offers, and the `Set-Cookie` that answers it.

use std::time::SystemTime;

use cookie::time::{Duration as CookieDuration, OffsetDateTime};
use cookie::{Cookie, SameSite};

use crate::expiry::{Expiry, unix_secs};
use crate::id::SessionId;

/// Most ids naming stored sessions that one request locks and loads to find the visitor's.
/// A request offering more adopts none of them and ends them all.
pub const MAX_CANDIDATES: usize = 8;
/// Most distinct well-formed ids read from one header (each costs a cheap existence check):
/// far more than a browser sends, and more than fit in a header a web server accepts.
pub const MAX_OFFERED: usize = 256;

/// The session ids a `Cookie` header offers under one cookie name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct OfferedIds {
    /// The distinct well-formed ids, in header order; empty when there are too many.
    pub ids: Vec<SessionId>,
    /// More than [`MAX_OFFERED`] distinct ids came: none may be adopted, since which one wins
    /// must not depend on how many of them pso looks at.
    pub too_many: bool,
    /// Values under the name that are not session ids (never echoed, never used in a path).
    pub malformed: usize,
}

/// Every value that cookies named `name` carry in a `Cookie` header, as session ids.
///
/// The header is read as bytes and in full: no other cookie, however many there are and
/// whatever bytes they hold (not UTF-8, control characters, no `=`), can hide a session cookie
/// or make the header unreadable. Several `Cookie` headers arrive joined by `; ` (RFC 6265
/// §5.4); values may be quoted. Order carries no authority, since browsers send cookies with a
/// longer `Path` first and a cookie tossed from a sibling domain can choose its path: the
/// caller adopts only an id that names a live session, and none when several do.
///
/// ```
/// let header = b"theme=dark; \xff\xfe=\x01; app=\"0123456789abcdef0123456789abcdef0123456789abcdef\"; app=../../etc";
/// let offered = pso::cookies::offered_ids(header, "app");
/// assert_eq!(offered.ids.len(), 1);
/// assert_eq!(offered.ids[0].as_str(), "0123456789abcdef0123456789abcdef0123456789abcdef");
/// assert_eq!(offered.malformed, 1);
/// ```
pub fn offered_ids(header: &[u8], name: &str) -> OfferedIds {
    let mut offered = OfferedIds::default();
    let mut distinct = 0usize;
    for pair in header.split(|&b| b == b';') {
        let Some(eq) = pair.iter().position(|&b| b == b'=') else {
            continue;
        };
        if trim(&pair[..eq]) != name.as_bytes() {
            continue;
        }
        let mut value = trim(&pair[eq + 1..]);
        if let [b'"', inner @ .., b'"'] = value {
            value = inner;
        }
        match std::str::from_utf8(value).map(str::parse::<SessionId>) {
            Ok(Ok(id)) if !offered.ids.contains(&id) => {
                distinct += 1;
                if distinct <= MAX_OFFERED {
                    offered.ids.push(id);
                }
            }
            Ok(Ok(_)) => {}
            _ => offered.malformed += 1,
        }
    }
    if distinct > MAX_OFFERED {
        offered.ids.clear();
        offered.too_many = true;
    }
    offered
}

/// Without the spaces and tabs around it (RFC 6265 §5.2 OWS).
fn trim(bytes: &[u8]) -> &[u8] {
    let is_space = |b: &u8| *b == b' ' || *b == b'\t';
    let start = bytes
        .iter()
        .position(|b| !is_space(b))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !is_space(b))
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// Whether the session cookie is marked `Secure`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecureMode {
    /// `Secure` when the request came over HTTPS (the default).
    Auto,
    /// Always `Secure`.
    Always,
    /// Never `Secure`.
    Never,
}

/// The attributes of the session cookie (`PSOCookieSession_*`).
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// let settings = pso::cookies::CookieSettings::new("app");
/// let id = pso::SessionId::generate()?;
/// let now = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
/// let header = settings.set_cookie(&id, Some(now + Duration::from_secs(900)), now, true);
/// assert!(header.starts_with(&format!("app={id}; HttpOnly; SameSite=Lax; Secure; Path=/; Max-Age=900; Expires=")));
/// # Ok::<(), pso::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CookieSettings {
    /// The cookie's name: the prefix, if any, then the service id.
    pub name: String,
    /// `Path`; `/` by default.
    pub path: String,
    /// `Domain`; none by default, so the cookie goes back to this host only.
    pub domain: Option<String>,
    /// `Secure`.
    pub secure: SecureMode,
    /// `HttpOnly`: on by default, so page scripts (and XSS) cannot read the id.
    pub http_only: bool,
    /// `SameSite`: `Lax` by default, which stops most cross-site request forgery.
    pub same_site: SameSite,
    /// A cookie lifetime that overrides the session's own (`PSOCookieSession_Max-Age`).
    pub max_age: Option<Expiry>,
    /// A cookie expiry that overrides the session's own (`PSOCookieSession_expires`).
    pub expires: Option<Expiry>,
    /// The name has the `__Host-` prefix: browsers then demand `Secure`, `Path=/`, no `Domain`.
    pub host_prefix: bool,
}

impl CookieSettings {
    /// The defaults for a cookie named `name`; change a field to depart from them.
    pub fn new(name: &str) -> CookieSettings {
        CookieSettings {
            name: name.to_owned(),
            path: "/".to_owned(),
            domain: None,
            secure: SecureMode::Auto,
            http_only: true,
            same_site: SameSite::Lax,
            max_age: None,
            expires: None,
            host_prefix: false,
        }
    }

    /// The `Set-Cookie` value that hands the client `id`, valid until `deadline` (`None`: until
    /// the browser closes) unless the settings override the cookie's lifetime.
    pub fn set_cookie(
        &self,
        id: &SessionId,
        deadline: Option<SystemTime>,
        now: SystemTime,
        https: bool,
    ) -> String {
        let expires_at = self
            .max_age
            .or(self.expires)
            .map_or(deadline, |lifetime| lifetime.deadline(now));
        let mut cookie = self.base(id.as_str(), https);
        if let Some(at) = expires_at {
            let seconds = unix_secs(at).saturating_sub(unix_secs(now));
            cookie.set_max_age(CookieDuration::seconds(
                i64::try_from(seconds).unwrap_or(i64::MAX),
            ));
            cookie.set_expires(http_time(at));
        }
        cookie.to_string()
    }

    /// The `Set-Cookie` value that makes the client drop the cookie: empty, `Max-Age=0`, an
    /// `Expires` in the past, and the same `Path` and `Domain` as when it was set.
    ///
    /// ```
    /// let header = pso::cookies::CookieSettings::new("app").revoke_cookie(false);
    /// assert_eq!(header, "app=; HttpOnly; SameSite=Lax; Path=/; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT");
    /// ```
    pub fn revoke_cookie(&self, https: bool) -> String {
        let mut cookie = self.base("", https);
        cookie.set_max_age(CookieDuration::ZERO);
        cookie.set_expires(OffsetDateTime::UNIX_EPOCH);
        cookie.to_string()
    }

    /// Whether the cookie's lifetime runs from each response that sets it
    /// (`PSOCookieSession_Max-Age` or `_expires` as a duration), so that an active session's
    /// cookie must be sent again to stay alive.
    ///
    /// ```
    /// let mut settings = pso::cookies::CookieSettings::new("app");
    /// assert!(!settings.lifetime_slides());
    /// settings.max_age = Some(pso::Expiry::In(std::time::Duration::from_secs(3600)));
    /// assert!(settings.lifetime_slides());
    /// ```
    pub fn lifetime_slides(&self) -> bool {
        matches!(self.max_age.or(self.expires), Some(Expiry::In(_)))
    }

    /// The name of the cookie that ties form tokens to a browser that has no stored session
    /// yet: the session cookie's, then `.form` (a service id cannot contain a dot, so no
    /// service's session cookie has this name). When the cookie is `Secure` it is a `__Host-`
    /// cookie, which no other host, and nothing over plain HTTP, can set.
    ///
    /// ```
    /// let settings = pso::cookies::CookieSettings::new("app");
    /// assert_eq!(settings.form_cookie_name(false), "app.form");
    /// assert_eq!(settings.form_cookie_name(true), "__Host-app.form");
    /// ```
    pub fn form_cookie_name(&self, https: bool) -> String {
        let base = self
            .name
            .strip_prefix("__Host-")
            .or_else(|| self.name.strip_prefix("__Secure-"))
            .unwrap_or(&self.name);
        if self.is_secure(https) {
            format!("__Host-{base}.form")
        } else {
            format!("{base}.form")
        }
    }

    /// The `Set-Cookie` value that hands the browser its form secret (`None`: drops it):
    /// until the browser closes, for this host only, `Path=/`, `HttpOnly`, `SameSite=Strict`.
    ///
    /// ```
    /// let settings = pso::cookies::CookieSettings::new("app");
    /// let secret = pso::SessionId::generate()?;
    /// assert_eq!(
    ///     settings.form_cookie(Some(&secret), true),
    ///     format!("__Host-app.form={secret}; HttpOnly; SameSite=Strict; Secure; Path=/"),
    /// );
    /// assert!(settings.form_cookie(None, false).starts_with("app.form=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"));
    /// # Ok::<(), pso::Error>(())
    /// ```
    pub fn form_cookie(&self, secret: Option<&SessionId>, https: bool) -> String {
        let value = secret.map_or(String::new(), |secret| secret.as_str().to_owned());
        let mut cookie = Cookie::build((self.form_cookie_name(https), value))
            .http_only(true)
            .same_site(SameSite::Strict)
            .secure(self.is_secure(https))
            .path("/")
            .build();
        if secret.is_none() {
            cookie.set_max_age(CookieDuration::ZERO);
            cookie.set_expires(OffsetDateTime::UNIX_EPOCH);
        }
        cookie.to_string()
    }

    /// Whether the session cookie goes out `Secure` on a request that is (or is not) HTTPS.
    fn is_secure(&self, https: bool) -> bool {
        self.host_prefix
            || self.same_site == SameSite::None
            || match self.secure {
                SecureMode::Auto => https,
                SecureMode::Always => true,
                SecureMode::Never => false,
            }
    }

    fn base(&self, value: &str, https: bool) -> Cookie<'static> {
        let secure = self.is_secure(https);
        let mut cookie = Cookie::build((self.name.clone(), value.to_owned()))
            .http_only(self.http_only)
            .same_site(self.same_site)
            .secure(secure)
            .path(if self.host_prefix {
                "/".to_owned()
            } else {
                self.path.clone()
            })
            .build();
        if let (Some(domain), false) = (&self.domain, self.host_prefix) {
            cookie.set_domain(domain.clone());
        }
        cookie
    }
}

fn http_time(at: SystemTime) -> OffsetDateTime {
    let secs = i64::try_from(unix_secs(at)).unwrap_or(0);
    OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::{Duration, UNIX_EPOCH};

    const A: &str = "0123456789abcdef0123456789abcdef0123456789abcdef";
    const B: &str = "fedcba9876543210fedcba9876543210fedcba9876543210";

    fn ids(header: &str) -> Vec<String> {
        offered_ids(header.as_bytes(), "app")
            .ids
            .into_iter()
            .map(|id| id.to_string())
            .collect()
    }

    #[test]
    fn candidate_selection() {
        let cases: &[(&str, &[&str])] = &[
            ("", &[]),
            (&format!("app={A}"), &[A]),
            (&format!("  app={A}  "), &[A]),
            (&format!("\tapp =\t{A}"), &[A]),
            (&format!("x=1;app={A};y=2"), &[A]),
            (&format!("app=\"{A}\""), &[A]),
            (&format!("app={A}; app={B}"), &[A, B]),
            (&format!("app={A}; app={A}"), &[A]),
            (&format!("App={A}"), &[]),
            (&format!("apps={A}"), &[]),
            (&format!("xapp={A}"), &[]),
            ("app=../../etc/passwd", &[]),
            ("app=", &[]),
            ("app=\"", &[]),
            (&format!("app={}", A.to_uppercase()), &[]),
            (&format!("app={A}x"), &[]),
            (&format!("app={A}=x"), &[]),
            (&format!("junk; ;;=; app={A}; =x; \u{1}"), &[A]),
            (&format!("app=%30{}", &A[1..]), &[]),
            (&format!("app;app={A}"), &[A]),
        ];
        for (header, expected) in cases {
            assert_eq!(ids(header), *expected, "{header:?}");
        }
    }

    #[test]
    fn nothing_else_in_the_header_hides_the_session_cookie() {
        let mut bytes = Vec::new();
        for i in 0..5000 {
            bytes.extend_from_slice(format!("c{i}=v; ").as_bytes());
        }
        bytes.extend_from_slice(b"\xff\xfe\x80=\xc3\x28; x=\x00\x01; ");
        let tail = format!("app={A}");
        for header in [
            [bytes.clone(), tail.clone().into_bytes()].concat(),
            [tail.clone().into_bytes(), b"; ".to_vec(), bytes.clone()].concat(),
        ] {
            assert_eq!(
                offered_ids(&header, "app").ids,
                vec![A.parse::<SessionId>().unwrap()]
            );
        }
    }

    #[test]
    fn more_distinct_ids_than_checked_offer_none() {
        let many = |n: usize| -> String {
            (0..n)
                .map(|i| format!("app={:0>48}; ", format!("{i:x}")))
                .collect()
        };
        let at_cap = offered_ids(many(MAX_OFFERED).as_bytes(), "app");
        assert_eq!((at_cap.ids.len(), at_cap.too_many), (MAX_OFFERED, false));
        let over = offered_ids(many(MAX_OFFERED + 1).as_bytes(), "app");
        assert!(over.ids.is_empty() && over.too_many);
        // Repeats of one id and malformed values do not count towards the cap.
        let repeats = format!("{}app={A}; app=junk; ", format!("app={A}; ").repeat(50));
        assert_eq!(ids(&repeats), [A]);
    }

    #[test]
    fn set_cookie_attributes() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let id: SessionId = A.parse().unwrap();
        let mut s = CookieSettings::new("app");
        assert_eq!(
            s.set_cookie(&id, None, now, false),
            format!("app={A}; HttpOnly; SameSite=Lax; Path=/")
        );
        assert!(s.set_cookie(&id, None, now, true).contains("; Secure"));
        let header = s.set_cookie(&id, Some(now + Duration::from_secs(900)), now, false);
        assert!(
            header.ends_with("; Max-Age=900; Expires=Sun, 09 Sep 2001 02:01:40 GMT"),
            "{header}"
        );

        s.secure = SecureMode::Never;
        assert!(!s.set_cookie(&id, None, now, true).contains("Secure"));
        s.secure = SecureMode::Always;
        assert!(s.set_cookie(&id, None, now, false).contains("; Secure"));

        s = CookieSettings::new("app");
        s.domain = Some("example.org".into());
        s.path = "/cgi-bin/".into();
        s.http_only = false;
        s.same_site = SameSite::Strict;
        assert_eq!(
            s.set_cookie(&id, None, now, false),
            format!("app={A}; SameSite=Strict; Path=/cgi-bin/; Domain=example.org")
        );
        assert_eq!(
            s.revoke_cookie(false),
            "app=; SameSite=Strict; Path=/cgi-bin/; Domain=example.org; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT"
        );
    }

    #[test]
    fn cookie_lifetime_overrides_and_far_deadlines() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let id: SessionId = A.parse().unwrap();
        let mut s = CookieSettings::new("app");
        s.max_age = Some(Expiry::In(Duration::from_secs(60)));
        assert!(
            s.set_cookie(&id, None, now, false)
                .contains("; Max-Age=60;")
        );
        let far = s.set_cookie(&id, Some(now + Duration::from_secs(1 << 40)), now, false);
        assert!(far.contains("; Max-Age=60;"), "{far}");
        s.max_age = None;
        let far = s.set_cookie(
            &id,
            Some(UNIX_EPOCH + Duration::from_secs(1 << 40)),
            now,
            false,
        );
        assert!(
            far.ends_with("Expires=Fri, 31 Dec 9999 23:59:59 GMT"),
            "{far}"
        );
    }

    #[test]
    fn host_prefix_and_samesite_none_force_their_requirements() {
        let now = UNIX_EPOCH;
        let id: SessionId = A.parse().unwrap();
        let mut s = CookieSettings::new("__Host-app");
        s.host_prefix = true;
        s.path = "/x".into();
        s.domain = Some("example.org".into());
        s.secure = SecureMode::Never;
        assert_eq!(
            s.set_cookie(&id, None, now, false),
            format!("__Host-app={A}; HttpOnly; SameSite=Lax; Secure; Path=/")
        );
        let mut s = CookieSettings::new("app");
        s.same_site = SameSite::None;
        s.secure = SecureMode::Never;
        assert!(
            s.set_cookie(&id, None, now, false)
                .contains("SameSite=None; Secure")
        );
    }

    proptest! {
        #[test]
        fn any_header_yields_only_valid_ids(header in prop::collection::vec(any::<u8>(), 0..400)) {
            let offered = offered_ids(&header, "app");
            prop_assert!(offered.ids.len() <= MAX_OFFERED);
            for id in offered.ids {
                prop_assert!(id.as_str().parse::<SessionId>().is_ok());
            }
        }

        #[test]
        fn an_id_survives_any_other_cookie(pre in prop::collection::vec(any::<u8>(), 0..200), post in prop::collection::vec(any::<u8>(), 0..200)) {
            // Any bytes at all, cut at cookie boundaries, around the session cookie.
            let clean = |b: Vec<u8>| -> Vec<u8> { b.into_iter().filter(|&c| c != b';').collect() };
            let header = [clean(pre), format!("; app={A}; ").into_bytes(), clean(post)].concat();
            let offered = offered_ids(&header, "app");
            prop_assert!(offered.ids.contains(&A.parse::<SessionId>().unwrap()), "{:?}", offered);
        }

        #[test]
        fn an_id_survives_any_surrounding_junk(pre in "[a-z]{1,5}=[ -:<-~]{0,20}", post in "[a-z]{1,5}=[ -:<-~]{0,20}") {
            let header = format!("{pre}; app={A}; {post}");
            prop_assert_eq!(ids(&header), vec![A.to_string()]);
        }
    }
}
