//! Hostile and failing servers, URLs and password files (the third attack's reproductions,
//! docs/attacks/round-3.md): a Redis that trickles its answers or stops accepting on its unix
//! socket, PostgreSQL logins given up, passwords in URLs, a server's error text, a store named
//! two ways, planted rows and keys. Each failed on main 35f3218 and states what must hold;
//! finding 4 stays ignored, documented (a cleartext password request cannot be refused).
//! Most need no real server: the hostile servers are fake ones on loopback.

#![cfg(all(feature = "redis", feature = "postgres"))]

mod common;

use common::{a_key, server_url};

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use pso::store::{LockOptions, PostgresStore, RedisStore, SessionKey, Store};
use pso::{ErrorChain, SessionId};

/// Runs `f` on a thread of its own and waits at most `limit` for it: `None` if it was still
/// running then (the thread is left behind, blocked).
fn within<T: Send + 'static>(
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<(T, Duration)> {
    let (done, result) = mpsc::channel();
    std::thread::spawn(move || {
        let started = Instant::now();
        let value = f();
        let _ = done.send((value, started.elapsed()));
    });
    result.recv_timeout(limit).ok()
}

/// The threads of this process whose name starts with `prefix` (names are cut to 15 bytes).
fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|name| name.trim_end().starts_with(prefix))
        })
        .count()
}

/// A fake server on loopback that accepts every connection, reads whatever comes, and answers
/// each connection with `answer` (the bytes, then `pause` between bytes) until the test ends.
/// Counts the connections it accepted.
struct FakeServer {
    port: u16,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl FakeServer {
    fn start(answer: &'static [u8], pause: Duration, trickle_forever: bool) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, stopped) = (accepted.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                count.fetch_add(1, Ordering::SeqCst);
                let stopped = stopped.clone();
                let mut reader = stream.try_clone().unwrap();
                std::thread::spawn(move || {
                    let mut sink = [0u8; 4096];
                    while matches!(reader.read(&mut sink), Ok(n) if n > 0) {}
                });
                let mut writer = stream;
                std::thread::spawn(move || {
                    let _ = writer.set_nodelay(true);
                    for byte in answer {
                        if stopped.load(Ordering::SeqCst)
                            || writer.write_all(std::slice::from_ref(byte)).is_err()
                        {
                            return;
                        }
                        std::thread::sleep(pause);
                    }
                    while trickle_forever && !stopped.load(Ordering::SeqCst) {
                        if writer.write_all(b"x").is_err() {
                            return;
                        }
                        std::thread::sleep(pause);
                    }
                    // Hold the connection open, silent.
                    while !stopped.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                });
            }
        });
        FakeServer {
            port,
            accepted,
            stop,
        }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

// ---------------------------------------------------------------------------------------------
// Finding 1: a Redis that answers slowly (one byte at a time, each under the 500 ms read
// timeout) holds a request without bound. README: "Connecting waits at most 200 ms and a
// command 500 ms"; the timeout is per read(2), not per command.

