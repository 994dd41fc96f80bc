//! One request: ties its environment, configuration, store, session, handler and response
//! together, whichever front end (CGI, FastCGI, the terminal) brought it.
//!
//! Nothing here touches process-global state, so requests run on many threads at once; a
//! handler's error or panic costs its own request only.

use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, SystemTime};

use crate::adoption::{Claim, adopt, adopt_read_only};
use crate::config::Config;
use crate::cookies::CookieSettings;
use crate::environment::Environment;
use crate::error::{BoxError, ErrorChain, ErrorKind, Result};
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
    pub fn url(&self, url: &str) -> String {
        if !self.ids_in_urls {
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
        self.session.head_sent();
        let extra = cache_headers(&self.response, &cookies);
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
            CookieAction::Revoke => cookies.push(self.cookie.revoke_cookie(self.https)),
            CookieAction::Nothing => {}
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
    fn finish(mut self) -> io::Result<Served> {
        if self.response.is_streaming() {
            let saved = self.session.commit();
            if let Err(e) = &saved {
                log::error!(
                    "saving the session after streaming failed: {}",
                    ErrorChain(e)
                );
            }
            self.response.send(&[])?;
            return Ok(Served {
                failed: saved.is_err(),
            });
        }
        let action = match self.session.commit() {
            Ok(action) => action,
            Err(e) => {
                log::error!("saving the session failed: {}", ErrorChain(&e));
                self.into_response()
                    .send_error(error_status(e.kind()), &[])?;
                return Ok(Served { failed: true });
            }
        };
        let cookies = self.cookie_headers(&action);
        // The session is stored: let the next request of this session in before we write.
        let response = self.into_response();
        let extra = cache_headers(&response, &cookies);
        response.send(&extra)?;
        Ok(Served { failed: false })
    }

    /// Ends the request's hold on its session (unsaved changes are dropped, the lock is
    /// released) and keeps only the response.
    fn into_response(self) -> Response<'a> {
        self.response
    }
}

/// `Set-Cookie`s, plus `Cache-Control: no-store` when a cookie goes out and the handler set no
/// caching policy: a shared cache must never store and replay a session id or a form secret.
fn cache_headers<'c>(
    response: &Response<'_>,
    cookies: &'c [String],
) -> Vec<(&'static str, &'c str)> {
    let mut extra: Vec<(&'static str, &'c str)> = cookies
        .iter()
        .map(|cookie| ("Set-Cookie", cookie.as_str()))
        .collect();
    if !cookies.is_empty() && response.header("Cache-Control").is_none() {
        extra.push(("Cache-Control", "no-store"));
    }
    extra
}

fn error_status(kind: ErrorKind) -> u16 {
    match kind {
        ErrorKind::LockTimeout => 503,
        ErrorKind::OldId => 409,
        _ => 500,
    }
}

/// Serves one request: `env` describes it, its body comes from `input`, the response goes to
/// `output`. Sessions live in the file store the configuration names. For a process that
/// serves many requests, build a [`crate::Service`] once instead.
///
/// Only a failure to write the response is returned; everything else becomes a response.
///
/// ```
/// use std::io::Write;
/// let dir = tempfile::tempdir()?;
/// let env = pso::Environment::from_pairs([
///     ("GATEWAY_INTERFACE", "CGI/1.1"),
///     ("SCRIPT_NAME", "/cgi-bin/hello"),
///     ("PSOSessionFileLoader_Path", dir.path().join("sessions").to_str().unwrap()),
/// ]);
/// let mut output = Vec::new();
/// let handler = |cx: &mut pso::Context| {
///     cx.session.set("seen", &true)?;
///     write!(cx.response, "hi")?;
///     Ok(())
/// };
/// pso::serve(&env, &mut std::io::empty(), &mut output, &handler, std::time::SystemTime::now())?;
/// let text = String::from_utf8(output)?;
/// assert!(text.starts_with("Status: 200 OK\r\n"));
/// assert!(text.contains("Set-Cookie: hello="));
/// assert!(text.ends_with("\r\n\r\nhi"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn serve<F>(
    env: &Environment,
    input: &mut dyn Read,
    output: &mut dyn Write,
    handler: &F,
    now: SystemTime,
) -> io::Result<()>
where
    F: Handler,
{
    let service = crate::Service::new(env.clone());
    service.serve(service.process_env(), input, output, handler, now)
}

/// Serves one request like [`serve`], with the configuration and store given.
pub fn serve_with_store<F>(
    env: &Environment,
    config: &Config,
    store: &dyn Store,
    input: &mut dyn Read,
    output: &mut dyn Write,
    handler: &F,
    now: SystemTime,
) -> io::Result<()>
where
    F: Handler,
{
    respond(
        env,
        config,
        store,
        (input, output),
        handler,
        now,
        Access::ReadWrite,
    )?;
    output.flush()?;
    if config.gc_probability.draw() {
        match store.collect_garbage(now, Duration::from_millis(50)) {
            Ok(report) => log::debug!("garbage collection: {report:?}"),
            Err(e) => log::warn!("garbage collection failed: {}", ErrorChain(&e)),
        }
    }
    Ok(())
}

