//! The FastCGI server: the listener, the connections, the workers.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Write};
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use rustix::event::{PollFd, PollFlags};
use rustix::net::{RecvFlags, SendFlags};

use super::record::{
    self, Begin, Capacities, EndStatus, ParamLimits, ProtocolError, ROLE_RESPONDER, Status, kind,
};
use crate::config::{
    ConfigProblem, FCGI_FIRST_BYTE_TIMEOUT, FCGI_HEADER_TIMEOUT, FCGI_IDLE_TIMEOUT,
    FCGI_IO_TIMEOUT, FCGI_MAX_CONNS, FCGI_REQUEST_TIMEOUT, FCGI_WORKERS, Variable,
};
use crate::environment::Environment;
use crate::runner::Handler;
use crate::service::Service;

/// The most bytes a connection holds read and not yet taken by records: one whole record
/// fits. Reads never ask for more than the room left, and none is made while a whole record
/// waits to be taken, so whatever a client sends beyond this (pipelined requests included)
/// waits in the socket, whose flow control holds the client back.
const INPUT_CAP: usize = record::MAX_RECORD;
/// The most a worker looking for an abort before a write reads: then it writes.
const READ_TURN: usize = 64 * 1024;
/// The most of a request's body held unread: the rest waits in the connection.
const BODY_HELD: usize = 64 * 1024;
/// Output kept before it is sent as records: a response that fits goes out in one write with
/// the end of the request.
const OUTPUT_CHUNK: usize = 64 * 1024;
/// How long the listener rests when accepting fails (out of descriptors).
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// The least time between two warnings of one kind.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// Management records a connection may send before it starts a request.
const MAX_MANAGEMENT: u32 = 64;
/// The most unread input discarded before closing a connection, and for how long.
const DRAIN_BYTES: usize = 1 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(2);
/// Most worker threads, connections and the longest timeout `PSO_FCGI_*` may ask for.
const MAX_WORKERS: usize = 1024;
const MAX_CONNS: usize = 1 << 20;
const MAX_TIMEOUT: Duration = Duration::from_secs(86_400);

/// How many workers, connections and bytes a FastCGI process allows, and how long it waits.
///
/// ```
/// let env = pso::Environment::from_pairs([("PSO_FCGI_WORKERS", "3"), ("PSO_FCGI_IDLE_TIMEOUT", "2m")]);
/// let limits = pso::fastcgi::Limits::from_env(&env);
/// assert_eq!(limits.workers, 3);
/// assert_eq!(limits.idle_timeout, std::time::Duration::from_secs(120));
///
/// // Out of bounds: logged, and the default kept (a deadline that far away would overflow).
/// let env = pso::Environment::from_pairs([
///     ("PSO_FCGI_WORKERS", "10000000"),
///     ("PSO_FCGI_FIRST_BYTE_TIMEOUT", "9223372036854775807"),
/// ]);
/// let limits = pso::fastcgi::Limits::from_env(&env);
/// let defaults = pso::fastcgi::Limits::default();
/// assert_eq!(limits.workers, defaults.workers);
/// assert_eq!(limits.first_byte_timeout, defaults.first_byte_timeout);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Worker threads: requests handled at once (`PSO_FCGI_WORKERS`; twice the cores).
    pub workers: usize,
    /// Open connections (`PSO_FCGI_MAX_CONNS`; 1024); past it, new ones wait in the backlog.
    pub max_conns: usize,
    /// How long a new connection may send nothing (`PSO_FCGI_FIRST_BYTE_TIMEOUT`; 5 s).
    pub first_byte_timeout: Duration,
    /// How long a kept connection may wait between requests (`PSO_FCGI_IDLE_TIMEOUT`; 60 s).
    pub idle_timeout: Duration,
    /// How long a request may take to send its parameters (`PSO_FCGI_HEADER_TIMEOUT`; 10 s):
    /// a client that trickles them (slowloris) is cut off.
    pub header_timeout: Duration,
    /// How long a read of the body or a write of the response may stall (`PSO_FCGI_IO_TIMEOUT`;
    /// 30 s).
    pub io_timeout: Duration,
    /// How long reading a request's body and writing its response may take in all
    /// (`PSO_FCGI_REQUEST_TIMEOUT`; 60 s): a client that trickles either holds its worker no
    /// longer.
    pub request_timeout: Duration,
    /// How long in-flight requests may take to finish after `SIGTERM` (10 s).
    pub shutdown_timeout: Duration,
    /// Caps on a request's parameters.
    pub params: ParamLimits,
}

impl Default for Limits {
    fn default() -> Limits {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Limits {
            workers: (2 * cores).max(2),
            max_conns: 1024,
            first_byte_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            header_timeout: Duration::from_secs(10),
            io_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(10),
            params: ParamLimits::default(),
        }
    }
}

impl Limits {
    /// The defaults, changed by `PSO_FCGI_*` variables of `env` (the process environment);
    /// a value out of bounds is logged and the default kept.
    pub fn from_env(env: &Environment) -> Limits {
        let (limits, problems) = Limits::from_env_checked(env);
        for problem in problems {
            log::warn!("{}: {}", problem.variable, problem.message);
        }
        limits
    }

    /// Like [`Limits::from_env`], returning the problems instead of logging them.
    ///
    /// ```
    /// let env = pso::Environment::from_pairs([("PSO_FCGI_MAX_CONNS", "0")]);
    /// let (limits, problems) = pso::fastcgi::Limits::from_env_checked(&env);
    /// assert_eq!(limits.max_conns, 1024);
    /// assert_eq!(problems[0].variable, "PSO_FCGI_MAX_CONNS");
    /// ```
    pub fn from_env_checked(env: &Environment) -> (Limits, Vec<ConfigProblem>) {
        let mut limits = Limits::default();
        let mut problems = Vec::new();
        // Bounded, so that no value can overflow a deadline or ask for more threads and
        // descriptors than a system gives. The names, and what the messages say is expected,
        // are the table's.
        let mut count = |variable: &Variable, most: usize, into: &mut usize| {
            if let Some(text) = env.get(variable.name) {
                match text.trim().parse::<usize>() {
                    Ok(n) if (1..=most).contains(&n) => *into = n,
                    _ => problems.push(out_of_bounds(variable, text, &*into)),
                }
            }
        };
        count(&FCGI_WORKERS, MAX_WORKERS, &mut limits.workers);
        count(&FCGI_MAX_CONNS, MAX_CONNS, &mut limits.max_conns);
        let mut time = |variable: &Variable, into: &mut Duration| {
            if let Some(text) = env.get(variable.name) {
                match crate::config::duration(text) {
                    Some(d) if !d.is_zero() && d <= MAX_TIMEOUT => *into = d,
                    _ => problems.push(out_of_bounds(variable, text, &format!("{into:?}"))),
                }
            }
        };
        time(&FCGI_FIRST_BYTE_TIMEOUT, &mut limits.first_byte_timeout);
        time(&FCGI_IDLE_TIMEOUT, &mut limits.idle_timeout);
        time(&FCGI_HEADER_TIMEOUT, &mut limits.header_timeout);
        time(&FCGI_IO_TIMEOUT, &mut limits.io_timeout);
        time(&FCGI_REQUEST_TIMEOUT, &mut limits.request_timeout);
        (limits, problems)
    }
}

fn out_of_bounds(variable: &Variable, text: &str, kept: &dyn std::fmt::Display) -> ConfigProblem {
    ConfigProblem {
        variable: variable.name.to_owned(),
        message: format!("{text:?} is not {}; using {kept}", variable.expected),
    }
}

