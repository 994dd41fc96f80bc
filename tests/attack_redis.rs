//! The defects a hostile review of the Redis store found, each kept as the test that showed
//! it (all failed before their fixes): a TLS cluster URL that connected in clear, passwords
//! with `?` or `#` printed, a request sending the process's password file to a server of its
//! choosing, connection pools without bound, idle connections Redis closed failing requests,
//! a lock taken late for a request that gave up, waiters' counts that leaked, a key of
//! another type leaving a lock behind.

#![cfg(feature = "redis")]

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use common::redis::RedisServer;
use pso::store::{LockOptions, RedisStore, SessionKey, Store, StoreLocation};
use pso::{Environment, ErrorKind, Meta, Record, SessionId};

fn server() -> RedisServer {
    RedisServer::start().expect("redis-server is not installed")
}

fn store_at(url: &str) -> RedisStore {
    let StoreLocation::Server(url) = StoreLocation::parse(url).unwrap() else {
        panic!("not a server: {url}")
    };
    RedisStore::open(&url, None).unwrap()
}

fn key() -> SessionKey {
    SessionKey::new("svc".parse().unwrap(), SessionId::generate().unwrap())
}

fn counted(n: u64) -> Record {
    let mut record = Record::new(Meta::new(1_900_000_000));
    record.set("n", &n).unwrap();
    record
}

/// Keeps the server busy (one Lua script that spins) for `busy`, from another client.
fn make_busy(server: &RedisServer, busy: Duration) -> thread::JoinHandle<()> {
    let port = server.port;
    let script = format!(
        "local t0 = redis.call('TIME') local s0 = t0[1]*1000000 + t0[2] \
         while true do local t = redis.call('TIME') \
         if t[1]*1000000 + t[2] - s0 > {} then return 1 end end",
        busy.as_micros()
    );
    thread::spawn(move || {
        std::process::Command::new("redis-cli")
            .args(["-p", &port.to_string(), "EVAL", &script, "0"])
            .output()
            .unwrap();
    })
}

/// A TCP server that records the first bytes each client sends and answers an error.
fn capture() -> (u16, thread::JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let handle = thread::spawn(move || {
        let mut seen = Vec::new();
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    stream.set_nonblocking(false).unwrap();
                    stream
                        .set_read_timeout(Some(Duration::from_millis(300)))
                        .unwrap();
                    let mut buf = [0u8; 4096];
                    if let Ok(n) = stream.read(&mut buf) {
                        seen.extend_from_slice(&buf[..n]);
                    }
                    let _ = stream.write_all(b"-ERR nope\r\n");
                }
                Err(_) => thread::sleep(Duration::from_millis(10)),
            }
        }
        seen
    });
    (port, handle)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// Passwords

/// `rediss+cluster://` names TLS ("over TLS", says `ServerKind::RedisCluster`), but the cluster
/// client is built from `redis://` node URLs: the password goes out in clear text.
#[cfg(feature = "redis-cluster")]
#[test]
fn a_tls_cluster_url_never_sends_its_password_in_clear() {
    let (port, seen) = capture();
    let StoreLocation::Server(url) =
        StoreLocation::parse(&format!("rediss+cluster://:TopSecretPw@127.0.0.1:{port}")).unwrap()
    else {
        unreachable!()
    };
    // Refused (built without redis-tls), or over TLS: never the password in clear.
    match RedisStore::open(&url, None) {
        Ok(store) => {
            let _ = store.exists(&key());
        }
        Err(e) => {
            assert!(!e.to_string().contains("TopSecretPw"), "{e}");
            std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        }
    }
    let seen = seen.join().unwrap();
    assert!(
        !contains(&seen, b"TopSecretPw"),
        "sent in clear text: {:?}",
        String::from_utf8_lossy(&seen)
    );
}

/// A password holding `?` or `#` (not percent-encoded) is printed whole: the redaction cuts
/// the user part at the first `?`/`#`.
#[test]
fn a_password_with_a_question_mark_or_hash_is_never_printed() {
    for url in [
        "redis://:pa?ss@127.0.0.1:6379/0",
        "redis://:pa#ss@127.0.0.1:6379/0",
        "redis+cluster://:pa?ss@127.0.0.1:7000,127.0.0.1:7001",
    ] {
        let shown = StoreLocation::parse(url).unwrap().to_string();
        assert!(
            !shown.contains("pa?ss") && !shown.contains("pa#ss"),
            "{url} shows as {shown}"
        );
    }
}

