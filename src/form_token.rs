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
            cross_site: request.from_another_site(),
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

    // ---------------------------------------------------------------------------------------
    // Through the request path.

    use crate::BoxError;
    use crate::runner::Context;
    use crate::testing::{Answer, Site, counter};
    use std::io::Write;

    /// `?new`: prints a new form token (`&keep`: in a stored session); a posted form: checks
    /// its `token` field.
    fn guarded(cx: &mut Context<'_>) -> Result<(), BoxError> {
        if cx.request.query("keep").is_some() {
            cx.session.set("kept", &true)?;
        }
        if cx.request.query("new").is_some() {
            let token = cx.session.create_form_token()?;
            write!(cx.response, "{token}")?;
        } else {
            let token = cx.request.form_value("token")?.unwrap_or_default();
            let verdict = if cx.session.take_form_token(&token)? {
                "accepted"
            } else {
                "refused"
            };
            write!(cx.response, "{verdict} {}", cx.request.form()?.len())?;
        }
        Ok(())
    }

    /// A form posted to [`guarded`] with `cookie` and the headers `extra`.
    fn post(site: &Site, cookie: &str, form: &str, extra: &[(&str, &str)]) -> Answer {
        site.visit()
            .cookie(cookie)
            .envs(extra)
            .post(form)
            .send(&guarded)
    }

    const SAME_ORIGIN: [(&str, &str); 1] = [("HTTP_SEC_FETCH_SITE", "same-origin")];

    #[test]
    fn a_form_token_survives_to_the_post_and_works_once() {
        let site = Site::new();
        let issued = site.visit().query("keep&new").send(&guarded);
        assert_eq!(
            issued.form_cookie(),
            None,
            "a stored session keeps its tokens"
        );
        let (token, cookie) = (
            issued.body().to_owned(),
            issued.cookie().unwrap().to_owned(),
        );
        let form = format!("user=eggs&token={token}");
        assert_eq!(post(&site, &cookie, &form, &[]).body(), "accepted 2");
        assert_eq!(
            post(&site, &cookie, &form, &[]).body(),
            "refused 2",
            "used up"
        );
        let other = site.visit().query("keep&new").send(&guarded);
        let theirs = format!("token={}", other.body());
        assert_eq!(
            post(&site, &cookie, &theirs, &[]).body(),
            "refused 1",
            "another session's token"
        );
    }

    #[test]
    fn a_visitor_without_a_stored_session_gets_a_token_bound_to_a_cookie_and_nothing_stored() {
        let site = Site::new();
        // A sign-in page fetched many times leaves nothing in the store.
        for _ in 0..500 {
            site.visit().query("new").send(&guarded);
        }
        assert_eq!(site.records(), 0);
        let issued = site.visit().query("new").send(&guarded);
        assert_eq!(issued.cookie(), None, "no session");
        let set = issued.set_cookies();
        assert_eq!(set.len(), 1, "{set:?}");
        assert!(
            set[0].ends_with("; HttpOnly; SameSite=Strict; Path=/")
                && set[0].starts_with("app.form="),
            "{set:?}"
        );
        assert!(issued.text.contains("Cache-Control: no-store"));
        let (token, browser) = (
            issued.body().to_owned(),
            issued.form_cookie().unwrap().to_owned(),
        );
        assert_ne!(
            token,
            browser.split_once('=').unwrap().1,
            "the secret is masked"
        );
        let form = format!("token={token}");

        // Not from another site, not without the cookie, not with another browser's cookie.
        let cross = [("HTTP_SEC_FETCH_SITE", "cross-site")];
        assert_eq!(post(&site, &browser, &form, &cross).body(), "refused 1");
        let forged_origin = [
            ("HTTP_ORIGIN", "https://evil.example"),
            ("HTTP_HOST", "shop.example"),
        ];
        assert_eq!(
            post(&site, &browser, &form, &forged_origin).body(),
            "refused 1"
        );
        assert_eq!(post(&site, "", &form, &SAME_ORIGIN).body(), "refused 1");
        let someone_else = site.visit().query("new").send(&guarded);
        let theirs = someone_else.form_cookie().unwrap();
        assert_eq!(post(&site, theirs, &form, &SAME_ORIGIN).body(), "refused 1");

        // From the site itself, with the browser's cookie: accepted, and the secret stays, so
        // the forms of the browser's other tabs still post.
        let accepted = post(&site, &browser, &form, &SAME_ORIGIN);
        assert_eq!(accepted.body(), "accepted 1");
        assert_eq!(accepted.set_cookies(), Vec::<&str>::new());
        let other_tab = site.visit().query("new").cookie(&browser).send(&guarded);
        assert_eq!(
            other_tab.set_cookies(),
            Vec::<&str>::new(),
            "the same secret"
        );
        let other_form = format!("token={}", other_tab.body());
        assert_eq!(
            post(&site, &browser, &other_form, &SAME_ORIGIN).body(),
            "accepted 1"
        );
        // Without Sec-Fetch-Site (an old browser), Origin decides; with neither, the token.
        let same_host = [
            ("HTTP_ORIGIN", "https://shop.example"),
            ("HTTP_HOST", "shop.example"),
        ];
        for headers in [&same_host[..], &[]] {
            let issued = site.visit().query("new").send(&guarded);
            let form = format!("token={}", issued.body());
            let browser = issued.form_cookie().unwrap();
            assert_eq!(post(&site, browser, &form, headers).body(), "accepted 1");
        }
        assert_eq!(site.records(), 0, "still nothing stored");

        // Under HTTPS the cookie is a __Host- cookie.
        let secure = site.visit().query("new").env("HTTPS", "on").send(&guarded);
        let set = secure.set_cookies();
        assert!(
            set[0].starts_with("__Host-app.form=") && set[0].contains("; Secure; Path=/"),
            "{set:?}"
        );
    }

    #[test]
    fn a_form_on_a_page_that_empties_a_stored_session_still_posts() {
        let site = Site::new();
        let kept = site.visit().query("keep").send(&guarded);
        let cookie = kept.cookie().unwrap().to_owned();
        let emptying = |cx: &mut Context<'_>| -> Result<(), BoxError> {
            cx.session.remove("kept")?;
            let token = cx.session.create_form_token()?;
            write!(cx.response, "{token}")?;
            Ok(())
        };
        let page = site.visit().cookie(&cookie).at(1).send(&emptying);
        assert!(page.set_cookies()[0].starts_with("app=; "), "{}", page.text);
        assert_eq!(site.records(), 0, "the emptied session is gone");
        let browser = page.form_cookie().unwrap().to_owned();
        let form = format!("token={}", page.body());
        assert_eq!(
            post(&site, &browser, &form, &SAME_ORIGIN).body(),
            "accepted 1"
        );
    }

    #[test]
    fn a_released_session_refuses_malformed_tokens_without_an_error() {
        let site = Site::new();
        let cookie = site.visit().issued(&counter);
        let taker = |cx: &mut Context<'_>| -> Result<(), BoxError> {
            cx.session.release()?;
            let empty = cx.session.take_form_token("")?;
            let odd = cx.session.take_form_token("x")?;
            let session_kind = cx.session.take_form_token(&"a".repeat(48)).is_err();
            write!(cx.response, "{empty} {odd} {session_kind}")?;
            Ok(())
        };
        let text = site.visit().cookie(&cookie).send(&taker).text;
        assert!(text.ends_with("false false true"), "{text}");
    }

    #[test]
    fn one_set_cookie_per_name_even_when_the_handler_adds_the_form_cookie() {
        let site = Site::new();
        let meddler = |cx: &mut Context<'_>| -> Result<(), BoxError> {
            cx.response
                .add_header("Set-Cookie", "app.form=chosen; Path=/")?;
            let token = cx.session.create_form_token()?;
            write!(cx.response, "{token}")?;
            Ok(())
        };
        let reply = site.visit().send(&meddler);
        let set = reply.set_cookies();
        assert_eq!(set.len(), 1, "{set:?}");
        assert!(!set[0].contains("chosen"), "{set:?}");
    }

    #[test]
    fn a_form_for_a_visitor_without_a_session_needs_no_lock_and_survives_a_sign_out() {
        let site = Site::new();
        // A read-only page shows a sign-in form.
        let show = |cx: &mut Context<'_>| -> Result<(), BoxError> {
            let token = cx.session.create_form_token()?;
            write!(cx.response, "{token}")?;
            Ok(())
        };
        let page = site.visit().read_only().send(&show);
        assert_eq!(page.body().len(), COOKIE_TOKEN_LEN, "{}", page.text);
        let browser = page.form_cookie().unwrap().to_owned();
        let form = format!("token={}", page.body());
        assert_eq!(
            post(&site, &browser, &form, &SAME_ORIGIN).body(),
            "accepted 1"
        );
        // A sign-out page that shows the sign-in form at once.
        let cookie = site.visit().issued(&counter);
        let sign_out = |cx: &mut Context<'_>| -> Result<(), BoxError> {
            cx.session.expire(crate::Expiry::Now)?;
            let token = cx.session.create_form_token()?;
            write!(cx.response, "{token}")?;
            Ok(())
        };
        let out = site.visit().cookie(&cookie).send(&sign_out);
        assert!(out.set_cookies()[0].starts_with("app=; "), "{}", out.text);
        let browser = out.form_cookie().unwrap().to_owned();
        let form = format!("token={}", out.body());
        assert_eq!(
            post(&site, &browser, &form, &SAME_ORIGIN).body(),
            "accepted 1"
        );
    }

    /// A read-only or released page of a visitor whose session has values can still show a
    /// form: its token is tied to the form cookie, since the session cannot keep it.
    #[test]
    fn a_page_that_cannot_change_the_session_still_shows_a_form() {
        let site = Site::new();
        let cookie = site.visit().issued(&counter);
        let show = |cx: &mut Context<'_>| -> Result<(), BoxError> {
            if cx.request.query("release").is_some() {
                cx.session.release()?;
            }
            let token = cx.session.create_form_token()?;
            write!(cx.response, "{token}")?;
            Ok(())
        };
        for page in [
            site.visit().cookie(&cookie).read_only().send(&show),
            site.visit().cookie(&cookie).query("release").send(&show),
        ] {
            assert_eq!(page.body().len(), COOKIE_TOKEN_LEN, "{}", page.text);
            let browser = format!("{cookie}; {}", page.form_cookie().unwrap());
            let form = format!("token={}", page.body());
            assert_eq!(
                post(&site, &browser, &form, &SAME_ORIGIN).body(),
                "accepted 1"
            );
        }
    }
}