/// Where requests come from: a listening socket.
#[derive(Debug)]
pub enum Listener {
    /// TCP (nginx `fastcgi_pass 127.0.0.1:9000`, Apache `mod_proxy_fcgi`).
    Tcp(TcpListener),
    /// A unix socket; `path` is set when pso created it, so it removes it at exit.
    Unix {
        /// The socket.
        listener: UnixListener,
        /// The socket file pso created.
        path: Option<PathBuf>,
    },
}

impl Listener {
    /// The listening socket a web server handed this process on file descriptor 0 (Apache
    /// `mod_fcgid`, lighttpd `bin-path`, `spawn-fcgi`), if there is one. Standard input then
    /// reads `/dev/null`.
    pub fn inherited() -> Option<Listener> {
        let stdin = rustix::stdio::stdin();
        if !matches!(rustix::net::sockopt::socket_acceptconn(stdin), Ok(true)) {
            return None;
        }
        let family = rustix::net::getsockname(stdin).ok()?.address_family();
        let socket: OwnedFd = rustix::io::fcntl_dupfd_cloexec(stdin, 3).ok()?;
        if let Ok(null) = fs::File::open("/dev/null") {
            let _ = rustix::stdio::dup2_stdin(&null);
        }
        if family == rustix::net::AddressFamily::UNIX {
            Some(Listener::Unix {
                listener: UnixListener::from(socket),
                path: None,
            })
        } else if family == rustix::net::AddressFamily::INET
            || family == rustix::net::AddressFamily::INET6
        {
            Some(Listener::Tcp(TcpListener::from(socket)))
        } else {
            None
        }
    }

    /// Binds `spec`: `unix:/run/app.sock` (created `0660`), `127.0.0.1:9000`, `[::1]:9000`,
    /// or `:9000` / `9000` for loopback. An address other than loopback is taken as asked,
    /// with a warning: whoever reaches the socket configures pso.
    ///
    /// ```
    /// let listener = pso::fastcgi::Listener::bind("127.0.0.1:0")?;
    /// assert!(matches!(listener, pso::fastcgi::Listener::Tcp(_)));
    /// assert!(pso::fastcgi::Listener::bind("nonsense").is_err());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn bind(spec: &str) -> io::Result<Listener> {
        let address = match Address::parse(spec)? {
            Address::Unix(path) => return bind_unix(path),
            Address::Tcp(address) => address,
        };
        if !address.ip().is_loopback() {
            log::warn!(
                "FastCGI listens on {address}, beyond this machine: anyone who reaches it configures pso through its parameters (set FCGI_WEB_SERVER_ADDRS)"
            );
        }
        TcpListener::bind(address).map(Listener::Tcp)
    }

    /// Whether [`Listener::bind`] understands `spec`, without binding anything (for checks
    /// such as `pso config`).
    pub(crate) fn check(spec: &str) -> io::Result<()> {
        Address::parse(spec).map(drop)
    }

    /// Whether `spec` names a TCP address other machines can reach (not loopback, not a unix
    /// socket).
    pub(crate) fn reaches_other_machines(spec: &str) -> bool {
        matches!(Address::parse(spec), Ok(Address::Tcp(address)) if !address.ip().is_loopback())
    }

    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Listener::Tcp(listener) => listener.as_fd(),
            Listener::Unix { listener, .. } => listener.as_fd(),
        }
    }

    fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            Listener::Tcp(listener) => listener.set_nonblocking(true),
            Listener::Unix { listener, .. } => listener.set_nonblocking(true),
        }
    }

    /// The next connection, `None` when there is none waiting.
    fn accept(&self, allowed: &[IpAddr]) -> io::Result<Option<Stream>> {
        loop {
            let accepted = match self {
                Listener::Tcp(listener) => listener.accept().map(|(stream, peer)| {
                    if !allowed.is_empty() && !allowed.contains(&peer.ip().to_canonical()) {
                        log::warn!(
                            "refusing a FastCGI connection from {peer}: not in FCGI_WEB_SERVER_ADDRS"
                        );
                        return None;
                    }
                    // Each response goes out in one write; do not hold its last segment back.
                    let _ = stream.set_nodelay(true);
                    Some(Stream::Tcp(stream))
                }),
                Listener::Unix { listener, .. } => {
                    listener.accept().map(|(stream, _)| Some(Stream::Unix(stream)))
                }
            };
            match accepted {
                Ok(Some(stream)) => return Ok(Some(stream)),
                Ok(None) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix {
            path: Some(path), ..
        } = self
        {
            let _ = fs::remove_file(path);
        }
    }
}

/// What a bind spec names: a unix socket's path, or a TCP address.
enum Address {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl Address {
    fn parse(spec: &str) -> io::Result<Address> {
        let spec = spec.trim();
        if let Some(path) = spec.strip_prefix("unix:") {
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        let port_only = spec.strip_prefix(':').unwrap_or(spec);
        match port_only.parse::<u16>() {
            Ok(port) => Ok(Address::Tcp(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                port,
            ))),
            Err(_) => spec.parse().map(Address::Tcp).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{spec:?} is not unix:/path, host:port or a port"),
                )
            }),
        }
    }
}

/// Creates a unix socket `0660` (whatever the umask), replacing a stale socket file left by a
/// process that died, but nothing else.
fn bind_unix(path: PathBuf) -> io::Result<Listener> {
    if let Ok(meta) = fs::symlink_metadata(&path) {
        let stale = meta.file_type().is_socket()
            && UnixStream::connect(&path)
                .err()
                .is_some_and(|e| e.kind() == io::ErrorKind::ConnectionRefused);
        if !stale {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "{} exists and is not a stale socket; remove it or choose another",
                    path.display()
                ),
            ));
        }
        fs::remove_file(&path)?;
    }
    // The umask is the process's; this runs at start-up, before any other thread.
    let previous = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o117));
    let bound = UnixListener::bind(&path);
    rustix::process::umask(previous);
    let listener = bound?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o660))?;
    Ok(Listener::Unix {
        listener,
        path: Some(path),
    })
}

/// A connection from the web server.
#[derive(Debug)]
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

