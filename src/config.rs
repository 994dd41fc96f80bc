//! pso's configuration, read from the CGI environment (Apache `SetEnv`, `fastcgi_param`, ...).
//!
//! Every variable has a safe default. A value that does not parse is reported with the
//! variable's name and what was expected, and the default is used: a typo in a config file must
//! not take a site down, nor make it less safe.
//!
//! Each variable has one home, its entry in [`VARIABLES`]: its names, meaning, default and what
//! it takes, which environment it is read from ([`Scope`]), and how tools show the value in
//! effect ([`Variable::show`]). Typo detection, `pso config` and the README's tables (a test
//! holds them to it) all go through the table, so a variable cannot be known to one and not
//! another.
//!
//! Reading stays typed and by hand, one reader per scope: [`Config`]'s reader for a request's
//! variables, the logger for the level, [`fastcgi::Limits`](crate::fastcgi::Limits) and the
//! listener for the FastCGI server's; each takes its names, and the text of its messages, from
//! the table entry it reads. A parser per entry in the table would need one type for every
//! value (or `Any`), and the settings depend on one another (a cookie prefix changes what
//! `Secure` may be), so the table says who reads a variable and the tests prove that each entry
//! is read exactly once. Showing is a plain `fn` in each entry instead, because every entry
//! must have one: an entry without it does not compile, where a `match` on names in `pso
//! config` used to drop a new variable silently.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use cookie::SameSite;
use log::LevelFilter;

use crate::cookies::{CookieSettings, SecureMode};
use crate::environment::{Environment, PsoVariables};
use crate::expiry::Expiry;
use crate::fastcgi::{Limits, Listener};
use crate::id::{ServiceId, SessionId};
use crate::record::MAX_RECORD_BYTES;
use crate::store::{FileStore, StoreLocation};

mod shown;

use shown::{bytes, expiry, on_off, probability, seconds};

/// Default `PSOSessionLockTimeout`.
const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest `PSOSessionLockTimeout` accepted: no request should wait longer for a session.
const MAX_LOCK_TIMEOUT: Duration = Duration::from_secs(3_600);
/// Default `PSOSessionMaxBytes`: 1 MiB.
const DEFAULT_MAX_BYTES: u64 = 1 << 20;
/// Default `PSOMaxBodyBytes`: 1 MiB, nginx's default `client_max_body_size`.
const DEFAULT_MAX_BODY: u64 = 1 << 20;
/// Largest `PSOMaxBodyBytes` accepted.
const MAX_BODY_BYTES: u64 = 1 << 40;
/// Default `PSOSessionRegenerateGrace`: long enough for requests already on their way (PHP's
/// manual warns that deleting the old id at once drops them on a flaky connection).
const DEFAULT_REGENERATE_GRACE: Duration = Duration::from_secs(5);
/// Default `PSOSessionLockLease`: PHP's Redis handler holds its lock as long
/// (`max_execution_time`).
const DEFAULT_LOCK_LEASE: Duration = Duration::from_secs(30);
const MIN_LOCK_LEASE: Duration = Duration::from_secs(1);
const MAX_LOCK_LEASE: Duration = Duration::from_secs(3600);
/// Longest `PSOSessionRegenerateGrace` accepted: the old id is a credential while it lasts.
const MAX_REGENERATE_GRACE: Duration = Duration::from_secs(300);
/// Default `PSOSessionGCMaxLifetime`: one day.
const DEFAULT_GC_MAX_LIFETIME: Duration = Duration::from_secs(86_400);
/// Longest `PSOCookieSession_Path` accepted, so the cookie stays far below 4096 bytes.
const MAX_COOKIE_PATH: usize = 512;

/// One configuration variable pso reads: its name, what it does, its default, what it takes,
/// where it is read and how its value in effect is shown.
///
/// [`VARIABLES`] lists them all; typo detection and tools such as `pso config` read it, so
/// the list lives in one place.
///
/// ```
/// let expire = pso::VARIABLES.iter().find(|v| v.name == "PSOSessionExpire").unwrap();
/// assert_eq!(expire.default, "browser close");
/// assert!(expire.also.contains(&"PSOSessionExpires"));
/// assert_eq!(expire.scope, pso::Scope::Request);
/// assert!(pso::Variable::find("PSOCookieSession_Max_Age").is_some_and(|v| v.name == "PSOCookieSession_Max-Age"));
///
/// // The value in effect, as `pso config` shows it.
/// let env = pso::Environment::from_pairs([("PSOSessionExpire", "15*60")]);
/// let (settings, problems) = pso::Settings::from_env_checked(&env);
/// assert!(problems.is_empty());
/// let shown = (expire.show)(&settings, Some("15*60"), std::time::SystemTime::now());
/// assert_eq!(shown.value, "900 s (15m)");
/// ```
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct Variable {
    /// The name, as documented.
    pub name: &'static str,
    /// Other spellings read too (pso's historical ones, Apache's form of a name with `-`).
    pub also: &'static [&'static str],
    /// What the variable does, in one line.
    pub meaning: &'static str,
    /// The value used when the variable is unset or invalid, as text.
    pub default: &'static str,
    /// What a valid value looks like, for messages about invalid ones.
    pub expected: &'static str,
    /// Which environment it is read from, and by what.
    pub scope: Scope,
    /// Whether the value as set may hold a password (a store's URL): tools then print only
    /// the value in effect, which [`Variable::show`] gives without it.
    pub secret: bool,
    /// The value in effect as people read it (`900 s (15m)`, `1/100 (1%)`), with a warning when
    /// it is valid but probably not what was meant: from what a program read
    /// ([`Settings`]), the value as set (if it is), and the time now (an HTTP date is shown
    /// with the time left).
    pub show: fn(&Settings, Option<&str>, SystemTime) -> Shown,
}

impl PartialEq for Variable {
    /// One name, one variable.
    fn eq(&self, other: &Variable) -> bool {
        self.name == other.name
    }
}

impl Eq for Variable {}

impl Variable {
    /// The variable read under `name`: its documented name or one of its other spellings,
    /// exactly (see [`Environment::lookup`] for the forms web servers make of them).
    pub fn find(name: &str) -> Option<&'static Variable> {
        VARIABLES
            .iter()
            .find(|variable| variable.name == name || variable.also.contains(&name))
    }

    /// The documented name, then the other spellings.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + use<> {
        std::iter::once(self.name).chain(self.also.iter().copied())
    }
}

/// Where a variable is read from.
///
/// ```
/// let workers = pso::Variable::find("PSO_FCGI_WORKERS").unwrap();
/// assert_eq!(workers.scope, pso::Scope::FastCgi);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Scope {
    /// Read by [`Config`] for each request: under CGI from the environment, under FastCGI from
    /// the request's parameters over the process environment.
    Request,
    /// Read once, from the process environment, when the program starts: under FastCGI a
    /// request's parameters do not change it.
    Process,
    /// The FastCGI server's: read once, from the process environment, when it starts
    /// ([`fastcgi::Limits`](crate::fastcgi::Limits), where to listen). Unused under CGI.
    FastCgi,
}

/// A variable's value in effect, as [`Variable::show`] puts it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Shown {
    /// The value pso uses, as people write it: `900 s (15m)`, `1/100 (1%)`, `on`.
    pub value: String,
    /// Why the value, valid, is probably not what was meant (`Secure` off, a date passed).
    pub warning: Option<String>,
}

impl Shown {
    fn new(value: impl Into<String>) -> Shown {
        Shown {
            value: value.into(),
            warning: None,
        }
    }

    fn warning(mut self, warning: impl Into<String>) -> Shown {
        self.warning = Some(warning.into());
        self
    }
}