#[test]
fn a_redis_that_trickles_its_answers_holds_a_lock_call_past_every_timeout() {
    // The start of a bulk string, then a byte every 300 ms: each read(2) returns within the
    // 500 ms read timeout, and the answer never ends.
    let fake = FakeServer::start(b"$100000\r\n", Duration::from_millis(300), true);
    let store = RedisStore::open(
        &server_url(&format!("redis://127.0.0.1:{}/0", fake.port)),
        None,
    )
    .unwrap();
    // A lock wait of 1 s: connect (200 ms), the acquire (500 ms), giving up (two commands
    // of 500 ms on a new connection) bound it to about 2.5 s by the README's numbers.
    let outcome = within(Duration::from_secs(10), move || {
        store
            .lock(&a_key(), LockOptions::new(Duration::from_secs(1)))
            .map(drop)
            .map_err(|e| (e.kind(), ErrorChain(&e).to_string()))
    });
    match outcome {
        Some((result, took)) => assert!(
            took < Duration::from_secs(3)
                && matches!(result, Err((pso::ErrorKind::Unavailable, _))),
            "the lock call returned {result:?} after {took:?}"
        ),
        None => panic!(
            "Store::lock against a Redis that trickles its answer was still blocked after 10 s \
             (connect 200 ms, command 500 ms promised); {} connection(s) made",
            fake.accepted.load(Ordering::SeqCst)
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Finding 2: the PostgreSQL login given up after 2 s leaves its thread (and its socket, and
// the crate's runtime) behind for as long as the server stays silent: under a flood of
// requests they pile up without bound.

#[test]
fn abandoned_postgresql_logins_pile_up_as_threads_and_sockets() {
    // Accepts, reads the startup message, never answers (a frozen PgBouncer or backend, a
    // black-holing middlebox, a squatter on the port).
    let fake = FakeServer::start(b"", Duration::ZERO, false);
    let store = Arc::new(
        PostgresStore::open(
            &server_url(&format!("postgres://app@127.0.0.1:{}/app", fake.port)),
            None,
        )
        .unwrap(),
    );
    let before = threads_named("pso-postgres-co");
    // Three waves of eight concurrent requests, as a FastCGI process with eight workers
    // serves them while the server is silent.
    for _ in 0..3 {
        let workers: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                std::thread::spawn(move || {
                    let err = store
                        .lock(&a_key(), LockOptions::new(Duration::from_secs(1)))
                        .map(drop)
                        .unwrap_err();
                    assert_eq!(err.kind(), pso::ErrorKind::Unavailable, "{err}");
                })
            })
            .collect();
        for worker in workers {
            worker.join().unwrap();
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    let left = threads_named("pso-postgres-co") - before;
    let sockets = fake.accepted.load(Ordering::SeqCst);
    // What must hold: requests that gave up leave (at most) a bounded number of logins behind,
    // not one thread and one socket each, for ever.
    assert!(
        left <= 2,
        "{left} abandoned login threads still alive (24 requests, each given up after 2 s), \
         holding {sockets} open connections to the silent server"
    );
}

// ---------------------------------------------------------------------------------------------
// Finding 3: a password in a URL's query (`pass=` for a Redis unix socket, `password=` for
// PostgreSQL) that holds an `@` is printed whole: the redaction takes the last `@` of the
// whole URL for the end of the user part.

#[test]
fn a_query_password_holding_an_at_sign_is_printed() {
    let secret = "hunter2@example";
    let redis = format!("redis+unix:///run/redis/redis.sock?db=0&pass={secret}");
    let postgres = format!("postgres://app@/app?host=/run/postgresql&password={secret}");
    // Both are working configurations: the clients read that very password.
    let info = redis::IntoConnectionInfo::into_connection_info(redis.as_str()).unwrap();
    assert_eq!(info.redis_settings().password(), Some(secret));
    let config: tokio_postgres::Config = postgres.parse().unwrap();
    assert_eq!(config.get_password(), Some(secret.as_bytes()));

    let mut leaks = Vec::new();
    for text in [&redis, &postgres] {
        let url = server_url(text);
        for shown in [url.to_string(), format!("{url:?}")] {
            if shown.contains("hunter2") {
                leaks.push(shown);
            }
        }
    }
    // And so into the error (the log line, the page of `pso serve`) of every failed request.
    let store = RedisStore::open(
        &server_url("redis+unix:///nonexistent/redis.sock?db=0&pass=hunter2@example"),
        None,
    )
    .unwrap();
    let err = store
        .lock(&a_key(), LockOptions::new(Duration::from_secs(1)))
        .map(drop)
        .unwrap_err();
    let logged = ErrorChain(&err).to_string();
    if logged.contains("hunter2") {
        leaks.push(logged);
    }
    assert!(leaks.is_empty(), "the password is printed: {leaks:#?}");
}

// ---------------------------------------------------------------------------------------------
// Finding 4: whoever answers at the PostgreSQL address (a local user who binds the port or
// the socket while PostgreSQL restarts) gets the password in clear: pso answers a request for
// a cleartext password (AuthenticationCleartextPassword) even though the real server uses
// SCRAM, which never sends it.

/// A fake PostgreSQL: reads the startup message, asks for the password in clear, and keeps
/// what comes back.
fn fake_postgres_asking_cleartext(caught: Arc<Mutex<Vec<u8>>>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let caught = caught.clone();
            std::thread::spawn(move || {
                let mut length = [0u8; 4];
                if stream.read_exact(&mut length).is_err() {
                    return;
                }
                let mut startup = vec![0u8; u32::from_be_bytes(length) as usize - 4];
                if stream.read_exact(&mut startup).is_err() {
                    return;
                }
                // 'R', length 8, code 3: AuthenticationCleartextPassword.
                let _ = stream.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3]);
                let mut head = [0u8; 5];
                if stream.read_exact(&mut head).is_err() || head[0] != b'p' {
                    return;
                }
                let length = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
                let mut password = vec![0u8; length - 4];
                if stream.read_exact(&mut password).is_ok() {
                    password.pop(); // its NUL
                    *caught.lock().unwrap() = password;
                }
                // 'E': an error, so the client stops.
                let message = b"SFATAL\0C28P01\0Mpassword authentication failed\0\0";
                let mut error = vec![b'E'];
                error.extend_from_slice(&(message.len() as u32 + 4).to_be_bytes());
                error.extend_from_slice(message);
                let _ = stream.write_all(&error);
            });
        }
    });
    port
}

