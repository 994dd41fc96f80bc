//! A connection to one Redis server (`redis://`, `rediss://`, `redis+unix://`) whose every
//! command ends by a deadline: its write and its whole reply, however slowly the server sends
//! it, and its connecting, unix sockets included.
//!
//! The `redis` crate's own connection bounds each read(2) and write(2) only (a socket
//! timeout), so a server or a proxy sending one byte at a time held a request for ever; and it
//! connects to a unix socket without a timeout, so a stalled server whose backlog is full hung
//! every new connection. Here pso owns the socket: before each read or write, the socket's
//! timeout is cut to what is left of the command's time, and a unix socket is connected
//! without blocking. Replies are parsed by the crate's own [`redis::Parser`], and
//! [`ConnectionLike`] lets its scripts and commands run over this connection unchanged.
//!
//! A cluster's connections stay the crate's (it owns their sockets and their redirections):
//! their commands are bounded per read only.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use redis::{
    ConnectionAddr, ConnectionLike, ErrorKind, Parser, RedisConnectionInfo, RedisError,
    RedisResult, Value,
};

/// Where one server is, and how to log in to it.
pub(super) struct Endpoint {
    address: Address,
    login: RedisConnectionInfo,
}

enum Address {
    Tcp(String, u16),
    #[cfg(feature = "redis-tls")]
    Tls(String, u16, tls::Roots),
    Unix(PathBuf),
}

impl Endpoint {
    /// The server at `address`, logged in to with `login`; `Err` says why it cannot be used.
    pub(super) fn new(
        address: &ConnectionAddr,
        login: RedisConnectionInfo,
    ) -> Result<Endpoint, &'static str> {
        let address = match address {
            ConnectionAddr::Tcp(host, port) => Address::Tcp(host.clone(), *port),
            #[cfg(feature = "redis-tls")]
            ConnectionAddr::TcpTls { insecure: true, .. } => {
                return Err("TLS without checking the server's certificate is not supported");
            }
            #[cfg(feature = "redis-tls")]
            ConnectionAddr::TcpTls { host, port, .. } => {
                Address::Tls(host.clone(), *port, tls::Roots::default())
            }
            ConnectionAddr::Unix(path) => Address::Unix(path.clone()),
            _ => return Err("this kind of address needs a feature this program was built without"),
        };
        Ok(Endpoint { address, login })
    }
}

/// A connection to one server. Each command has [`Connection::set_timeout`] from the start
/// of its write to the end of its reply; past it, the command fails with a timeout and the
/// connection is to be dropped (it may hold half a reply).
pub(super) struct Connection {
    stream: Stream,
    parser: Parser,
    db: i64,
    timeout: Duration,
    /// Whether the last command went out whole: only then may one be sent behind it.
    written: bool,
    /// False once a command failed on the way (not by the server's error reply).
    open: bool,
}

impl Connection {
    /// Connects to `endpoint` and logs in (TLS handshake, `AUTH` or `HELLO 3`, `SELECT`),
    /// all within `connect_timeout`; each command then has `command_timeout`.
    pub(super) fn open(
        endpoint: &Endpoint,
        connect_timeout: Duration,
        command_timeout: Duration,
    ) -> RedisResult<Connection> {
        let deadline = Instant::now() + connect_timeout;
        let stream = match &endpoint.address {
            Address::Tcp(host, port) => Stream::Tcp(DeadlineStream::new(
                connect_tcp(host, *port, deadline)?,
                deadline,
            )),
            #[cfg(feature = "redis-tls")]
            Address::Tls(host, port, roots) => {
                let tcp = DeadlineStream::new(connect_tcp(host, *port, deadline)?, deadline);
                Stream::Tls(Box::new(tls::handshake(host, roots, tcp)?))
            }
            Address::Unix(path) => {
                Stream::Unix(DeadlineStream::new(connect_unix(path, deadline)?, deadline))
            }
        };
        let mut con = Connection {
            stream,
            parser: Parser::new(),
            db: endpoint.login.db(),
            timeout: command_timeout,
            written: false,
            open: true,
        };
        con.log_in(&endpoint.login, deadline)?;
        Ok(con)
    }