// Connections stay in blocking mode: every read and write asks not to wait, and waits, when it
// must, in `poll` with its own timeout. No mode switches and no socket timeouts to set per
// request, and the reactor and a worker can share a connection's life without handing modes on.
impl Stream {
    fn shutdown_write(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Write),
            Stream::Unix(s) => s.shutdown(Shutdown::Write),
        };
    }

    /// Reads what is there without waiting.
    fn recv_now(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match rustix::net::recv(self, &mut *buf, RecvFlags::DONTWAIT) {
                Ok((read, _)) => return Ok(read),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Appends at most `most` bytes of what is there to `input` without waiting: the buffer
    /// grows by what came, so a connection that sent a few bytes holds a few bytes.
    fn recv_now_into(&self, input: &mut Vec<u8>, most: usize) -> io::Result<usize> {
        let mut chunk = [MaybeUninit::<u8>::uninit(); INPUT_CAP];
        let most = most.min(INPUT_CAP);
        loop {
            match rustix::net::recv(self, &mut chunk[..most], RecvFlags::DONTWAIT) {
                Ok(((read, _), _)) => {
                    // Exact, so a connection holds what it was sent, not up to twice that.
                    input.reserve_exact(read.len());
                    input.extend_from_slice(read);
                    return Ok(read.len());
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Writes what fits without waiting (and without `SIGPIPE` when the peer is gone).
    fn send_now(&self, bytes: &[u8]) -> io::Result<usize> {
        loop {
            match rustix::net::send(self, bytes, SendFlags::DONTWAIT | SendFlags::NOSIGNAL) {
                Ok(0) if !bytes.is_empty() => return Err(io::ErrorKind::WriteZero.into()),
                Ok(sent) => return Ok(sent),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Waits until the connection is readable (or writable), at most `timeout`.
    fn wait(&self, flags: PollFlags, timeout: Duration) -> io::Result<()> {
        let timeout = rustix::event::Timespec::try_from(timeout).ok();
        let mut fds = [PollFd::new(self, flags)];
        loop {
            match rustix::event::poll(&mut fds, timeout.as_ref()) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the web server stalled",
                    ));
                }
                Ok(_) => return Ok(()),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        }
    }
}

/// A connection and the bytes read from it but not yet taken by records.
#[derive(Debug)]
struct Conn {
    stream: Stream,
    /// At most [`INPUT_CAP`] bytes: part of a record, or what one read brought (the end of a
    /// request, and perhaps the start of the next one, which is served from here).
    input: Vec<u8>,
    /// Where the bytes of `input` not yet taken start.
    parsed: usize,
    /// While a worker runs a request: when its reads and writes must be done.
    deadline: Option<Instant>,
    /// The longest one read or write may stall.
    stall: Duration,
}

impl Conn {
    fn new(stream: Stream) -> Conn {
        Conn {
            stream,
            input: Vec::new(),
            parsed: 0,
            deadline: None,
            stall: Duration::MAX,
        }
    }

    /// Drops what records took, and the buffer itself when it is empty: a connection
    /// waiting for its next request should cost its socket, not the largest record it was
    /// ever sent. (Called once no whole record is held: what moves is less than one.)
    fn release_input(&mut self) {
        self.input.drain(..self.parsed);
        self.parsed = 0;
        if self.input.is_empty() {
            self.input = Vec::new();
        } else {
            self.input.shrink_to_fit();
        }
    }

    /// Whether bytes are held that no record has taken yet.
    fn holds_input(&self) -> bool {
        self.parsed < self.input.len()
    }

    /// How long the next wait may last: the stall limit, cut at the request's deadline.
    fn patience(&self) -> io::Result<Duration> {
        let Some(deadline) = self.deadline else {
            return Ok(self.stall);
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the request took too long",
            ));
        }
        Ok(left.min(self.stall))
    }

    /// Reads once into the input buffer, at most the room [`INPUT_CAP`] leaves; `Ok(0)` is
    /// the end of the stream. With `wait`, waits for input within the request's deadline;
    /// without, what is not there is `WouldBlock`. Callers take every whole record first
    /// ([`Conn::next_record`]), so what moves to the front here is less than one record, and
    /// the room is at least what that record lacks.
    fn fill(&mut self, wait: bool) -> io::Result<usize> {
        self.input.drain(..self.parsed);
        self.parsed = 0;
        let most = INPUT_CAP.saturating_sub(self.input.len());
        if most == 0 {
            return Err(io::Error::other("a whole record waits to be taken"));
        }
        let patience = if wait { Some(self.patience()?) } else { None };
        loop {
            match self.stream.recv_now_into(&mut self.input, most) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let Some(patience) = patience else {
                        return Err(e);
                    };
                    self.stream.wait(PollFlags::IN, patience)?;
                }
                read => return read,
            }
        }
    }

    /// The next record, if it is whole, left in place.
    fn peek(&self) -> Option<record::Record<'_>> {
        match record::parse(&self.input[self.parsed..]) {
            Ok(Status::Complete(record, _)) => Some(record),
            _ => None,
        }
    }

    /// The next complete record, as (kind, id, content).
    fn next_record(&mut self) -> Result<Option<(u8, u16, Vec<u8>)>, ProtocolError> {
        match record::parse(&self.input[self.parsed..])? {
            Status::Partial => Ok(None),
            Status::Complete(record, used) => {
                let taken = (record.kind, record.request_id, record.content.to_vec());
                // An offset, not a move: a buffer of small pipelined records is not shifted
                // once per record.
                self.parsed += used;
                if self.parsed == self.input.len() {
                    self.input.clear();
                    self.parsed = 0;
                }
                Ok(Some(taken))
            }
        }
    }

    /// Writes `bytes` whole: a reply the reactor owes (small: a peer that does not take it at
    /// once is dropped), or a response, by the request's deadline.
    fn send(&self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            match self.stream.send_now(bytes) {
                Ok(sent) => bytes = &bytes[sent..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && self.deadline.is_some() => {
                    self.stream.wait(PollFlags::OUT, self.patience()?)?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Requests waiting for a worker. One wake per request: a channel behind a mutex also woke a
/// second worker at each request only to have it wait again.
#[derive(Default)]
struct JobQueue {
    state: Mutex<Queued>,
    ready: Condvar,
}

#[derive(Default)]
struct Queued {
    jobs: VecDeque<Job>,
    closed: bool,
}

impl JobQueue {
    /// Queues `job` for the next free worker; gives it back once the queue is closed.
    fn push(&self, job: Job) -> Result<(), Job> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.closed {
            return Err(job);
        }
        state.jobs.push_back(job);
        drop(state);
        self.ready.notify_one();
        Ok(())
    }

    /// The next job, waiting for one; `None` once the queue is closed and empty.
    fn pop(&self) -> Option<Job> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(job) = state.jobs.pop_front() {
                return Some(job);
            }
            if state.closed {
                return None;
            }
            state = self
                .ready
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn close(&self) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closed = true;
        self.ready.notify_all();
    }
}

/// A request whose parameters are complete, with its connection: what a worker gets.
struct Job {
    conn: Conn,
    id: u16,
    keep_conn: bool,
    params: Vec<u8>,
}

/// Where a connection not running a request stands.
enum Phase {
    /// Waiting for a request: new, or kept after one.
    Waiting,
    /// A request began and is sending its parameters.
    Params {
        id: u16,
        keep_conn: bool,
        params: Vec<u8>,
    },
    /// Done: reading and discarding what the peer still sends, so that closing does not reset
    /// the connection and cut the response short.
    Draining { left: usize },
}

struct Watched {
    conn: Conn,
    phase: Phase,
    deadline: Instant,
    /// Records answered since the last request (management records, refused ones).
    replies: u32,
}

/// What the reactor decided for a connection after reading from it.
enum Next {
    Keep,
    /// The request's parameters are complete: (id, keep_conn, params).
    Dispatch(u16, bool, Vec<u8>),
    Close,
}

/// What both sides share.
struct Shared<'s, F> {
    service: &'s Service,
    handler: &'s F,
    limits: &'s Limits,
    in_flight: AtomicUsize,
    /// The reactor waits for a request to end (it is at the connection cap, or shutting down):
    /// a worker that ends one wakes it. Otherwise only returned connections do.
    reactor_waits: AtomicBool,
}

/// Serves FastCGI requests from `listener` with `handler` until `SIGTERM`, then finishes the
/// requests in flight (within [`Limits::shutdown_timeout`]) and returns.
pub fn serve<F>(
    listener: Listener,
    limits: &Limits,
    service: &Service,
    handler: &F,
) -> io::Result<()>
where
    F: Handler,
{
    listener.set_nonblocking()?;
    let allowed = allowed_peers(service.process_env())?;
    let limits = &fit_descriptor_limit(limits);
    let (wake_read, wake_write) = UnixStream::pair()?;
    wake_read.set_nonblocking(true)?;
    wake_write.set_nonblocking(true)?;
    let stop = Arc::new(AtomicBool::new(false));
    let signals = [
        signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?,
        signal_hook::low_level::pipe::register(
            signal_hook::consts::SIGTERM,
            wake_write.try_clone()?,
        )?,
    ];
    let shared = Shared {
        service,
        handler,
        limits,
        in_flight: AtomicUsize::new(0),
        reactor_waits: AtomicBool::new(false),
    };
    let jobs = JobQueue::default();
    let (returned, returns) = mpsc::channel::<Watched>();
    log::info!(
        "serving FastCGI with {} workers, at most {} connections",
        limits.workers,
        limits.max_conns
    );
    let result = std::thread::scope(|scope| {
        for _ in 0..limits.workers {
            let (shared, jobs, returned, wake) = (&shared, &jobs, returned.clone(), &wake_write);
            scope.spawn(move || work(shared, jobs, returned, wake));
        }
        drop(returned);
        let mut reactor = Reactor {
            listener: Some(listener),
            accept_paused_until: None,
            warned_at: None,
            allowed: &allowed,
            limits,
            shared: &shared,
            watched: Vec::new(),
            jobs: &jobs,
            returns,
            wake: &wake_read,
            stop: &stop,
        };
        reactor.run()
    });
    for id in signals {
        signal_hook::low_level::unregister(id);
    }
    result
}

/// `FCGI_WEB_SERVER_ADDRS`: the addresses TCP peers may come from (libfcgi's variable),
/// compared in canonical form (`::ffff:127.0.0.1` is `127.0.0.1`). An entry that is not an
/// address is an error: a list that silently lost an entry would let in more than it says.
fn allowed_peers(env: &Environment) -> io::Result<Vec<IpAddr>> {
    let Some(list) = env.get("FCGI_WEB_SERVER_ADDRS") else {
        return Ok(Vec::new());
    };
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<IpAddr>().map(|ip| ip.to_canonical()).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("FCGI_WEB_SERVER_ADDRS: {s:?} is not an IP address (no names, no networks)"),
                )
            })
        })
        .collect()
}

