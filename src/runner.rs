//! One request: ties its environment, configuration, store, session, handler and response
//! together, whichever front end (CGI, FastCGI, the terminal) brought it.
//!
//! Nothing here touches process-global state, so requests run on many threads at once; a
//! handler's error or panic costs its own request only.

use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::SystemTime;

use crate::adoption::{Claim, adopt, adopt_read_only};
use crate::config::Config;
use crate::cookies::CookieSettings;
use crate::environment::Environment;
use crate::error::{BoxError, ErrorChain, ErrorKind, Result};
use crate::expiry::Clock;
use crate::form_token::{FormCookie, FormCookieChange};
use crate::request::Request;
use crate::response::Response;
use crate::session::{CookieAction, Session};
use crate::store::Store;

/// A request handler: a function or closure that serves one request from its [`Context`].
///
/// Any `Fn(&mut Context) -> Result<(), BoxError>` that may run on several threads at once is
/// one; `?` works on any error type inside it.
pub trait Handler: Fn(&mut Context<'_>) -> Result<(), BoxError> + Send + Sync {}

impl<F> Handler for F where F: Fn(&mut Context<'_>) -> Result<(), BoxError> + Send + Sync {}

/// What a handler gets: the request, the session, and the response it builds.
pub struct Context<'a> {
    /// The request.
    pub request: Request<'a>,
    /// The visitor's session, locked for this request.
    pub session: Session,
    /// The response; the body is buffered until the handler returns.
    pub response: Response<'a>,
    cookie: &'a CookieSettings,
    https: bool,
    now: SystemTime,
    /// Whether links carry the id (`PSOSessionUrl=on` and no session cookie came back).
    ids_in_urls: bool,
}

impl<'a> Context<'a> {
    /// When this request started: the time every expiry decision of the request uses.
    pub fn now(&self) -> SystemTime {
        self.now
    }

    /// A link to `url` (a path, with or without a query) for this visitor: with
    /// `PSOSessionUrl=on` and no session cookie in the request, it carries the session id
    /// (pso's `mkurl`), so a client without cookies keeps its session; otherwise `url` as is.
    /// A URL that can lead to another site (one with a scheme, `https://…`, `mailto:…`, or
    /// one the browser reads as naming a host, `//host/…`, `/\host`) is returned as it is,
    /// never with the id: the id would go to that site.
    pub fn url(&self, url: &str) -> String {
        if !self.ids_in_urls || leaves_the_site(url) {
            return url.to_owned();
        }
        let (path, fragment) = url
            .split_once('#')
            .map_or((url, None), |(p, f)| (p, Some(f)));
        let separator = if path.contains('?') { '&' } else { '?' };
        let mut link = format!(
            "{path}{separator}{}={}",
            self.cookie.name,
            self.session.id().as_str()
        );
        if let Some(fragment) = fragment {
            link.push('#');
            link.push_str(fragment);
        }
        link
    }

    /// Saves the session and sends the headers now, so that what the handler writes next goes
    /// straight to the client (long pages, progress output).
    ///
    /// The session's cookie is fixed at this point: an expiry set later is saved on the
    /// server but the cookie sent keeps the old one. The status can no longer change, so an
    /// error after this point is only logged.
    pub fn stream(&mut self) -> Result<()> {
        if self.response.is_streaming() {
            return Ok(());
        }
        let action = self.session.commit()?;
        let cookies = self.cookie_headers(&action);
        let cookie_sent = match action {
            CookieAction::Set(..) => true,
            CookieAction::Refresh(..) => self.cookie.lifetime_slides(),
            CookieAction::Revoke | CookieAction::Nothing => false,
        };
        self.session.head_sent(cookie_sent || self.ids_in_urls);
        let extra = cache_headers(&self.response, &cookies, self.session.is_personal());
        self.response.send_head(&extra, false)?;
        Ok(())
    }

    /// The `Set-Cookie` values of the response: the session cookie's, then the form cookie's.
    fn cookie_headers(&mut self, action: &CookieAction) -> Vec<String> {
        // One Set-Cookie per name and response: the session's own is pso's to send.
        if *action != CookieAction::Nothing && self.response.remove_cookie(&self.cookie.name) > 0 {
            log::warn!(
                "dropped a Set-Cookie for {} that the handler added: pso sends the session cookie",
                self.cookie.name
            );
        }
        let mut cookies = Vec::with_capacity(2);
        match action {
            CookieAction::Set(id, deadline) => {
                cookies.push(self.cookie.set_cookie(id, *deadline, self.now, self.https));
            }
            // Sent again only where the cookie's own lifetime runs from each response.
            CookieAction::Refresh(id, deadline) if self.cookie.lifetime_slides() => {
                cookies.push(self.cookie.set_cookie(id, *deadline, self.now, self.https));
            }
            CookieAction::Revoke => cookies.push(self.cookie.revoke_cookie(self.https)),
            CookieAction::Refresh(..) | CookieAction::Nothing => {}
        }
        if let Some(change) = self.session.form_cookie_change() {
            let secret = match &change {
                FormCookieChange::Set(secret) => Some(secret),
                FormCookieChange::Revoke => None,
            };
            let name = self.cookie.form_cookie_name(self.https);
            if self.response.remove_cookie(&name) > 0 {
                log::warn!("dropped a Set-Cookie for {name} that the handler added: pso sends it");
            }
            cookies.push(self.cookie.form_cookie(secret, self.https));
        }
        cookies
    }

    /// Saves the session and sends the response; on failure sends an error page instead.
    fn finish(mut self) -> io::Result<Answer> {
        if self.response.is_streaming() {
            let saved = self.session.commit_last();
            if let Err(e) = &saved {
                log::error!(
                    "saving the session after streaming failed: {}",
                    ErrorChain(e)
                );
            }
            self.response.send(&[])?;
            return Ok(if saved.is_err() {
                Answer::Failed
            } else {
                Answer::Served
            });
        }
        let action = match self.session.commit_last() {
            Ok(action) => action,
            Err(e) => {
                log::error!("saving the session failed: {}", ErrorChain(&e));
                return self.fail(error_status(e.kind()));
            }
        };
        let cookies = self.cookie_headers(&action);
        let personal = self.session.is_personal();
        // The session is stored: let the next request of this session in before we write.
        let response = self.into_response();
        let extra = cache_headers(&response, &cookies, personal);
        response.send(&extra)?;
        Ok(Answer::Served)
    }

    /// Sends an error page in place of the response; unsaved changes are dropped. What the
    /// request already stored under an id the browser does not have (a `save()` or `release()`
    /// before the failure, after `regenerate_id()` or for a new session) keeps its cookie, or
    /// the visitor would lose that session with the page.
    fn fail(mut self, status: u16) -> io::Result<Answer> {
        let owed = self.session.cookie_owed();
        let cookies = match owed {
            CookieAction::Nothing => Vec::new(),
            owed => self.cookie_headers(&owed),
        };
        let mut extra: Vec<(&str, &str)> = cookies
            .iter()
            .map(|cookie| ("Set-Cookie", cookie.as_str()))
            .collect();
        if !extra.is_empty() {
            extra.push(("Cache-Control", "no-store"));
        }
        self.into_response().send_error(status, &extra)?;
        Ok(Answer::Failed)
    }

    /// Ends the request's hold on its session (unsaved changes are dropped, the lock is
    /// released) and keeps only the response.
    fn into_response(self) -> Response<'a> {
        self.response
    }
}