/// Under FastCGI, when the process environment names no store, a request's parameters may
/// name both the server and the password file: the process's secret goes to any server.
#[test]
fn a_request_cannot_send_the_process_password_file_to_a_server_of_its_choice() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("redis.pass");
    std::fs::write(&secret, "RealRedisPassw0rd\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (port, seen) = capture();
    let service = pso::Service::new(Environment::from_pairs([(
        "PSOSessionFileLoader_Path",
        dir.path().join("sessions").to_str().unwrap(),
    )]));
    let store = format!("redis://127.0.0.1:{port}/0");
    let request = Environment::from_pairs([
        ("REQUEST_METHOD", "GET"),
        ("PSOSessionStore", store.as_str()),
        ("PSOSessionStorePasswordFile", secret.to_str().unwrap()),
    ]);
    let handler = |cx: &mut pso::Context| -> Result<(), pso::BoxError> {
        cx.session.set("n", &1u32)?;
        Ok(())
    };
    let mut out = Vec::new();
    service
        .serve(
            &request,
            &mut std::io::empty(),
            &mut out,
            &handler,
            SystemTime::now(),
        )
        .unwrap();
    let seen = seen.join().unwrap();
    assert!(
        !contains(&seen, b"RealRedisPassw0rd"),
        "the password file's content went to the request's server: {:?}",
        String::from_utf8_lossy(&seen)
    );
}

// ---------------------------------------------------------------------------------------------
// Connections

