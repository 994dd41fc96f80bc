//! `pso serve`: a development server that runs the programs of `cgi-bin/` as CGI or FastCGI,
//! as `php -S` runs PHP scripts: no web server to set up, and one configuration (the
//! `.htaccess` beside the programs) for development and for Apache.
//!
//! A connection's life: `http` reads and checks one request; `site` decides what its path
//! names; `gateway` runs a program as CGI per RFC 3875 (or `fastcgi` hands the request to the
//! program's responder) and relays the answer; `dashboard` shows the programs' sessions. One
//! request per connection, on a small pool of threads. `build` first builds the project's
//! programs with cargo.

mod build;
mod dashboard;
mod fastcgi;
mod gateway;
mod http;
mod site;

use std::io::{Cursor, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use crate::htaccess::Htaccess;
use gateway::{Call, Relayed};
use http::{Incoming, Request};
use site::{Programs, Route};

/// Threads serving connections; more wait in a queue of [`QUEUED`].
const WORKERS: usize = 8;
const QUEUED: usize = 64;
/// How long a client may take to send its whole request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may stall while sending its body or taking the response.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Local redirects followed for one request, as Apache's `LimitInternalRecursion`.
const MAX_REDIRECTS: usize = 10;

/// Where and how to serve.
#[derive(clap::Args)]
pub struct Args {
    /// The directory of programs, served under /cgi-bin/
    #[arg(long, default_value = "cgi-bin")]
    pub dir: PathBuf,
    /// The address to listen on (port 0: any free port)
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub bind: String,
    /// Apache configuration whose SetEnv lines every program gets [default: DIR/.htaccess]
    #[arg(long, value_name = "FILE")]
    pub htaccess: Option<PathBuf>,
    /// Run each program as a FastCGI responder (a listening socket on its fd 0, as mod_fcgid does)
    #[arg(long)]
    pub fastcgi: bool,
    /// Seconds a program may take before it is killed and the client gets a 504
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub timeout: u64,
    /// Do not build the project's programs with cargo first
    #[arg(long)]
    pub no_build: bool,
}

/// Everything a connection needs.
pub struct Site {
    pub programs: Programs,
    /// The `SetEnv` variables, in order.
    pub set_env: Vec<(String, String)>,
    /// `DOCUMENT_ROOT`: the directory the server started in.
    pub document_root: PathBuf,
    pub timeout: Duration,
    pub responders: Option<fastcgi::Responders>,
    /// The sessions page's key, in the URL printed at start-up and in its forms.
    pub token: String,
    /// The CGI programs running now.
    pub children: gateway::Children,
    /// Whether the server listens on loopback only: then it answers only to loopback names.
    pub loopback: bool,
}

pub fn run(args: Args) -> ExitCode {
    match serve(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => crate::fail(message),
    }
}

fn serve(args: Args) -> Result<(), String> {
    let dir = site::served_dir(&args.dir)?;
    let htaccess_path = args.htaccess.clone().or_else(|| {
        let beside = dir.join(".htaccess");
        beside.is_file().then_some(beside)
    });
    let set_env = match &htaccess_path {
        Some(path) => {
            let file =
                Htaccess::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            for problem in &file.problems {
                eprintln!("pso serve: {}: {problem}", file.path.display());
            }
            let vars: Vec<(String, String)> = file
                .variables()
                .into_iter()
                .map(|(name, value, _)| (name.to_string(), value.to_string()))
                .collect();
            eprintln!(
                "pso serve: {} SetEnv variable(s) from {}",
                vars.len(),
                path.display()
            );
            vars
        }
        None => Vec::new(),
    };
    let built = if args.no_build {
        Default::default()
    } else {
        build::build_programs(&dir)?
    };
    let programs = Programs { dir, built };
    let listener = TcpListener::bind(&args.bind)
        .map_err(|e| format!("cannot listen on {}: {e}", args.bind))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot listen on {}: {e}", args.bind))?;
    let responders = if args.fastcgi {
        Some(
            fastcgi::Responders::new()
                .map_err(|e| format!("cannot make a socket directory: {e}"))?,
        )
    } else {
        None
    };
    let token = pso::SessionId::generate()
        .map_err(|e| format!("no random numbers: {e}"))?
        .as_str()
        .to_string();
    let site = Arc::new(Site {
        programs,
        set_env,
        document_root: std::env::current_dir().map_err(|e| format!("no current directory: {e}"))?,
        timeout: Duration::from_secs(args.timeout),
        responders,
        token,
        children: gateway::Children::default(),
        loopback: local.ip().is_loopback(),
    });

    announce(&site, local);
    stop_on_signals(Arc::clone(&site));

    let (queue, waiting) = mpsc::sync_channel::<TcpStream>(QUEUED);
    let waiting = Arc::new(Mutex::new(waiting));
    for _ in 0..WORKERS {
        let waiting = Arc::clone(&waiting);
        let site = Arc::clone(&site);
        std::thread::spawn(move || {
            loop {
                let next = waiting.lock().unwrap_or_else(|e| e.into_inner()).recv();
                match next {
                    Ok(conn) => handle(&site, conn),
                    Err(_) => return,
                }
            }
        });
    }
    for conn in listener.incoming() {
        match conn {
            Ok(conn) => {
                if let Err(mpsc::TrySendError::Full(mut conn)) = queue.try_send(conn) {
                    let _ = http::respond_error(&mut conn, 503, "the server is busy");
                }
            }
            Err(e) => eprintln!("pso serve: accept: {e}"),
        }
    }
    Ok(())
}

/// Prints where to go: on standard output, one URL a line, so a script can read them.
fn announce(site: &Site, local: SocketAddr) {
    let mode = if site.responders.is_some() {
        "FastCGI"
    } else {
        "CGI"
    };
    let names = site.programs.names();
    eprintln!(
        "pso serve: serving {} as {mode} on http://{local}/ (Ctrl-C stops)",
        site.programs.dir.display()
    );
    if !local.ip().is_loopback() {
        eprintln!(
            "pso serve: warning: {local} is reachable from other machines; this is a development server"
        );
    }
    let mut out = std::io::stdout().lock();
    for name in &names {
        let _ = writeln!(out, "http://{local}{}{name}", site::PREFIX);
    }
    let _ = writeln!(out, "http://{local}{}?key={}", site::DASHBOARD, site.token);
    let _ = out.flush();
    if names.is_empty() {
        eprintln!(
            "pso serve: no programs in {} yet: a program's source goes there as NAME.rs, with its entry in Cargo.toml:\n\n{}",
            site.programs.dir.display(),
            site::bin_entry("NAME", std::path::Path::new("cgi-bin"))
        );
    }
}

/// On Ctrl-C, SIGTERM or SIGHUP (the terminal closed): stop the programs running and the
/// FastCGI responders, remove their sockets, exit.
fn stop_on_signals(site: Arc<Site>) {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM, SIGHUP] {
        if let Err(e) = signal_hook::flag::register(signal, Arc::clone(&stop)) {
            eprintln!("pso serve: cannot catch signal {signal}: {e}");
        }
    }
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
        }
        site.children.kill_all();
        if let Some(responders) = &site.responders {
            responders.shutdown();
        }
        eprintln!("pso serve: stopped");
        std::process::exit(130);
    });
}