    /// How long each command may take from now on, its write and its whole reply (a `BLPOP`
    /// needs its block time more).
    pub(super) fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Sends `cmd` without waiting for its reply, behind the last command if that went out
    /// whole (a command cut short never reached the server: nothing to follow). For a command
    /// that must run after one that timed out, on a connection about to be dropped.
    pub(super) fn send_behind(&mut self, cmd: &[u8]) -> RedisResult<()> {
        if !self.written {
            return Ok(());
        }
        self.stream.set_deadline(Instant::now() + self.timeout);
        self.written = false;
        self.stream.write_all(cmd)?;
        self.stream.flush()?;
        Ok(())
    }

    /// What the crate's connection does when it opens: `HELLO 3` (with the credentials) for a
    /// URL asking for RESP3, else `AUTH` if there is a password; `SELECT` for a database other
    /// than 0. One round trip.
    fn log_in(&mut self, login: &RedisConnectionInfo, deadline: Instant) -> RedisResult<()> {
        let resp3 = login.protocol().supports_resp3();
        let auth = |with_user: bool| {
            let mut cmd = redis::cmd("AUTH");
            if with_user && let Some(user) = login.username() {
                cmd.arg(user);
            }
            cmd.arg(login.password().unwrap_or_default());
            cmd
        };
        let mut setup = redis::pipe();
        if resp3 {
            let hello = setup.cmd("HELLO").arg(3);
            if let Some(password) = login.password() {
                hello
                    .arg("AUTH")
                    .arg(login.username().unwrap_or("default"))
                    .arg(password);
            }
        } else if login.password().is_some() {
            setup.add_command(auth(true));
        }
        if login.db() != 0 {
            setup.cmd("SELECT").arg(login.db());
        }
        if setup.is_empty() {
            return Ok(());
        }
        let replies = self.exchange(&setup.get_packed_pipeline(), setup.len(), deadline)?;
        let mut replies = replies.into_iter();
        if resp3 || login.password().is_some() {
            let reply = replies.next().unwrap_or(Value::Nil);
            if !resp3
                && let Value::ServerError(e) = &reply
                && e.details()
                    .is_some_and(|d| d.contains("wrong number of arguments for 'auth'"))
            {
                // A server older than ACLs (Redis 5): a password alone.
                let packed = auth(false).get_packed_command();
                let retried = self.exchange(&packed, 1, deadline)?;
                check_login(retried.into_iter().next().unwrap_or(Value::Nil))?;
            } else {
                check_login(reply)?;
            }
        }
        if login.db() != 0 {
            let reply = replies.next().unwrap_or(Value::Nil);
            if let Value::ServerError(e) = reply {
                return Err(RedisError::from((
                    ErrorKind::Server(redis::ServerErrorKind::ResponseError),
                    "Redis refused to switch database",
                    e.details().unwrap_or_default().to_owned(),
                )));
            }
        }
        Ok(())
    }

    /// Writes `cmd` and reads `replies` replies, all by `deadline`.
    fn exchange(
        &mut self,
        cmd: &[u8],
        replies: usize,
        deadline: Instant,
    ) -> RedisResult<Vec<Value>> {
        self.stream.set_deadline(deadline);
        let mut values = Vec::with_capacity(replies);
        let result = self.write(cmd).and_then(|()| {
            while values.len() < replies {
                values.push(self.read_reply()?);
            }
            Ok(())
        });
        self.open &= result.is_ok();
        result.map(|()| values)
    }

    fn write(&mut self, cmd: &[u8]) -> RedisResult<()> {
        self.written = false;
        self.stream.write_all(cmd)?;
        self.stream.flush()?;
        self.written = true;
        Ok(())
    }

    /// The next reply; RESP3's push messages are not replies.
    fn read_reply(&mut self) -> RedisResult<Value> {
        loop {
            match self.parser.parse_value(&mut self.stream)? {
                Value::Push { .. } => continue,
                value => return Ok(value),
            }
        }
    }
}