/// The limits, with `max_conns` cut to what the process may open: its soft limit on
/// descriptors is first raised to the hard one, and some are kept for session files.
fn fit_descriptor_limit(limits: &Limits) -> Limits {
    use rustix::process::{Resource, getrlimit, setrlimit};
    const RESERVED: usize = 64;
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        let _ = setrlimit(Resource::Nofile, limit);
    }
    let mut fitted = limits.clone();
    let available = getrlimit(Resource::Nofile)
        .current
        .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
    let room = available.saturating_sub(RESERVED + limits.workers).max(1);
    if fitted.max_conns > room {
        log::warn!(
            "at most {room} connections, not {}: the process may open only {available} descriptors",
            fitted.max_conns
        );
        fitted.max_conns = room;
    }
    fitted
}

struct Reactor<'r, 's, F> {
    /// Closed (dropped) at `SIGTERM`, so the web server sees refusals at once.
    listener: Option<Listener>,
    /// Out of descriptors: the listener rests until then.
    accept_paused_until: Option<Instant>,
    /// When the last warning about accepting was logged.
    warned_at: Option<Instant>,
    allowed: &'r [IpAddr],
    limits: &'r Limits,
    shared: &'r Shared<'s, F>,
    watched: Vec<Watched>,
    jobs: &'r JobQueue,
    returns: Receiver<Watched>,
    wake: &'r UnixStream,
    stop: &'r AtomicBool,
}

/// However the reactor ends, the workers stop once the queue is empty.
impl<F> Drop for Reactor<'_, '_, F> {
    fn drop(&mut self) {
        self.jobs.close();
    }
}