/// `Set-Cookie`s, plus `Cache-Control: no-store` when the handler set no caching policy and
/// a cookie goes out or the response is made from a stored session or an expired one's data
/// (`personal`), as PHP's `nocache` limiter does: a shared cache must never store and replay a
/// session id, a form secret, or one visitor's page to another (a response with no
/// `Set-Cookie` of its own would otherwise look like anyone's). A policy of the handler's that
/// lets shared caches keep a response with a cookie is kept, and logged.
fn cache_headers<'c>(
    response: &Response<'_>,
    cookies: &'c [String],
    personal: bool,
) -> Vec<(&'static str, &'c str)> {
    let mut extra: Vec<(&'static str, &'c str)> = cookies
        .iter()
        .map(|cookie| ("Set-Cookie", cookie.as_str()))
        .collect();
    if let Some(policy) = response.header("Cache-Control")
        && !cookies.is_empty()
        && !["private", "no-store", "no-cache"]
            .iter()
            .any(|word| policy.to_ascii_lowercase().contains(word))
    {
        log::warn!(
            "a response that sets a cookie has Cache-Control: {policy}, which lets a shared cache hand it (and the cookie) to other visitors"
        );
    }
    if (personal || !cookies.is_empty()) && response.header("Cache-Control").is_none() {
        extra.push(("Cache-Control", "no-store"));
    }
    extra
}