/// A login's reply: the server's refusal as an error.
fn check_login(reply: Value) -> RedisResult<()> {
    match reply {
        Value::ServerError(e) => Err(e.into()),
        _ => Ok(()),
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
        self.stream.set_deadline(Instant::now() + self.timeout);
        let result = self.write(cmd).and_then(|()| self.read_reply());
        self.open &= result.is_ok();
        result
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        let replies = self.exchange(cmd, offset + count, Instant::now() + self.timeout)?;
        let mut kept = Vec::with_capacity(count);
        for (n, reply) in replies.into_iter().enumerate() {
            if n < offset {
                // MULTI's and the QUEUED replies: an error there aborted the transaction.
                reply.extract_error()?;
            } else {
                kept.push(reply);
            }
        }
        Ok(kept)
    }

    fn get_db(&self) -> i64 {
        self.db
    }

    fn check_connection(&mut self) -> bool {
        redis::cmd("PING").query::<String>(self).is_ok()
    }

    fn is_open(&self) -> bool {
        self.open
    }
}

/// TCP to `host`, each of its addresses in turn, all within `deadline`; `TCP_NODELAY`: a
/// command is one write and its reply awaited, so Nagle's algorithm could only hold back a
/// command sent behind another.
fn connect_tcp(host: &str, port: u16, deadline: Instant) -> io::Result<TcpStream> {
    let mut failed = None;
    // The name's lookup is not bounded (the system's resolver has its own timeouts).
    for address in (host, port).to_socket_addrs()? {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out("connecting"));
        }
        match TcpStream::connect_timeout(&address, left) {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(e) => failed = Some(e),
        }
    }
    Err(failed.unwrap_or_else(|| {
        io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address"))
    }))
}

/// A unix socket, connected without blocking: connect(2) on a unix socket whose server does
/// not accept (stalled, stopped) blocks for ever once its backlog is full. Such a server is
/// unavailable now (`EAGAIN`, a timeout to the caller).
fn connect_unix(path: &Path, deadline: Instant) -> io::Result<UnixStream> {
    use rustix::io::Errno;
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let socket = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )?;
    match rustix::net::connect(&socket, &SocketAddrUnix::new(path)?) {
        Ok(()) => {}
        Err(Errno::AGAIN) => {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "its socket takes no more connections now (a full backlog: the server does not accept them)",
            ));
        }
        Err(Errno::INPROGRESS) => {
            use rustix::event::{PollFd, PollFlags, Timespec};
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(timed_out("connecting"));
                }
                let timeout = Timespec::try_from(left).ok();
                let mut fds = [PollFd::new(&socket, PollFlags::OUT)];
                match rustix::event::poll(&mut fds, timeout.as_ref()) {
                    Ok(0) | Err(Errno::INTR) => continue,
                    Ok(_) => break,
                    Err(e) => return Err(e.into()),
                }
            }
            rustix::net::sockopt::socket_error(&socket)??;
        }
        Err(e) => return Err(e.into()),
    }
    rustix::io::ioctl_fionbio(&socket, false)?;
    Ok(UnixStream::from(socket))
}

fn timed_out(doing: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("no answer in time ({doing})"),
    )
}

/// The socket under a connection, TLS or not.
enum Stream {
    Tcp(DeadlineStream<TcpStream>),
    #[cfg(feature = "redis-tls")]
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, DeadlineStream<TcpStream>>>),
    Unix(DeadlineStream<UnixStream>),
}

impl Stream {
    fn set_deadline(&mut self, deadline: Instant) {
        match self {
            Stream::Tcp(stream) => stream.deadline = deadline,
            #[cfg(feature = "redis-tls")]
            Stream::Tls(stream) => stream.sock.deadline = deadline,
            Stream::Unix(stream) => stream.deadline = deadline,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(stream) => stream.read(buf),
            #[cfg(feature = "redis-tls")]
            Stream::Tls(stream) => stream.read(buf),
            Stream::Unix(stream) => stream.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(stream) => stream.write(buf),
            #[cfg(feature = "redis-tls")]
            Stream::Tls(stream) => stream.write(buf),
            Stream::Unix(stream) => stream.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(stream) => stream.flush(),
            #[cfg(feature = "redis-tls")]
            Stream::Tls(stream) => stream.flush(),
            Stream::Unix(stream) => stream.flush(),
        }
    }
}

