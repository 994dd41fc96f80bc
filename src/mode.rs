//! How a program started: by a CGI server, as a FastCGI application, or from a terminal. The
//! same `main` serves all of them.

use crate::cgi;
use crate::config::FCGI_BIND;
use crate::error::ErrorChain;
use crate::fastcgi::{self, Limits, Listener};
use crate::runner::Handler;
use crate::service::Service;

/// Runs a program: serves its requests with `handler`, however the program was started.
///
/// - A listening socket on file descriptor 0 (Apache `mod_fcgid`, lighttpd `bin-path`,
///   `spawn-fcgi`): a FastCGI application on it, until `SIGTERM`.
/// - `GATEWAY_INTERFACE` set: one CGI request.
/// - `PSO_FCGI_BIND` set (`127.0.0.1:9000`, `:9000`, `unix:/run/app.sock`): a FastCGI
///   application listening there (nginx `fastcgi_pass`, Apache `mod_proxy_fcgi`).
/// - Otherwise, from a terminal: one `GET`, printing the whole response, headers included, so
///   `./reload` and then `HTTP_COOKIE='reload=…' ./reload` continue a session.
///
/// The handler's session is saved when it returns `Ok`. When it returns `Err` or panics, its
/// session changes are discarded, the client gets a 500 page, and the error goes to the error
/// log. A busy session past `PSOSessionLockTimeout` gets a 503.
///
/// ```no_run
/// use std::io::Write;
///
/// fn main() {
///     pso::run(|cx: &mut pso::Context| {
///         let n: u64 = cx.session.get("reloads")?.unwrap_or(0) + 1;
///         cx.session.set("reloads", &n)?;
///         write!(cx.response, "Hello World! ~ You reloaded: {n} times ~ Try Reload !")?;
///         Ok(())
///     })
/// }
/// ```
pub fn run<F>(handler: F)
where
    F: Handler,
{
    run_as(handler, false);
}

/// Like [`run`], for a handler that only reads its session (PHP's `read_and_close`, taken
/// further): each request reads its session without taking the lock, so it runs at once even
/// while a slow request of the same session holds the lock and writes. A change to the
/// session is an error returned by the call that tries it (`set`, `remove`, `clear`,
/// `expire`, ...), and nothing is saved or renewed: the session's idle clock does not restart.
/// No session cookie is sent: an answer that arrives after a sign-in's must not put the old id
/// back. For pages that fire many AJAX calls, status polls, downloads.
///
/// ```no_run
/// use std::io::Write;
///
/// fn main() {
///     pso::run_read_only(|cx: &mut pso::Context| {
///         let n: u64 = cx.session.get("reloads")?.unwrap_or(0);
///         write!(cx.response, "{n}")?;
///         Ok(())
///     })
/// }
/// ```
pub fn run_read_only<F>(handler: F)
where
    F: Handler,
{
    run_as(handler, true);
}

fn run_as<F>(handler: F, read_only: bool)
where
    F: Handler,
{
    let access = |service: Service| {
        if read_only {
            service.read_only()
        } else {
            service
        }
    };
    // A listening socket can never be a CGI request's standard input, so it is asked first.
    let inherited = Listener::inherited();
    let service = access(Service::from_process());
    let env = service.process_env();
    let listener = match inherited {
        Some(listener) => Some(listener),
        None if env.contains("GATEWAY_INTERFACE") => None,
        None => match env.get(FCGI_BIND.name) {
            Some(spec) => match Listener::bind(spec) {
                Ok(listener) => Some(listener),
                Err(e) => {
                    log::error!("{} {spec:?}: {}", FCGI_BIND.name, ErrorChain(&e));
                    std::process::exit(1);
                }
            },
            None => None,
        },
    };
    match listener {
        Some(listener) => {
            let limits = Limits::from_env(env);
            if let Err(e) = fastcgi::serve(listener, &limits, &service, &handler) {
                log::error!("the FastCGI server failed: {}", ErrorChain(&e));
                std::process::exit(1);
            }
        }
        None if env.contains("GATEWAY_INTERFACE") => {
            cgi::serve(&service, &handler);
            // The process ends here: freeing what it built would only cost time.
            std::mem::forget(service);
        }
        None => {
            // From a terminal: name the service after the program, as a web server would
            // through SCRIPT_NAME.
            let mut env = env.clone();
            if !env.contains("SCRIPT_NAME")
                && let Some(program) = std::env::args_os().next()
            {
                env.set("SCRIPT_NAME", program);
            }
            cgi::serve(&access(Service::new(env)), &handler);
        }
    }
}