const SERVICE_ID: Variable = Variable {
    name: "PSOServiceId",
    also: &[],
    meaning: "the session cookie's name and the sessions' namespace",
    default: "the script's name without extension, else pso",
    expected: "1-64 of A-Z a-z 0-9 _ -",
    scope: Scope::Request,
    secret: false,
    show: |settings, _, _| {
        let config = &settings.config;
        Shown::new(format!(
            "{} (the cookie's name: {})",
            config.service, config.cookie.name
        ))
    },
};
const SESSION_EXPIRE: Variable = Variable {
    name: "PSOSessionExpire",
    also: &["PSOSessionExpires"],
    meaning: "the lifetime of a new session, counted from its creation",
    default: "browser close",
    expected: "a duration (900, 15*60, +30m, 2h) or an HTTP date; 0 for browser close",
    scope: Scope::Request,
    secret: false,
    show: |settings, _, now| expiry(settings.config.lifetime, now),
};
const SESSION_DIR: Variable = Variable {
    name: "PSOSessionFileLoader_Path",
    also: &[],
    meaning: "the session directory",
    default: "<temp dir>/pso-<uid>",
    expected: "an absolute path",
    scope: Scope::Request,
    secret: false,
    show: |settings, _, _| Shown::new(settings.config.session_dir.display().to_string()),
};
const LOCK_TIMEOUT: Variable = Variable {
    name: "PSOSessionLockTimeout",
    also: &[],
    meaning: "the longest wait for a session another request holds; then a 503",
    default: "30 s",
    expected: "a duration from 0 to 1 hour, like 30 or 1m",
    scope: Scope::Request,
    secret: false,
    show: |settings, _, _| Shown::new(seconds(settings.config.lock_timeout)),
};
const LOCK_LEASE: Variable = Variable {
    name: "PSOSessionLockLease",
    also: &[],
    meaning: "how long a lock on a server store (Redis, PostgreSQL) lasts unless its request renews it: a killed request blocks its session at most this long",
    default: "30 s",
    expected: "a duration from 1 second to 1 hour, like 30 or 2m",
    scope: Scope::Request,
    secret: false,
    show: |settings, _, _| Shown::new(seconds(settings.config.lock_lease)),
};
const STORE: Variable = Variable {
    name: "PSOSessionStore",
    also: &[],
    meaning: "where sessions are kept: files (in PSOSessionFileLoader_Path), or a server's URL",
    default: "files",
    expected: "files, redis://host:port/db, rediss://..., redis+unix:///path, redis+cluster://h1:p1,h2:p2, postgres://...",
    scope: Scope::Request,
    secret: true,
    // Printed without its password.
    show: |settings, _, _| Shown::new(settings.config.store.to_string()),
};
const STORE_PASSWORD_FILE: Variable = Variable {
    name: "PSOSessionStorePasswordFile",
    also: &[],
    meaning: "a file holding the password of PSOSessionStore's server (yours, not readable by others), instead of the URL",
    default: "none",
    expected: "an absolute path",
    scope: Scope::Request,
    secret: false,
    show: |settings, _, _| {
        Shown::new(
            settings
                .config
                .store_password_file
                .as_ref()
                .map_or_else(|| "none".to_owned(), |path| path.display().to_string()),
        )
    },
};
const STORE_MOVING_FROM: Variable = Variable {
    name: "PSOSessionStoreMovingFrom",
    also: &[],
    meaning: "the store the site is moving away from: a session still there moves to PSOSessionStore the first time it is touched (and pso sessions migrate moves the rest)",
    default: "none",
    expected: "files (the directory PSOSessionFileLoader_Path names), or a server's URL as PSOSessionStore takes; not the same store as PSOSessionStore",
    scope: Scope::Request,
    secret: true,
    // Printed without its password.
    show: |settings, _, _| {
        Shown::new(
            settings
                .config
                .store_moving_from
                .as_ref()
                .map_or_else(|| "none".to_owned(), ToString::to_string),
        )
    },
};
const SYNC: Variable = Variable {
    name: "PSOSessionSync",
    also: &[],
    meaning: "sync every save to the disk (the file's data, and the directory when a file is created, renamed or removed)",
    default: "off",
    expected: "on or off",
    scope: Scope::Request,
    secret: false,
    show: |settings, _, _| on_off(settings.config.sync),
};
const REGENERATE_GRACE: Variable = Variable {
    name: "PSOSessionRegenerateGrace",
    also: &[],
    meaning: "how long the old id still leads to the session after regenerate_id(), for requests already under way",
    default: "5 s",
    expected: "a duration from 0 to 5 minutes, like 5 or 30s",
    scope: Scope::Request,
    secret: false,
    show: |settings, _, _| Shown::new(seconds(settings.config.regenerate_grace)),
};
const CHECK_IP: Variable = Variable {
    name: "PSOSessionCheckIP",
    also: &[],
    meaning: "adopt a session only from the client address it was created from",
    default: "off",
    expected: "on or off",
    scope: Scope::Request,
    secret: false,
    show: |settings, _, _| on_off(settings.config.check_ip),
};
const URL_IDS: Variable = Variable {
    name: "PSOSessionUrl",
    also: &[],
    meaning: "read the session id from the query string when no cookie came back (weaker: ids leak through links, Referer and logs)",
    default: "off",
    expected: "on or off",
    scope: Scope::Request,
    secret: false,
    show: |settings, _, _| on_off(settings.config.url_ids),
};
const LAZY: Variable = Variable {
    name: "PSOSessionLazy",
    also: &[],
    meaning: "store a session only once it holds a value, and delete it (revoking its cookie) once it holds none",
    default: "on",
    expected: "on or off",
    scope: Scope::Request,
    secret: false,
    show: |settings, _, _| on_off(settings.config.lazy),
};
const MAX_BYTES: Variable = Variable {
    name: "PSOSessionMaxBytes",
    also: &[],
    meaning: "the largest session record stored or read",
    default: "1048576 bytes (1 MiB)",
    expected: "a size from 1024 to 67108864 bytes, like 1048576 or 1024*1024",
    scope: Scope::Request,
    secret: false,
    show: |settings, _, _| Shown::new(bytes(settings.config.max_bytes)),
};
const GC_PROBABILITY: Variable = Variable {
    name: "PSOSessionGCProbability",
    also: &[],
    meaning: "the share of requests that also delete expired sessions",
    default: "1/100",
    expected: "a probability like 1/100, 0.01 or 1%; 0 turns collection off",
    scope: Scope::Request,
    secret: false,
    show: |settings, _, _| Shown::new(probability(settings.config.gc_probability)),
};
const SESSION_IDLE: Variable = Variable {
    name: "PSOSessionIdle",
    also: &[],
    meaning: "how long a session may go unused before it is dead on the server, however long its lifetime",
    default: "none (only the lifetime)",
    expected: "a duration like 900, 15*60 or 30m; 0 for none",
    scope: Scope::Request,
    secret: false,
    show: |settings, _, _| {
        Shown::new(
            settings
                .config
                .idle
                .map_or_else(|| "none (only the lifetime)".to_owned(), seconds),
        )
    },
};
const GC_MAX_LIFETIME: Variable = Variable {
    name: "PSOSessionGCMaxLifetime",
    also: &[],
    meaning: "how long a browser-close session lives on the server unused",
    default: "86400 s (1d)",
    expected: "a duration like 86400 or 24h",
    scope: Scope::Request,
    secret: false,
    show: |settings, _, _| Shown::new(seconds(settings.config.gc_max_lifetime)),
};
const COOKIE_DOMAIN: Variable = Variable {
    name: "PSOCookieSession_Domain",
    also: &[],
    meaning: "the cookie's Domain",
    default: "none (this host only)",
    expected: "a host name like example.org",
    scope: Scope::Request,
    secret: false,
    show: shown::cookie_domain,
};
const COOKIE_PATH: Variable = Variable {
    name: "PSOCookieSession_Path",
    also: &[],
    meaning: "the cookie's Path",
    default: "/",
    expected: "a path starting with / without ; or control characters",
    scope: Scope::Request,
    secret: false,
    show: shown::cookie_path,
};
const COOKIE_SECURE: Variable = Variable {
    name: "PSOCookieSession_Secure",
    also: &[],
    meaning: "the cookie's Secure; auto: when the request came over HTTPS",
    default: "auto",
    expected: "on, off or auto",
    scope: Scope::Request,
    secret: false,
    show: shown::cookie_secure,
};
const COOKIE_HTTP_ONLY: Variable = Variable {
    name: "PSOCookieSession_HttpOnly",
    also: &[],
    meaning: "the cookie's HttpOnly: page scripts cannot read it",
    default: "on",
    expected: "on or off",
    scope: Scope::Request,
    secret: false,
    show: |settings, _, _| {
        let shown = on_off(settings.config.cookie.http_only);
        if settings.config.cookie.http_only {
            shown
        } else {
            shown.warning("page scripts (and cross-site scripting) can read the session id")
        }
    },
};
const COOKIE_SAME_SITE: Variable = Variable {
    name: "PSOCookieSession_SameSite",
    also: &[],
    meaning: "the cookie's SameSite (None forces Secure)",
    default: "Lax",
    expected: "Strict, Lax or None",
    scope: Scope::Request,
    secret: false,
    show: |settings, _, _| Shown::new(settings.config.cookie.same_site.to_string()),
};
const COOKIE_MAX_AGE: Variable = Variable {
    name: "PSOCookieSession_Max-Age",
    also: &["PSOCookieSession_Max_Age"],
    meaning: "a cookie lifetime that overrides the session's own, in the cookie only",
    default: "none (follows PSOSessionExpire)",
    expected: "a duration like 3600 or 1h; 0 for browser close",
    scope: Scope::Request,
    secret: false,
    show: |settings, _, now| shown::cookie_lifetime(settings.config.cookie.max_age, now),
};
const COOKIE_EXPIRES: Variable = Variable {
    name: "PSOCookieSession_expires",
    also: &["PSOCookieSession_Expires"],
    meaning: "a cookie expiry that overrides the session's own, in the cookie only",
    default: "none (follows PSOSessionExpire)",
    expected: "a duration or an HTTP date; 0 for browser close",
    scope: Scope::Request,
    secret: false,
    show: |settings, _, now| shown::cookie_lifetime(settings.config.cookie.expires, now),
};
const COOKIE_PREFIX: Variable = Variable {
    name: "PSOCookieSession_Prefix",
    also: &[],
    meaning: "a prefix of the cookie's name that browsers enforce",
    default: "none",
    expected: "__Host- or __Secure-",
    scope: Scope::Request,
    secret: false,
    show: shown::cookie_prefix,
};
const COOKIE_COMMENT: Variable = Variable {
    name: "PSOCookieSession_Comment",
    also: &[],
    meaning: "obsolete since RFC 6265: accepted and ignored",
    default: "none",
    expected: "anything (ignored)",
    scope: Scope::Request,
    secret: false,
    show: shown::obsolete,
};
const COOKIE_VERSION: Variable = Variable {
    name: "PSOCookieSession_Version",
    also: &[],
    meaning: "obsolete since RFC 6265: accepted and ignored",
    default: "none",
    expected: "anything (ignored)",
    scope: Scope::Request,
    secret: false,
    show: shown::obsolete,
};
const MAX_BODY: Variable = Variable {
    name: "PSOMaxBodyBytes",
    also: &[],
    meaning: "the largest request body a handler is given; more gets a 413",
    default: "1048576 bytes (1 MiB)",
    expected: "a size in bytes, like 1048576 or 8*1024*1024",
    scope: Scope::Request,
    secret: false,
    show: |settings, _, _| Shown::new(bytes(settings.config.max_body)),
};
pub(crate) const LOG_LEVEL: Variable = Variable {
    name: "PSOLogLevel",
    also: &[],
    meaning: "how much pso writes to the server's error log",
    default: "warn",
    expected: "off, error, warn, info, debug or trace",
    scope: Scope::Process,
    secret: false,
    show: |settings, _, _| Shown::new(settings.log_level.as_str().to_ascii_lowercase()),
};