/// How a request went, for the front end.
pub(crate) struct Served {
    /// The handler failed or panicked, or the session could not be had or saved.
    pub failed: bool,
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
) -> io::Result<Served>
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
        return Ok(Served { failed: true });
    }
    let claim = Claim {
        cookie_header: env
            .get_os("HTTP_COOKIE")
            .map_or(&[][..], |header| header.as_bytes()),
        client_addr: request.remote_addr(),
        query: request.query_string(),
    };
    let adopted = match access {
        Access::ReadWrite => adopt(store, config, &claim, now),
        Access::ReadOnly => adopt_read_only(store, config, &claim, now),
    };
    let session = match adopted {
        Ok((session, origin)) => {
            log::debug!("session {:?}: {origin:?}", session.id());
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
            return Ok(Served { failed: true });
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
            cx.into_response().send_error(error_status(kind), &[])?;
            Ok(Served { failed: true })
        }
        Err(_) => {
            log::error!("the handler panicked; its session changes are discarded");
            cx.into_response().send_error(500, &[])?;
            Ok(Served { failed: true })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::SessionId;
    use crate::store::{LockOptions, MemoryStore, SessionKey};
    use std::time::UNIX_EPOCH;

    const T0: u64 = 1_700_000_000;

    struct Reply {
        text: String,
    }

    impl Reply {
        /// The session cookie sent, as `name=value`.
        fn cookie(&self) -> Option<&str> {
            self.set_cookies()
                .into_iter()
                .map(|c| c.split(';').next().unwrap_or(""))
                .find(|c| !c.contains(".form="))
        }
        fn set_cookies(&self) -> Vec<&str> {
            self.text
                .lines()
                .filter_map(|l| l.strip_prefix("Set-Cookie: "))
                .collect()
        }
        /// The form cookie sent, as `name=value`.
        fn form_cookie(&self) -> Option<&str> {
            self.set_cookies()
                .into_iter()
                .map(|c| c.split(';').next().unwrap_or(""))
                .find(|c| c.contains(".form="))
        }
        fn body(&self) -> &str {
            self.text.split("\r\n\r\n").nth(1).unwrap_or("")
        }
    }

    fn counter(cx: &mut Context<'_>) -> Result<(), BoxError> {
        let n: u64 = cx.session.get("n")?.unwrap_or(0) + 1;
        cx.session.set("n", &n)?;
        if cx.request.query("fail").is_some() {
            return Err("asked to fail".into());
        }
        if cx.request.query("panic").is_some() {
            panic!("asked to panic");
        }
        if cx.request.query("logout").is_some() {
            cx.session.expire(crate::Expiry::Now)?;
        }
        write!(cx.response, "{n}")?;
        Ok(())
    }

    /// [`serve_text`], as a [`Reply`].
    fn reply<F: Handler>(
        store: &MemoryStore,
        pairs: &[(&str, &str)],
        handler: &F,
        secs: u64,
    ) -> Reply {
        Reply {
            text: serve_text(store, pairs, handler, secs),
        }
    }

    /// One request through `handler`, with a CGI environment plus `pairs`, at `secs`.
    fn serve_text<F>(store: &MemoryStore, pairs: &[(&str, &str)], handler: &F, secs: u64) -> String
    where
        F: Handler,
    {
        let mut all = vec![
            ("GATEWAY_INTERFACE", "CGI/1.1"),
            ("SCRIPT_NAME", "/cgi-bin/app"),
        ];
        all.extend_from_slice(pairs);
        let env = Environment::from_pairs(all);
        let config = Config::from_env(&env);
        let mut output = Vec::new();
        let now = UNIX_EPOCH + Duration::from_secs(secs);
        serve_with_store(
            &env,
            &config,
            store,
            &mut io::empty(),
            &mut output,
            handler,
            now,
        )
        .unwrap();
        String::from_utf8(output).unwrap()
    }

    fn request(store: &MemoryStore, pairs: &[(&str, &str)], secs: u64) -> Reply {
        reply(store, pairs, &counter, secs)
    }

    fn with_cookie(store: &MemoryStore, cookie: &str, extra: &[(&str, &str)]) -> Reply {
        let mut pairs = vec![("HTTP_COOKIE", cookie)];
        pairs.extend_from_slice(extra);
        request(store, &pairs, T0)
    }

    /// Counts, and says why it holds its session and what expired data it was handed.
    fn auditor(cx: &mut Context<'_>) -> Result<(), BoxError> {
        let n: u64 = cx.session.get("n")?.unwrap_or(0) + 1;
        cx.session.set("n", &n)?;
        cx.session.set("user", "eggs")?;
        let old = cx.session.take_expired().map(|old| {
            let user: Option<String> = old.get("user").ok().flatten();
            (user, old.meta.last_access - T0)
        });
        let twice = cx.session.take_expired().is_some();
        write!(
            cx.response,
            "{:?} n={n} old={old:?} twice={twice}",
            cx.session.origin()
        )?;
        Ok(())
    }

    /// The auditor at `T0 + t`, with `cookie` and the configuration `pairs`; the body and
    /// the cookie sent back (or the one given).
    fn audit(
        store: &MemoryStore,
        cookie: &str,
        pairs: &[(&str, &str)],
        t: u64,
    ) -> (String, String) {
        let mut all = vec![("HTTP_COOKIE", cookie)];
        all.extend_from_slice(pairs);
        let reply = reply(store, &all, &auditor, T0 + t);
        let cookie = reply.cookie().unwrap_or(cookie).to_owned();
        (reply.body().to_owned(), cookie)
    }

    #[test]
    fn an_idle_session_ends_and_says_so_once() {
        let store = MemoryStore::new();
        let idle = [("PSOSessionIdle", "5*60")];
        let (body, cookie) = audit(&store, "", &idle, 0);
        assert_eq!(body, "New n=1 old=None twice=false");
        let (body, same) = audit(&store, &cookie, &idle, 200);
        assert_eq!(
            (body.as_str(), &same),
            ("Returning n=2 old=None twice=false", &cookie)
        );
        // Used 200 s ago: at +500 it has been unused exactly 300 s, the limit: still alive.
        let (body, _) = audit(&store, &cookie, &idle, 500);
        assert_eq!(body, "Returning n=3 old=None twice=false");
        // Unused 301 s: dead, replaced, and its data offered once (the user, the last use).
        let (body, fresh) = audit(&store, &cookie, &idle, 801);
        assert_eq!(
            body,
            "Replaced(Idle) n=1 old=Some((Some(\"eggs\"), 500)) twice=false"
        );
        assert_ne!(fresh, cookie);
        // Gone from the store: the old cookie now names nothing.
        let (body, _) = audit(&store, &cookie, &idle, 802);
        assert_eq!(body, "Replaced(Unknown) n=1 old=None twice=false");
    }

    #[test]
    fn a_lifetime_ends_however_active_the_session() {
        let store = MemoryStore::new();
        let both = [("PSOSessionExpire", "100"), ("PSOSessionIdle", "60")];
        let (_, cookie) = audit(&store, "", &both, 0);
        for t in [50, 99] {
            let (body, _) = audit(&store, &cookie, &both, t);
            assert!(body.starts_with("Returning"), "{t}: {body}");
        }
        let (body, _) = audit(&store, &cookie, &both, 100);
        assert_eq!(
            body,
            "Replaced(Lifetime) n=1 old=Some((Some(\"eggs\"), 99)) twice=false"
        );
    }

    #[test]
    fn a_lowered_idle_limit_applies_to_sessions_saved_under_the_old_one() {
        let store = MemoryStore::new();
        let (_, cookie) = audit(&store, "", &[("PSOSessionIdle", "1h")], 0);
        let (body, _) = audit(&store, &cookie, &[("PSOSessionIdle", "1m")], 61);
        assert!(body.starts_with("Replaced(Idle)"), "{body}");
    }

    #[test]
    fn clocks_that_jump_and_extreme_limits_give_sane_outcomes() {
        let store = MemoryStore::new();
        let idle = [("PSOSessionIdle", "60")];
        let (_, cookie) = audit(&store, "", &idle, 1_000);
        // The clock went back 15 minutes: the last access is in the future, a use just now.
        let (body, _) = audit(&store, &cookie, &idle, 100);
        assert!(body.starts_with("Returning"), "{body}");
        // The largest limits pso accepts, and a time far ahead: no overflow, no panic.
        let huge = [("PSOSessionIdle", "100y"), ("PSOSessionExpire", "100y")];
        let (_, cookie) = audit(&store, "", &huge, 0);
        let (body, _) = audit(&store, &cookie, &huge, 99 * 365 * 86_400);
        assert!(body.starts_with("Returning"), "{body}");
        let (body, _) = audit(&store, &cookie, &huge, u64::MAX / 4);
        assert!(body.starts_with("Replaced("), "{body}");
        // An idle limit of 0 means none.
        let none = [("PSOSessionIdle", "0"), ("PSOSessionExpire", "1y")];
        let (_, cookie) = audit(&store, "", &none, 0);
        let (body, _) = audit(&store, &cookie, &none, 300 * 86_400);
        assert!(body.starts_with("Returning"), "{body}");
    }

    #[test]
    fn forged_and_several_cookies_say_why_they_were_not_adopted() {
        let store = MemoryStore::new();
        let forged = "app=0123456789abcdef0123456789abcdef0123456789abcdef";
        let (body, _) = audit(&store, forged, &[], 0);
        assert_eq!(body, "Replaced(Unknown) n=1 old=None twice=false");
        let (_, mine) = audit(&store, "", &[], 0);
        let (_, theirs) = audit(&store, "", &[], 0);
        let (body, _) = audit(&store, &format!("{mine}; {theirs}"), &[], 1);
        assert_eq!(body, "Replaced(Ambiguous) n=1 old=None twice=false");
    }

    /// Sets a value, clears the session (`?clear`), or only looks (`?look`).
    fn tidy(cx: &mut Context<'_>) -> Result<(), BoxError> {
        if cx.request.query("clear").is_some() {
            cx.session.clear()?;
        } else if cx.request.query("look").is_none() {
            cx.session.set("v", &1u8)?;
        }
        Ok(())
    }

    fn tidy_request(store: &MemoryStore, query: &str, cookie: &str, lazy: &str) -> Reply {
        let pairs = [
            ("QUERY_STRING", query),
            ("HTTP_COOKIE", cookie),
            ("PSOSessionLazy", lazy),
        ];
        reply(store, &pairs, &tidy, T0)
    }

    #[test]
    fn lazily_an_empty_session_is_never_stored_and_an_emptied_one_is_deleted() {
        let store = MemoryStore::new();
        let looked = tidy_request(&store, "look", "", "on");
        assert_eq!(looked.cookie(), None);
        assert_eq!(store.keys().unwrap().count(), 0);
        let set = tidy_request(&store, "", "", "on");
        let cookie = set.cookie().unwrap().to_owned();
        assert_eq!(store.keys().unwrap().count(), 1);
        let cleared = tidy_request(&store, "clear", &cookie, "on");
        assert!(
            cleared.text.contains("Max-Age=0"),
            "the cookie is revoked: {}",
            cleared.text
        );
        assert_eq!(
            store.keys().unwrap().count(),
            0,
            "the emptied session is gone"
        );
    }

    #[test]
    fn not_lazily_every_visitor_gets_a_stored_session_that_stays_when_emptied() {
        let store = MemoryStore::new();
        let looked = tidy_request(&store, "look", "", "off");
        let cookie = looked
            .cookie()
            .expect("a cookie for a session without values")
            .to_owned();
        assert_eq!(store.keys().unwrap().count(), 1);
        let cleared = tidy_request(&store, "clear", &cookie, "off");
        assert_eq!(cleared.cookie(), Some(cookie.as_str()));
        assert_eq!(store.keys().unwrap().count(), 1);
    }

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

    fn post(store: &MemoryStore, cookie: &str, body: &str, extra: &[(&str, &str)]) -> Reply {
        let length = body.len().to_string();
        let mut pairs = vec![
            ("GATEWAY_INTERFACE", "CGI/1.1"),
            ("SCRIPT_NAME", "/cgi-bin/app"),
            ("REQUEST_METHOD", "POST"),
            ("CONTENT_TYPE", "application/x-www-form-urlencoded"),
            ("CONTENT_LENGTH", &length),
            ("HTTP_COOKIE", cookie),
        ];
        pairs.extend_from_slice(extra);
        let env = Environment::from_pairs(pairs);
        let config = Config::from_env(&env);
        let mut output = Vec::new();
        let now = UNIX_EPOCH + Duration::from_secs(T0);
        serve_with_store(
            &env,
            &config,
            store,
            &mut body.as_bytes(),
            &mut output,
            &guarded,
            now,
        )
        .unwrap();
        Reply {
            text: String::from_utf8(output).unwrap(),
        }
    }

    #[test]
    fn a_form_token_survives_to_the_post_and_works_once() {
        let store = MemoryStore::new();
        let issued = reply(&store, &[("QUERY_STRING", "keep&new")], &guarded, T0);
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
        assert_eq!(post(&store, &cookie, &form, &[]).body(), "accepted 2");
        assert_eq!(
            post(&store, &cookie, &form, &[]).body(),
            "refused 2",
            "used up"
        );
        let other = reply(&store, &[("QUERY_STRING", "keep&new")], &guarded, T0);
        let theirs = format!("token={}", other.body());
        assert_eq!(
            post(&store, &cookie, &theirs, &[]).body(),
            "refused 1",
            "another session's token"
        );
    }

    #[test]
    fn a_visitor_without_a_stored_session_gets_a_token_bound_to_a_cookie_and_nothing_stored() {
        let store = MemoryStore::new();
        // A sign-in page fetched many times leaves nothing in the store.
        for _ in 0..500 {
            serve_text(&store, &[("QUERY_STRING", "new")], &guarded, T0);
        }
        assert_eq!(store.keys().unwrap().count(), 0);
        let issued = reply(&store, &[("QUERY_STRING", "new")], &guarded, T0);
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
        let same_origin = [("HTTP_SEC_FETCH_SITE", "same-origin")];

        // Not from another site, not without the cookie, not with another browser's cookie.
        let cross = [("HTTP_SEC_FETCH_SITE", "cross-site")];
        assert_eq!(post(&store, &browser, &form, &cross).body(), "refused 1");
        let forged_origin = [
            ("HTTP_ORIGIN", "https://evil.example"),
            ("HTTP_HOST", "shop.example"),
        ];
        assert_eq!(
            post(&store, &browser, &form, &forged_origin).body(),
            "refused 1"
        );
        assert_eq!(post(&store, "", &form, &same_origin).body(), "refused 1");
        let someone_else = reply(&store, &[("QUERY_STRING", "new")], &guarded, T0);
        let theirs = someone_else.form_cookie().unwrap();
        assert_eq!(
            post(&store, theirs, &form, &same_origin).body(),
            "refused 1"
        );

        // From the site itself, with the browser's cookie: accepted, and the secret stays, so
        // the forms of the browser's other tabs still post.
        let accepted = post(&store, &browser, &form, &same_origin);
        assert_eq!(accepted.body(), "accepted 1");
        assert_eq!(accepted.set_cookies(), Vec::<&str>::new());
        let other_tab = reply(
            &store,
            &[("QUERY_STRING", "new"), ("HTTP_COOKIE", &browser)],
            &guarded,
            T0,
        );
        assert_eq!(
            other_tab.set_cookies(),
            Vec::<&str>::new(),
            "the same secret"
        );
        let other_form = format!("token={}", other_tab.body());
        assert_eq!(
            post(&store, &browser, &other_form, &same_origin).body(),
            "accepted 1"
        );
        // Without Sec-Fetch-Site (an old browser), Origin decides; with neither, the token.
        let same_host = [
            ("HTTP_ORIGIN", "https://shop.example"),
            ("HTTP_HOST", "shop.example"),
        ];
        for headers in [&same_host[..], &[]] {
            let issued = reply(&store, &[("QUERY_STRING", "new")], &guarded, T0);
            let form = format!("token={}", issued.body());
            let browser = issued.form_cookie().unwrap();
            assert_eq!(post(&store, browser, &form, headers).body(), "accepted 1");
        }
        assert_eq!(store.keys().unwrap().count(), 0, "still nothing stored");

        // Under HTTPS the cookie is a __Host- cookie.
        let secure = reply(
            &store,
            &[("QUERY_STRING", "new"), ("HTTPS", "on")],
            &guarded,
            T0,
        );
        assert!(
            secure.set_cookies()[0].starts_with("__Host-app.form=")
                && secure.set_cookies()[0].contains("; Secure; Path=/"),
            "{:?}",
            secure.set_cookies()
        );
    }

    #[test]
    fn form_bodies_up_to_the_cap_are_read_and_larger_ones_get_413() {
        let store = MemoryStore::new();
        let cap = [("PSOMaxBodyBytes", "1024")];
        let at_cap = format!("a={}", "x".repeat(1022));
        assert_eq!(post(&store, "", &at_cap, &cap).body(), "refused 1");
        let many = "a&".repeat(crate::request::MAX_FORM_FIELDS + 1);
        let reply = post(&store, "", &many, &[("PSOMaxBodyBytes", "1M")]);
        assert!(
            reply.text.starts_with("Status: 500"),
            "too many fields: {}",
            reply.text
        );
        let over = format!("a={}", "x".repeat(1023));
        let reply = post(&store, "", &over, &cap);
        assert!(reply.text.starts_with("Status: 413"), "{}", reply.text);
    }

    /// Counts; `?login` regenerates the id; prints the origin and the count.
    fn login(cx: &mut Context<'_>) -> Result<(), BoxError> {
        let n: u64 = cx.session.get("n")?.unwrap_or(0) + 1;
        cx.session.set("n", &n)?;
        if cx.request.query("login").is_some() {
            cx.session.set("user", "eggs")?;
            cx.session.regenerate_id()?;
        }
        let user: Option<String> = cx.session.get("user")?;
        write!(cx.response, "{:?} n={n} user={user:?}", cx.session.origin())?;
        Ok(())
    }

    /// A visit at T0, then a sign-in at T0 + 1 (grace 5 s): the id before and the id after.
    fn signed_in(store: &MemoryStore) -> (String, String) {
        let (_, old) = login_request(store, "", "", 0, "5");
        let old = old.unwrap();
        let (_, new) = login_request(store, "login", &old, 1, "5");
        (old, new.unwrap())
    }

    fn login_request(
        store: &MemoryStore,
        query: &str,
        cookie: &str,
        t: u64,
        grace: &str,
    ) -> (String, Option<String>) {
        login_from(store, query, cookie, t, grace, "192.0.2.1")
    }

    fn login_from(
        store: &MemoryStore,
        query: &str,
        cookie: &str,
        t: u64,
        grace: &str,
        addr: &str,
    ) -> (String, Option<String>) {
        let pairs = [
            ("QUERY_STRING", query),
            ("HTTP_COOKIE", cookie),
            ("PSOSessionRegenerateGrace", grace),
            ("REMOTE_ADDR", addr),
        ];
        let reply = reply(store, &pairs, &login, T0 + t);
        (reply.body().to_owned(), reply.cookie().map(str::to_owned))
    }

    #[test]
    fn a_planted_id_is_worth_nothing_after_sign_in_even_in_the_grace() {
        let store = MemoryStore::new();
        // The attacker gets an id and plants it in the victim's browser; the victim signs in.
        let (_, planted) = login_from(&store, "", "", 0, "5", "203.0.113.66");
        let planted = planted.unwrap();
        let (_, victims) = login_from(&store, "login", &planted, 1, "5", "192.0.2.1");
        let victims = victims.unwrap();
        // Within the grace, from the attacker's address: not the victim's session.
        let (body, sent) = login_from(&store, "", &planted, 2, "5", "203.0.113.66");
        assert_eq!(body, "Replaced(OtherAddress) n=1 user=None");
        assert_ne!(sent.as_deref(), Some(victims.as_str()));
        let (body, _) = login_from(&store, "", &victims, 3, "5", "192.0.2.1");
        assert_eq!(
            body, "Returning n=3 user=Some(\"eggs\")",
            "the victim goes on"
        );
    }

    #[test]
    fn a_request_that_fails_after_regenerate_leaves_the_old_id_as_it_was() {
        let failing = |cx: &mut Context<'_>| -> Result<(), BoxError> {
            cx.session.set("cart", "spam")?;
            if cx.request.query("login").is_some() {
                cx.session.regenerate_id()?;
                return Err("the page failed after the new id".into());
            }
            Ok(())
        };
        let store = MemoryStore::new();
        let first = reply(&store, &[], &failing, T0);
        let cookie = first.cookie().unwrap().to_owned();
        let failed = reply(
            &store,
            &[("HTTP_COOKIE", cookie.as_str()), ("QUERY_STRING", "login")],
            &failing,
            T0 + 1,
        );
        assert!(failed.text.starts_with("Status: 500"), "{}", failed.text);
        assert_eq!(failed.cookie(), None);
        let later = reply(
            &store,
            &[("HTTP_COOKIE", cookie.as_str())],
            &failing,
            T0 + 60,
        );
        assert_eq!(
            later.cookie(),
            Some(cookie.as_str()),
            "the old id still holds the cart"
        );
    }

    #[test]
    fn form_tokens_issued_before_regenerate_are_void() {
        let store = MemoryStore::new();
        let lock = store
            .lock(
                &SessionKey::new("app".parse().unwrap(), SessionId::generate().unwrap()),
                LockOptions::new(Duration::from_secs(1)),
            )
            .unwrap();
        let rules = crate::session::Rules::of(&Config::from_env(&Environment::from_pairs([(
            "PSOServiceId",
            "app",
        )])));
        let mut session = Session::fresh(
            lock,
            UNIX_EPOCH + Duration::from_secs(T0),
            crate::Expiry::BrowserClose,
            None,
            rules,
        );
        let token = session.create_form_token().unwrap();
        session.regenerate_id().unwrap();
        assert!(!session.take_form_token(&token).unwrap());
    }

    #[test]
    fn regenerate_moves_the_data_and_the_old_id_leads_there_only_during_its_grace() {
        let store = MemoryStore::new();
        let (_, old) = login_request(&store, "", "", 0, "5");
        let old = old.unwrap();
        let (body, new) = login_request(&store, "login", &old, 1, "5");
        let new = new.unwrap();
        assert_ne!(new, old, "a new id at login");
        assert_eq!(body, "Returning n=2 user=Some(\"eggs\")");
        // A request already under way with the old id, within the grace: the same session,
        // but never the new id (whoever holds the old id must not learn it).
        let (body, sent) = login_request(&store, "", &old, 4, "5");
        assert_eq!(body, "Returning n=3 user=Some(\"eggs\")");
        assert_eq!(sent, None);
        // Both cookies at once (an old one left on another path): one session, not two.
        let (body, _) = login_request(&store, "", &format!("{old}; {new}"), 5, "5");
        assert_eq!(body, "Returning n=4 user=Some(\"eggs\")");
        // After the grace the old id is dead; the new one goes on.
        let (body, sent) = login_request(&store, "", &old, 7, "5");
        assert_eq!(body, "Replaced(Unknown) n=1 user=None");
        assert_ne!(sent.as_deref(), Some(new.as_str()));
        let (body, _) = login_request(&store, "", &new, 8, "5");
        assert_eq!(body, "Returning n=5 user=Some(\"eggs\")");
    }

    #[test]
    fn a_session_regenerated_twice_within_its_grace_still_serves_its_first_id() {
        // Sign-in, then at once a change of privilege: a request under way with the first id
        // goes through both forwards to the session, and learns neither new id.
        let store = MemoryStore::new();
        let (first, second) = signed_in(&store);
        let (_, third) = login_request(&store, "login", &second, 2, "5");
        let third = third.unwrap();
        assert!(first != second && second != third && first != third);
        for (old, t) in [(&first, 3), (&second, 4)] {
            let (body, sent) = login_request(&store, "", old, t, "5");
            assert_eq!(body, format!("Returning n={} user=Some(\"eggs\")", t + 1));
            assert_eq!(sent, None, "an old id never learns a new one");
        }
        // The grace of the first forward ends first; the newest id goes on.
        let (body, _) = login_request(&store, "", &first, 7, "5");
        assert_eq!(body, "Replaced(Unknown) n=1 user=None");
        let (body, _) = login_request(&store, "", &third, 8, "5");
        assert_eq!(body, "Returning n=6 user=Some(\"eggs\")");
    }

    #[test]
    fn an_old_id_cannot_regenerate_the_session_it_leads_to() {
        // A request with the old id, in the grace and from the same address, that asks for a
        // new id (a form loaded through it, or someone who planted it) gets a 409:
        // moving the session would hand the old id's holder the newest id.
        let store = MemoryStore::new();
        let (old, new) = signed_in(&store);
        let (body, sent) = login_request(&store, "login", &old, 2, "5");
        assert!(body.contains("409 Conflict"), "{body}");
        assert_eq!(sent, None);
        let (body, _) = login_request(&store, "", &new, 9, "5");
        assert_eq!(
            body, "Returning n=3 user=Some(\"eggs\")",
            "the owner keeps it"
        );
    }

    #[test]
    fn forwards_are_followed_a_bounded_number_of_times() {
        let store = MemoryStore::new();
        let (_, mut id) = login_request(&store, "", "", 0, "60");
        let first = id.clone().unwrap();
        for t in 1..=u64::try_from(crate::adoption::MAX_FORWARDS).unwrap() + 1 {
            id = login_request(&store, "login", &id.unwrap(), t, "60").1;
        }
        let (body, _) = login_request(&store, "", &first, 20, "60");
        assert_eq!(body, "Replaced(Unknown) n=1 user=None", "too long a chain");
    }

    #[test]
    fn without_a_grace_the_old_id_dies_at_once() {
        let store = MemoryStore::new();
        let (_, old) = login_request(&store, "", "", 0, "0");
        let old = old.unwrap();
        let (_, new) = login_request(&store, "login", &old, 1, "0");
        assert_ne!(new.as_deref(), Some(old.as_str()));
        let (body, _) = login_request(&store, "", &old, 1, "0");
        assert_eq!(body, "Replaced(Unknown) n=1 user=None");
        assert_eq!(
            store.keys().unwrap().count(),
            2,
            "the new session and the one just made"
        );
    }

    #[test]
    fn a_released_session_lets_its_next_request_run_meanwhile() {
        use std::sync::mpsc;
        let store = MemoryStore::new();
        let cookie = request(&store, &[], T0).cookie().unwrap().to_owned();
        let (done, finished) = mpsc::channel::<String>();
        let finished = std::sync::Mutex::new(finished);
        // The slow request releases its session, then waits (boundedly) for a second request
        // of the same session to finish: with the lock still held, that one would wait for
        // the lock instead, and the first would give up.
        let slow = |cx: &mut Context<'_>| -> Result<(), BoxError> {
            let n: u64 = cx.session.get("n")?.unwrap_or(0);
            cx.session.release()?;
            let other = finished
                .lock()
                .unwrap()
                .recv_timeout(Duration::from_secs(10))?;
            write!(
                cx.response,
                "read {n} while the other request answered {other}"
            )?;
            Ok(())
        };
        let pairs = [
            ("HTTP_COOKIE", cookie.as_str()),
            ("PSOSessionLockTimeout", "20"),
        ];
        std::thread::scope(|scope| {
            let first = scope.spawn(|| serve_text(&store, &pairs, &slow, T0));
            std::thread::sleep(Duration::from_millis(50));
            let second = with_cookie(&store, &cookie, &[]);
            done.send(second.body().to_owned()).unwrap();
            let first = first.join().unwrap();
            assert!(
                first.ends_with("read 1 while the other request answered 2"),
                "{first}"
            );
        });
    }

    #[test]
    fn a_change_after_release_fails_the_request_and_is_not_saved() {
        let store = MemoryStore::new();
        let cookie = request(&store, &[], T0).cookie().unwrap().to_owned();
        let late_remove = |cx: &mut Context<'_>| -> Result<(), BoxError> {
            cx.session.release()?;
            cx.session.remove("n")?;
            Ok(())
        };
        // Once the response streams, the status cannot change: the handler hears of a logout
        // that cannot happen from the call itself, and can say so.
        let late_logout = |cx: &mut Context<'_>| -> Result<(), BoxError> {
            cx.session.release()?;
            cx.stream()?;
            match cx.session.expire(crate::Expiry::Now) {
                Ok(()) => write!(cx.response, "signed out")?,
                Err(e) => write!(cx.response, "not signed out: {e}")?,
            }
            Ok(())
        };
        let streamed = serve_text(
            &store,
            &[("HTTP_COOKIE", cookie.as_str())],
            &late_logout,
            T0,
        );
        assert!(
            streamed.ends_with(
                "not signed out: the session was released (release()): it can no longer change"
            ),
            "{streamed}"
        );
        let late_set = |cx: &mut Context<'_>| -> Result<(), BoxError> {
            cx.session.release()?;
            cx.session.set("n", &100u64)?;
            Ok(())
        };
        let removed = serve_text(
            &store,
            &[("HTTP_COOKIE", cookie.as_str())],
            &late_remove,
            T0,
        );
        assert!(removed.starts_with("Status: 500"), "{removed}");
        let set = serve_text(&store, &[("HTTP_COOKIE", cookie.as_str())], &late_set, T0);
        assert!(set.starts_with("Status: 500"), "{set}");
        assert_eq!(
            with_cookie(&store, &cookie, &[]).body(),
            "2",
            "nothing was lost or changed"
        );
    }

    #[test]
    fn a_session_with_its_own_idle_limit_times_out_by_it() {
        let short = |cx: &mut Context<'_>| -> Result<(), BoxError> {
            if cx.request.query("short").is_some() {
                cx.session.set_idle_limit(Some(Duration::from_secs(60)))?;
            }
            cx.session.set("v", &1u8)?;
            write!(cx.response, "{:?}", cx.session.origin())?;
            Ok(())
        };
        let store = MemoryStore::new();
        let first = reply(&store, &[("QUERY_STRING", "short")], &short, T0);
        let cookie = first.cookie().unwrap().to_owned();
        let at = |t| {
            let reply = reply(&store, &[("HTTP_COOKIE", cookie.as_str())], &short, T0 + t);
            reply.body().to_owned()
        };
        assert_eq!(at(60), "Returning");
        assert_eq!(at(121), "Replaced(Idle)");
    }

    #[test]
    fn a_value_set_for_a_while_is_gone_after_it() {
        let code = |cx: &mut Context<'_>| -> Result<(), BoxError> {
            if cx.request.query("new").is_some() {
                cx.session.set("user", "eggs")?;
                cx.session
                    .set_for("code", "493817", Duration::from_secs(60))?;
            }
            let code: Option<String> = cx.session.get("code")?;
            let user: Option<String> = cx.session.get("user")?;
            write!(cx.response, "{code:?} {user:?}")?;
            Ok(())
        };
        let store = MemoryStore::new();
        let first = reply(&store, &[("QUERY_STRING", "new")], &code, T0);
        let cookie = first.cookie().unwrap().to_owned();
        let at = |t| {
            let reply = reply(&store, &[("HTTP_COOKIE", cookie.as_str())], &code, T0 + t);
            reply.body().to_owned()
        };
        assert_eq!(at(59), "Some(\"493817\") Some(\"eggs\")");
        assert_eq!(at(60), "None Some(\"eggs\")");
        assert_eq!(
            at(61),
            "None Some(\"eggs\")",
            "gone from the store, not only hidden"
        );
    }

    #[test]
    fn with_check_ip_a_session_answers_only_its_own_address() {
        let store = MemoryStore::new();
        let from = |addr: &str, cookie: &str, check: &str| {
            let pairs = [
                ("REMOTE_ADDR", addr),
                ("HTTP_COOKIE", cookie),
                ("PSOSessionCheckIP", check),
            ];
            let text = serve_text(&store, &pairs, &auditor, T0);
            let reply = Reply { text };
            (
                reply.body().to_owned(),
                reply.cookie().unwrap_or(cookie).to_owned(),
            )
        };
        let (_, cookie) = from("192.0.2.1", "", "on");
        let (body, _) = from("198.51.100.7", &cookie, "on");
        assert!(body.starts_with("Replaced(OtherAddress) n=1"), "{body}");
        let (body, _) = from("192.0.2.1", &cookie, "on");
        assert!(
            body.starts_with("Returning n=2"),
            "left alone for its owner: {body}"
        );
        let (body, _) = from("198.51.100.7", &cookie, "off");
        assert!(body.starts_with("Returning n=3"), "off by default: {body}");
    }

    #[test]
    fn without_cookies_the_id_may_travel_in_links_when_allowed() {
        let linker = |cx: &mut Context<'_>| -> Result<(), BoxError> {
            let n: u64 = cx.session.get("n")?.unwrap_or(0) + 1;
            cx.session.set("n", &n)?;
            write!(cx.response, "{n} {}", cx.url("/cgi-bin/app?page=2#top"))?;
            Ok(())
        };
        let store = MemoryStore::new();
        let visit = |query: &str, cookie: &str, on: &str| {
            let pairs = [
                ("QUERY_STRING", query),
                ("HTTP_COOKIE", cookie),
                ("PSOSessionUrl", on),
            ];
            reply(&store, &pairs, &linker, T0)
        };
        let first = visit("", "", "on");
        let (count, link) = first.body().split_once(' ').unwrap();
        assert_eq!(count, "1");
        let id = first
            .cookie()
            .unwrap()
            .split_once('=')
            .unwrap()
            .1
            .to_owned();
        assert_eq!(link, format!("/cgi-bin/app?page=2&app={id}#top"));
        let query = link.split_once('?').unwrap().1.split('#').next().unwrap();
        assert!(
            visit(query, "", "on").body().starts_with("2 "),
            "adopted from the link"
        );
        let forged = "page=2&app=0123456789abcdef0123456789abcdef0123456789abcdef";
        assert!(
            visit(forged, "", "on").body().starts_with("1 "),
            "strict mode still"
        );
        assert_eq!(
            visit(query, "", "off").body(),
            "1 /cgi-bin/app?page=2#top",
            "off by default"
        );
        let with_cookie = visit("", &format!("app={id}"), "on");
        assert_eq!(
            with_cookie.body(),
            "3 /cgi-bin/app?page=2#top",
            "a cookie needs no link"
        );
    }

    #[test]
    fn log_out_everywhere_ends_every_session_of_that_user_and_no_other() {
        let app = |cx: &mut Context<'_>| -> Result<(), BoxError> {
            if let Some(user) = cx.request.query("login") {
                cx.session.regenerate_id()?;
                cx.session.set_user(&user)?;
            }
            if cx.request.query("everywhere").is_some() {
                cx.session.log_out_everywhere()?;
            }
            write!(
                cx.response,
                "{:?} {:?}",
                cx.session.origin(),
                cx.session.user()
            )?;
            Ok(())
        };
        let store = MemoryStore::new();
        let visit = |query: &str, cookie: &str, t: u64| {
            let pairs = [("QUERY_STRING", query), ("HTTP_COOKIE", cookie)];
            let reply = reply(&store, &pairs, &app, T0 + t);
            (
                reply.body().to_owned(),
                reply.cookie().unwrap_or(cookie).to_owned(),
            )
        };
        let eggs: Vec<String> = (0..50).map(|_| visit("login=eggs", "", 0).1).collect();
        let ham: Vec<String> = (0..5).map(|_| visit("login=ham", "", 0).1).collect();
        let (body, _) = visit("everywhere", &eggs[0], 10);
        assert_eq!(body, "Returning Some(\"eggs\")");
        // The session that asked ended at once; the 49 others at their next request.
        assert_eq!(visit("", &eggs[0], 20).0, "Replaced(Unknown) None");
        for cookie in &eggs[1..] {
            let (body, _) = visit("", cookie, 20);
            assert_eq!(body, "Replaced(LoggedOut) None", "{cookie}");
        }
        for cookie in &ham {
            let (body, _) = visit("", cookie, 20);
            assert_eq!(body, "Returning Some(\"ham\")");
        }
        // Signing in again afterwards works; and a cookie naming the user record is not even
        // read as a session id (cookies carry generated ids only).
        let (_, again) = visit("login=eggs", "", 30);
        assert_eq!(visit("", &again, 31).0, "Returning Some(\"eggs\")");
        let record = crate::session::user_record_id("eggs");
        let (body, _) = visit("", &format!("app={}", record.as_str()), 32);
        assert_eq!(body, "New None");
        // A user record that cannot be read ends the user's sessions: a damaged file must not
        // undo a logout.
        let key = crate::store::SessionKey::new("app".parse().unwrap(), record);
        store.plant(&key, b"not a record");
        assert_eq!(visit("", &again, 33).0, "Replaced(LoggedOut) None");
        assert_eq!(visit("", &ham[0], 33).0, "Returning Some(\"ham\")");
    }

    /// `?login`: signs in as eggs; `?everywhere`: logs eggs out everywhere; prints why this
    /// session and its user.
    fn eggs(cx: &mut Context<'_>) -> Result<(), BoxError> {
        if cx.request.query("login").is_some() {
            cx.session.set_user("eggs")?;
        }
        if cx.request.query("everywhere").is_some() {
            cx.session.log_out_everywhere()?;
        }
        write!(
            cx.response,
            "{:?} {:?}",
            cx.session.origin(),
            cx.session.user()
        )?;
        Ok(())
    }

    #[test]
    fn log_out_everywhere_ends_a_session_whose_id_the_server_forces_too() {
        let app = eggs;
        let store = MemoryStore::new();
        let forced_id = SessionId::forced("shared-007").unwrap();
        let forced = |query: &str, t: u64| {
            let pairs = [
                ("PSOServiceId", "app"),
                ("app", forced_id.as_str()),
                ("QUERY_STRING", query),
            ];
            reply(&store, &pairs, &app, T0 + t).body().to_owned()
        };
        assert_eq!(forced("login", 0), "Forced Some(\"eggs\")");
        let elsewhere = reply(&store, &[("QUERY_STRING", "login")], &app, T0 + 1);
        let cookie = elsewhere.cookie().unwrap().to_owned();
        let pairs = [
            ("HTTP_COOKIE", cookie.as_str()),
            ("QUERY_STRING", "everywhere"),
        ];
        serve_text(&store, &pairs, &app, T0 + 2);
        assert_eq!(forced("", 3), "Replaced(LoggedOut) None");
        assert_eq!(forced("", 4), "Forced None", "the forced id starts afresh");
        assert_eq!(forced("login", 5), "Forced Some(\"eggs\")");
        // Logged out everywhere again; the first request after it may sign in at once.
        let pairs = [("HTTP_COOKIE", cookie.as_str()), ("QUERY_STRING", "login")];
        let again = reply(&store, &pairs, &app, T0 + 6);
        assert_eq!(again.body(), "Replaced(Unknown) Some(\"eggs\")");
        let cookie = again.cookie().unwrap().to_owned();
        let pairs = [
            ("HTTP_COOKIE", cookie.as_str()),
            ("QUERY_STRING", "everywhere"),
        ];
        serve_text(&store, &pairs, &app, T0 + 7);
        assert_eq!(forced("login", 8), "Replaced(LoggedOut) Some(\"eggs\")");
        // A read-only request reads the forced session, not a cookie's.
        let reader = |cx: &mut Context<'_>| -> Result<(), BoxError> {
            write!(
                cx.response,
                "{:?} {:?}",
                cx.session.origin(),
                cx.session.user()
            )?;
            Ok(())
        };
        let env = [
            ("PSOServiceId", "app"),
            ("app", forced_id.as_str()),
            ("HTTP_COOKIE", cookie.as_str()),
        ];
        let text = read_only_with(&store, &env, &reader);
        assert!(text.ends_with("Forced Some(\"eggs\")"), "{text}");
    }

    #[test]
    fn an_old_id_never_learns_the_new_one_through_links_or_id() {
        // Ids in URLs (PSOSessionUrl=on): links are built from cx.url, which uses the id.
        let linker = |cx: &mut Context<'_>| -> Result<(), BoxError> {
            cx.session.set("seen", &true)?;
            if cx.request.query("login").is_some() {
                cx.session.regenerate_id()?;
            }
            write!(cx.response, "{} {}", cx.url("/next"), cx.session.id())?;
            Ok(())
        };
        let store = MemoryStore::new();
        let visit = |query: &str, t: u64| {
            let pairs = [("QUERY_STRING", query), ("PSOSessionUrl", "on")];
            reply(&store, &pairs, &linker, T0 + t)
        };
        let first = visit("", 0);
        let old = first
            .cookie()
            .unwrap()
            .split_once('=')
            .unwrap()
            .1
            .to_owned();
        let signed_in = visit(&format!("app={old}&login"), 1);
        let new = signed_in
            .cookie()
            .unwrap()
            .split_once('=')
            .unwrap()
            .1
            .to_owned();
        assert_ne!(old, new);
        let late = visit(&format!("app={old}"), 3);
        assert_eq!(late.body(), format!("/next?app={old} {old}"));
        assert_eq!(late.set_cookies(), Vec::<&str>::new());
        let read = read_only_with(
            &store,
            &[
                ("QUERY_STRING", &format!("app={old}")),
                ("PSOSessionUrl", "on"),
            ],
            &linker,
        );
        assert!(!read.contains(&new), "{read}");
    }

    #[test]
    fn a_damaged_user_record_is_kept_by_collection_ends_its_sessions_and_is_rebuilt() {
        let app = eggs;
        let store = MemoryStore::new();
        let sessions: Vec<String> = (0..3)
            .map(|_| {
                let reply = reply(&store, &[("QUERY_STRING", "login")], &app, T0);
                reply.cookie().unwrap().to_owned()
            })
            .collect();
        let user = SessionKey::new(
            "app".parse().unwrap(),
            crate::session::user_record_id("eggs"),
        );
        store.plant(&user, b"damaged");
        let later = UNIX_EPOCH + Duration::from_secs(T0 + 1);
        store
            .collect_garbage(later, Duration::from_secs(5))
            .unwrap();
        assert!(
            store.peek(&user).is_err(),
            "a damaged user record is never collected"
        );
        let visit = |query: &str, cookie: &str, t: u64| {
            let pairs = [("HTTP_COOKIE", cookie), ("QUERY_STRING", query)];
            reply(&store, &pairs, &app, T0 + t)
        };
        // Its sessions end; the record is rebuilt saying "everyone before now"...
        assert_eq!(
            visit("", &sessions[0], 2).body(),
            "Replaced(LoggedOut) None"
        );
        assert!(store.peek(&user).unwrap().is_some(), "rebuilt");
        assert_eq!(
            visit("", &sessions[1], 3).body(),
            "Replaced(LoggedOut) None"
        );
        // ... so a new sign-in lasts, even one made by the request that rebuilt it.
        store.plant(&user, b"damaged");
        let same = visit("login", &sessions[2], 4);
        assert_eq!(same.body(), "Replaced(LoggedOut) Some(\"eggs\")");
        let cookie = same.cookie().unwrap().to_owned();
        assert_eq!(visit("", &cookie, 5).body(), "Returning Some(\"eggs\")");
        let again = visit("login", "", 4);
        let cookie = again.cookie().unwrap().to_owned();
        assert_eq!(visit("", &cookie, 5).body(), "Returning Some(\"eggs\")");
    }

    #[test]
    fn an_old_id_cannot_sign_the_session_in_as_someone_else() {
        let sign_in = |cx: &mut Context<'_>| -> Result<(), BoxError> {
            if let Some(user) = cx.request.query("as") {
                cx.session.set_user(&user)?;
            }
            write!(cx.response, "{:?}", cx.session.user())?;
            Ok(())
        };
        let store = MemoryStore::new();
        let (old, new) = signed_in(&store);
        let pairs = [
            ("HTTP_COOKIE", old.as_str()),
            ("QUERY_STRING", "as=mallory"),
            ("REMOTE_ADDR", "192.0.2.1"),
        ];
        let text = serve_text(&store, &pairs, &sign_in, T0 + 2);
        assert!(text.starts_with("Status: 409"), "{text}");
        let pairs = [("HTTP_COOKIE", new.as_str()), ("REMOTE_ADDR", "192.0.2.1")];
        let owner = serve_text(&store, &pairs, &sign_in, T0 + 3);
        assert!(owner.ends_with("None"), "unchanged: {owner}");
    }

    #[test]
    fn a_forced_id_under_check_ip_is_left_alone_for_another_address() {
        let cart = |cx: &mut Context<'_>| -> Result<(), BoxError> {
            if let Some(item) = cx.request.query("add") {
                cx.session.set("cart", &item)?;
            }
            let item: Option<String> = cx.session.get("cart")?;
            write!(cx.response, "{:?} {item:?}", cx.session.origin())?;
            Ok(())
        };
        let store = MemoryStore::new();
        let forced_id = SessionId::forced("shared-007").unwrap();
        let visit = |addr: &str, query: &str, t: u64| {
            let pairs = [
                ("PSOServiceId", "app"),
                ("app", forced_id.as_str()),
                ("PSOSessionCheckIP", "on"),
                ("REMOTE_ADDR", addr),
                ("QUERY_STRING", query),
            ];
            reply(&store, &pairs, &cart, T0 + t)
        };
        assert_eq!(
            visit("192.0.2.1", "add=spam", 0).body(),
            "Forced Some(\"spam\")"
        );
        assert_eq!(
            visit("198.51.100.7", "", 1).body(),
            "Replaced(OtherAddress) None"
        );
        let refused = visit("198.51.100.7", "add=ham", 2);
        assert!(refused.text.starts_with("Status: 500"), "{}", refused.text);
        assert_eq!(
            visit("192.0.2.1", "", 3).body(),
            "Forced Some(\"spam\")",
            "left alone"
        );
    }

    #[test]
    fn a_request_refused_for_its_old_id_changes_nothing_even_if_the_handler_carries_on() {
        // A sign-in that writes before regenerate_id() and answers the refusal with a redirect.
        let careless = |cx: &mut Context<'_>| -> Result<(), BoxError> {
            if let Some(user) = cx.request.query("as") {
                cx.session.set("user", &user)?;
                cx.session.set("admin", &true)?;
                if let Err(e) = cx.session.regenerate_id() {
                    assert_eq!(e.kind(), ErrorKind::OldId);
                    assert!(
                        cx.session.set("user", &user).is_err(),
                        "nothing more changes"
                    );
                    cx.response.redirect("/")?;
                    return Ok(());
                }
            }
            let user: Option<String> = cx.session.get("user")?;
            let admin: Option<bool> = cx.session.get("admin")?;
            write!(cx.response, "{user:?} {admin:?}")?;
            Ok(())
        };
        let store = MemoryStore::new();
        let (old, new) = signed_in(&store);
        let pairs = [
            ("HTTP_COOKIE", old.as_str()),
            ("QUERY_STRING", "as=mallory"),
            ("REMOTE_ADDR", "192.0.2.1"),
        ];
        let refused = reply(&store, &pairs, &careless, T0 + 2);
        assert!(refused.text.starts_with("Status: 302"), "{}", refused.text);
        assert_eq!(refused.set_cookies(), Vec::<&str>::new());
        let pairs = [("HTTP_COOKIE", new.as_str())];
        let owner = reply(&store, &pairs, &careless, T0 + 100);
        assert_eq!(
            owner.body(),
            "Some(\"eggs\") None",
            "the owner's session is untouched"
        );
        // Nor can the old id lift the session's own idle limit; setting the same one again (a
        // page that sets it on every request) is fine.
        let limit = |cx: &mut Context<'_>| -> Result<(), BoxError> {
            let secs = cx.request.query("limit").and_then(|s| s.parse().ok());
            cx.session.set_idle_limit(secs.map(Duration::from_secs))?;
            Ok(())
        };
        let visit = |cookie: &str, query: &str, t: u64| {
            let pairs = [
                ("HTTP_COOKIE", cookie),
                ("QUERY_STRING", query),
                ("REMOTE_ADDR", "192.0.2.1"),
            ];
            serve_text(&store, &pairs, &limit, T0 + t)
        };
        assert!(visit(&new, "limit=600", 2).starts_with("Status: 200"));
        assert!(visit(&old, "limit=600", 3).starts_with("Status: 200"));
        assert!(
            visit(&old, "limit=60", 3).starts_with("Status: 200"),
            "stricter"
        );
        assert!(visit(&old, "limit=6000", 4).starts_with("Status: 409"));
        assert!(visit(&old, "", 4).starts_with("Status: 409"));
    }

    #[test]
    fn an_expired_forced_session_of_another_address_gives_way_without_its_data() {
        let cart = |cx: &mut Context<'_>| -> Result<(), BoxError> {
            let old: Option<String> = match cx.session.take_expired() {
                Some(record) => record.get("cart")?,
                None => None,
            };
            if let Some(item) = cx.request.query("add") {
                cx.session.set("cart", &item)?;
            }
            let item: Option<String> = cx.session.get("cart")?;
            write!(cx.response, "{:?} {item:?} {old:?}", cx.session.origin())?;
            Ok(())
        };
        let store = MemoryStore::new();
        let visit = |addr: &str, query: &str, t: u64| {
            let pairs = [
                ("PSOServiceId", "app"),
                ("app", "shared-007"),
                ("PSOSessionCheckIP", "on"),
                ("PSOSessionIdle", "60"),
                ("REMOTE_ADDR", addr),
                ("QUERY_STRING", query),
            ];
            reply(&store, &pairs, &cart, T0 + t).body().to_owned()
        };
        assert_eq!(
            visit("192.0.2.1", "add=spam", 0),
            "Forced Some(\"spam\") None"
        );
        // Expired: another address takes the id over, without A's data.
        assert_eq!(
            visit("198.51.100.7", "add=ham", 200),
            "Replaced(Idle) Some(\"ham\") None"
        );
        assert_eq!(visit("198.51.100.7", "", 201), "Forced Some(\"ham\") None");
        // A read-only request says the same as a read-write one would.
        let reader = |cx: &mut Context<'_>| -> Result<(), BoxError> {
            write!(cx.response, "{:?}", cx.session.origin())?;
            Ok(())
        };
        let pairs = [
            ("PSOServiceId", "app"),
            ("app", "shared-007"),
            ("PSOSessionCheckIP", "on"),
            ("REMOTE_ADDR", "192.0.2.1"),
        ];
        assert!(read_only_with(&store, &pairs, &reader).ends_with("Replaced(OtherAddress)"));
    }

    #[test]
    fn a_form_on_a_page_that_empties_a_stored_session_still_posts() {
        let store = MemoryStore::new();
        let kept = reply(&store, &[("QUERY_STRING", "keep")], &guarded, T0);
        let cookie = kept.cookie().unwrap().to_owned();
        let emptying = |cx: &mut Context<'_>| -> Result<(), BoxError> {
            cx.session.remove("kept")?;
            let token = cx.session.create_form_token()?;
            write!(cx.response, "{token}")?;
            Ok(())
        };
        let page = reply(
            &store,
            &[("HTTP_COOKIE", cookie.as_str())],
            &emptying,
            T0 + 1,
        );
        assert!(page.set_cookies()[0].starts_with("app=; "), "{}", page.text);
        assert_eq!(
            store.keys().unwrap().count(),
            0,
            "the emptied session is gone"
        );
        let browser = page.form_cookie().unwrap().to_owned();
        let form = format!("token={}", page.body());
        let same_origin = [("HTTP_SEC_FETCH_SITE", "same-origin")];
        assert_eq!(
            post(&store, &browser, &form, &same_origin).body(),
            "accepted 1"
        );
    }

    #[test]
    fn a_refusal_for_an_old_id_undoes_a_save_made_before_it() {
        let saver = |cx: &mut Context<'_>| -> Result<(), BoxError> {
            if cx.request.query("as").is_some() {
                cx.session.set("user", "mallory")?;
                cx.session.save()?;
                cx.session.regenerate_id()?;
            }
            let user: Option<String> = cx.session.get("user")?;
            write!(cx.response, "{user:?}")?;
            Ok(())
        };
        let store = MemoryStore::new();
        let (old, new) = signed_in(&store);
        let visit = |cookie: &str, query: &str, t: u64| {
            let pairs = [
                ("HTTP_COOKIE", cookie),
                ("QUERY_STRING", query),
                ("REMOTE_ADDR", "192.0.2.1"),
            ];
            serve_text(&store, &pairs, &saver, T0 + t)
        };
        assert!(visit(&old, "as", 2).starts_with("Status: 409"));
        assert!(
            visit(&new, "", 100).ends_with("Some(\"eggs\")"),
            "the save was undone"
        );
    }

    #[test]
    fn a_stolen_cookie_from_another_address_ends_nothing_through_a_stricter_script() {
        let store = MemoryStore::new();
        let visit = |cookie: &str, addr: &str, idle: &str, t: u64| {
            let pairs = [
                ("HTTP_COOKIE", cookie),
                ("REMOTE_ADDR", addr),
                ("PSOSessionCheckIP", "on"),
                ("PSOSessionIdle", idle),
            ];
            reply(&store, &pairs, &counter_with_origin, T0 + t)
        };
        let first = visit("", "192.0.2.1", "3600", 0);
        let cookie = first.cookie().unwrap().to_owned();
        assert_eq!(
            visit(&cookie, "198.51.100.7", "60", 120).body(),
            "Replaced(OtherAddress) 1"
        );
        assert_eq!(
            visit(&cookie, "192.0.2.1", "3600", 121).body(),
            "Returning 2"
        );
    }

    /// Counts, and says why this session.
    fn counter_with_origin(cx: &mut Context<'_>) -> Result<(), BoxError> {
        let n: u64 = cx.session.get("n")?.unwrap_or(0) + 1;
        cx.session.set("n", &n)?;
        write!(cx.response, "{:?} {n}", cx.session.origin())?;
        Ok(())
    }

    #[test]
    fn an_old_id_that_clears_the_session_leaves_its_user_and_limits() {
        let app = |cx: &mut Context<'_>| -> Result<(), BoxError> {
            if cx.request.query("login").is_some() {
                cx.session.set("cart", "spam")?;
                cx.session.regenerate_id()?;
                cx.session.set_user("eggs")?;
                cx.session.set_idle_limit(Some(Duration::from_secs(60)))?;
            }
            if cx.request.query("clear").is_some() {
                cx.session.clear()?;
                cx.session.set("prefs", "dark")?;
            }
            if cx.request.query("lift").is_some() {
                cx.session
                    .set_idle_limit(Some(Duration::from_secs(100_000)))?;
            }
            write!(
                cx.response,
                "{:?} {:?}",
                cx.session.origin(),
                cx.session.user()
            )?;
            Ok(())
        };
        let store = MemoryStore::new();
        let visit = |cookie: &str, query: &str, t: u64| {
            let pairs = [
                ("HTTP_COOKIE", cookie),
                ("QUERY_STRING", query),
                ("REMOTE_ADDR", "192.0.2.1"),
            ];
            reply(&store, &pairs, &app, T0 + t)
        };
        let started = visit("", "login", 0);
        let new = started.cookie().unwrap().to_owned();
        // Sign in again from the current id, so that an old id exists.
        let again = visit(&new, "login", 1);
        let newest = again.cookie().unwrap().to_owned();
        // Through the old id: clearing leaves the user; lifting the limit, even after
        // clearing, is refused.
        assert!(visit(&new, "clear", 2).text.starts_with("Status: 200"));
        assert_eq!(visit(&newest, "", 3).body(), "Returning Some(\"eggs\")");
        let lifted = visit(&new, "clear&lift", 4);
        assert!(lifted.text.starts_with("Status: 409"), "{}", lifted.text);
        // The 60 s limit still holds.
        assert_eq!(visit(&newest, "", 200).body(), "Replaced(Idle) None");
    }

    #[test]
    fn a_forced_session_that_expired_says_why_and_hands_over_its_data() {
        let audit = |cx: &mut Context<'_>| -> Result<(), BoxError> {
            let old: Option<u64> = match cx.session.take_expired() {
                Some(record) => record.get("n")?,
                None => None,
            };
            let n: u64 = cx.session.get("n")?.unwrap_or(0) + 1;
            cx.session.set("n", &n)?;
            write!(cx.response, "{:?} {n} {old:?}", cx.session.origin())?;
            Ok(())
        };
        let store = MemoryStore::new();
        let forced_id = SessionId::forced("shared-007").unwrap();
        let visit = |t: u64| {
            let pairs = [
                ("PSOServiceId", "app"),
                ("app", forced_id.as_str()),
                ("PSOSessionIdle", "60"),
            ];
            reply(&store, &pairs, &audit, T0 + t).body().to_owned()
        };
        assert_eq!(visit(0), "Forced 1 None");
        assert_eq!(visit(10), "Forced 2 None");
        // A reader is told why, but gets no data: it deletes nothing, so every reader would.
        let reader = |cx: &mut Context<'_>| -> Result<(), BoxError> {
            write!(
                cx.response,
                "{:?} {}",
                cx.session.origin(),
                cx.session.take_expired().is_some()
            )?;
            Ok(())
        };
        let pairs = [
            ("PSOServiceId", "app"),
            ("app", forced_id.as_str()),
            ("PSOSessionIdle", "60"),
        ];
        let read = read_only_at(&store, &pairs, &reader, T0 + 200);
        assert!(read.ends_with("Replaced(Idle) false"), "{read}");
        assert_eq!(visit(200), "Replaced(Idle) 1 Some(2)");
        assert_eq!(visit(210), "Forced 2 None");
    }

    #[test]
    fn regenerate_after_the_head_is_out_is_refused_and_the_session_kept() {
        let late = |cx: &mut Context<'_>| -> Result<(), BoxError> {
            let n: u64 = cx.session.get("n")?.unwrap_or(0) + 1;
            cx.session.set("n", &n)?;
            cx.stream()?;
            let outcome = cx.session.regenerate_id();
            write!(cx.response, "{n} {}", outcome.is_err())?;
            Ok(())
        };
        let store = MemoryStore::new();
        let cookie = request(&store, &[], T0).cookie().unwrap().to_owned();
        let text = serve_text(&store, &[("HTTP_COOKIE", cookie.as_str())], &late, T0);
        assert!(text.ends_with("2 true"), "{text}");
        assert_eq!(
            with_cookie(&store, &cookie, &[]).body(),
            "3",
            "nothing lost"
        );
    }

    #[test]
    fn a_forced_id_cannot_be_regenerated() {
        let store = MemoryStore::new();
        let forced_id = SessionId::forced("shared-007").unwrap();
        let pairs = [("PSOServiceId", "app"), ("app", forced_id.as_str())];
        let first = reply(&store, &pairs, &login, T0);
        assert_eq!(first.body(), "Forced n=1 user=None");
        let mut with_login = pairs.to_vec();
        with_login.push(("QUERY_STRING", "login"));
        let refused = serve_text(&store, &with_login, &login, T0 + 1);
        assert!(refused.contains("500 Internal Server Error"), "{refused}");
        let after = reply(&store, &pairs, &login, T0 + 2);
        assert_eq!(after.body(), "Forced n=2 user=None", "the data is intact");
    }

    #[test]
    fn a_released_session_refuses_malformed_tokens_without_an_error() {
        let store = MemoryStore::new();
        let cookie = request(&store, &[], T0).cookie().unwrap().to_owned();
        let taker = |cx: &mut Context<'_>| -> Result<(), BoxError> {
            cx.session.release()?;
            let empty = cx.session.take_form_token("")?;
            let odd = cx.session.take_form_token("x")?;
            let session_kind = cx.session.take_form_token(&"a".repeat(48)).is_err();
            write!(cx.response, "{empty} {odd} {session_kind}")?;
            Ok(())
        };
        let text = serve_text(&store, &[("HTTP_COOKIE", cookie.as_str())], &taker, T0);
        assert!(text.ends_with("false false true"), "{text}");
    }

    /// A store whose user records cannot be read right now (a failing disk).
    struct FailingUserRecords(MemoryStore);

    impl Store for FailingUserRecords {
        fn lock(
            &self,
            key: &SessionKey,
            options: LockOptions,
        ) -> crate::Result<Box<dyn crate::store::LockedSession>> {
            self.0.lock(key, options)
        }
        fn exists(&self, key: &SessionKey) -> crate::Result<bool> {
            self.0.exists(key)
        }
        fn peek(&self, key: &SessionKey) -> crate::Result<Option<crate::Record>> {
            if key.id.as_str().starts_with("user-") {
                return Err(crate::Error::new(ErrorKind::Io, "input/output error"));
            }
            self.0.peek(key)
        }
        fn delete(&self, key: &SessionKey) -> crate::Result<()> {
            self.0.delete(key)
        }
        fn keys(&self) -> crate::Result<Box<dyn Iterator<Item = crate::Result<SessionKey>> + '_>> {
            self.0.keys()
        }
        fn collect_garbage(
            &self,
            now: SystemTime,
            budget: Duration,
        ) -> crate::Result<crate::store::GcReport> {
            self.0.collect_garbage(now, budget)
        }
    }

    #[test]
    fn a_user_record_that_cannot_be_read_now_fails_the_request_and_ends_nothing() {
        let app = eggs;
        let memory = MemoryStore::new();
        let cookie = reply(&memory, &[("QUERY_STRING", "login")], &app, T0)
            .cookie()
            .unwrap()
            .to_owned();
        let failing = FailingUserRecords(memory.clone());
        let env = Environment::from_pairs([
            ("GATEWAY_INTERFACE", "CGI/1.1"),
            ("SCRIPT_NAME", "/cgi-bin/app"),
            ("HTTP_COOKIE", cookie.as_str()),
        ]);
        let config = Config::from_env(&env);
        let mut output = Vec::new();
        let now = UNIX_EPOCH + Duration::from_secs(T0 + 1);
        serve_with_store(
            &env,
            &config,
            &failing,
            &mut io::empty(),
            &mut output,
            &app,
            now,
        )
        .unwrap();
        let text = String::from_utf8(output).unwrap();
        assert!(text.starts_with("Status: 500"), "{text}");
        let pairs = [("HTTP_COOKIE", cookie.as_str())];
        let back = reply(&memory, &pairs, &app, T0 + 2);
        assert_eq!(
            back.body(),
            "Returning Some(\"eggs\")",
            "the session was kept"
        );
    }

    #[test]
    fn one_set_cookie_per_name_even_when_the_handler_adds_the_form_cookie() {
        let store = MemoryStore::new();
        let meddler = |cx: &mut Context<'_>| -> Result<(), BoxError> {
            cx.response
                .add_header("Set-Cookie", "app.form=chosen; Path=/")?;
            let token = cx.session.create_form_token()?;
            write!(cx.response, "{token}")?;
            Ok(())
        };
        let reply = reply(&store, &[], &meddler, T0);
        let set = reply.set_cookies();
        assert_eq!(set.len(), 1, "{set:?}");
        assert!(!set[0].contains("chosen"), "{set:?}");
    }

    #[test]
    fn a_form_for_a_visitor_without_a_session_needs_no_lock_and_survives_a_sign_out() {
        let store = MemoryStore::new();
        // A read-only page shows a sign-in form.
        let show = |cx: &mut Context<'_>| -> Result<(), BoxError> {
            let token = cx.session.create_form_token()?;
            write!(cx.response, "{token}")?;
            Ok(())
        };
        let page = Reply {
            text: read_only_with(&store, &[], &show),
        };
        assert_eq!(
            page.body().len(),
            crate::form_token::COOKIE_TOKEN_LEN,
            "{}",
            page.text
        );
        let browser = page.form_cookie().unwrap().to_owned();
        let form = format!("token={}", page.body());
        let same_origin = [("HTTP_SEC_FETCH_SITE", "same-origin")];
        assert_eq!(
            post(&store, &browser, &form, &same_origin).body(),
            "accepted 1"
        );
        // A sign-out page that shows the sign-in form at once.
        let cookie = request(&store, &[], T0).cookie().unwrap().to_owned();
        let sign_out = |cx: &mut Context<'_>| -> Result<(), BoxError> {
            cx.session.expire(crate::Expiry::Now)?;
            let token = cx.session.create_form_token()?;
            write!(cx.response, "{token}")?;
            Ok(())
        };
        let out = reply(&store, &[("HTTP_COOKIE", cookie.as_str())], &sign_out, T0);
        assert!(out.set_cookies()[0].starts_with("app=; "), "{}", out.text);
        let browser = out.form_cookie().unwrap().to_owned();
        let form = format!("token={}", out.body());
        assert_eq!(
            post(&store, &browser, &form, &same_origin).body(),
            "accepted 1"
        );
    }

    /// One read-only request through `handler`, at `T0`, with a CGI environment plus `pairs`.
    fn read_only_with<F: Handler>(
        store: &MemoryStore,
        pairs: &[(&str, &str)],
        handler: &F,
    ) -> String {
        read_only_at(store, pairs, handler, T0)
    }

    /// One read-only request through `handler`, at `secs`, with a CGI environment plus `pairs`.
    fn read_only_at<F: Handler>(
        store: &MemoryStore,
        pairs: &[(&str, &str)],
        handler: &F,
        secs: u64,
    ) -> String {
        let mut all = vec![
            ("GATEWAY_INTERFACE", "CGI/1.1"),
            ("SCRIPT_NAME", "/cgi-bin/app"),
        ];
        all.extend_from_slice(pairs);
        let env = Environment::from_pairs(all);
        let config = Config::from_env(&env);
        let mut output = Vec::new();
        let now = UNIX_EPOCH + Duration::from_secs(secs);
        let input: &mut dyn io::Read = &mut io::empty();
        respond(
            &env,
            &config,
            store,
            (input, &mut output),
            handler,
            now,
            Access::ReadOnly,
        )
        .unwrap();
        String::from_utf8(output).unwrap()
    }

    /// One read-only request (`run_read_only`) through `handler`, at `T0`.
    fn read_only_text<F: Handler>(store: &MemoryStore, cookie: &str, handler: &F) -> String {
        read_only_with(store, &[("HTTP_COOKIE", cookie)], handler)
    }

    #[test]
    fn a_read_only_request_runs_while_a_writer_holds_the_lock() {
        use std::sync::mpsc;
        let store = MemoryStore::new();
        let cookie = request(&store, &[], T0).cookie().unwrap().to_owned();
        let (done, finished) = mpsc::channel::<String>();
        let finished = std::sync::Mutex::new(finished);
        // The writer holds the session's lock until the reader has answered (or 10 s pass).
        let slow_writer = |cx: &mut Context<'_>| -> Result<(), BoxError> {
            let n: u64 = cx.session.get("n")?.unwrap_or(0) + 1;
            cx.session.set("n", &n)?;
            let seen = finished
                .lock()
                .unwrap()
                .recv_timeout(Duration::from_secs(10))?;
            write!(cx.response, "wrote {n} while a reader saw {seen}")?;
            Ok(())
        };
        let reader = |cx: &mut Context<'_>| -> Result<(), BoxError> {
            let n: u64 = cx.session.get("n")?.unwrap_or(0);
            write!(cx.response, "{n}")?;
            Ok(())
        };
        std::thread::scope(|scope| {
            let writer = scope.spawn(|| {
                serve_text(
                    &store,
                    &[("HTTP_COOKIE", cookie.as_str())],
                    &slow_writer,
                    T0,
                )
            });
            std::thread::sleep(Duration::from_millis(50));
            let read = Reply {
                text: read_only_text(&store, &cookie, &reader),
            };
            assert_eq!(read.cookie(), Some(cookie.as_str()), "the cookie as it was");
            done.send(read.body().to_owned()).unwrap();
            let written = writer.join().unwrap();
            assert!(
                written.ends_with("wrote 2 while a reader saw 1"),
                "{written}"
            );
        });
        // A read-only request cannot change the session, and a new visitor gets nothing stored.
        let writes = |cx: &mut Context<'_>| -> Result<(), BoxError> {
            cx.session.set("n", &100u64)?;
            Ok(())
        };
        assert!(read_only_text(&store, &cookie, &writes).starts_with("Status: 500"));
        let keys = store.keys().unwrap().count();
        let fresh = Reply {
            text: read_only_text(&store, "", &reader),
        };
        assert_eq!((fresh.body(), fresh.cookie()), ("0", None));
        assert_eq!(store.keys().unwrap().count(), keys);
        assert_eq!(with_cookie(&store, &cookie, &[]).body(), "3");
    }

    #[test]
    fn the_cookie_chain_counts() {
        let store = MemoryStore::new();
        let first = request(&store, &[], T0);
        assert_eq!(first.body(), "1");
        let cookie = first.cookie().unwrap().to_owned();
        assert!(first.text.contains("Cache-Control: no-store\r\n"));
        assert_eq!(with_cookie(&store, &cookie, &[]).body(), "2");
        let third = with_cookie(&store, &cookie, &[]);
        assert_eq!((third.body(), third.cookie()), ("3", Some(cookie.as_str())));
    }

    #[test]
    fn unknown_ids_are_replaced_not_adopted() {
        let store = MemoryStore::new();
        let forged = "app=0123456789abcdef0123456789abcdef0123456789abcdef";
        let reply = with_cookie(&store, forged, &[]);
        assert_eq!(reply.body(), "1");
        assert_ne!(reply.cookie(), Some(forged));
    }

    #[test]
    fn two_live_sessions_in_one_request_both_end() {
        let store = MemoryStore::new();
        let mine = request(&store, &[], T0).cookie().unwrap().to_owned();
        let theirs = request(&store, &[], T0).cookie().unwrap().to_owned();
        let reply = with_cookie(&store, &format!("{theirs}; {mine}"), &[]);
        assert_eq!(reply.body(), "1", "neither is adopted");
        assert!(reply.cookie().is_some_and(|c| c != mine && c != theirs));
        assert_eq!(with_cookie(&store, &mine, &[]).body(), "1", "both ended");
        assert_eq!(with_cookie(&store, &theirs, &[]).body(), "1");
    }

    #[test]
    fn a_live_session_wins_over_a_tossed_cookie_in_any_order() {
        let store = MemoryStore::new();
        let real = request(&store, &[], T0).cookie().unwrap().to_owned();
        let fake = "app=ffffffffffffffffffffffffffffffffffffffffffffffff";
        for header in [format!("{fake}; {real}"), format!("{real}; {fake}")] {
            let reply = with_cookie(&store, &header, &[]);
            assert_eq!(reply.cookie(), Some(real.as_str()));
        }
        assert_eq!(with_cookie(&store, &real, &[]).body(), "4");
    }

    #[test]
    fn errors_and_panics_discard_the_changes() {
        let store = MemoryStore::new();
        let cookie = request(&store, &[], T0).cookie().unwrap().to_owned();
        for query in ["fail=1", "panic=1"] {
            let reply = with_cookie(&store, &cookie, &[("QUERY_STRING", query)]);
            assert!(reply.text.starts_with("Status: 500 "), "{}", reply.text);
            assert_eq!(reply.cookie(), None);
        }
        assert_eq!(with_cookie(&store, &cookie, &[]).body(), "2");
    }

    #[test]
    fn expire_now_revokes() {
        let store = MemoryStore::new();
        let cookie = request(&store, &[], T0).cookie().unwrap().to_owned();
        let reply = with_cookie(&store, &cookie, &[("QUERY_STRING", "logout=1")]);
        assert!(reply.text.contains("Set-Cookie: app=; HttpOnly; SameSite=Lax; Path=/; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT\r\n"), "{}", reply.text);
        assert_eq!(with_cookie(&store, &cookie, &[]).body(), "1");
    }

    #[test]
    fn lifetimes_reach_the_cookie_and_the_server() {
        let store = MemoryStore::new();
        let reply = request(&store, &[("PSOSessionExpire", "15*60")], T0);
        assert!(
            reply.text.contains("; Max-Age=900; Expires="),
            "{}",
            reply.text
        );
        let cookie = reply.cookie().unwrap().to_owned();
        let later = |secs| {
            request(
                &store,
                &[("HTTP_COOKIE", &cookie), ("PSOSessionExpire", "15*60")],
                secs,
            )
        };
        let reply = later(T0 + 899);
        assert_eq!(reply.body(), "2");
        assert!(
            reply.text.contains("; Max-Age=1;"),
            "the deadline is absolute: {}",
            reply.text
        );
        assert_eq!(
            later(T0 + 900).body(),
            "1",
            "past its deadline the session is dead"
        );
    }

    #[test]
    fn forced_ids_are_shared() {
        let store = MemoryStore::new();
        let forced = [("PSOServiceId", "MyService"), ("MyService", "007")];
        let first = request(&store, &forced, T0);
        assert_eq!(first.cookie(), Some("MyService=007"));
        assert_eq!(request(&store, &forced, T0).body(), "2", "no cookie needed");
    }

    #[test]
    fn a_busy_session_gets_503() {
        let store = MemoryStore::new();
        let cookie = request(&store, &[], T0).cookie().unwrap().to_owned();
        let id: SessionId = cookie.trim_start_matches("app=").parse().unwrap();
        let key = SessionKey::new("app".parse().unwrap(), id);
        let _held = store.lock(&key, LockOptions::new(Duration::ZERO)).unwrap();
        let reply = with_cookie(&store, &cookie, &[("PSOSessionLockTimeout", "0")]);
        assert!(
            reply
                .text
                .starts_with("Status: 503 Service Unavailable\r\n"),
            "{}",
            reply.text
        );
        assert!(reply.text.contains("Retry-After: 5\r\n"));
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
        let text = serve_text(&MemoryStore::new(), &[], &handler, T0);
        assert_eq!(text.matches("Set-Cookie: app=").count(), 1, "{text}");
        assert!(!text.contains("attacker-chosen") && text.contains("Set-Cookie: theme=dark"));
    }

    #[test]
    fn head_requests_save_but_send_no_body() {
        let store = MemoryStore::new();
        let reply = request(&store, &[("REQUEST_METHOD", "HEAD")], T0);
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
        let text = serve_text(&MemoryStore::new(), &[], &handler, T0);
        assert!(text.contains("Set-Cookie: app="), "{text}");
        assert!(text.ends_with("\r\n\r\nstreamed"));
    }
}