/// Serves one connection: one request, then close.
fn handle(site: &Site, mut conn: TcpStream) {
    let _ = conn.set_read_timeout(Some(CLIENT_TIMEOUT));
    let _ = conn.set_write_timeout(Some(CLIENT_TIMEOUT));
    let (Ok(peer), Ok(local)) = (conn.peer_addr(), conn.local_addr()) else {
        return;
    };
    let started = Instant::now();
    let mut head = HeadReader {
        conn: &conn,
        deadline: started + HEAD_TIMEOUT,
    };
    let request = match http::read_request(&mut head) {
        Incoming::Request(request) => request,
        Incoming::Nothing => return,
        Incoming::Refused(refusal) => {
            let _ = http::respond_error(&mut conn, refusal.status, refusal.why);
            eprintln!("{peer} refused: {} {}", refusal.status, refusal.why);
            return;
        }
    };
    let (status, bytes) = match admit(site, &request) {
        Ok(()) => answer(site, &mut conn, &request, peer, local),
        Err(refusal) => error(&mut conn, refusal.status, refusal.why),
    };
    // Wakes a thread still copying a body the program did not read.
    let _ = conn.shutdown(std::net::Shutdown::Both);
    eprintln!(
        "{peer} \"{} {} {}\" {status} {bytes} {:.1}ms",
        request.method,
        request.target.escape_debug(),
        request.version,
        started.elapsed().as_secs_f64() * 1000.0
    );
}