fn connected_clients(server: &RedisServer) -> u64 {
    let info = server.cli(&["INFO", "clients"]);
    info.lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// The process environment fixes the store; requests vary only `PSOSessionMaxBytes`. Each
/// value opens one more store (and keeps its connection) for the life of the process.
#[test]
fn requests_cannot_make_a_process_open_connections_without_bound() {
    let server = server();
    let service = pso::Service::new(Environment::from_pairs([(
        "PSOSessionStore",
        server.url().as_str(),
    )]));
    let handler = |cx: &mut pso::Context| -> Result<(), pso::BoxError> {
        cx.session.set("n", &1u32)?;
        Ok(())
    };
    for i in 0..300 {
        let bytes = (4096 + i).to_string();
        let request = Environment::from_pairs([
            ("REQUEST_METHOD", "GET"),
            ("PSOSessionMaxBytes", bytes.as_str()),
        ]);
        service
            .serve(
                &request,
                &mut std::io::empty(),
                &mut std::io::sink(),
                &handler,
                SystemTime::now(),
            )
            .unwrap();
    }
    let clients = connected_clients(&server);
    assert!(
        clients < 70,
        "{clients} connections open to Redis from one process"
    );
}

/// Connections kept idle in the pool die with a Redis restart, `CLIENT KILL` or Redis's
/// `timeout`: each is tried by one request, which fails, before a fresh one is opened.
#[test]
fn idle_connections_that_redis_closed_fail_no_request() {
    let server = server();
    let store = Arc::new(store_at(&server.url()));
    // Twelve requests at once: twelve connections in the pool afterwards.
    let held: Vec<_> = (0..12)
        .map(|_| {
            let store = store.clone();
            thread::spawn(move || {
                let k = key();
                let mut lock = store
                    .lock(&k, LockOptions::new(Duration::from_secs(1)))
                    .unwrap();
                thread::sleep(Duration::from_millis(200));
                lock.save(&counted(1)).unwrap();
            })
        })
        .collect();
    held.into_iter().for_each(|t| t.join().unwrap());
    server.cli(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"]);
    let failures = (0..20).filter(|_| store.exists(&key()).is_err()).count();
    assert_eq!(
        failures, 0,
        "{failures} of 20 calls failed on a healthy Redis"
    );
}

// ---------------------------------------------------------------------------------------------
// Locks

/// Redis is busy for 1.5 s (another client's slow script) while a request takes a lock: the
/// request gives up at 500 ms, but its script runs later and takes the lock for nobody. The
/// session then stays locked for the whole lease.
#[test]
fn a_lock_whose_request_gave_up_does_not_block_the_session() {
    let server = server();
    let store = store_at(&server.url());
    let k = key();
    let mut first = store
        .lock(&k, LockOptions::new(Duration::from_secs(1)))
        .unwrap();
    first.save(&counted(1)).unwrap();
    first.release().unwrap();
    let busy = make_busy(&server, Duration::from_millis(1500));
    thread::sleep(Duration::from_millis(100));
    let gave_up = store.lock(&k, LockOptions::new(Duration::from_secs(1)));
    assert_eq!(
        gave_up.err().map(|e| e.kind()),
        Some(ErrorKind::Unavailable)
    );
    busy.join().unwrap();
    let ttl = server.cli(&["PTTL", &format!("pso:{{svc:{}}}:lock", k.id)]);
    let next = store.lock(&k, LockOptions::new(Duration::from_secs(3)));
    assert!(
        next.is_ok(),
        "the session stayed locked (lock PTTL was {ttl} ms): {:?}",
        next.err()
    );
}

/// Waiters that fail while they wait (a connection killed, a process killed, a failover)
/// never leave the waiters' count: past 64 leaks, every request that finds the session busy
/// gets a 503 at once, and each of them renews the count's TTL.
#[test]
fn waiters_that_fail_while_waiting_leave_the_count() {
    let server = server();
    let store = Arc::new(store_at(&server.url()));
    let k = key();
    let held = store.lock(&k, LockOptions::new(Duration::ZERO)).unwrap();
    let waiters: Vec<_> = (0..64)
        .map(|_| {
            let (store, k) = (store.clone(), k.clone());
            thread::spawn(move || {
                store
                    .lock(&k, LockOptions::new(Duration::from_secs(20)))
                    .err()
                    .map(|e| e.kind())
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(1500));
    // The waiters' connections die (as with killed processes, a network cut, a failover).
    server.cli(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"]);
    let kinds: Vec<_> = waiters.into_iter().map(|w| w.join().unwrap()).collect();
    // They either fail, or (connections that died are replaced once) wait on to the end.
    assert!(
        kinds
            .iter()
            .all(|k| matches!(k, Some(ErrorKind::Unavailable | ErrorKind::LockTimeout))),
        "{kinds:?}"
    );
    let waiting = format!("pso:{{svc:{}}}:waiting", k.id);
    let count = server.cli(&["GET", &waiting]);
    // A new request on the busy session: it should wait its turn (the holder lets go in 1 s).
    let store2 = store.clone();
    let k2 = k.clone();
    let started = Instant::now();
    let letgo = thread::spawn(move || {
        thread::sleep(Duration::from_secs(1));
        drop(held);
    });
    let next = store2.lock(&k2, LockOptions::new(Duration::from_secs(5)));
    let took = started.elapsed();
    letgo.join().unwrap();
    assert!(
        next.is_ok(),
        "refused after {took:?} (waiters' count left at {count}): {:?}",
        next.err()
    );
}

/// A key of another type at a record's name (planted by anyone who can write to Redis) makes
/// the acquire script fail after its `SET NX` took the lock: the lock stays for the lease and
/// every later request waits for it, then fails again (500), instead of a fresh session.
#[test]
fn a_record_of_the_wrong_type_leaves_no_lock_behind() {
    let server = server();
    let store = store_at(&server.url());
    let k = key();
    server.cli(&["RPUSH", &format!("pso:{{svc:{}}}", k.id), "x"]);
    let first = store.lock(&k, LockOptions::new(Duration::from_secs(1)));
    assert!(first.is_err());
    let ttl = server.cli(&["PTTL", &format!("pso:{{svc:{}}}:lock", k.id)]);
    assert_eq!(
        ttl, "-2",
        "a lock was left behind by a request that got an error"
    );
}

/// Planted keys do not break listing (this one holds up).
#[test]
fn planted_keys_do_not_break_listing() {
    let server = server();
    let store = store_at(&server.url());
    let k = key();
    let mut lock = store
        .lock(&k, LockOptions::new(Duration::from_secs(1)))
        .unwrap();
    lock.save(&counted(1)).unwrap();
    lock.release().unwrap();
    let other = key();
    server.cli(&["HSET", &format!("pso:{{svc:{}}}", other.id), "a", "b"]);
    server.cli(&["SET", "pso:{svc:../../etc}", "x"]);
    server.cli(&["SET", "pso:{svc}", "x"]);
    server.cli(&["SET", "pso:{:}", "x"]);
    let names: Vec<_> = store
        .keys()
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    assert_eq!(names, vec![k]);
}