// `PSO_FCGI_WORKERS` and `PSO_FCGI_MAX_CONNS` take a count from 1 to their bound,
// `PSO_FCGI_*_TIMEOUT` a duration from 1 second to a day: the bounds themselves are where
// `Limits` is built, and a test holds these texts to them.
pub(crate) const FCGI_BIND: Variable = Variable {
    name: "PSO_FCGI_BIND",
    also: &[],
    meaning: "where a FastCGI program listens when it was not started on a socket",
    default: "none",
    expected: "unix:/path, host:port, or a port (:9000 or 9000, on loopback)",
    scope: Scope::FastCgi,
    secret: false,
    show: |settings, value, _| {
        match (&settings.bind, value) {
        (Some(spec), _)
            if Listener::reaches_other_machines(spec) && !settings.web_server_addrs =>
        {
            Shown::new(spec.clone()).warning(
                "listens where other machines reach it, and FCGI_WEB_SERVER_ADDRS is not set: anyone who reaches it configures pso through its parameters; set FCGI_WEB_SERVER_ADDRS to the web server's address, or listen on 127.0.0.1 or a unix socket",
            )
        }
        (Some(spec), _) => Shown::new(spec.clone()),
        (None, Some(_)) => Shown::new("unusable: the program stops at start"),
        (None, None) => Shown::new("none"),
    }
    },
};
pub(crate) const FCGI_WORKERS: Variable = Variable {
    name: "PSO_FCGI_WORKERS",
    also: &[],
    meaning: "worker threads: requests handled at once",
    default: "twice the cores (at least 2)",
    expected: "a number from 1 to 1024",
    scope: Scope::FastCgi,
    secret: false,
    show: |settings, _, _| Shown::new(settings.limits.workers.to_string()),
};
pub(crate) const FCGI_MAX_CONNS: Variable = Variable {
    name: "PSO_FCGI_MAX_CONNS",
    also: &[],
    meaning: "open connections; past it, new ones wait in the backlog",
    default: "1024",
    expected: "a number from 1 to 1048576",
    scope: Scope::FastCgi,
    secret: false,
    show: |settings, _, _| Shown::new(settings.limits.max_conns.to_string()),
};
pub(crate) const FCGI_FIRST_BYTE_TIMEOUT: Variable = Variable {
    name: "PSO_FCGI_FIRST_BYTE_TIMEOUT",
    also: &[],
    meaning: "how long a new connection may send nothing",
    default: "5 s",
    expected: "a duration from 1 second to 1 day, like 10 or 1m",
    scope: Scope::FastCgi,
    secret: false,
    show: |settings, _, _| Shown::new(seconds(settings.limits.first_byte_timeout)),
};
pub(crate) const FCGI_HEADER_TIMEOUT: Variable = Variable {
    name: "PSO_FCGI_HEADER_TIMEOUT",
    also: &[],
    meaning: "how long a request may take to send its parameters",
    default: "10 s",
    expected: "a duration from 1 second to 1 day, like 10 or 1m",
    scope: Scope::FastCgi,
    secret: false,
    show: |settings, _, _| Shown::new(seconds(settings.limits.header_timeout)),
};
pub(crate) const FCGI_IDLE_TIMEOUT: Variable = Variable {
    name: "PSO_FCGI_IDLE_TIMEOUT",
    also: &[],
    meaning: "how long a kept connection may wait between requests",
    default: "60 s (1m)",
    expected: "a duration from 1 second to 1 day, like 10 or 1m",
    scope: Scope::FastCgi,
    secret: false,
    show: |settings, _, _| Shown::new(seconds(settings.limits.idle_timeout)),
};
pub(crate) const FCGI_IO_TIMEOUT: Variable = Variable {
    name: "PSO_FCGI_IO_TIMEOUT",
    also: &[],
    meaning: "how long a read of the body or a write of the response may stall",
    default: "30 s",
    expected: "a duration from 1 second to 1 day, like 10 or 1m",
    scope: Scope::FastCgi,
    secret: false,
    show: |settings, _, _| Shown::new(seconds(settings.limits.io_timeout)),
};
pub(crate) const FCGI_REQUEST_TIMEOUT: Variable = Variable {
    name: "PSO_FCGI_REQUEST_TIMEOUT",
    also: &[],
    meaning: "how long reading a request's body and writing its response may take in all",
    default: "60 s (1m)",
    expected: "a duration from 1 second to 1 day, like 10 or 1m",
    scope: Scope::FastCgi,
    secret: false,
    show: |settings, _, _| Shown::new(seconds(settings.limits.request_timeout)),
};

/// Every variable pso reads, in the README's order: a request's ([`Scope::Request`]), the
/// process's ([`Scope::Process`]), then the FastCGI server's ([`Scope::FastCgi`], in the
/// README's table of FastCGI settings). The session id forced by a variable named like the
/// service id is not among them: its name is yours.
pub const VARIABLES: &[Variable] = &[
    SERVICE_ID,
    SESSION_EXPIRE,
    SESSION_IDLE,
    SESSION_DIR,
    STORE,
    STORE_PASSWORD_FILE,
    STORE_MOVING_FROM,
    LOCK_TIMEOUT,
    LOCK_LEASE,
    SYNC,
    LAZY,
    REGENERATE_GRACE,
    CHECK_IP,
    URL_IDS,
    MAX_BYTES,
    GC_PROBABILITY,
    GC_MAX_LIFETIME,
    COOKIE_DOMAIN,
    COOKIE_PATH,
    COOKIE_SECURE,
    COOKIE_HTTP_ONLY,
    COOKIE_SAME_SITE,
    COOKIE_MAX_AGE,
    COOKIE_EXPIRES,
    COOKIE_PREFIX,
    COOKIE_COMMENT,
    COOKIE_VERSION,
    MAX_BODY,
    LOG_LEVEL,
    FCGI_BIND,
    FCGI_WORKERS,
    FCGI_MAX_CONNS,
    FCGI_FIRST_BYTE_TIMEOUT,
    FCGI_HEADER_TIMEOUT,
    FCGI_IDLE_TIMEOUT,
    FCGI_IO_TIMEOUT,
    FCGI_REQUEST_TIMEOUT,
];

/// The name of every variable pso reads, in every spelling, for spotting typos.
fn known_variables() -> impl Iterator<Item = &'static str> {
    VARIABLES.iter().flat_map(Variable::names)
}

/// Names whose value the client controls or influences: a service id spelled like one must not
/// force ids, or a request header (`HTTP_*`), the query string or the Host header could choose
/// the session.
const REQUEST_VARIABLES: &[&str] = &[
    "AUTH_TYPE",
    "CONTENT_LENGTH",
    "CONTENT_TYPE",
    "DOCUMENT_URI",
    "PATH_INFO",
    "PATH_TRANSLATED",
    "QUERY_STRING",
    "REMOTE_ADDR",
    "REMOTE_HOST",
    "REMOTE_IDENT",
    "REMOTE_PORT",
    "REMOTE_USER",
    "REQUEST_METHOD",
    "REQUEST_URI",
    "SCRIPT_URI",
    "SCRIPT_URL",
    "SERVER_NAME",
];
const REQUEST_PREFIXES: &[&str] = &["HTTP_", "REDIRECT_", "SSL_"];

/// A setting that could not be used, and the default that replaced it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The variable's name.
    pub variable: String,
    /// What is wrong and what was expected.
    pub message: String,
}

/// How often a request also collects expired sessions: `numerator` in `denominator`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GcProbability {
    numerator: u32,
    denominator: u32,
}

impl GcProbability {
    /// Never collect (for cron-driven cleanup).
    pub const NEVER: GcProbability = GcProbability {
        numerator: 0,
        denominator: 1,
    };

    /// Parses `1/100`, `0.01`, `1%`, `0` or `1`.
    ///
    /// ```
    /// use pso::GcProbability;
    /// assert_eq!(GcProbability::parse("1/100"), GcProbability::parse("0.01"));
    /// assert_eq!(GcProbability::parse("1%"), GcProbability::parse("0.01"));
    /// assert_eq!(GcProbability::parse("0"), Some(GcProbability::NEVER));
    /// assert_eq!(GcProbability::parse("2/1"), None);
    /// ```
    pub fn parse(text: &str) -> Option<GcProbability> {
        let text = text.trim();
        let (numerator, denominator) = if let Some((n, d)) = text.split_once('/') {
            (n.trim().parse().ok()?, d.trim().parse().ok()?)
        } else if let Some(percent) = text.strip_suffix('%') {
            let (n, d) = decimal(percent.trim())?;
            (n, d.checked_mul(100)?)
        } else {
            decimal(text)?
        };
        if numerator == 0 {
            return Some(GcProbability::NEVER);
        }
        (denominator > 0 && numerator <= denominator).then_some(GcProbability {
            numerator,
            denominator,
        })
    }