#[test]
#[ignore = "attack 3, finding 4: not fixed (the PostgreSQL client cannot refuse a cleartext password); documented in the README's PostgreSQL section"]
fn the_postgresql_password_goes_in_clear_to_whoever_asks_for_it() {
    let caught = Arc::new(Mutex::new(Vec::new()));
    let port = fake_postgres_asking_cleartext(caught.clone());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("postgres.pass");
    std::fs::write(&file, "the-real-password\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let store = pso::store::open_server(
        &server_url(&format!("postgres://app@127.0.0.1:{port}/app")),
        Some(&file),
        1 << 20,
    )
    .unwrap();
    let err = store
        .lock(&a_key(), LockOptions::new(Duration::from_secs(1)))
        .map(drop)
        .unwrap_err();
    let caught = String::from_utf8_lossy(&caught.lock().unwrap()).into_owned();
    assert_ne!(
        caught,
        "the-real-password",
        "a fake server asking for a cleartext password got it (the request saw: {})",
        ErrorChain(&err)
    );
}

// ---------------------------------------------------------------------------------------------
// Finding 5: PostgreSQL has no cap on the requests that wait for one session. Each waits in
// `pg_advisory_lock` on a connection (under CGI, a server process) for up to
// `PSOSessionLockTimeout` (30 s by default): one client that keeps its own session busy and
// sends concurrent requests on it takes every connection the site's role or server allows,
// and every other visitor gets a 503. Redis caps waiters at 64 per session; PostgreSQL, whose
// connections are the scarce thing, has no cap.