/// Checks the Host header: HTTP/1.1 requires one, and a server on loopback answers only to
/// loopback names (no DNS rebinding: a page of another site cannot drive the programs).
fn admit(site: &Site, request: &Request) -> Result<(), http::Refusal> {
    let host = request.header("Host");
    if host.is_none() && request.version == "HTTP/1.1" {
        return Err(http::Refusal {
            status: 400,
            why: "HTTP/1.1 without Host",
        });
    }
    if site.loopback && host.is_some() && !http::loopback_host(host) {
        return Err(http::Refusal {
            status: 403,
            why: "a server on loopback answers only to localhost, 127.0.0.1 or [::1]",
        });
    }
    Ok(())
}

/// Reads a request head by a deadline for the whole head, not only per read: a client that
/// sends a byte now and then cannot hold a worker for long.
struct HeadReader<'a> {
    conn: &'a TcpStream,
    deadline: Instant,
}

impl Read for HeadReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        self.conn.set_read_timeout(Some(left))?;
        let mut conn = self.conn;
        let read = conn.read(buf);
        self.conn.set_read_timeout(Some(CLIENT_TIMEOUT))?;
        read
    }
}

/// Answers `request`, following local redirects; the status and body bytes sent, for the log.
fn answer(
    site: &Site,
    conn: &mut TcpStream,
    request: &Request,
    peer: SocketAddr,
    local: SocketAddr,
) -> (u16, u64) {
    let mut method = request.method.clone();
    let mut target = request.target.clone();
    let mut path = request.path.clone();
    let mut query = request.query.clone();
    let mut body = Some(body_reader(request, conn));
    for _ in 0..=MAX_REDIRECTS {
        let (name, executable, path_info) = match site.programs.route(&path) {
            Route::Program {
                name,
                executable,
                path_info,
            } => (name, executable, path_info),
            Route::Index => return own(conn, 200, &index_page(site), &method),
            Route::Dashboard(rest) => {
                return dashboard::serve(site, conn, request, (&method, &rest, &query), peer);
            }
            Route::NotFound => {
                return error(conn, 404, "no program of that name here");
            }
        };
        let call = Call {
            request,
            method: &method,
            target: &target,
            query: &query,
            name: &name,
            executable: &executable,
            path_info: &path_info,
            peer,
            local,
            with_body: body.is_some(),
        };
        let vars = gateway::meta_variables(&call, &site.set_env, &site.document_root);
        let relayed = match &site.responders {
            None => gateway::run_cgi(
                &call,
                vars,
                body.take(),
                &site.programs.dir,
                site.timeout,
                &site.children,
                conn,
            ),
            Some(responders) => run_fastcgi(site, responders, &call, vars, body.take(), conn),
        };
        match relayed {
            Relayed::Sent {
                status,
                bytes,
                fault,
                ..
            } => {
                if let Some(fault) = fault {
                    eprintln!("{name}: {fault}");
                }
                return (status, bytes);
            }
            Relayed::Failed { status, why } => {
                eprintln!("{name}: {why}");
                // The reason may quote the program's output, none of which goes to the
                // client of a program that failed.
                return error(conn, status, &format!("{name}: see the log of pso serve"));
            }
            Relayed::LocalRedirect(location) => {
                let (new_path, new_query) = location.split_once('?').unwrap_or((&location, ""));
                path = match http::normalize(new_path) {
                    Ok(path) => path,
                    Err(refusal) => return error(conn, 500, refusal.why),
                };
                query = new_query.to_string();
                target = location.clone();
                method = "GET".to_string();
            }
        }
    }
    error(conn, 500, "too many local redirects")
}