/// A socket whose reads and writes end by a deadline: before each, the socket's timeout is
/// cut to the time left (a read that returns part of a reply in time does not restart the
/// clock), and past it they fail with [`io::ErrorKind::TimedOut`].
///
/// The timeout last set is kept, and left alone while it ends in time and not much before the
/// deadline: each command's deadline is as far off as the last one's, so a command costs no
/// system call for its timeouts.
struct DeadlineStream<S> {
    socket: S,
    deadline: Instant,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
}

/// How much before the deadline a timeout set on the socket ends: the next command's deadline
/// is a little further, so the same timeout still fits it. (Linux rounds a socket timeout up
/// to its clock's tick, 1 to 10 ms.)
const MARGIN: Duration = Duration::from_millis(5);
/// How much earlier than the deadline a timeout already set may end and still be kept (a read
/// that times out before the deadline is only tried again with the time left).
const SLACK: Duration = Duration::from_millis(50);

/// The socket calls a [`DeadlineStream`] needs of TCP and unix sockets alike.
trait Socket: Read + Write {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
}

impl Socket for TcpStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        TcpStream::set_read_timeout(self, timeout)
    }

    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        TcpStream::set_write_timeout(self, timeout)
    }
}

impl Socket for UnixStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        UnixStream::set_read_timeout(self, timeout)
    }

    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        UnixStream::set_write_timeout(self, timeout)
    }
}

impl<S: Socket> DeadlineStream<S> {
    fn new(socket: S, deadline: Instant) -> DeadlineStream<S> {
        DeadlineStream {
            socket,
            deadline,
            read_timeout: None,
            write_timeout: None,
        }
    }

    /// The timeout a read or write may block for now (`set` is the one the socket has):
    /// `None` to keep it, `Some` to set a new one; an error past the deadline.
    fn timeout(&self, set: Option<Duration>) -> io::Result<Option<Duration>> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out("the command's time is up"));
        }
        Ok(timeout_to_set(set, left))
    }
}

/// The socket timeout to set with `left` to the deadline, `set` being the one it has: `None`
/// to keep that.
fn timeout_to_set(set: Option<Duration>, left: Duration) -> Option<Duration> {
    match set {
        Some(set) if set <= left && set + SLACK >= left => None,
        _ if left > MARGIN * 2 => Some(left - MARGIN),
        _ => Some(left),
    }
}

/// A blocking call that ended by its socket's timeout (or a signal), to try again while the
/// deadline allows.
fn interrupted(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

impl<S: Socket> Read for DeadlineStream<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(timeout) = self.timeout(self.read_timeout)? {
                self.socket.set_read_timeout(Some(timeout))?;
                self.read_timeout = Some(timeout);
            }
            match self.socket.read(buf) {
                Err(e) if interrupted(&e) => continue,
                done => return done,
            }
        }
    }
}

impl<S: Socket> Write for DeadlineStream<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            if let Some(timeout) = self.timeout(self.write_timeout)? {
                self.socket.set_write_timeout(Some(timeout))?;
                self.write_timeout = Some(timeout);
            }
            match self.socket.write(buf) {
                Err(e) if interrupted(&e) => continue,
                done => return done,
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.socket.flush()
    }
}

/// `rediss://`: rustls over a [`DeadlineStream`], so that TLS records are read and written
/// within each command's time too.
#[cfg(feature = "redis-tls")]
mod tls {
    use std::io;
    use std::net::TcpStream;
    use std::sync::{Arc, Mutex, PoisonError};

    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

    use super::DeadlineStream;

    /// The client's settings with the system's roots (or `SSL_CERT_FILE`'s, as the crate's
    /// connection reads them), loaded at the first connection and kept.
    #[derive(Default)]
    pub(super) struct Roots(Mutex<Option<Arc<ClientConfig>>>);