impl<F> Reactor<'_, '_, F>
where
    F: Handler,
{
    fn run(&mut self) -> io::Result<()> {
        let mut stopping_since: Option<Instant> = None;
        loop {
            if stopping_since.is_none() && self.stop.load(Ordering::SeqCst) {
                log::info!("SIGTERM: no new connections; finishing the requests in flight");
                stopping_since = Some(Instant::now());
                self.listener = None;
                // Connections not running a request have nothing in flight.
                self.watched
                    .retain(|w| matches!(w.phase, Phase::Draining { .. }));
            }
            // Raised before `in_flight` is read: a request ending after the read sees it.
            self.shared.reactor_waits.store(true, Ordering::SeqCst);
            let in_flight = self.shared.in_flight.load(Ordering::SeqCst);
            let at_capacity = self.watched.len() + in_flight >= self.limits.max_conns;
            if stopping_since.is_none() && !at_capacity {
                self.shared.reactor_waits.store(false, Ordering::SeqCst);
            }
            if let Some(since) = stopping_since {
                if in_flight == 0 {
                    break;
                }
                if since.elapsed() >= self.limits.shutdown_timeout {
                    log::error!(
                        "{in_flight} requests still running after the shutdown timeout; leaving them"
                    );
                    std::process::exit(1);
                }
            }
            let now = Instant::now();
            if self.accept_paused_until.is_some_and(|until| until <= now) {
                self.accept_paused_until = None;
            }
            let accepting =
                self.listener.is_some() && self.accept_paused_until.is_none() && !at_capacity;
            let next_deadline = self
                .watched
                .iter()
                .map(|w| w.deadline)
                .chain(stopping_since.map(|since| since + self.limits.shutdown_timeout))
                .chain(self.accept_paused_until)
                .min();
            let timeout = next_deadline
                .map(|d| d.saturating_duration_since(now))
                .and_then(|d| rustix::event::Timespec::try_from(d).ok());
            let ready = {
                let mut fds = Vec::with_capacity(self.watched.len() + 2);
                fds.push(PollFd::new(self.wake, PollFlags::IN));
                if let (true, Some(listener)) = (accepting, &self.listener) {
                    fds.push(PollFd::from_borrowed_fd(listener.as_fd(), PollFlags::IN));
                }
                for watched in &self.watched {
                    fds.push(PollFd::new(&watched.conn.stream, PollFlags::IN));
                }
                match rustix::event::poll(&mut fds, timeout.as_ref()) {
                    Ok(_) => {}
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => return Err(e.into()),
                }
                fds.iter()
                    .map(|fd| !fd.revents().is_empty())
                    .collect::<Vec<bool>>()
            };
            let mut ready = ready.into_iter();
            if ready.next() == Some(true) {
                let mut sink = [0u8; 64];
                while (&*self.wake).read(&mut sink).is_ok_and(|n| n > 0) {}
            }
            let listener_ready = accepting && ready.next() == Some(true);
            let conn_ready: Vec<bool> = ready.collect();
            self.serve_ready(&conn_ready);
            self.take_returns(stopping_since.is_some());
            if listener_ready {
                self.accept();
            }
            self.expire(Instant::now());
        }
        Ok(())
    }

    fn accept(&mut self) {
        while self.watched.len() + self.shared.in_flight.load(Ordering::SeqCst)
            < self.limits.max_conns
        {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept(self.allowed) {
                Ok(Some(stream)) => {
                    let watched = Watched {
                        conn: Conn::new(stream),
                        phase: Phase::Waiting,
                        deadline: Instant::now() + self.limits.first_byte_timeout,
                        replies: 0,
                    };
                    // A web server writes its request as soon as it connects: it is often
                    // there already, one wait saved.
                    if let Some(watched) = self.on_readable(watched) {
                        self.watched.push(watched);
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    // Out of descriptors, for instance: the listener rests a moment rather
                    // than waking the loop at once, and the log hears of it now and then.
                    self.accept_paused_until = Some(Instant::now() + ACCEPT_PAUSE);
                    if self.warned_at.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                        log::warn!("accepting a FastCGI connection failed: {e}");
                        self.warned_at = Some(Instant::now());
                    }
                    return;
                }
            }
        }
    }

    /// Connections coming back from workers: kept ones wait for their next request.
    fn take_returns(&mut self, stopping: bool) {
        while let Ok(mut watched) = self.returns.try_recv() {
            if stopping && matches!(watched.phase, Phase::Waiting) {
                continue;
            }
            // A kept connection may already hold its next request, read with the end of the
            // last one (at most `INPUT_CAP` bytes in all): it is served from there.
            if matches!(watched.phase, Phase::Waiting) && watched.conn.holds_input() {
                match self.advance(&mut watched) {
                    Next::Keep => {}
                    Next::Dispatch(id, keep_conn, params) => {
                        self.dispatch(watched.conn, id, keep_conn, params);
                        continue;
                    }
                    Next::Close => continue,
                }
            }
            // An idle connection keeps no buffer from its last request.
            watched.conn.release_input();
            self.watched.push(watched);
        }
    }

    fn serve_ready(&mut self, ready: &[bool]) {
        let mut kept = Vec::with_capacity(self.watched.len());
        for (index, watched) in std::mem::take(&mut self.watched).into_iter().enumerate() {
            if !ready.get(index).copied().unwrap_or(false) {
                kept.push(watched);
            } else if let Some(watched) = self.on_readable(watched) {
                kept.push(watched);
            }
        }
        kept.append(&mut self.watched);
        self.watched = kept;
    }

    /// Reads what a connection sent and acts on it; the connection comes back while it is
    /// still to be watched.
    fn on_readable(&mut self, mut watched: Watched) -> Option<Watched> {
        if let Phase::Draining { left } = &mut watched.phase {
            let mut sink = [0u8; 16 * 1024];
            return match watched.conn.stream.recv_now(&mut sink) {
                Ok(n) if n > 0 && n < *left => {
                    *left -= n;
                    Some(watched)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Some(watched),
                _ => None,
            };
        }
        match watched.conn.fill(false) {
            Ok(0) => return None,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(watched),
            Err(_) => return None,
        }
        match self.advance(&mut watched) {
            Next::Keep => Some(watched),
            Next::Dispatch(id, keep_conn, params) => {
                self.dispatch(watched.conn, id, keep_conn, params);
                None
            }
            Next::Close => None,
        }
    }

    fn dispatch(&mut self, conn: Conn, id: u16, keep_conn: bool, params: Vec<u8>) {
        let job = Job {
            conn,
            id,
            keep_conn,
            params,
        };
        self.shared.in_flight.fetch_add(1, Ordering::SeqCst);
        if self.jobs.push(job).is_err() {
            self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Closes connections past their deadline.
    fn expire(&mut self, now: Instant) {
        self.watched.retain(|w| {
            let alive = w.deadline > now;
            if !alive && let Phase::Params { .. } = w.phase {
                log::warn!("a FastCGI request did not send its parameters in time; closing");
            }
            alive
        });
    }

    /// Handles the complete records a waiting connection holds.
    fn advance(&self, watched: &mut Watched) -> Next {
        loop {
            let (kind, id, content) = match watched.conn.next_record() {
                Ok(Some(record)) => record,
                Ok(None) => return Next::Keep,
                Err(e) => {
                    log::warn!("{e}; closing the connection");
                    return Next::Close;
                }
            };
            match step(&mut watched.phase, kind, id, content, self.limits) {
                Step::Continue => {}
                Step::Reply(bytes) => {
                    watched.replies += 1;
                    if watched.replies > MAX_MANAGEMENT {
                        log::warn!(
                            "a FastCGI peer sent {MAX_MANAGEMENT} records to answer and no request; closing"
                        );
                        return Next::Close;
                    }
                    if watched.conn.send(&bytes).is_err() {
                        return Next::Close;
                    }
                }
                // The parameters must come within the header timeout, and never later than the
                // connection was due to close anyway: beginning (and aborting) requests over
                // and over cannot keep a connection open.
                Step::Begin => {
                    watched.deadline = watched
                        .deadline
                        .min(Instant::now() + self.limits.header_timeout);
                }
                Step::Dispatch => {
                    let Phase::Params {
                        id,
                        keep_conn,
                        params,
                    } = std::mem::replace(&mut watched.phase, Phase::Waiting)
                    else {
                        return Next::Close;
                    };
                    return Next::Dispatch(id, keep_conn, params);
                }
                Step::Abort(bytes, keep_conn) => {
                    if watched.conn.send(&bytes).is_err() || !keep_conn {
                        return Next::Close;
                    }
                }
                Step::Close(why) => {
                    log::warn!("{why}; closing the connection");
                    return Next::Close;
                }
            }
        }
    }
}

/// What one record means for a connection that is not running a request.
enum Step {
    Continue,
    Reply(Vec<u8>),
    Begin,
    Dispatch,
    Abort(Vec<u8>, bool),
    Close(String),
}

fn step(phase: &mut Phase, kind: u8, id: u16, content: Vec<u8>, limits: &Limits) -> Step {
    if id == 0 {
        return Step::Reply(management_reply(kind, &content, limits));
    }
    match kind {
        kind::BEGIN_REQUEST => {
            let begin: Begin = match record::parse_begin(&content) {
                Ok(begin) => begin,
                Err(e) => return Step::Close(e.to_string()),
            };
            match phase {
                Phase::Params { id: active, .. } if *active != id => {
                    let mut out = Vec::new();
                    record::write_end(&mut out, id, 0, EndStatus::CantMultiplex);
                    Step::Reply(out)
                }
                Phase::Params { .. } => {
                    Step::Close("a second BEGIN_REQUEST for an active request".into())
                }
                _ if begin.role != ROLE_RESPONDER => {
                    let mut out = Vec::new();
                    record::write_end(&mut out, id, 0, EndStatus::UnknownRole);
                    Step::Reply(out)
                }
                _ => {
                    *phase = Phase::Params {
                        id,
                        keep_conn: begin.keep_conn,
                        params: Vec::new(),
                    };
                    Step::Begin
                }
            }
        }
        kind::PARAMS => match phase {
            Phase::Params {
                id: active, params, ..
            } if *active == id => {
                if content.is_empty() {
                    return Step::Dispatch;
                }
                if params.len() + content.len() > limits.params.total_bytes {
                    return Step::Close(format!("PARAMS over {} bytes", limits.params.total_bytes));
                }
                params.reserve_exact(content.len());
                params.extend_from_slice(&content);
                Step::Continue
            }
            _ => Step::Continue,
        },
        kind::STDIN => match phase {
            Phase::Params { id: active, .. } if *active == id => {
                Step::Close("STDIN before the end of PARAMS".into())
            }
            // The end of a finished request's body, or a stray: ignored.
            _ => Step::Continue,
        },
        kind::ABORT_REQUEST => match phase {
            Phase::Params {
                id: active,
                keep_conn,
                ..
            } if *active == id => {
                let keep = *keep_conn;
                let mut out = Vec::new();
                record::write_end(&mut out, id, 0, EndStatus::RequestComplete);
                *phase = Phase::Waiting;
                Step::Abort(out, keep)
            }
            _ => Step::Continue,
        },
        kind::STDOUT
        | kind::STDERR
        | kind::END_REQUEST
        | kind::GET_VALUES_RESULT
        | kind::UNKNOWN_TYPE => Step::Close(format!(
            "a record of type {kind}, which only an application sends"
        )),
        // DATA (the FILTER role) and types from the future: not for a responder.
        _ => Step::Continue,
    }
}

/// The answer to a management record (request id 0).
fn management_reply(kind: u8, content: &[u8], limits: &Limits) -> Vec<u8> {
    let mut out = Vec::new();
    if kind == kind::GET_VALUES {
        record::write_values(
            &mut out,
            content,
            Capacities {
                max_conns: limits.max_conns,
                max_reqs: limits.workers,
            },
        );
    } else {
        record::write_unknown_type(&mut out, kind);
    }
    out
}

/// A worker: takes requests until the queue closes.
fn work<F>(shared: &Shared<'_, F>, jobs: &JobQueue, returned: Sender<Watched>, wake: &UnixStream)
where
    F: Handler,
{
    while let Some(job) = jobs.pop() {
        // A panic here would be pso's own bug, not the handler's (handlers are caught in the
        // runner): it costs this connection, never the worker.
        let back =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_request(shared, job)))
                .unwrap_or_else(|_| {
                    log::error!("serving a FastCGI request panicked; its connection is closed");
                    None
                });
        shared.in_flight.fetch_sub(1, Ordering::SeqCst);
        let returning = back.is_some();
        if let Some(watched) = back {
            let _ = returned.send(watched);
        }
        if returning || shared.reactor_waits.load(Ordering::SeqCst) {
            let _ = (&*wake).write(&[1]);
        }
    }
}

/// The request a worker runs: its body read from the connection as the handler asks.
struct Active<'a> {
    conn: &'a mut Conn,
    id: u16,
    /// Body bytes received and not yet read by the handler.
    body: Vec<u8>,
    body_read: usize,
    body_done: bool,
    aborted: bool,
    broken: bool,
    /// The peer sent no more, or reading failed, where nothing waited for it.
    ended: bool,
    /// The handler is done: what is left of the body is discarded.
    finished: bool,
    limits: &'a Limits,
}

impl Active<'_> {
    /// Handles whatever has arrived by now, without waiting (a second BEGIN_REQUEST sent
    /// while this request ran is refused before this request ends), up to a bound.
    fn settle(&mut self) {
        self.finished = true;
        let _ = self.pump(false, DRAIN_BYTES);
    }

    /// Whether the body holds bytes the handler has not read.
    fn body_waiting(&self) -> usize {
        self.body.len() - self.body_read
    }

    /// Whether the record held is body that does not fit beside what waits unread.
    fn body_full(&self) -> bool {
        self.conn.peek().is_some_and(|record| {
            record.kind == kind::STDIN
                && record.request_id == self.id
                && self.body_waiting() > 0
                && self.body_waiting() + record.content.len() > BODY_HELD
        })
    }

    /// Keeps body bytes for the handler, in a buffer that never grows past [`BODY_HELD`].
    fn hold(&mut self, content: &[u8]) {
        self.body.drain(..self.body_read);
        self.body_read = 0;
        let needed = self.body.len() + content.len();
        if needed > self.body.capacity() {
            let grown = needed
                .max(2 * self.body.capacity())
                .min(BODY_HELD.max(needed));
            self.body.reserve_exact(grown - self.body.len());
        }
        self.body.extend_from_slice(content);
    }

    /// Handles this request's records, reading only while one is missing, and nothing once
    /// the body has ended or the request was aborted: what follows is the connection's next
    /// request, and waits in the socket (or in the input buffer, within [`INPUT_CAP`], for
    /// what came with this request's last read). At most [`BODY_HELD`] bytes of body wait
    /// unread; the rest waits in the connection, so memory stays bounded whatever the peer
    /// sends. With `wait`, reads until there is body to give, its end, or an abort; without,
    /// reads what is there, at most `budget` bytes.
    fn pump(&mut self, wait: bool, mut budget: usize) -> io::Result<()> {
        loop {
            if self.body_done || self.aborted || (!self.finished && self.body_full()) {
                return Ok(());
            }
            let record = match self.conn.next_record() {
                Ok(record) => record,
                Err(e) => {
                    self.broken = true;
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
            };
            let Some((kind, id, content)) = record else {
                if wait && self.body_waiting() > 0 {
                    return Ok(());
                }
                if self.ended {
                    if wait {
                        self.broken = true;
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    return Ok(());
                }
                if !wait && budget == 0 {
                    return Ok(());
                }
                match self.conn.fill(wait) {
                    Ok(0) => self.ended = true,
                    Ok(read) => budget = budget.saturating_sub(read),
                    Err(e) if !wait => {
                        // Nothing waits on this read: the next write, or the end of the
                        // request, learns what became of the connection.
                        if e.kind() != io::ErrorKind::WouldBlock {
                            self.ended = true;
                        }
                        return Ok(());
                    }
                    Err(e) => {
                        self.broken = true;
                        return Err(e);
                    }
                }
                continue;
            };
            if id == 0 {
                let reply = management_reply(kind, &content, self.limits);
                self.conn.send(&reply)?;
                continue;
            }
            match kind {
                kind::STDIN if id == self.id => {
                    if content.is_empty() {
                        self.body_done = true;
                    } else if !self.finished {
                        self.hold(&content);
                    }
                }
                kind::ABORT_REQUEST if id == self.id => {
                    self.aborted = true;
                    return Ok(());
                }
                kind::BEGIN_REQUEST if id != self.id => {
                    let mut out = Vec::new();
                    record::write_end(&mut out, id, 0, EndStatus::CantMultiplex);
                    self.conn.send(&out)?;
                }
                kind::BEGIN_REQUEST | kind::PARAMS if id == self.id => {
                    self.broken = true;
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a BEGIN_REQUEST or PARAMS inside a running request",
                    ));
                }
                kind::STDOUT
                | kind::STDERR
                | kind::END_REQUEST
                | kind::GET_VALUES_RESULT
                | kind::UNKNOWN_TYPE => {
                    self.broken = true;
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("a record of type {kind}, which only an application sends"),
                    ));
                }
                _ => {}
            }
        }
    }
}