    /// How many requests in [`GcProbability::denominator`] collect; 0 never.
    ///
    /// ```
    /// let p = pso::GcProbability::parse("1%").unwrap();
    /// assert_eq!((p.numerator(), p.denominator()), (1, 100));
    /// ```
    pub fn numerator(self) -> u32 {
        self.numerator
    }

    /// Out of how many requests [`GcProbability::numerator`] collect; never 0.
    pub fn denominator(self) -> u32 {
        self.denominator
    }

    /// Whether this request collects, given a uniformly random `roll`.
    pub fn hits(self, roll: u32) -> bool {
        self.numerator > 0 && roll % self.denominator < self.numerator
    }

    /// Draws whether this request collects. Off (cron-driven cleanup): not even a random
    /// number is drawn.
    pub(crate) fn draw(self) -> bool {
        self != GcProbability::NEVER && getrandom::u32().is_ok_and(|roll| self.hits(roll))
    }
}

/// Prints `numerator/denominator`, which [`GcProbability::parse`] reads back; `0` for never.
///
/// ```
/// let p = pso::GcProbability::parse("0.25").unwrap();
/// assert_eq!(p.to_string(), "25/100");
/// assert_eq!(pso::GcProbability::parse(&p.to_string()), Some(p));
/// assert_eq!(pso::GcProbability::NEVER.to_string(), "0");
/// ```
impl std::fmt::Display for GcProbability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.numerator == 0 {
            f.write_str("0")
        } else {
            write!(f, "{}/{}", self.numerator, self.denominator)
        }
    }
}

/// `"0.25"` as `(25, 100)`: up to 9 decimal places, no floating point.
fn decimal(text: &str) -> Option<(u32, u32)> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.len() > 9 {
        return None;
    }
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(whole) || !all_digits(fraction) {
        return None;
    }
    let denominator = 10u32.checked_pow(u32::try_from(fraction.len()).ok()?)?;
    let whole: u32 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let fraction: u32 = if fraction.is_empty() {
        0
    } else {
        fraction.parse().ok()?
    };
    Some((
        whole.checked_mul(denominator)?.checked_add(fraction)?,
        denominator,
    ))
}

/// Everything pso takes from the environment for one request.
///
/// ```
/// let env = pso::Environment::from_pairs([
///     ("SCRIPT_NAME", "/cgi-bin/reload.cgi"),
///     ("PSOSessionExpire", "15*60"),
///     ("PSOSessionLockTimeout", "1/0"),
/// ]);
/// let (config, problems) = pso::Config::from_env_checked(&env);
/// assert_eq!(config.service.as_str(), "reload");
/// assert_eq!(config.lifetime, pso::Expiry::In(std::time::Duration::from_secs(900)));
/// assert_eq!(config.lock_timeout, std::time::Duration::from_secs(30));
/// assert_eq!(problems[0].variable, "PSOSessionLockTimeout");
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Config {
    /// `PSOServiceId`: the cookie's name and the sessions' namespace.
    pub service: ServiceId,
    /// The session id forced by a variable named like the service id.
    pub forced_id: Option<SessionId>,
    /// `PSOSessionExpire`: the lifetime of a new session ([`Expiry::BrowserClose`] by default).
    pub lifetime: Expiry,
    /// `PSOSessionFileLoader_Path`: the session directory.
    pub session_dir: PathBuf,
    /// `PSOSessionStore`: where sessions are kept.
    pub store: StoreLocation,
    /// `PSOSessionStorePasswordFile`: where the store's password is, if not in its URL.
    pub store_password_file: Option<PathBuf>,
    /// `PSOSessionStoreMovingFrom`: the store sessions move out of as they are touched, while
    /// a site moves to [`Config::store`].
    pub store_moving_from: Option<StoreLocation>,
    /// `PSOSessionLockTimeout`: the longest wait for a session's lock.
    pub lock_timeout: Duration,
    /// `PSOSessionLockLease`: how long a server store's lock lasts unless renewed.
    pub lock_lease: Duration,
    /// `PSOSessionSync`: fsync files and directory on every save.
    pub sync: bool,
    /// `PSOSessionMaxBytes`: the largest session record stored or read.
    pub max_bytes: u64,
    /// `PSOSessionGCProbability`: how often a request collects expired sessions.
    pub gc_probability: GcProbability,
    /// `PSOSessionGCMaxLifetime`: how long a browser-close session lives on the server unused.
    pub gc_max_lifetime: Duration,
    /// `PSOSessionIdle`: how long a session may go unused before it is dead on the server,
    /// beside its lifetime; `None` when only the lifetime counts.
    pub idle: Option<Duration>,
    /// `PSOSessionLazy`: store a session only once it holds a value, and delete one emptied.
    pub lazy: bool,
    /// `PSOSessionRegenerateGrace`: how long an id given up by `regenerate_id()` still leads
    /// to the session.
    pub regenerate_grace: Duration,
    /// `PSOSessionCheckIP`: adopt a session only from the address it was created from.
    pub check_ip: bool,
    /// `PSOSessionUrl`: without a cookie, the id may come in the query string.
    pub url_ids: bool,
    /// `PSOMaxBodyBytes`: the largest request body a handler is given; a request that
    /// announces more gets a 413 and the handler does not run.
    pub max_body: u64,
    /// `PSOCookieSession_*`: the session cookie's attributes.
    pub cookie: CookieSettings,
}

impl Config {
    /// Reads the configuration, logging each problem as a warning.
    pub fn from_env(env: &Environment) -> Config {
        let (config, problems) = Config::from_env_checked(env);
        for problem in problems {
            log::warn!("{}: {}", problem.variable, problem.message);
        }
        config
    }

    /// Reads the configuration and returns the problems instead of logging them.
    pub fn from_env_checked(env: &Environment) -> (Config, Vec<ConfigProblem>) {
        let mut reader = Reader::new(env);
        let config = reader.config();
        reader.flag_unknown_variables();
        (config, reader.problems)
    }
}

/// Everything a program started with one environment reads from it: the configuration of its
/// requests ([`Scope::Request`]), and what it reads once at start ([`Scope::Process`],
/// [`Scope::FastCgi`]). What `pso config` checks and shows.
///
/// ```
/// let env = pso::Environment::from_pairs([
///     ("PSOSessionLockTimeout", "10"),
///     ("PSO_FCGI_WORKERS", "3"),
///     ("PSO_FCGI_IDLE_TIMEOUT", "forever"),
///     ("PSOLogLevel", "debug"),
/// ]);
/// let (settings, problems) = pso::Settings::from_env_checked(&env);
/// assert_eq!(settings.config.lock_timeout, std::time::Duration::from_secs(10));
/// assert_eq!(settings.limits.workers, 3);
/// assert_eq!(settings.log_level, log::LevelFilter::Debug);
/// assert_eq!(problems[0].variable, "PSO_FCGI_IDLE_TIMEOUT");
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Settings {
    /// What each request reads (under FastCGI, before its own parameters).
    pub config: Config,
    /// `PSO_FCGI_WORKERS`, `PSO_FCGI_MAX_CONNS` and the `PSO_FCGI_*_TIMEOUT`s.
    pub limits: Limits,
    /// `PSOLogLevel`: how much pso logs.
    pub log_level: LevelFilter,
    /// `PSO_FCGI_BIND`: where a FastCGI program listens when it was not started on a socket,
    /// if that is set and understood.
    pub bind: Option<String>,
    /// Whether `FCGI_WEB_SERVER_ADDRS` names the addresses FastCGI peers may come from.
    pub web_server_addrs: bool,
}

impl Settings {
    /// Reads every variable of [`VARIABLES`] from `env`, each by the reader of its scope, and
    /// returns their problems (likely typos among them) instead of logging them.
    pub fn from_env_checked(env: &Environment) -> (Settings, Vec<ConfigProblem>) {
        let (config, mut problems) = Config::from_env_checked(env);
        let (log_level, problem) = crate::logger::level(env);
        problems.extend(problem);
        let (limits, limit_problems) = Limits::from_env_checked(env);
        problems.extend(limit_problems);
        let bind = env
            .get(FCGI_BIND.name)
            .and_then(|spec| match Listener::check(spec) {
                Ok(()) => Some(spec.to_owned()),
                Err(_) => {
                    problems.push(ConfigProblem {
                        variable: FCGI_BIND.name.to_owned(),
                        message: format!(
                            "{spec:?} is not {}; a FastCGI program started with it stops at once",
                            FCGI_BIND.expected
                        ),
                    });
                    None
                }
            });
        let web_server_addrs = env
            .get("FCGI_WEB_SERVER_ADDRS")
            .is_some_and(|addrs| !addrs.trim().is_empty());
        let settings = Settings {
            config,
            limits,
            log_level,
            bind,
            web_server_addrs,
        };
        (settings, problems)
    }
}

struct Reader<'a> {
    env: &'a Environment,
    /// pso's variables of `env`, gathered once: most of the names read are among them.
    pso: PsoVariables<'a>,
    problems: Vec<ConfigProblem>,
    /// The names of the table's entries read so far, in order, for the test that proves each
    /// entry of [`Scope::Request`] is read exactly once.
    #[cfg(test)]
    read: Vec<&'static str>,
}

