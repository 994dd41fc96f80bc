//! # pso: sessions for CGI programs
//!
//! pso gives a Rust program run by a web server what PHP's `session_start()` gives a PHP
//! script: a session that survives between requests, found from a cookie, stored in a locked
//! file, configured by the web server's environment (`SetEnv` in `.htaccess`). It follows
//! Python's pso.session: the program hands pso one handler, and pso does the rest.
//!
//! ```no_run
//! use std::io::Write;
//!
//! fn main() {
//!     pso::run(|cx: &mut pso::Context| {
//!         let n: u64 = cx.session.get("reloads")?.unwrap_or(0) + 1;
//!         cx.session.set("reloads", &n)?;
//!         write!(cx.response, "Hello World! ~ You reloaded: {n} times ~ Try Reload !")?;
//!         Ok(())
//!     })
//! }
//! ```
//!
//! For one request, [`run`]:
//! 1. reads the [`Config`] from the CGI environment (`PSOServiceId`, `PSOSessionExpire`, ...),
//! 2. finds the session id in the `Cookie` header, adopting it only if the [`store`] holds a
//!    live session under it (strict mode), and takes the session's lock,
//! 3. calls the handler with a [`Context`]: the [`Request`], the [`Session`] and the [`Response`],
//! 4. saves the session if the handler succeeded and sends the response with its `Set-Cookie`.
//!
//! The file tree is the design: `environment` (the CGI variables as a map), `config` (the PSO
//! variables), `expiry` (lifetimes, dates and a request's clock), `id` (session and service
//! ids), `cookies`, `adoption` (which session a request gets, and why: one decision for
//! read-write and read-only requests), `origin` (the reasons), `rules` (the limits a session
//! lives by), `session` (the session a handler sees, and its life in a request), `reserved`
//! (pso's own keys in a record), `user_record` ("log out everywhere"), `form_token` (form
//! tokens for visitors without a stored session), `record` (the stored format), `store/` (the
//! [`store::Store`] trait, the file and memory stores), `request`, `response`, `runner` (one
//! request), `service` (the process), `fastcgi/`, `cgi`, `mode`, `logger`, `error`.
//!
//! ## Cargo features
//! - `cli` (default): builds the `pso` helper binary. Programs that depend on pso as a
//!   library can turn it off (`default-features = false`); it never enters a CGI program.
//! - `postgres` (off): sessions in PostgreSQL (`PSOSessionStore=postgres://…`), through the
//!   `tokio-postgres` crate on a small runtime of its own (the module `store::postgres`).
//!   Programs built without it link none of it.
//! - `fuzzing` (off): for the fuzz targets of `fuzz/` and the property tests only, not an
//!   API; it exposes wrappers over private parsers that change without notice.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod cookies;
pub mod fastcgi;
pub mod store;

mod adoption;
mod cgi;
mod config;
mod environment;
mod error;
mod expiry;
mod form_token;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod id;
mod logger;
mod mode;
mod origin;
mod record;
mod request;
mod reserved;
mod response;
mod rules;
mod runner;
mod service;
mod session;
pub mod testing;
mod user_record;

pub use config::{
    Config, ConfigProblem, GcProbability, Scope, Settings, Shown, VARIABLES, Variable,
};
pub use environment::Environment;
pub use error::{BoxError, Error, ErrorChain, ErrorKind, Result};
pub use expiry::Expiry;
pub use id::{ServiceId, SessionId, same_secret};
pub use mode::{run, run_read_only};
pub use origin::{Ended, Origin};
pub use record::{Meta, Record};
pub use request::{MAX_FORM_FIELDS, Request};
pub use response::Response;
pub use runner::{Context, Handler};
pub use service::{Service, serve};
pub use session::Session;

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
