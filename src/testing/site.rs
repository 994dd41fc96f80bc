//! Requests for the library's own tests, driven through [`Service`] as a web server would:
//! each is an environment (CGI variables and PSO variables, as FastCGI parameters), a body and
//! a time, over one shared store; the response is read back as text.
//!
//! Also the handlers several test modules share, each a small page of a site.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use crate::environment::Environment;
use crate::error::BoxError;
use crate::runner::{Context, Handler};
use crate::service::Service;
use crate::store::{MemoryStore, Store};

/// The time every test starts from (Unix seconds).
pub(crate) const T0: u64 = 1_700_000_000;

/// A site: one store that every request shares.
#[derive(Clone)]
pub(crate) struct Site {
    pub store: Arc<dyn Store>,
    pub memory: MemoryStore,
}

/// One request to a [`Site`], built up and then sent.
pub(crate) struct Visit<'s> {
    site: &'s Site,
    env: Vec<(String, String)>,
    body: Vec<u8>,
    secs: u64,
    read_only: bool,
}

/// What a request answered.
#[derive(Debug)]
pub(crate) struct Answer {
    pub text: String,
}

impl Site {
    /// A site over a new memory store.
    pub fn new() -> Site {
        let memory = MemoryStore::new();
        Site {
            store: Arc::new(memory.clone()),
            memory,
        }
    }

    /// A site over `store` (which wraps `memory`, say to make some of its calls fail).
    pub fn over(store: Arc<dyn Store>, memory: MemoryStore) -> Site {
        Site { store, memory }
    }

    /// A request at `T0`, from 192.0.2.1, with no cookie.
    pub fn visit(&self) -> Visit<'_> {
        Visit {
            site: self,
            env: vec![
                ("GATEWAY_INTERFACE".into(), "CGI/1.1".into()),
                ("SCRIPT_NAME".into(), "/cgi-bin/app".into()),
                ("REQUEST_METHOD".into(), "GET".into()),
                ("REMOTE_ADDR".into(), "192.0.2.1".into()),
                // Collection would remove what a test looks at next.
                ("PSOSessionGCProbability".into(), "0".into()),
            ],
            body: Vec::new(),
            secs: T0,
            read_only: false,
        }
    }

    /// The number of records the store holds.
    pub fn records(&self) -> usize {
        self.store.keys().unwrap().count()
    }
}

impl Visit<'_> {
    /// Sets a variable (a CGI variable or a PSO one); the last setting wins.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Sets several variables.
    pub fn envs(mut self, pairs: &[(&str, &str)]) -> Self {
        for (name, value) in pairs {
            self = self.env(name, value);
        }
        self
    }

    /// The `Cookie` header.
    pub fn cookie(self, cookie: &str) -> Self {
        self.env("HTTP_COOKIE", cookie)
    }

    /// The query string.
    pub fn query(self, query: &str) -> Self {
        self.env("QUERY_STRING", query)
    }

    /// `REMOTE_ADDR`.
    pub fn from(self, addr: &str) -> Self {
        self.env("REMOTE_ADDR", addr)
    }

    /// At `T0 + t` seconds.
    pub fn at(mut self, t: u64) -> Self {
        self.secs = T0 + t;
        self
    }

    /// A form posted from the site itself.
    pub fn post(mut self, form: &str) -> Self {
        self.body = form.as_bytes().to_vec();
        let length = form.len().to_string();
        self.env("REQUEST_METHOD", "POST")
            .env("CONTENT_TYPE", "application/x-www-form-urlencoded")
            .env("CONTENT_LENGTH", &length)
    }

    /// Served by a read-only service (`run_read_only`).
    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    /// Sends the request to `handler`: the session cookie it set, which there must be.
    pub fn issued<F: Handler>(self, handler: &F) -> String {
        let reply = self.send(handler);
        match reply.cookie() {
            Some(cookie) => cookie.to_owned(),
            None => panic!("no session cookie: {}", reply.text),
        }
    }

    /// Sends the request to `handler`: the body of its answer.
    pub fn answer<F: Handler>(self, handler: &F) -> String {
        self.send(handler).body().to_owned()
    }

    /// Sends the request to `handler`.
    pub fn send<F: Handler>(self, handler: &F) -> Answer {
        let env = Environment::from_pairs(self.env);
        let mut service = Service::new(Environment::default()).with_store(self.site.store.clone());
        if self.read_only {
            service = service.read_only();
        }
        let mut output = Vec::new();
        let now = UNIX_EPOCH + Duration::from_secs(self.secs);
        service
            .serve(&env, &mut self.body.as_slice(), &mut output, handler, now)
            .unwrap();
        Answer {
            text: String::from_utf8(output).unwrap(),
        }
    }
}