impl<'a> Reader<'a> {
    fn new(env: &'a Environment) -> Reader<'a> {
        Reader {
            env,
            pso: env.pso_variables(),
            problems: Vec::new(),
            #[cfg(test)]
            read: Vec::new(),
        }
    }

    fn config(&mut self) -> Config {
        let (service, explicit) = self.service();
        let forced_id = if explicit {
            self.forced_id(&service)
        } else {
            None
        };
        let lifetime = self
            .first_of(&SESSION_EXPIRE)
            .and_then(|(name, text)| self.lifetime(name, text))
            .unwrap_or(Expiry::BrowserClose);
        let session_dir = self.session_dir();
        let lock_timeout = self
            .parsed(&LOCK_TIMEOUT, |text| {
                duration(text).filter(|d| *d <= MAX_LOCK_TIMEOUT)
            })
            .unwrap_or(DEFAULT_LOCK_TIMEOUT);
        let lock_lease = self
            .parsed(&LOCK_LEASE, |text| {
                duration(text).filter(|d| (MIN_LOCK_LEASE..=MAX_LOCK_LEASE).contains(d))
            })
            .unwrap_or(DEFAULT_LOCK_LEASE);
        let store = self.store();
        let store_password_file = self.absolute_path(&STORE_PASSWORD_FILE);
        let store_moving_from = self.store_moving_from(&store);
        let sync = self.parsed(&SYNC, boolean).unwrap_or(false);
        let lazy = self.parsed(&LAZY, boolean).unwrap_or(true);
        let check_ip = self.parsed(&CHECK_IP, boolean).unwrap_or(false);
        let url_ids = self.parsed(&URL_IDS, boolean).unwrap_or(false);
        let regenerate_grace = self
            .parsed(&REGENERATE_GRACE, |text| {
                duration(text).filter(|grace| *grace <= MAX_REGENERATE_GRACE)
            })
            .unwrap_or(DEFAULT_REGENERATE_GRACE);
        let max_bytes = self
            .parsed(&MAX_BYTES, |text| byte_count(text, 1024..=MAX_RECORD_BYTES))
            .unwrap_or(DEFAULT_MAX_BYTES);
        let gc_probability = self
            .parsed(&GC_PROBABILITY, GcProbability::parse)
            .unwrap_or(GcProbability {
                numerator: 1,
                denominator: 100,
            });
        let gc_max_lifetime = self
            .parsed(&GC_MAX_LIFETIME, duration)
            .unwrap_or(DEFAULT_GC_MAX_LIFETIME);
        let idle = self
            .parsed(&SESSION_IDLE, duration)
            .filter(|idle| !idle.is_zero());
        let max_body = self
            .parsed(&MAX_BODY, |text| byte_count(text, 0..=MAX_BODY_BYTES))
            .unwrap_or(DEFAULT_MAX_BODY);
        let cookie = self.cookie(&service);
        Config {
            service,
            forced_id,
            lifetime,
            session_dir,
            store,
            store_password_file,
            store_moving_from,
            lock_timeout,
            lock_lease,
            sync,
            max_bytes,
            gc_probability,
            gc_max_lifetime,
            idle,
            lazy,
            regenerate_grace,
            check_ip,
            url_ids,
            max_body,
            cookie,
        }
    }

    fn problem(&mut self, variable: &str, message: impl Into<String>) {
        self.problems.push(ConfigProblem {
            variable: variable.to_owned(),
            message: message.into(),
        });
    }

    /// The first of a variable's spellings that is set (as the server passed it on), with the
    /// name it arrived under. Every read of a table entry goes through here or
    /// [`Reader::first_of_raw`].
    fn first_of(&mut self, variable: &Variable) -> Option<(&'a str, &'a str)> {
        self.reading(variable);
        variable.names().find_map(|name| self.pso.lookup_str(name))
    }

    /// Like [`Reader::first_of`], the value as it came, whatever its bytes (a path).
    fn first_of_raw(&mut self, variable: &Variable) -> Option<(&'a str, &'a OsStr)> {
        self.reading(variable);
        variable.names().find_map(|name| self.pso.lookup(name))
    }

    #[cfg_attr(not(test), expect(unused_variables, reason = "kept only for tests"))]
    fn reading(&mut self, variable: &Variable) {
        #[cfg(test)]
        self.read.push(variable.name);
    }

    /// A variable parsed by `parse`, from the first of its spellings that is set; an
    /// unparsable value is a problem and reads as unset.
    fn parsed<T>(
        &mut self,
        variable: &Variable,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Option<T> {
        let (name, text) = self.first_of(variable)?;
        let value = parse(text);
        if value.is_none() {
            self.problem(
                name,
                format!("{text:?} is not {}; using the default", variable.expected),
            );
        }
        value
    }

    /// A relative path would depend on the program's working directory (under a web server,
    /// often the document tree), so only absolute paths are taken.
    fn session_dir(&mut self) -> PathBuf {
        match self.first_of_raw(&SESSION_DIR).map(|(_, path)| path) {
            Some(path) if !path.is_empty() => {
                let path = PathBuf::from(path);
                if path.is_absolute() {
                    return path;
                }
                self.problem(
                    "PSOSessionFileLoader_Path",
                    format!(
                        "{} is not an absolute path; using the default",
                        path.display()
                    ),
                );
                FileStore::default_dir()
            }
            _ => FileStore::default_dir(),
        }
    }

    /// An unusable store is not read as files: sessions would split between machines that
    /// share a configuration, so it fails every request instead, loudly.
    fn store(&mut self) -> StoreLocation {
        let Some((name, text)) = self.first_of(&STORE) else {
            return StoreLocation::Files;
        };
        match StoreLocation::parse(text) {
            Ok(location) => location,
            Err(e) => {
                self.problem(name, format!("{e}; requests fail until it is fixed"));
                StoreLocation::Unusable
            }
        }
    }

    /// A store to move from that cannot be used fails every request, as an unusable store
    /// does: read as "no move", the sessions still in it would be lost to their visitors.
    fn store_moving_from(&mut self, store: &StoreLocation) -> Option<StoreLocation> {
        let (name, text) = self.first_of(&STORE_MOVING_FROM)?;
        let problem = match StoreLocation::parse(text) {
            Ok(location) if location == *store => {
                format!("{location} is PSOSessionStore itself; requests fail until it is fixed")
            }
            Ok(location) => return Some(location),
            Err(e) => format!("{e}; requests fail until it is fixed"),
        };
        self.problem(name, problem);
        Some(StoreLocation::Unusable)
    }

    fn absolute_path(&mut self, variable: &Variable) -> Option<PathBuf> {
        let (name, text) = self.first_of(variable)?;
        let path = PathBuf::from(text);
        if path.is_absolute() {
            Some(path)
        } else {
            self.problem(
                name,
                format!("{text:?} is not {}; ignored", variable.expected),
            );
            None
        }
    }

    /// The service id, and whether `PSOServiceId` set it.
    fn service(&mut self) -> (ServiceId, bool) {
        if let Some((_, text)) = self.first_of(&SERVICE_ID) {
            match text.parse() {
                Ok(service) => return (service, true),
                Err(e) => self.problem(
                    SERVICE_ID.name,
                    format!("{text:?}: {e}; using the script's name"),
                ),
            }
        }
        let script = self.env.get("SCRIPT_NAME").unwrap_or("");
        let base = script.rsplit('/').next().unwrap_or("");
        let stem = base.split('.').next().unwrap_or("");
        let service = stem.parse().unwrap_or_else(|_| {
            if !stem.is_empty() {
                self.problem(
                    "SCRIPT_NAME",
                    format!("the script name {stem:?} is not a valid service id; using \"pso\" (set PSOServiceId)"),
                );
            }
            ServiceId::fallback()
        });
        (service, false)
    }

    /// pso's `SetEnv MyService 007`, for a service id `PSOServiceId` set explicitly: one taken
    /// from the script's name could be spelled like any variable of the environment.
    fn forced_id(&mut self, service: &ServiceId) -> Option<SessionId> {
        let name = service.as_str();
        let (_, text) = self.env.lookup_str(name)?;
        // Judged by the name as servers pass it on: `http-x` arrives as `HTTP_X`, a header.
        let canonical: String = name
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' => char::from(b.to_ascii_uppercase()),
                _ => '_',
            })
            .collect();
        let client_controlled = REQUEST_VARIABLES.contains(&canonical.as_str())
            || REQUEST_PREFIXES
                .iter()
                .any(|prefix| canonical.starts_with(prefix));
        if client_controlled {
            self.problem(
                name,
                "the client controls this variable, so it cannot force the session id; choose another PSOServiceId",
            );
            return None;
        }
        match SessionId::forced(text) {
            Ok(id) => Some(id),
            Err(e) => {
                self.problem(name, format!("cannot force the session id: {e}"));
                None
            }
        }
    }

    fn lifetime(&mut self, name: &str, text: &str) -> Option<Expiry> {
        match Expiry::parse(text) {
            Ok(Expiry::In(d)) if d.is_zero() => Some(Expiry::BrowserClose),
            Ok(expiry) => Some(expiry),
            Err(e) => {
                self.problem(
                    name,
                    format!("{text:?}: {e}; sessions expire at browser close"),
                );
                None
            }
        }
    }