fn error_status(kind: ErrorKind) -> u16 {
    match kind {
        ErrorKind::LockTimeout | ErrorKind::LockLost | ErrorKind::Unavailable => 503,
        ErrorKind::OldId => 409,
        _ => 500,
    }
}

/// How a request's response went: the handler's answer, or an error page in its place (the
/// handler failed or panicked, or the session could not be had or saved).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    Served,
    Failed,
}

/// How a request may use its session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// Locked for the request, saved at its end.
    ReadWrite,
    /// Read without the lock, never saved (`run_read_only`).
    ReadOnly,
}

/// One request: its session, the handler, the response. Nothing after the response, and the
/// output is not flushed: that is the front end's.
pub(crate) fn respond<F>(
    env: &Environment,
    config: &Config,
    store: &dyn Store,
    (input, output): (&mut dyn Read, &mut dyn Write),
    handler: &F,
    now: SystemTime,
    access: Access,
) -> io::Result<Answer>
where
    F: Handler,
{
    let request = Request::new(env, input);
    let https = request.is_https();
    let head = request.is_head();
    if request.content_length() > config.max_body {
        log::warn!(
            "a request body of {} bytes is over PSOMaxBodyBytes ({}); refused",
            request.content_length(),
            config.max_body
        );
        Response::new(output, head).send_error(413, &[])?;
        return Ok(Answer::Failed);
    }
    let claim = Claim {
        cookie_header: env
            .get_os("HTTP_COOKIE")
            .map_or(&[][..], |header| header.as_bytes()),
        client_addr: request.remote_addr(),
        query: request.query_string(),
        from_the_site_itself: request.from_the_site_itself(),
    };
    let clock = Clock::starting_at(now);
    let adopted = match access {
        Access::ReadWrite => adopt(store, config, &claim, clock),
        Access::ReadOnly => adopt_read_only(store, config, &claim, clock),
    };
    let session = match adopted {
        Ok(session) => {
            log::debug!("session {:?}: {:?}", session.id(), session.origin());
            let form_cookie = config.cookie.form_cookie_name(https);
            session.with_form_cookie(FormCookie::of_request(
                claim.cookie_header,
                &form_cookie,
                &request,
            ))
        }
        Err(e) => {
            log::error!("{}", ErrorChain(&e));
            let status = error_status(e.kind());
            let retry: &[(&str, &str)] = if status == 503 {
                &[("Retry-After", "5")]
            } else {
                &[]
            };
            Response::new(output, head).send_error(status, retry)?;
            return Ok(Answer::Failed);
        }
    };
    let mut cx = Context {
        request,
        session,
        response: Response::new(output, head),
        cookie: &config.cookie,
        https,
        now,
        ids_in_urls: config.url_ids
            && crate::cookies::offered_ids(
                env.get_os("HTTP_COOKIE")
                    .map_or(&[][..], |header| header.as_bytes()),
                &config.cookie.name,
            )
            .ids
            .is_empty(),
    };
    let outcome = catch_unwind(AssertUnwindSafe(|| handler(&mut cx)));
    match outcome {
        Ok(Ok(())) => cx.finish(),
        Ok(Err(e)) => {
            log::error!("the handler failed: {}", ErrorChain(&*e));
            let kind = e
                .downcast_ref::<crate::Error>()
                .map_or(ErrorKind::Io, crate::Error::kind);
            cx.fail(error_status(kind))
        }
        Err(_) => {
            log::error!("the handler panicked; its session changes are discarded");
            cx.fail(500)
        }
    }
}