/// The request body as the handler reads it: STDIN records, fetched when asked for.
struct Body<'a, 'c>(&'a RefCell<Active<'c>>);

impl Read for Body<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut active = self.0.borrow_mut();
        loop {
            if active.aborted {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "the web server aborted the request",
                ));
            }
            if active.body_waiting() > 0 {
                let start = active.body_read;
                let n = buf.len().min(active.body_waiting());
                buf[..n].copy_from_slice(&active.body[start..start + n]);
                active.body_read += n;
                return Ok(n);
            }
            if active.body_done {
                return Ok(0);
            }
            active.pump(true, usize::MAX)?;
        }
    }
}

/// The response as the handler writes it: kept until it fills a record or the request ends.
struct Output<'a, 'c> {
    active: &'a RefCell<Active<'c>>,
    pending: Vec<u8>,
}

impl Output<'_, '_> {
    /// Sends what is pending as STDOUT records, unless the web server aborted the request.
    fn send_pending(&mut self) -> io::Result<()> {
        let mut active = self.active.borrow_mut();
        // An abort waiting in the socket stops the handler at this write. (Behind at most
        // `BODY_HELD` of unread body: a handler that never reads it must not pile it up.)
        active.pump(false, READ_TURN)?;
        if active.aborted {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the web server aborted the request",
            ));
        }
        let mut out = Vec::with_capacity(self.pending.len() + 64);
        record::write_stream(&mut out, kind::STDOUT, active.id, &self.pending);
        self.pending.clear();
        active.conn.send(&out)
    }
}

impl Write for Output<'_, '_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(bytes);
        if self.pending.len() >= OUTPUT_CHUNK {
            self.send_pending()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.send_pending()
    }
}