    fn cookie(&mut self, service: &ServiceId) -> CookieSettings {
        let prefix = self
            .parsed(&COOKIE_PREFIX, |text| match text.trim() {
                "__Host-" | "__Secure-" | "" => Some(text.trim().to_owned()),
                _ => None,
            })
            .unwrap_or_default();
        let mut cookie = CookieSettings::new(&format!("{prefix}{service}"));
        // Browsers read the prefix off the name, whatever put it there (a service id may
        // start `__Host-` itself), in any case (RFC 6265bis), and drop a cookie that breaks
        // its rules.
        let starts = |p: &str| {
            cookie
                .name
                .get(..p.len())
                .is_some_and(|start| start.eq_ignore_ascii_case(p))
        };
        let (host, secure) = (starts("__Host-"), starts("__Secure-"));
        cookie.host_prefix = host;
        if secure {
            cookie.secure = SecureMode::Always;
        }
        if let Some(path) = self.parsed(&COOKIE_PATH, cookie_path) {
            cookie.path = path;
        }
        cookie.domain = self.parsed(&COOKIE_DOMAIN, cookie_domain);
        if let Some(mode) = self.parsed(&COOKIE_SECURE, |text| {
            if text.trim().eq_ignore_ascii_case("auto") {
                Some(SecureMode::Auto)
            } else {
                boolean(text).map(|on| {
                    if on {
                        SecureMode::Always
                    } else {
                        SecureMode::Never
                    }
                })
            }
        }) && !host
            && !secure
        {
            cookie.secure = mode;
        }
        if let Some(on) = self.parsed(&COOKIE_HTTP_ONLY, boolean) {
            cookie.http_only = on;
        }
        if let Some(same_site) = self.parsed(&COOKIE_SAME_SITE, |text| {
            match text.trim().to_ascii_lowercase().as_str() {
                "strict" => Some(SameSite::Strict),
                "lax" => Some(SameSite::Lax),
                "none" => Some(SameSite::None),
                _ => None,
            }
        }) {
            cookie.same_site = same_site;
        }
        // Apache passes `-` in a variable's name to CGI programs as `_`.
        cookie.max_age = self
            .parsed(&COOKIE_MAX_AGE, duration)
            // 0 means a cookie for the browser session, as PSOSessionExpire=0 does, not one
            // that the browser drops at once.
            .map(|d| {
                if d.is_zero() {
                    Expiry::BrowserClose
                } else {
                    Expiry::In(d)
                }
            });
        cookie.expires =
            self.first_of(&COOKIE_EXPIRES)
                .and_then(|(name, text)| match Expiry::parse(text) {
                    // 0 reads as it does in the other two lifetime variables.
                    Ok(Expiry::In(d)) if d.is_zero() => Some(Expiry::BrowserClose),
                    Ok(expiry) => Some(expiry),
                    Err(e) => {
                        self.problem(name, format!("{text:?}: {e}"));
                        None
                    }
                });
        for obsolete in [COOKIE_COMMENT, COOKIE_VERSION] {
            if let Some((name, _)) = self.first_of_raw(&obsolete) {
                log::debug!("{name} is obsolete since RFC 6265 and ignored");
            }
        }
        cookie
    }

    fn flag_unknown_variables(&mut self) {
        let mut problems = Vec::new();
        let looks_like_ours = |name: &[u8]| {
            ["PSOSESSION", "PSOCOOKIESESSION", "PSOSERVICE", "PSO_FCGI_"]
                .iter()
                .any(|prefix| {
                    name.get(..prefix.len())
                        .is_some_and(|start| start.eq_ignore_ascii_case(prefix.as_bytes()))
                })
        };
        for (name, _) in self.env.iter() {
            if !looks_like_ours(name) {
                continue;
            }
            let Ok(name) = std::str::from_utf8(name) else {
                continue;
            };
            let known =
                known_variables().find(|known| crate::environment::same_variable(known, name));
            match known {
                // Read under the name itself, or under a server's form of it.
                Some(known)
                    if self
                        .pso
                        .lookup(known)
                        .is_some_and(|(found, _)| found == name) => {}
                Some(known) => problems.push((
                    name.to_owned(),
                    format!(
                        "is read only as {known} (or as Apache and lighttpd pass it on); ignored"
                    ),
                )),
                None => problems.push((
                    name.to_owned(),
                    "is not a pso variable (a typo?); ignored".to_owned(),
                )),
            }
        }
        for (name, message) in problems {
            self.problem(&name, message);
        }
    }
}

/// `on`/`off` and the usual synonyms.
fn boolean(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "on" | "1" | "true" | "yes" => Some(true),
        "off" | "0" | "false" | "no" => Some(false),
        _ => None,
    }
}

/// A non-negative duration in expression syntax (not a date).
pub(crate) fn duration(text: &str) -> Option<Duration> {
    match Expiry::parse(text) {
        Ok(Expiry::In(d)) => Some(d),
        _ => None,
    }
}

/// A byte count: an integer or integer arithmetic (`1024*1024`), within `range`.
fn byte_count(text: &str, range: std::ops::RangeInclusive<u64>) -> Option<u64> {
    if text.bytes().any(|b| b.is_ascii_alphabetic()) {
        return None;
    }
    duration(text)
        .map(|d| d.as_secs())
        .filter(|n| range.contains(n))
}

fn cookie_path(text: &str) -> Option<String> {
    let ok = text.starts_with('/')
        && text.len() <= MAX_COOKIE_PATH
        && text.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b';');
    ok.then(|| text.to_owned())
}