fn run_fastcgi(
    site: &Site,
    responders: &fastcgi::Responders,
    call: &Call,
    vars: Vec<gateway::Variable>,
    body: Option<Box<dyn Read + Send>>,
    conn: &mut TcpStream,
) -> Relayed {
    let deadline = Instant::now() + site.timeout;
    let stream = match responders.connect(call.name, call.executable, &site.programs.dir) {
        Ok(stream) => stream,
        Err(e) => {
            return Relayed::Failed {
                status: 502,
                why: format!("cannot start or reach the responder: {e}"),
            };
        }
    };
    let mut answer = match fastcgi::send(stream, &vars, body, call.name, deadline) {
        Ok(answer) => answer,
        Err(e) => {
            responders.restart(call.name);
            return Relayed::Failed {
                status: 502,
                why: format!("cannot send the request to the responder: {e}"),
            };
        }
    };
    let relayed = gateway::relay(&mut answer, conn, call.method == "HEAD");
    let hung = match &relayed {
        Relayed::Failed { status, .. } => *status == 504,
        Relayed::Sent { complete, .. } => !complete && Instant::now() >= deadline,
        Relayed::LocalRedirect(_) => false,
    };
    if hung {
        eprintln!(
            "{}: no answer in time: the responder is restarted",
            call.name
        );
        responders.restart(call.name);
    }
    relayed
}

/// The request's body as a reader: what came with the head, then the rest from the
/// connection, `Content-Length` bytes in all.
fn body_reader(request: &Request, conn: &TcpStream) -> Box<dyn Read + Send> {
    let length = request.content_length;
    let mut start = request.body_start.clone();
    start.truncate(usize::try_from(length).unwrap_or(usize::MAX));
    let rest = length - start.len() as u64;
    match conn.try_clone() {
        Ok(clone) => Box::new(Cursor::new(start).chain(clone.take(rest))),
        Err(_) => Box::new(Cursor::new(start)),
    }
}

fn own(conn: &mut TcpStream, status: u16, html: &str, method: &str) -> (u16, u64) {
    let _ = http::respond(
        conn,
        status,
        "text/html; charset=utf-8",
        &[],
        html.as_bytes(),
        method == "HEAD",
    );
    (status, html.len() as u64)
}

fn error(conn: &mut TcpStream, status: u16, why: &str) -> (u16, u64) {
    let _ = http::respond_error(conn, status, why);
    (status, 0)
}

fn index_page(site: &Site) -> String {
    let mut items = String::new();
    for name in site.programs.names() {
        let name = dashboard::escape(&name);
        items.push_str(&format!(
            "<li><a href=\"{}{name}\">{}{name}</a></li>\n",
            site::PREFIX,
            site::PREFIX
        ));
    }
    if items.is_empty() {
        items.push_str("<li>no programs yet</li>\n");
    }
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>pso serve</title></head><body>\n\
         <h1>pso serve</h1>\n<p>Programs in {}:</p>\n<ul>\n{items}</ul>\n\
         <p><a href=\"{}\">Sessions</a></p>\n</body></html>\n",
        dashboard::escape(&site.programs.dir.display().to_string()),
        site::DASHBOARD
    )
}