#[test]
fn waiters_of_one_postgresql_session_take_every_connection_of_the_site() {
    let server = common::postgres::PostgresServer::start().expect("PostgreSQL is not installed");
    // The site's role may hold 12 connections (a server's max_connections works the same).
    server.sql("ALTER ROLE app CONNECTION LIMIT 12");
    let url = server_url(&format!(
        "postgres://app:{}@127.0.0.1:{}/app",
        common::postgres::APP_PASSWORD,
        server.port
    ));
    // Each CGI process opens its own store, as each CGI request does.
    let open = || PostgresStore::open(&url, None).unwrap();
    open().init().unwrap();
    let busy = SessionKey::new("svc".parse().unwrap(), SessionId::generate().unwrap());
    // The attacker's own session, held by one of its requests (a slow upload, say).
    let holder = open()
        .lock(&busy, LockOptions::new(Duration::from_secs(1)))
        .unwrap();
    // Eleven more of its requests on the same session wait.
    let waiters: Vec<_> = (0..11)
        .map(|_| {
            let (store, busy) = (open(), busy.clone());
            std::thread::spawn(move || {
                store
                    .lock(&busy, LockOptions::new(Duration::from_secs(8)))
                    .map(drop)
                    .map_err(|e| e.kind())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    // Another visitor, another session.
    let other = open().lock(&a_key(), LockOptions::new(Duration::from_secs(1)));
    let other = other.map(drop).map_err(|e| ErrorChain(&e).to_string());
    drop(holder);
    for waiter in waiters {
        let _ = waiter.join();
    }
    assert!(
        other.is_ok(),
        "another visitor's session could not be opened while 11 requests waited for one \
         session: {other:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// What held up (these pass on 35f3218; kept so that the next round sees what was tried).

#[test]
fn held_a_password_file_that_is_a_fifo_a_device_a_link_or_a_directory_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    std::fs::set_permissions(&fifo, std::fs::Permissions::from_mode(0o600)).unwrap();
    let real = dir.path().join("real");
    std::fs::write(&real, "pw\n").unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o600)).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let url = server_url("redis://127.0.0.1:1/0");
    for path in [
        fifo.as_path(),
        std::path::Path::new("/dev/zero"),
        link.as_path(),
        dir.path(),
    ] {
        let path = path.to_owned();
        let url = url.clone();
        let outcome = within(Duration::from_secs(3), move || {
            pso::store::open_server(&url, Some(&path), 1 << 20)
                .map(drop)
                .map_err(|e| e.to_string())
        });
        let (result, _) = outcome.expect("reading the password file hung");
        assert!(result.is_err(), "{result:?}");
    }
}

#[test]
fn held_planted_redis_keys_of_other_types_fail_requests_without_panic_or_hang() {
    let Some(server) = common::redis::RedisServer::start() else {
        return;
    };
    let store = Arc::new(RedisStore::open(&server_url(&server.url()), None).unwrap());
    for (suffix, planting) in [
        ("", &["RPUSH", "1"][..]),
        (":lock", &["HSET", "f", "v"][..]),
        (":waiting", &["SET", "x"][..]),
        (":wake", &["SET", "x"][..]),
    ] {
        let key = a_key();
        let name = format!("pso:{{svc:{}}}{suffix}", key.id);
        let mut args = vec![planting[0], name.as_str()];
        args.extend(&planting[1..]);
        server.cli(&args);
        // The lock must be taken by someone for the waiters' keys to matter.
        if suffix == ":waiting" || suffix == ":wake" {
            server.cli(&[
                "SET",
                &format!("pso:{{svc:{}}}:lock", key.id),
                "someone",
                "PX",
                "3000",
            ]);
        }
        let store = store.clone();
        let (outcome, took) = within(Duration::from_secs(5), move || {
            let locked = store
                .lock(&key, LockOptions::new(Duration::from_secs(1)))
                .map(drop)
                .map_err(|e| e.kind());
            let peeked = store.peek(&key).map(drop).map_err(|e| e.kind());
            (locked, peeked)
        })
        .expect("a planted key hung a request");
        assert!(took < Duration::from_secs(3), "{suffix}: {took:?}");
        eprintln!("planted {suffix:?}: {outcome:?}");
    }
    // A record of 64 MiB is refused by its length, not read, by a store with the default
    // PSOSessionMaxBytes (1 MiB) as requests have it. (At the absolute cap, 64 MiB, it is
    // read, hashed and sent whole: Redis stalls for that long.)
    let store = RedisStore::open(&server_url(&server.url()), None)
        .unwrap()
        .with_max_bytes(1 << 20);
    let key = a_key();
    server.cli(&[
        "SETRANGE",
        &format!("pso:{{svc:{}}}", key.id),
        "67108863",
        "x",
    ]);
    let started = Instant::now();
    let err = store
        .lock(&key, LockOptions::new(Duration::from_secs(1)))
        .and_then(|mut lock| lock.load())
        .map(drop)
        .unwrap_err();
    assert_eq!(err.kind(), pso::ErrorKind::Corrupt, "{}", ErrorChain(&err));
    assert!(started.elapsed() < Duration::from_secs(1));
}

// ---------------------------------------------------------------------------------------------
// Finding 6: connecting to Redis over a unix socket has no timeout. A Redis that stops
// accepting (SIGSTOP'd, or its one thread stuck: a slow fsync, a long script) lets connections
// queue in the socket's backlog; once that is full, connect(2) on a unix socket blocks until
// the server accepts, for ever if it never does. Over TCP the 200 ms connect timeout bounds
// the same case; over a unix socket, every request (every CGI process, every FastCGI worker)
// that needs a new connection hangs.

/// A unix socket that listens with a backlog of 0 and never accepts: what a stopped server's
/// socket is once its backlog has filled.
fn unix_listener_that_never_accepts(path: &std::path::Path) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: plain socket calls on a fresh descriptor and a zeroed sockaddr_un.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let mut addr: libc::sockaddr_un = std::mem::zeroed();
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (i, byte) in path.as_os_str().as_bytes().iter().enumerate() {
            addr.sun_path[i] = *byte as libc::c_char;
        }
        let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        assert_eq!(
            libc::bind(fd, &addr as *const _ as *const libc::sockaddr, len),
            0
        );
        assert_eq!(libc::listen(fd, 0), 0);
        std::os::fd::OwnedFd::from_raw_fd(fd)
    }
}

#[test]
fn a_redis_unix_socket_that_stops_accepting_hangs_every_new_connection() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("redis.sock");
    let _listener = unix_listener_that_never_accepts(&path);
    let store = Arc::new(
        RedisStore::open(
            &server_url(&format!("redis+unix://{}?db=0", path.display())),
            None,
        )
        .unwrap(),
    );
    // Five requests one after the other, as five CGI processes would: each must end (a 503)
    // within about a second (connect, one command of 500 ms, giving up).
    for request in 1..=5 {
        let store = store.clone();
        let outcome = within(Duration::from_secs(6), move || {
            store
                .lock(&a_key(), LockOptions::new(Duration::from_secs(1)))
                .map(drop)
                .map_err(|e| ErrorChain(&e).to_string())
        });
        match outcome {
            Some((result, took)) => assert!(
                took < Duration::from_secs(3) && result.is_err(),
                "request {request}: {result:?} after {took:?}"
            ),
            None => panic!(
                "request {request} was still connecting to the unix socket after 6 s \
                 (its backlog is full: connect(2) blocks, with no timeout)"
            ),
        }
    }
}