fn cookie_domain(text: &str) -> Option<String> {
    let host = text.strip_prefix('.').unwrap_or(text);
    let ok = (1..=253).contains(&host.len())
        && host.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    ok.then(|| host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn config(pairs: &[(&str, &str)]) -> (Config, Vec<ConfigProblem>) {
        Config::from_env_checked(&Environment::from_pairs(pairs.iter().copied()))
    }

    fn problem_names(pairs: &[(&str, &str)]) -> Vec<String> {
        config(pairs).1.into_iter().map(|p| p.variable).collect()
    }

    #[test]
    fn defaults_are_secure() {
        let (c, problems) = config(&[]);
        assert!(problems.is_empty());
        assert_eq!(c.service.as_str(), "pso");
        assert_eq!(c.forced_id, None);
        assert_eq!(c.lifetime, Expiry::BrowserClose);
        assert_eq!(c.session_dir, FileStore::default_dir());
        assert_eq!(c.lock_timeout, Duration::from_secs(30));
        assert!(!c.sync);
        assert_eq!(c.max_bytes, 1 << 20);
        assert_eq!(c.gc_probability, GcProbability::parse("1/100").unwrap());
        assert_eq!(c.cookie, CookieSettings::new("pso"));
        assert!(c.cookie.http_only);
        assert_eq!(c.cookie.same_site, SameSite::Lax);
        assert_eq!(c.cookie.secure, SecureMode::Auto);
    }

    #[test]
    fn service_id_from_variable_or_script_name() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("SCRIPT_NAME", "/cgi-bin/reload")], "reload"),
            (&[("SCRIPT_NAME", "/cgi-bin/reload.cgi")], "reload"),
            (&[("SCRIPT_NAME", "reload.tar.gz")], "reload"),
            (&[("SCRIPT_NAME", "/cgi-bin/")], "pso"),
            (&[("SCRIPT_NAME", "/cgi-bin/my app.cgi")], "pso"),
            (&[("PSOServiceId", "shop"), ("SCRIPT_NAME", "/x")], "shop"),
            (
                &[("PSOServiceId", "../x"), ("SCRIPT_NAME", "/cgi-bin/x")],
                "x",
            ),
        ];
        for (pairs, expected) in cases {
            assert_eq!(config(pairs).0.service.as_str(), *expected, "{pairs:?}");
        }
        assert_eq!(problem_names(&[("PSOServiceId", "a b")]), ["PSOServiceId"]);
    }

    #[test]
    fn names_as_servers_pass_them_on_are_read() {
        // lighttpd: upper case, everything but letters and digits as `_`.
        let (c, p) = config(&[
            ("PSOSERVICEID", "shop"),
            ("PSOSESSIONEXPIRE", "15*60"),
            ("PSOCOOKIESESSION_MAX_AGE", "60"),
            ("SHOP", "007"),
        ]);
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(c.service.as_str(), "shop");
        assert_eq!(c.lifetime, Expiry::In(Duration::from_secs(900)));
        assert_eq!(c.cookie.max_age, Some(Expiry::In(Duration::from_secs(60))));
        assert_eq!(c.forced_id.unwrap().as_str(), "007");
        // A likely typo is still one, in any case.
        let (_, p) = config(&[("PSOSESSIONEXPIRY", "15*60")]);
        assert_eq!(p[0].variable, "PSOSESSIONEXPIRY");
    }

    #[test]
    fn forced_ids() {
        let (c, _) = config(&[("PSOServiceId", "MyService"), ("MyService", "007")]);
        assert_eq!(c.forced_id.unwrap().as_str(), "007");
        let (c, p) = config(&[("PSOServiceId", "MyService"), ("MyService", "../etc")]);
        assert_eq!((c.forced_id, p[0].variable.as_str()), (None, "MyService"));
        // A client-controlled variable cannot pick the session.
        let (c, p) = config(&[("PSOServiceId", "HTTP_X_SID"), ("HTTP_X_SID", "007")]);
        assert_eq!((c.forced_id, p.len()), (None, 1));
        let (c, _) = config(&[("PSOServiceId", "QUERY_STRING"), ("QUERY_STRING", "007")]);
        assert_eq!(c.forced_id, None);
        let (c, _) = config(&[("PSOServiceId", "SERVER_NAME"), ("SERVER_NAME", "007")]);
        assert_eq!(c.forced_id, None, "the Host header sets SERVER_NAME");
        // Spelled differently, but the same variable once a server passes it on.
        for service in ["http-x-sid", "Http_X_Sid", "query-string"] {
            let (c, p) = config(&[
                ("PSOServiceId", service),
                ("HTTP_X_SID", "007"),
                ("QUERY_STRING", "007"),
            ]);
            assert_eq!((c.forced_id, p.len()), (None, 1), "{service}");
        }
        // A service id from the script's name never forces: /cgi-bin/HOME must not read $HOME.
        let (c, p) = config(&[("SCRIPT_NAME", "/cgi-bin/HOME"), ("HOME", "007")]);
        assert_eq!(
            (c.service.as_str(), c.forced_id, p.len()),
            ("HOME", None, 0)
        );
    }

    #[test]
    fn lifetimes() {
        let in_secs = |s| Expiry::In(Duration::from_secs(s));
        assert_eq!(
            config(&[("PSOSessionExpire", "15*60")]).0.lifetime,
            in_secs(900)
        );
        assert_eq!(
            config(&[("PSOSessionExpires", "2h")]).0.lifetime,
            in_secs(7200)
        );
        assert_eq!(
            config(&[("PSOSessionExpire", "0")]).0.lifetime,
            Expiry::BrowserClose
        );
        assert!(matches!(
            config(&[("PSOSessionExpire", "Mon, 15 Apr 2041 19:00:00 GMT")])
                .0
                .lifetime,
            Expiry::At(_)
        ));
        for bad in ["1/0", "-5", "(((", "tomorrow", "99999999999*99999999999"] {
            let (c, p) = config(&[("PSOSessionExpire", bad)]);
            assert_eq!(c.lifetime, Expiry::BrowserClose, "{bad}");
            assert_eq!(p[0].variable, "PSOSessionExpire");
            assert!(p[0].message.contains(bad), "{:?}", p[0]);
        }
    }

    #[test]
    fn store_settings() {
        let (c, p) = config(&[
            ("PSOSessionFileLoader_Path", "/var/lib/pso/"),
            ("PSOSessionLockTimeout", "2*5"),
            ("PSOSessionSync", "On"),
            ("PSOSessionMaxBytes", "64*1024"),
            ("PSOSessionGCProbability", "0"),
            ("PSOSessionGCMaxLifetime", "2h"),
        ]);
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(c.session_dir, PathBuf::from("/var/lib/pso/"));
        assert_eq!(c.lock_timeout, Duration::from_secs(10));
        assert!(c.sync);
        assert_eq!(c.max_bytes, 65_536);
        assert_eq!(c.gc_probability, GcProbability::NEVER);
        assert_eq!(c.gc_max_lifetime, Duration::from_secs(7200));
        for (name, bad) in [
            ("PSOSessionLockTimeout", "Mon, 15 Apr 2041 19:00:00 GMT"),
            ("PSOSessionLockTimeout", "9223372036854775807"),
            ("PSOSessionLockTimeout", "2h"),
            ("PSOSessionFileLoader_Path", "sessions"),
            ("PSOSessionSync", "maybe"),
            ("PSOSessionMaxBytes", "1M"),
            ("PSOSessionMaxBytes", "10"),
            ("PSOSessionMaxBytes", "1024*1024*1024"),
            ("PSOSessionGCProbability", "1/0"),
            ("PSOSessionGCProbability", "150%"),
            ("PSOSessionGCMaxLifetime", "-1"),
        ] {
            assert_eq!(problem_names(&[(name, bad)]), [name], "{name}={bad}");
        }
        assert_eq!(config(&[("PSOSessionMaxBytes", "10")]).0.max_bytes, 1 << 20);
    }

    #[test]
    fn a_store_to_move_from_is_another_usable_store() {
        let (c, p) = config(&[
            ("PSOSessionStore", "redis://cache:6379/0"),
            ("PSOSessionStoreMovingFrom", "files"),
        ]);
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(c.store_moving_from, Some(StoreLocation::Files));
        assert_eq!(config(&[]).0.store_moving_from, None);
        // Moving from itself, or from something that is no store: every request fails, as it
        // would lose the sessions still there.
        for bad in ["files", "memcached://cache"] {
            let (c, p) = config(&[("PSOSessionStoreMovingFrom", bad)]);
            assert_eq!(c.store_moving_from, Some(StoreLocation::Unusable), "{bad}");
            assert_eq!(p[0].variable, "PSOSessionStoreMovingFrom");
        }
    }

    #[test]
    fn cookie_settings() {
        let (c, p) = config(&[
            ("PSOServiceId", "shop"),
            ("PSOCookieSession_Domain", ".Example.org"),
            ("PSOCookieSession_Path", "/cgi-bin/"),
            ("PSOCookieSession_Secure", "1"),
            ("PSOCookieSession_HttpOnly", "off"),
            ("PSOCookieSession_SameSite", "strict"),
            ("PSOCookieSession_Max-Age", "15*60"),
            ("PSOCookieSession_expires", "Mon, 15 Apr 2041 19:00:00 GMT"),
            ("PSOCookieSession_Comment", "obsolete"),
            ("PSOCookieSession_Version", "1"),
        ]);
        assert!(p.is_empty(), "{p:?}");
        let k = c.cookie;
        assert_eq!(k.name, "shop");
        assert_eq!(k.domain.as_deref(), Some("example.org"));
        assert_eq!(k.path, "/cgi-bin/");
        assert_eq!(k.secure, SecureMode::Always);
        assert!(!k.http_only);
        assert_eq!(k.same_site, SameSite::Strict);
        assert_eq!(k.max_age, Some(Expiry::In(Duration::from_secs(900))));
        assert!(matches!(k.expires, Some(Expiry::At(_))));
        // 0 means "until the browser closes" in all three lifetime variables.
        let (c, _) = config(&[("PSOCookieSession_Max-Age", "0")]);
        assert_eq!(c.cookie.max_age, Some(Expiry::BrowserClose));
        for zero in ["0", "0*60", "+0s"] {
            let (c, _) = config(&[("PSOCookieSession_expires", zero)]);
            assert_eq!(c.cookie.expires, Some(Expiry::BrowserClose), "{zero}");
            let (c, _) = config(&[("PSOSessionExpire", zero)]);
            assert_eq!(c.lifetime, Expiry::BrowserClose, "{zero}");
        }
        let (c, p) = config(&[("PSOCookieSession_Max_Age", "60")]);
        assert!(p.is_empty(), "Apache's spelling of Max-Age: {p:?}");
        assert_eq!(c.cookie.max_age, Some(Expiry::In(Duration::from_secs(60))));

        for (name, bad) in [
            ("PSOCookieSession_Domain", "evil.org; HttpOnly"),
            ("PSOCookieSession_Domain", "a..b"),
            ("PSOCookieSession_Path", "relative"),
            ("PSOCookieSession_Path", "/a;Domain=evil.org"),
            ("PSOCookieSession_Path", "/a\r\nX-Injected: 1"),
            ("PSOCookieSession_Secure", "sometimes"),
            ("PSOCookieSession_SameSite", "Loose"),
            ("PSOCookieSession_Max-Age", "soon"),
            ("PSOCookieSession_Prefix", "__Evil-"),
        ] {
            let (c, p) = config(&[(name, bad)]);
            assert_eq!(p.len(), 1, "{name}={bad}");
            assert_eq!(
                c.cookie,
                CookieSettings::new("pso"),
                "{name}={bad} falls back to the default"
            );
        }
    }

    #[test]
    fn cookie_prefixes() {
        let (c, _) = config(&[
            ("PSOServiceId", "app"),
            ("PSOCookieSession_Prefix", "__Host-"),
        ]);
        assert_eq!(c.cookie.name, "__Host-app");
        assert!(c.cookie.host_prefix);
        let (c, _) = config(&[
            ("PSOServiceId", "app"),
            ("PSOCookieSession_Prefix", "__Secure-"),
            ("PSOCookieSession_Secure", "off"),
        ]);
        assert_eq!(
            (c.cookie.name.as_str(), c.cookie.secure),
            ("__Secure-app", SecureMode::Always)
        );
    }

    #[test]
    fn a_service_id_that_starts_like_a_prefix_gets_the_prefix_rules() {
        // Browsers read the prefix off the cookie's name, whatever put it there, in any case
        // (RFC 6265bis), and drop a `__Host-` cookie without `Secure`, `Path=/` and no
        // `Domain`, or a `__Secure-` one without `Secure`. Found by the `config` fuzz target.
        let id: SessionId = "0123456789abcdef0123456789abcdef0123456789abcdef"
            .parse()
            .unwrap();
        let now = std::time::UNIX_EPOCH;
        for (service, host) in [
            ("__Host-shop", true),
            ("__HOST-shop", true),
            ("__Secure-shop", false),
            ("__secure-shop", false),
        ] {
            let (c, _) = config(&[
                ("PSOServiceId", service),
                ("PSOCookieSession_Path", "/shop/"),
                ("PSOCookieSession_Domain", "example.org"),
                ("PSOCookieSession_Secure", "off"),
            ]);
            for https in [false, true] {
                let header = c.cookie.set_cookie(&id, None, now, https);
                assert!(header.contains("; Secure"), "{header}");
                if host {
                    assert!(
                        header.contains("; Path=/;") || header.ends_with("; Path=/"),
                        "{header}"
                    );
                    assert!(!header.contains("Domain="), "{header}");
                }
            }
        }
    }

    #[test]
    fn typos_are_reported() {
        assert_eq!(
            problem_names(&[("PSOSessionExpiry", "900")]),
            ["PSOSessionExpiry"]
        );
        assert_eq!(
            problem_names(&[("PSOCookieSession_Domian", "x")]),
            ["PSOCookieSession_Domian"]
        );
        assert!(problem_names(&[("PSO_FCGI_BIND", "x"), ("PSOSessionExpire", "9")]).is_empty());
        // The FastCGI server's variables are known too, so their typos are caught.
        assert_eq!(
            problem_names(&[("PSO_FCGI_WORKER", "4"), ("PSO_FCGI_WORKERS", "4")]),
            ["PSO_FCGI_WORKER"]
        );
        assert_eq!(
            problem_names(&[("pso_fcgi_workers", "4")]),
            ["pso_fcgi_workers"]
        );
    }

    /// The `PSO…` names in the first cells of the table under `heading` in the README, up to
    /// the next heading.
    fn readme_table(heading: &str) -> Vec<&'static str> {
        let readme = include_str!("../README.md");
        let section = readme
            .split(&format!("\n{heading}\n"))
            .nth(1)
            .and_then(|rest| rest.split("\n#").next())
            .unwrap_or_else(|| panic!("README.md has a section {heading}"));
        section
            .lines()
            .filter(|line| line.starts_with("| `"))
            .filter_map(|row| row.split('|').nth(1))
            .flat_map(|first_cell| first_cell.split('`').skip(1).step_by(2))
            .filter(|name| name.starts_with("PSO"))
            .collect()
    }

    /// The documented names of the table's variables for which `pick` holds, in order.
    fn table_names(pick: impl Fn(&Variable) -> bool) -> Vec<&'static str> {
        VARIABLES
            .iter()
            .filter(|v| pick(v))
            .map(|v| v.name)
            .collect()
    }

    #[test]
    fn the_readme_tables_name_the_same_variables_in_the_same_order() {
        let configuration = readme_table("## Configuration");
        let fastcgi = readme_table("### FastCGI settings (the process environment)");
        for name in configuration.iter().chain(&fastcgi) {
            assert!(
                Variable::find(name).is_some(),
                "the README documents {name}"
            );
        }
        // Other spellings may be named beside a variable's own.
        let documented = |names: Vec<&'static str>| -> Vec<&'static str> {
            names
                .into_iter()
                .filter(|name| VARIABLES.iter().any(|v| v.name == *name))
                .collect()
        };
        assert_eq!(
            documented(configuration),
            table_names(|v| v.scope != Scope::FastCgi)
        );
        assert_eq!(
            documented(fastcgi),
            table_names(|v| v.scope == Scope::FastCgi)
        );
        // The README's order: a request's variables, the process's, the FastCGI server's.
        let scopes: Vec<Scope> = VARIABLES.iter().map(|v| v.scope).collect();
        assert!(scopes.is_sorted_by_key(|scope| *scope as u8), "{scopes:?}");
    }

    #[test]
    fn every_request_variable_is_read_exactly_once() {
        let every_one_set = Environment::from_pairs(VARIABLES.iter().map(|v| (v.name, "x")));
        for env in [Environment::default(), every_one_set] {
            let mut reader = Reader::new(&env);
            reader.config();
            let mut read = reader.read;
            read.sort_unstable();
            let mut expected = table_names(|v| v.scope == Scope::Request);
            expected.sort_unstable();
            assert_eq!(read, expected);
        }
    }

    #[test]
    fn each_invalid_value_is_one_problem_naming_the_variable() {
        for variable in VARIABLES {
            if variable.expected.contains("ignored") {
                continue;
            }
            let (_, problems) = Settings::from_env_checked(&Environment::from_pairs([(
                variable.name,
                "\u{7f}nonsense",
            )]));
            assert_eq!(problems.len(), 1, "{}: {problems:?}", variable.name);
            assert_eq!(problems[0].variable, variable.name, "{problems:?}");
        }
        // And say what the table expects.
        for (name, bad) in [
            ("PSOSessionSync", "maybe"),
            ("PSOLogLevel", "loud"),
            ("PSO_FCGI_BIND", "nowhere"),
            ("PSO_FCGI_WORKERS", "0"),
            ("PSO_FCGI_MAX_CONNS", "1048577"),
            ("PSO_FCGI_IO_TIMEOUT", "0"),
            ("PSO_FCGI_IDLE_TIMEOUT", "25h"),
        ] {
            let (_, problems) = Settings::from_env_checked(&Environment::from_pairs([(name, bad)]));
            let expected = Variable::find(name).unwrap().expected;
            assert_eq!(problems.len(), 1, "{name}={bad}: {problems:?}");
            assert!(problems[0].message.contains(expected), "{problems:?}");
        }
    }

    #[test]
    fn every_variable_shows_the_default_it_states() {
        let (settings, problems) = Settings::from_env_checked(&Environment::default());
        assert!(problems.is_empty(), "{problems:?}");
        let now = std::time::UNIX_EPOCH;
        for variable in VARIABLES {
            let shown = (variable.show)(&settings, None, now);
            assert_eq!(shown.warning, None, "{}", variable.name);
            // These defaults depend on the script's name, the user and the machine.
            let computed = [
                "PSOServiceId",
                "PSOSessionFileLoader_Path",
                "PSO_FCGI_WORKERS",
            ];
            if computed.contains(&variable.name) {
                assert!(!shown.value.is_empty(), "{}", variable.name);
            } else {
                assert!(
                    shown.value.starts_with(variable.default),
                    "{}: shows {:?} by default, the table says {:?}",
                    variable.name,
                    shown.value,
                    variable.default
                );
            }
        }
    }

    #[test]
    fn values_set_are_shown_as_read() {
        let env = Environment::from_pairs([
            ("PSOSessionStore", "redis://:secret@cache:6379/2"),
            ("PSOSessionStorePasswordFile", "/etc/pso/password"),
            ("PSOSessionLockLease", "2m"),
            ("PSOLogLevel", "Warning"),
            ("PSO_FCGI_BIND", ":9000"),
            ("PSO_FCGI_WORKERS", "3"),
            ("PSO_FCGI_REQUEST_TIMEOUT", "90"),
            ("PSOCookieSession_Comment", "old"),
        ]);
        let (settings, problems) = Settings::from_env_checked(&env);
        assert!(problems.is_empty(), "{problems:?}");
        let show = |name: &str| {
            let variable = Variable::find(name).unwrap();
            let value = env.get(name);
            (variable.show)(&settings, value, std::time::UNIX_EPOCH)
        };
        assert_eq!(show("PSOSessionStore").value, "redis://:***@cache:6379/2");
        assert_eq!(
            show("PSOSessionStorePasswordFile").value,
            "/etc/pso/password"
        );
        assert_eq!(show("PSOSessionLockLease").value, "120 s (2m)");
        assert_eq!(show("PSOLogLevel").value, "warn");
        assert_eq!(show("PSO_FCGI_BIND").value, ":9000");
        assert_eq!(show("PSO_FCGI_WORKERS").value, "3");
        assert_eq!(show("PSO_FCGI_REQUEST_TIMEOUT").value, "90 s (1m 30s)");
        assert_eq!(show("PSOCookieSession_Comment").value, "ignored");
        assert!(show("PSOCookieSession_Comment").warning.is_some());
        // An address the listener would not understand stops the program.
        let env = Environment::from_pairs([("PSO_FCGI_BIND", "nowhere")]);
        let (settings, _) = Settings::from_env_checked(&env);
        let shown = (FCGI_BIND.show)(&settings, Some("nowhere"), std::time::UNIX_EPOCH);
        assert!(shown.value.starts_with("unusable"), "{shown:?}");
    }

    #[test]
    fn gc_probability_rolls() {
        let p = GcProbability::parse("1/100").unwrap();
        assert_eq!((0..1000u32).filter(|&r| p.hits(r)).count(), 10);
        assert!(!GcProbability::NEVER.hits(0));
        assert_eq!(GcProbability::parse("0/100"), Some(GcProbability::NEVER));
        assert_eq!(GcProbability::parse("0.0"), Some(GcProbability::NEVER));
        assert!(GcProbability::parse("1").unwrap().hits(12345));
        for bad in [
            "",
            ".",
            "1/",
            "/2",
            "-1/2",
            "0.1234567891",
            "abc",
            "3/2",
            "1.5",
        ] {
            assert_eq!(GcProbability::parse(bad), None, "{bad}");
        }
    }

    proptest! {
        #[test]
        fn no_value_panics_or_breaks_the_cookie(name in prop::sample::select(known_variables().collect::<Vec<_>>()), value in ".{0,100}") {
            let (c, _) = config(&[(name, &value)]);
            let header = c.cookie.set_cookie(&SessionId::generate().unwrap(), None, std::time::UNIX_EPOCH, true);
            prop_assert!(!header.contains('\r') && !header.contains('\n'));
            prop_assert!(header.len() < 4096);
        }
    }
}