/// Runs one request on this worker; the connection comes back when it is kept.
fn run_request<F>(shared: &Shared<'_, F>, job: Job) -> Option<Watched>
where
    F: Handler,
{
    let limits = shared.limits;
    let Job {
        mut conn,
        id,
        keep_conn,
        params,
    } = job;
    let env = match record::parse_params(&params, limits.params) {
        Ok(pairs) => Environment::from_pairs(pairs.into_iter().map(|(name, value)| {
            (
                OsString::from_vec(name.to_vec()),
                OsString::from_vec(value.to_vec()),
            )
        })),
        Err(e) => {
            log::warn!("{e}; closing the connection");
            return None;
        }
    };
    drop(params);
    conn.stall = limits.io_timeout;
    conn.deadline = Instant::now().checked_add(limits.request_timeout);
    let active = RefCell::new(Active {
        conn: &mut conn,
        id,
        body: Vec::new(),
        body_read: 0,
        body_done: false,
        aborted: false,
        broken: false,
        ended: false,
        finished: false,
        limits,
    });
    let mut body = Body(&active);
    let mut output = Output {
        active: &active,
        pending: Vec::new(),
    };
    let now = SystemTime::now();
    let (outcome, log_lines) = crate::logger::capture(|| {
        shared
            .service
            .answer(&env, &mut body, &mut output, shared.handler, now)
    });
    let pending = std::mem::take(&mut output.pending);
    drop(output);
    let mut active = active.into_inner();
    active.settle();
    let (aborted, broken, body_done) = (active.aborted, active.broken, active.body_done);
    drop(active);

    let mut out = Vec::with_capacity(pending.len() + log_lines.len() + 64);
    let failed = match &outcome {
        Ok(outcome) => outcome.answer == crate::runner::Answer::Failed,
        Err(_) => true,
    };
    if !aborted {
        record::write_stream(&mut out, kind::STDOUT, id, &pending);
        record::write_record(&mut out, kind::STDOUT, id, &[]);
        if !log_lines.is_empty() {
            record::write_stream(&mut out, kind::STDERR, id, &log_lines);
            record::write_record(&mut out, kind::STDERR, id, &[]);
        }
    }
    record::write_end(&mut out, id, u32::from(failed), EndStatus::RequestComplete);
    let sent = !broken && conn.send(&out).is_ok();
    if let Ok(outcome) = outcome {
        outcome.collect_garbage();
    }
    if !sent {
        return None;
    }
    conn.deadline = None;
    conn.stall = Duration::MAX;
    // Kept after an abort too: the web server ends the request, not the connection.
    if keep_conn {
        // What is left of this request's body arrives as records of a finished request, which
        // the reactor skips.
        return Some(Watched {
            conn,
            phase: Phase::Waiting,
            deadline: Instant::now() + limits.idle_timeout,
            replies: 0,
        });
    }
    // The web server sent the whole request and nothing since (`settle` looked): closing now
    // ends the connection cleanly. Otherwise what it still sends is read and dropped first, so
    // that closing does not reset the connection under the response.
    if body_done && !conn.holds_input() {
        return None;
    }
    conn.stream.shutdown_write();
    Some(Watched {
        conn,
        phase: Phase::Draining { left: DRAIN_BYTES },
        deadline: Instant::now() + DRAIN_TIME,
        replies: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_says_the_bounds_limits_keep() {
        assert!(
            FCGI_WORKERS
                .expected
                .ends_with(&format!("1 to {MAX_WORKERS}"))
        );
        assert!(
            FCGI_MAX_CONNS
                .expected
                .ends_with(&format!("1 to {MAX_CONNS}"))
        );
        assert_eq!(MAX_TIMEOUT, Duration::from_secs(86_400));
        for variable in [
            FCGI_FIRST_BYTE_TIMEOUT,
            FCGI_HEADER_TIMEOUT,
            FCGI_IDLE_TIMEOUT,
            FCGI_IO_TIMEOUT,
            FCGI_REQUEST_TIMEOUT,
        ] {
            assert!(
                variable.expected.contains("from 1 second to 1 day"),
                "{}",
                variable.name
            );
        }
        // One past each bound is refused, the bound itself taken.
        let limits = |pairs: &[(&str, String)]| {
            Limits::from_env_checked(&Environment::from_pairs(pairs.iter().cloned()))
        };
        let (taken, problems) = limits(&[
            ("PSO_FCGI_WORKERS", MAX_WORKERS.to_string()),
            ("PSO_FCGI_MAX_CONNS", MAX_CONNS.to_string()),
            ("PSO_FCGI_IO_TIMEOUT", "1d".to_owned()),
        ]);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            (taken.workers, taken.max_conns, taken.io_timeout),
            (MAX_WORKERS, MAX_CONNS, MAX_TIMEOUT)
        );
        let (_, problems) = limits(&[
            ("PSO_FCGI_WORKERS", (MAX_WORKERS + 1).to_string()),
            ("PSO_FCGI_MAX_CONNS", (MAX_CONNS + 1).to_string()),
            ("PSO_FCGI_IO_TIMEOUT", "86401".to_owned()),
            ("PSO_FCGI_IDLE_TIMEOUT", "0".to_owned()),
        ]);
        assert_eq!(problems.len(), 4, "{problems:?}");
    }

    fn one_record(kind: u8, id: u16, content: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        record::write_record(&mut out, kind, id, content);
        out
    }

    /// A request as a client that pipelines sends it: the connection kept, a short body.
    fn kept_request() -> Vec<u8> {
        let mut params = Vec::new();
        for (name, value) in [
            (&b"REQUEST_METHOD"[..], &b"POST"[..]),
            (b"SCRIPT_NAME", b"/cgi-bin/test"),
            (b"CONTENT_LENGTH", b"16"),
        ] {
            record::write_pair(&mut params, name, value);
        }
        [
            one_record(kind::BEGIN_REQUEST, 1, &[0, 1, 1, 0, 0, 0, 0, 0]),
            one_record(kind::PARAMS, 1, &params),
            one_record(kind::PARAMS, 1, &[]),
            one_record(kind::STDIN, 1, b"0123456789abcdef"),
            one_record(kind::STDIN, 1, &[]),
        ]
        .concat()
    }

    /// Counts the END_REQUEST records a peer receives until it has `expected` or the end.
    fn count_ends(mut peer: UnixStream, expected: usize) -> usize {
        let (mut bytes, mut ends) = (Vec::new(), 0);
        let mut chunk = vec![0u8; 64 * 1024];
        while ends < expected {
            match peer.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            }
            let mut at = 0;
            while let Ok(Status::Complete(record, used)) = record::parse(&bytes[at..]) {
                ends += usize::from(record.kind == kind::END_REQUEST);
                at += used;
            }
            bytes.drain(..at);
        }
        ends
    }

    /// Found in a soak: a client pipelining kept requests without waiting for the answers
    /// took the process from 3 to 157 MiB in 20 s. After each request's body the worker read
    /// 64 KiB more, kept it, and the next requests were served from a buffer that grew with
    /// everything the client sent. What a connection holds is now at most one record's worth,
    /// wherever it is read (the reactor, the worker, the hand-back between them).
    #[test]
    fn pipelined_requests_wait_in_the_socket_not_in_memory() {
        const REQUESTS: usize = 3_000;
        let dir = tempfile::tempdir().unwrap();
        let sessions = dir.path().join("sessions");
        let service = Service::new(Environment::from_pairs([(
            "PSOSessionFileLoader_Path",
            sessions.to_str().unwrap(),
        )]));
        let handler = |cx: &mut crate::Context<'_>| -> Result<(), crate::BoxError> {
            write!(cx.response, "ok")?;
            Ok(())
        };
        let limits = Limits::default();
        let shared = Shared {
            service: &service,
            handler: &handler,
            limits: &limits,
            in_flight: AtomicUsize::new(0),
            reactor_waits: AtomicBool::new(false),
        };
        let jobs = JobQueue::default();
        let (returned, returns) = mpsc::channel();
        let (wake, _wake_write) = UnixStream::pair().unwrap();
        let stop = AtomicBool::new(false);
        let mut reactor = Reactor {
            listener: None,
            accept_paused_until: None,
            warned_at: None,
            allowed: &[],
            limits: &limits,
            shared: &shared,
            watched: Vec::new(),
            jobs: &jobs,
            returns,
            wake: &wake,
            stop: &stop,
        };
        let (server, client) = UnixStream::pair().unwrap();
        // The client sends every request at once, as fast as the socket takes them (some
        // 380 KB, more than the socket holds), and reads the answers as they come.
        let mut writer = client.try_clone().unwrap();
        let sender = std::thread::spawn(move || {
            let all = kept_request().repeat(REQUESTS);
            let _ = writer.write_all(&all);
        });
        let answers = std::thread::spawn(move || count_ends(client, REQUESTS));
        reactor.watched.push(Watched {
            conn: Conn::new(Stream::Unix(server)),
            phase: Phase::Waiting,
            deadline: Instant::now() + Duration::from_secs(600),
            replies: 0,
        });
        // The serving loop, step by step: the reactor reads until the parameters are complete,
        // a worker runs the request, the kept connection comes back.
        let (mut served, mut most_held) = (0, 0);
        while served < REQUESTS {
            let job = jobs
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .jobs
                .pop_front();
            if let Some(job) = job {
                most_held = most_held.max(job.conn.input.capacity());
                let back = run_request(&shared, job);
                shared.in_flight.fetch_sub(1, Ordering::SeqCst);
                let back = back.expect("a kept connection comes back");
                most_held = most_held.max(back.conn.input.capacity());
                returned.send(back).unwrap();
                reactor.take_returns(false);
                served += 1;
                continue;
            }
            let [watched] = &reactor.watched[..] else {
                panic!("the connection was closed after {served} requests");
            };
            most_held = most_held.max(watched.conn.input.capacity());
            watched
                .conn
                .stream
                .wait(PollFlags::IN, Duration::from_secs(10))
                .unwrap();
            reactor.serve_ready(&[true]);
        }
        assert!(
            most_held <= INPUT_CAP,
            "a connection held {most_held} bytes of input"
        );
        sender.join().unwrap();
        assert_eq!(answers.join().unwrap(), REQUESTS);
    }

    /// A handler that writes (and so looks for an abort) without reading its body holds at
    /// most `BODY_HELD` of it unread, in a buffer no larger; the rest waits in the connection
    /// and is all there, in order, when the handler reads it.
    #[test]
    fn an_unread_body_waits_in_the_socket() {
        const RECORDS: usize = 1_000;
        let body: Vec<u8> = (0..RECORDS * 1_000).map(|i| (i % 251) as u8).collect();
        let (server, mut client) = UnixStream::pair().unwrap();
        let sent = body.clone();
        let sender = std::thread::spawn(move || {
            for piece in sent.chunks(1_000) {
                client
                    .write_all(&one_record(kind::STDIN, 1, piece))
                    .unwrap();
            }
            client.write_all(&one_record(kind::STDIN, 1, &[])).unwrap();
            client
        });
        let mut conn = Conn::new(Stream::Unix(server));
        conn.stall = Duration::from_secs(10);
        let limits = Limits::default();
        let active = RefCell::new(Active {
            conn: &mut conn,
            id: 1,
            body: Vec::new(),
            body_read: 0,
            body_done: false,
            aborted: false,
            broken: false,
            ended: false,
            finished: false,
            limits: &limits,
        });
        // The handler's writes, each looking for an abort, until no more body fits.
        loop {
            let mut active = active.borrow_mut();
            active.pump(false, READ_TURN).unwrap();
            assert!(
                active.body.capacity() <= BODY_HELD,
                "{}",
                active.body.capacity()
            );
            assert!(active.conn.input.capacity() <= INPUT_CAP);
            if active.body_full() {
                break;
            }
            active
                .conn
                .stream
                .wait(PollFlags::IN, Duration::from_secs(10))
                .unwrap();
        }
        assert!(active.borrow().body_waiting() > BODY_HELD - 1_000);
        let mut read = Vec::new();
        Body(&active).read_to_end(&mut read).unwrap();
        assert!(read == body, "{} bytes read of {}", read.len(), body.len());
        drop(sender.join().unwrap());
    }

    /// The README's numbers about FastCGI limits are the code's, so they cannot drift (it
    /// said 128 KiB of parameters where the code took 64).
    #[test]
    fn the_readme_states_the_limits_the_code_has() {
        let readme = include_str!("../../README.md");
        let section = readme
            .split("### FastCGI settings")
            .nth(1)
            .and_then(|rest| rest.split("\n### Who may configure").next())
            .expect("README.md has a FastCGI settings section");
        let text = section.split_whitespace().collect::<Vec<_>>().join(" ");
        let kib = |bytes: usize| {
            assert!(bytes.is_multiple_of(1024), "{bytes} is not whole KiB");
            format!("{} KiB", bytes / 1024)
        };
        let grouped = |n: usize| {
            let digits = n.to_string();
            let mut out = String::new();
            for (i, digit) in digits.chars().enumerate() {
                if i > 0 && (digits.len() - i).is_multiple_of(3) {
                    out.push(',');
                }
                out.push(digit);
            }
            out
        };
        let params = ParamLimits::default();
        let limits = Limits::default();
        let worst = (params.total_bytes + INPUT_CAP) * limits.max_conns / (1024 * 1024);
        let secs = |d: Duration| format!("| `{}` s |", d.as_secs());
        assert_eq!(MAX_TIMEOUT, Duration::from_secs(86_400), "a day");
        for stated in [
            format!(
                "its request's parameters ({}) and one record before its request starts: {} of them, some {worst} MiB of data at worst",
                kib(params.total_bytes),
                limits.max_conns,
            ),
            format!(
                "parameters at most {} and {} pairs per request (a name at most {}, a value {})",
                kib(params.total_bytes),
                grouped(params.pairs),
                kib(params.name_bytes),
                kib(params.value_bytes)
            ),
            format!(
                "at most {} of a body waits unread in memory",
                kib(BODY_HELD)
            ),
            format!(
                "output goes out in records of at most {} bytes",
                grouped(record::MAX_CONTENT)
            ),
            format!(
                "Workers are at most {}, connections at most {}, each timeout at most a day",
                grouped(MAX_WORKERS),
                grouped(MAX_CONNS)
            ),
            format!(
                "how long a new connection may send nothing {}",
                secs(limits.first_byte_timeout)
            ),
            format!(
                "how long a request may take to send its parameters {}",
                secs(limits.header_timeout)
            ),
            format!(
                "how long a kept connection may wait between requests {}",
                secs(limits.idle_timeout)
            ),
            format!(
                "how long a read of the body or a write of the response may stall {}",
                secs(limits.io_timeout)
            ),
            format!(
                "how long reading a request's body and writing its response may take in all {}",
                secs(limits.request_timeout)
            ),
            format!(
                "finishes the requests in flight (up to {} s)",
                limits.shutdown_timeout.as_secs()
            ),
            format!(
                "the listener rests {} ms and the log hears of it every {} s",
                ACCEPT_PAUSE.as_millis(),
                WARN_EVERY.as_secs()
            ),
        ] {
            assert!(text.contains(&stated), "the README should say: {stated}");
        }
    }
}