/// The same with a real Redis on a unix socket, stopped by `SIGSTOP` (as a Redis whose one
/// thread is stuck). Its socket's backlog is cut to 16 so that the test is quick; with the
/// default (511) the same happens after 511 connections.
#[test]
fn requests_hang_for_ever_on_a_stopped_redis_behind_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let socket = dir.path().join("redis.sock");
    let Some(server) = common::redis::RedisServer::start_with(&[
        "--unixsocket",
        socket.to_str().unwrap(),
        "--unixsocketperm",
        "777",
        "--tcp-backlog",
        "16",
    ]) else {
        return;
    };
    let info = server.cli(&["INFO", "server"]);
    let pid: u32 = info
        .lines()
        .find_map(|line| line.strip_prefix("process_id:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let store = Arc::new(
        RedisStore::open(
            &server_url(&format!("redis+unix://{}?db=0", socket.display())),
            None,
        )
        .unwrap(),
    );
    common::signal(pid, rustix::process::Signal::STOP);
    // Forty requests, eight at a time; each must end within about a second.
    let (done, results) = mpsc::channel();
    for worker in 0..8 {
        let (store, done) = (store.clone(), done.clone());
        std::thread::spawn(move || {
            for _ in 0..5 {
                let started = Instant::now();
                let result = store
                    .lock(&a_key(), LockOptions::new(Duration::from_secs(1)))
                    .map(drop);
                let _ = done.send((worker, result.is_err(), started.elapsed()));
            }
        });
    }
    drop(done);
    let deadline = Instant::now() + Duration::from_secs(25);
    let mut finished = 0;
    while let Ok((_, failed, took)) =
        results.recv_timeout(deadline.saturating_duration_since(Instant::now()))
    {
        assert!(failed && took < Duration::from_secs(3), "{took:?}");
        finished += 1;
    }
    common::signal(pid, rustix::process::Signal::CONT);
    assert_eq!(
        finished, 40,
        "only {finished} of 40 requests ended within 25 s: the others hang in connect(2) on the \
         stopped Redis's full unix socket backlog"
    );
}