impl Answer {
    /// The status line's code and reason, `200 OK`.
    pub fn status(&self) -> &str {
        self.text
            .lines()
            .next()
            .and_then(|line| line.strip_prefix("Status: "))
            .unwrap_or("")
    }

    /// The session cookie sent, as `name=value`.
    pub fn cookie(&self) -> Option<&str> {
        self.set_cookies()
            .into_iter()
            .map(|c| c.split(';').next().unwrap_or(""))
            .find(|c| !c.contains(".form="))
    }

    /// The session cookie sent, or `before` when none was (as a browser keeps its cookie).
    pub fn cookie_or(&self, before: &str) -> String {
        self.cookie().unwrap_or(before).to_owned()
    }

    /// Every `Set-Cookie` value.
    pub fn set_cookies(&self) -> Vec<&str> {
        self.head()
            .lines()
            .filter_map(|l| l.strip_prefix("Set-Cookie: "))
            .collect()
    }

    /// The form cookie sent, as `name=value`.
    pub fn form_cookie(&self) -> Option<&str> {
        self.set_cookies()
            .into_iter()
            .map(|c| c.split(';').next().unwrap_or(""))
            .find(|c| c.contains(".form="))
    }

    pub fn head(&self) -> &str {
        self.text.split("\r\n\r\n").next().unwrap_or("")
    }

    pub fn body(&self) -> &str {
        self.text
            .split_once("\r\n\r\n")
            .map_or("", |(_, body)| body)
    }
}

/// Counts the visitor's requests in `n`; `?fail`, `?panic` and `?logout` do what they say.
pub(crate) fn counter(cx: &mut Context<'_>) -> Result<(), BoxError> {
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

/// Counts, and says why it holds its session: `Returning 2`.
pub(crate) fn counter_with_origin(cx: &mut Context<'_>) -> Result<(), BoxError> {
    let n: u64 = cx.session.get("n")?.unwrap_or(0) + 1;
    cx.session.set("n", &n)?;
    write!(cx.response, "{:?} {n}", cx.session.origin())?;
    Ok(())
}

/// Reads only: why this session, its count, its user.
pub(crate) fn reader(cx: &mut Context<'_>) -> Result<(), BoxError> {
    let n: u64 = cx.session.get("n")?.unwrap_or(0);
    write!(
        cx.response,
        "{:?} {n} {:?}",
        cx.session.origin(),
        cx.session.user()
    )?;
    Ok(())
}

/// Counts; `?login` sets `user` to eggs and regenerates the id; prints why this session, the
/// count and the user.
pub(crate) fn login(cx: &mut Context<'_>) -> Result<(), BoxError> {
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

/// What [`login`] shows, changing nothing: why this session, the count and the user.
pub(crate) fn look(cx: &mut Context<'_>) -> Result<(), BoxError> {
    let n: u64 = cx.session.get("n")?.unwrap_or(0);
    let user: Option<String> = cx.session.get("user")?;
    write!(cx.response, "{:?} n={n} user={user:?}", cx.session.origin())?;
    Ok(())
}

/// `?login`: signs in as eggs (`set_user`); `?everywhere`: logs eggs out everywhere; prints
/// why this session and its user.
pub(crate) fn eggs(cx: &mut Context<'_>) -> Result<(), BoxError> {
    if cx.request.query("login").is_some() {
        cx.session.set_user("eggs")?;
    }
    if cx.request.query("everywhere").is_some() {
        cx.session.log_out_everywhere()?;
    }
    say_who(cx)
}

/// Writes why the request holds its session, and its user: `Returning Some("eggs")`.
pub(crate) fn say_who(cx: &mut Context<'_>) -> Result<(), BoxError> {
    write!(
        cx.response,
        "{:?} {:?}",
        cx.session.origin(),
        cx.session.user()
    )?;
    Ok(())
}

/// A visit at `T0`, then a sign-in through [`login`] at `T0 + 1` (grace 5 s), from 192.0.2.1:
/// the cookie before and the cookie after.
pub(crate) fn signed_in(site: &Site) -> (String, String) {
    let old = site.visit().issued(&login);
    let new = site
        .visit()
        .cookie(&old)
        .query("login")
        .at(1)
        .issued(&login);
    (old, new)
}