/// Whether a link may lead away from this site: it names a scheme (`https:`, `mailto:`,
/// `javascript:`) or a host (`//host`; browsers read `\` as `/` and skip leading blanks and
/// control characters, so `/\host` and ` //host` do too).
fn leaves_the_site(url: &str) -> bool {
    // Browsers also drop tabs and line ends anywhere in a URL.
    let url: String = url
        .chars()
        .filter(|c| !matches!(c, '\t' | '\n' | '\r'))
        .collect();
    let url = url.trim_start_matches(|c: char| c.is_ascii_whitespace() || c.is_ascii_control());
    let mut start = url.chars();
    if matches!(
        (start.next(), start.next()),
        (Some('/' | '\\'), Some('/' | '\\'))
    ) {
        return true;
    }
    // RFC 3986: a scheme is a letter, then letters, digits, `+`, `-` or `.`, before a `:`
    // that comes before any `/`, `?` or `#`.
    let head = &url[..url.find(['/', '?', '#']).unwrap_or(url.len())];
    head.split_once(':').is_some_and(|(scheme, _)| {
        scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Site, counter};

    #[test]
    fn links_that_can_leave_the_site_are_told_apart_from_paths() {
        for away in [
            "https://other.example/x",
            "HTTP://other.example",
            "mailto:a@b.example",
            "javascript:alert(1)",
            "//other.example/x",
            "/\\other.example",
            "\\\\other.example",
            " //other.example",
            "/\t/other.example",
            "\u{1}//other.example",
            "a+b.c-d:x",
        ] {
            assert!(leaves_the_site(away), "{away:?}");
        }
        for path in [
            "/cgi-bin/app?page=2#top",
            "next",
            "../up",
            "?page=2",
            "#top",
            "/a:b",
            "page?when=12:30",
            "./x:y",
            "1a:x",
            "",
        ] {
            assert!(!leaves_the_site(path), "{path:?}");
        }
    }

    #[test]
    fn the_cookie_chain_counts_and_session_pages_are_never_cached() {
        let site = Site::new();
        let first = site.visit().send(&counter);
        assert_eq!(first.body(), "1");
        let cookie = first.cookie().unwrap().to_owned();
        assert!(first.text.contains("Cache-Control: no-store\r\n"));
        let second = site.visit().cookie(&cookie).send(&counter);
        assert_eq!((second.body(), second.cookie()), ("2", None));
        // No Set-Cookie of its own, but a page made from a stored session all the same: a
        // shared cache must not keep it for others.
        assert!(
            second.text.contains("Cache-Control: no-store\r\n"),
            "{}",
            second.text
        );
        // The handler's own policy stands.
        let cached = |cx: &mut Context<'_>| -> Result<(), BoxError> {
            cx.response
                .set_header("Cache-Control", "private, max-age=60")?;
            counter(cx)
        };
        let third = site.visit().cookie(&cookie).send(&cached);
        assert_eq!(third.body(), "3");
        assert!(
            third
                .text
                .contains("Cache-Control: private, max-age=60\r\n"),
            "{}",
            third.text
        );
        assert!(!third.text.contains("no-store"), "{}", third.text);
        // A visitor with no session and no cookie: nothing personal, nothing added.
        let anonymous = |cx: &mut Context<'_>| -> Result<(), BoxError> {
            write!(cx.response, "hello")?;
            Ok(())
        };
        let plain = site.visit().send(&anonymous);
        assert!(!plain.text.contains("Cache-Control"), "{}", plain.text);
    }

    #[test]
    fn errors_and_panics_discard_the_changes() {
        let site = Site::new();
        let cookie = site.visit().issued(&counter);
        for query in ["fail=1", "panic=1"] {
            let reply = site.visit().cookie(&cookie).query(query).send(&counter);
            assert!(reply.text.starts_with("Status: 500 "), "{}", reply.text);
            assert_eq!(reply.cookie(), None);
        }
        assert_eq!(site.visit().cookie(&cookie).send(&counter).body(), "2");
    }

    #[test]
    fn the_handler_cannot_send_a_second_session_cookie() {
        let handler = |cx: &mut Context<'_>| -> Result<(), BoxError> {
            cx.session.set("k", &1u8)?;
            cx.response
                .add_header("Set-Cookie", "app=attacker-chosen; Path=/")?;
            cx.response.add_header("Set-Cookie", "theme=dark")?;
            Ok(())
        };
        let text = Site::new().visit().send(&handler).text;
        assert_eq!(text.matches("Set-Cookie: app=").count(), 1, "{text}");
        assert!(!text.contains("attacker-chosen") && text.contains("Set-Cookie: theme=dark"));
    }

    #[test]
    fn head_requests_save_but_send_no_body() {
        let reply = Site::new()
            .visit()
            .env("REQUEST_METHOD", "HEAD")
            .send(&counter);
        assert!(reply.text.ends_with("\r\n\r\n"));
        assert!(reply.cookie().is_some());
    }

    #[test]
    fn streaming_sends_the_cookie_with_the_early_head() {
        let handler = |cx: &mut Context<'_>| -> Result<(), BoxError> {
            cx.session.set("k", &1u8)?;
            cx.stream()?;
            write!(cx.response, "streamed")?;
            Ok(())
        };
        let text = Site::new().visit().send(&handler).text;
        assert!(text.contains("Set-Cookie: app="), "{text}");
        assert!(text.ends_with("\r\n\r\nstreamed"));
    }

    #[test]
    fn form_bodies_up_to_the_cap_are_read_and_larger_ones_get_413() {
        let fields = |cx: &mut Context<'_>| -> Result<(), BoxError> {
            write!(cx.response, "{}", cx.request.form()?.len())?;
            Ok(())
        };
        let site = Site::new();
        let cap = [("PSOMaxBodyBytes", "1024")];
        let at_cap = format!("a={}", "x".repeat(1022));
        assert_eq!(
            site.visit().envs(&cap).post(&at_cap).send(&fields).body(),
            "1"
        );
        let many = "a&".repeat(crate::request::MAX_FORM_FIELDS + 1);
        let reply = site
            .visit()
            .env("PSOMaxBodyBytes", "1M")
            .post(&many)
            .send(&fields);
        assert!(
            reply.text.starts_with("Status: 500"),
            "too many fields: {}",
            reply.text
        );
        let over = format!("a={}", "x".repeat(1023));
        let reply = site.visit().envs(&cap).post(&over).send(&fields);
        assert!(reply.text.starts_with("Status: 413"), "{}", reply.text);
    }

    /// A page made from an expired session's data is that visitor's too.
    #[test]
    fn a_page_made_from_expired_data_is_not_cached() {
        let site = Site::new();
        let idle = [("PSOSessionIdle", "60")];
        let cookie = site.visit().envs(&idle).issued(&counter);
        let audit = |cx: &mut Context<'_>| -> Result<(), BoxError> {
            if let Some(old) = cx.session.take_expired() {
                write!(cx.response, "{:?}", old.get::<u64>("n")?)?;
            }
            Ok(())
        };
        let reply = site
            .visit()
            .envs(&idle)
            .cookie(&cookie)
            .at(200)
            .send(&audit);
        assert_eq!(reply.body(), "Some(1)");
        assert!(
            reply.text.contains("Cache-Control: no-store"),
            "{}",
            reply.text
        );
    }
}