/// Finding 2 with a real PostgreSQL whose postmaster is stopped (`SIGSTOP`): the kernel still
/// accepts connections into its listen backlog, so each request's login thread waits there,
/// given up by its request after 2 s but alive until the server comes back; then they all log
/// in at once.
#[test]
fn logins_to_a_stopped_postmaster_stay_behind_as_threads() {
    let server = common::postgres::PostgresServer::start().expect("PostgreSQL is not installed");
    // The postmaster: the parent of its checkpointer.
    let checkpointer: u32 = server
        .sql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'")
        .trim()
        .parse()
        .unwrap();
    let status = std::fs::read_to_string(format!("/proc/{checkpointer}/status")).unwrap();
    let postmaster: u32 = status
        .lines()
        .find_map(|line| line.strip_prefix("PPid:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let store = Arc::new(
        PostgresStore::open(
            &server_url(&format!(
                "postgres://app:{}@127.0.0.1:{}/app",
                common::postgres::APP_PASSWORD,
                server.port
            )),
            None,
        )
        .unwrap(),
    );
    let before = threads_named("pso-postgres-co");
    common::signal(postmaster, rustix::process::Signal::STOP);
    let workers: Vec<_> = (0..16)
        .map(|_| {
            let store = store.clone();
            std::thread::spawn(move || {
                store
                    .lock(&a_key(), LockOptions::new(Duration::from_secs(1)))
                    .map(drop)
                    .map_err(|e| e.kind())
            })
        })
        .collect();
    let outcomes: Vec<_> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    std::thread::sleep(Duration::from_secs(1));
    let left = threads_named("pso-postgres-co") - before;
    common::signal(postmaster, rustix::process::Signal::CONT);
    assert!(outcomes.iter().all(|o| o.is_err()), "{outcomes:?}");
    assert!(
        left <= 2,
        "{left} login threads of 16 requests that gave up are still waiting on the stopped server"
    );
}

// ---------------------------------------------------------------------------------------------
// Finding 7 (low): a server's error message reaches the log as it came, line ends included:
// whoever answers at the store's address (finding 4's squatter, a hostile server a request
// named) writes lines of its choosing into the web server's error log. `ErrorChain` promises
// "the chain on one line", and the logger writes the text as it is.

#[test]
fn a_servers_error_message_forges_log_lines() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut length = [0u8; 4];
            if stream.read_exact(&mut length).is_err() {
                continue;
            }
            let mut startup = vec![0u8; u32::from_be_bytes(length) as usize - 4];
            let _ = stream.read_exact(&mut startup);
            let message =
                b"SFATAL\0C08006\0Mbye\npso: error: session svc/AAAA belongs to admin; forged\0\0";
            let mut error = vec![b'E'];
            error.extend_from_slice(&(message.len() as u32 + 4).to_be_bytes());
            error.extend_from_slice(message);
            let _ = stream.write_all(&error);
        }
    });
    let store = PostgresStore::open(
        &server_url(&format!("postgres://app@127.0.0.1:{port}/app")),
        None,
    )
    .unwrap();
    let err = store
        .lock(&a_key(), LockOptions::new(Duration::from_secs(1)))
        .map(drop)
        .unwrap_err();
    let line = ErrorChain(&err).to_string();
    assert!(
        !line.contains('\n'),
        "a log line of pso's holds a line end: {line:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Finding 8 (low): `pso sessions migrate` refuses --from and --to only when they print the
// same; one store named two ways (`/0` left out, `localhost` for 127.0.0.1) is copied onto
// itself: every session is locked by the copy's source side and waited for by its target
// side, for the whole --timeout (10 s by default), one after the other, then counted failed.
// On a store of 10,000 sessions that is a day, with each session blocked for 10 s in turn.

#[test]
fn migrate_copies_a_store_onto_itself_when_it_is_named_two_ways() {
    let Some(server) = common::redis::RedisServer::start() else {
        return;
    };
    let store = RedisStore::open(&server_url(&server.url()), None).unwrap();
    for n in 0..3u64 {
        let mut lock = store
            .lock(
                &a_key(),
                LockOptions::new(Duration::from_secs(1)).with_create(true),
            )
            .unwrap();
        let mut record = pso::Record::new(pso::Meta::new(1_900_000_000));
        record.set("n", &n).unwrap();
        lock.save_and_release(&record).unwrap();
    }
    let started = Instant::now();
    let output = std::process::Command::new(common::helper())
        .args(["sessions", "migrate", "--timeout", "2", "--from"])
        .arg(server.url()) // redis://127.0.0.1:<port>/0
        .arg("--to")
        .arg(format!("redis://localhost:{}", server.port))
        .env_clear()
        .output()
        .unwrap();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("same store"),
        "not refused as one store; after {took:?}: {}{stderr}",
        String::from_utf8_lossy(&output.stdout)
    );
}