    impl Roots {
        fn config(&self) -> io::Result<Arc<ClientConfig>> {
            let mut kept = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(config) = &*kept {
                return Ok(config.clone());
            }
            let loaded = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(loaded.certs);
            if added == 0 {
                let why = loaded
                    .errors
                    .first()
                    .map_or_else(|| "none found".to_owned(), |e| e.to_string());
                return Err(io::Error::other(format!(
                    "no root certificates to check the server's certificate against ({why})"
                )));
            }
            let config = Arc::new(
                ClientConfig::builder()
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
            );
            *kept = Some(config.clone());
            Ok(config)
        }
    }

    /// A TLS session with `host` over `tcp`, its handshake done by `tcp`'s deadline.
    pub(super) fn handshake(
        host: &str,
        roots: &Roots,
        tcp: DeadlineStream<TcpStream>,
    ) -> io::Result<StreamOwned<ClientConnection, DeadlineStream<TcpStream>>> {
        let name = ServerName::try_from(host)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?
            .to_owned();
        let tls = ClientConnection::new(roots.config()?, name).map_err(io::Error::other)?;
        let mut stream = StreamOwned::new(tls, tcp);
        while stream.conn.is_handshaking() {
            if stream.conn.complete_io(&mut stream.sock)? == (0, 0) {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_socket_timeout_is_kept_while_it_ends_in_time_and_not_much_before() {
        for (set, left, wanted) in [
            (None, 500 * MS, Some(495 * MS)),
            // The next command: the same deadline ahead, nothing to set.
            (Some(495 * MS), 500 * MS, None),
            (Some(495 * MS), 499 * MS, None),
            // Past it (a second read of one reply): cut to the time left.
            (Some(495 * MS), 300 * MS, Some(295 * MS)),
            // Far before it (a BLPOP's long wait): set to the time left.
            (Some(495 * MS), 1_500 * MS, Some(1_495 * MS)),
            (Some(1_495 * MS), 500 * MS, Some(495 * MS)),
            // Close to the deadline: all of it.
            (Some(495 * MS), 8 * MS, Some(8 * MS)),
        ] {
            assert_eq!(
                timeout_to_set(set, left),
                wanted,
                "{set:?} with {left:?} left"
            );
        }
    }

    fn endpoint(address: ConnectionAddr) -> Endpoint {
        Endpoint::new(&address, RedisConnectionInfo::default()).unwrap()
    }

    #[test]
    fn a_reply_sent_a_byte_at_a_time_ends_by_the_command_deadline() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let _ = stream.write_all(b"$100000\r\n");
            // Every read gets a byte well within any timeout of the socket's.
            while stream.write_all(b"x").is_ok() {
                std::thread::sleep(20 * MS);
            }
        });
        let mut con = Connection::open(
            &endpoint(ConnectionAddr::Tcp("127.0.0.1".to_owned(), port)),
            200 * MS,
            300 * MS,
        )
        .unwrap();
        let started = Instant::now();
        let e = redis::cmd("GET")
            .arg("k")
            .query::<Value>(&mut con)
            .unwrap_err();
        let took = started.elapsed();
        assert!(e.is_timeout(), "{e}");
        assert!(took >= 290 * MS && took < 400 * MS, "{took:?}");
        assert!(!con.is_open());
    }

    #[test]
    fn a_unix_socket_that_takes_no_more_connections_fails_at_once() {
        use rustix::net::{AddressFamily, SocketAddrUnix, SocketType};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("redis.sock");
        let listener = rustix::net::socket(AddressFamily::UNIX, SocketType::STREAM, None).unwrap();
        rustix::net::bind(&listener, &SocketAddrUnix::new(&path).unwrap()).unwrap();
        // A backlog of 0, never accepted: full after one connection, as a stopped server's.
        rustix::net::listen(&listener, 0).unwrap();
        let address = endpoint(ConnectionAddr::Unix(path));
        let mut kept = Vec::new();
        let started = Instant::now();
        let refused = loop {
            match Connection::open(&address, 200 * MS, 300 * MS) {
                Ok(con) => kept.push(con),
                Err(e) => break e,
            }
            assert!(kept.len() < 10, "the backlog never filled");
        };
        assert!(refused.is_timeout(), "{refused}");
        assert!(started.elapsed() < 100 * MS, "{:?}", started.elapsed());
    }
}