#[test]
fn held_a_redis_url_asking_for_resp3_locks_saves_and_waits_as_resp2_does() {
    let Some(server) = common::redis::RedisServer::start() else {
        return;
    };
    let store = Arc::new(
        RedisStore::open(
            &server_url(&format!("{}?protocol=resp3", server.url())),
            None,
        )
        .unwrap(),
    );
    let key = a_key();
    let mut lock = store
        .lock(
            &key,
            LockOptions::new(Duration::from_secs(1)).with_create(true),
        )
        .unwrap();
    assert!(lock.load().unwrap().is_none());
    let mut record = pso::Record::new(pso::Meta::new(1_900_000_000));
    record.set("n", &1u64).unwrap();
    lock.save(&record).unwrap();
    // A waiter while it is held, woken by the release.
    let waiter = {
        let (store, key) = (store.clone(), key.clone());
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut lock = store
                .lock(&key, LockOptions::new(Duration::from_secs(5)))
                .unwrap();
            (lock.load().unwrap().is_some(), started.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    lock.save_and_release(&record).unwrap();
    let (found, waited) = waiter.join().unwrap();
    assert!(found && waited < Duration::from_secs(2), "{waited:?}");
    assert!(store.peek(&key).unwrap().is_some());
}

// ---------------------------------------------------------------------------------------------
// Finding 9 (low; debug builds): rows planted with `expires_at = '-infinity'` (a valid
// timestamptz) make collection panic. A batch of 200 candidates ends on one; the next batch
// sends its position back as a parameter, and postgres-types' `SystemTime::to_sql` negates
// `i64::MIN` ("attempt to negate with overflow") in a build with overflow checks (tests, dev
// builds, a release profile that turns them on). Release builds wrap and go on.

#[test]
fn rows_planted_at_minus_infinity_crash_collection() {
    let server = common::postgres::PostgresServer::start().expect("PostgreSQL is not installed");
    let store = PostgresStore::open(&server_url(&server.url()), None).unwrap();
    store.init().unwrap();
    server.sql(
        "INSERT INTO pso_sessions (service, id, record, expires_at, generation)
         SELECT 'svc', 'planted' || n, '\\x00', '-infinity', 1 FROM generate_series(1, 201) AS n",
    );
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        store.collect_garbage(std::time::SystemTime::now(), Duration::from_secs(5))
    }));
    match outcome {
        Ok(report) => {
            report.unwrap();
        }
        Err(panic) => panic!(
            "collection panicked on planted rows: {:?}",
            panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
        ),
    }
}
