//! Attacks on a site moving between stores, and on the fixes around it (the fourth attack's
//! reproductions, docs/attacks/round-4.md): a move cut short, damaged user records in the old
//! store, what `Environment`'s Debug shows, PostgreSQL's waiter cap across databases. Each
//! failed on main 6b7850d and states what must hold. The moving-store tests need no server
//! (memory and file stores, through `Service::serve` with the test's clock); the PostgreSQL
//! ones start a private cluster (tests/common/postgres.rs).

#![cfg(all(feature = "redis", feature = "postgres"))]

mod common;

use common::{a_key, server_url};

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, SystemTime};

use pso::store::{
    FileStore, GcReport, LockOptions, LockedSession, MemoryStore, MovingStore, PostgresStore,
    SessionKey, Store,
};
use pso::{Environment, Error, ErrorKind, Record, SessionId};

// ---------------------------------------------------------------------------------------------
// Helpers: a site served through `Service::serve`, with the test's clock.

/// The site's process environment: service `shop`, no collection drawn by requests (the
/// tests collect when they mean to), a 5 s grace for old ids, sessions idle out after an hour.
fn site_env(extra: &[(&str, &str)]) -> Environment {
    let mut pairs = vec![
        ("PSOServiceId", "shop"),
        ("PSOSessionGCProbability", "0"),
        ("PSOSessionRegenerateGrace", "5"),
        ("PSOSessionIdle", "3600"),
    ];
    pairs.extend_from_slice(extra);
    Environment::from_pairs(pairs)
}

/// The handler of the site: signs in as ada, signs out the documented way (empty the
/// session, move it to a new id, leave a flash), logs out everywhere; says who is signed in.
fn app(cx: &mut pso::Context) -> Result<(), pso::BoxError> {
    match cx.request.query("do").as_deref() {
        Some("sign-in") => {
            cx.session.regenerate_id()?;
            cx.session.set_user("ada")?;
            cx.session.set("cart", "3 eggs")?;
        }
        Some("sign-out") => {
            cx.session.clear()?;
            cx.session.regenerate_id()?;
            cx.session.set("flash", "You are signed out.")?;
        }
        Some("everywhere") => cx.session.log_out_everywhere()?,
        _ => {}
    }
    write!(
        cx.response,
        "user={:?} origin={:?}",
        cx.session.user(),
        cx.session.origin()
    )?;
    Ok(())
}

/// One request through `service` at `now`: the response as text.
fn visit(service: &pso::Service, cookie: Option<&str>, query: &str, now: SystemTime) -> String {
    let mut pairs = vec![
        ("REQUEST_METHOD", "GET"),
        ("REMOTE_ADDR", "192.0.2.7"),
        ("SCRIPT_NAME", "/cgi-bin/shop"),
        ("QUERY_STRING", query),
    ];
    if let Some(cookie) = cookie {
        pairs.push(("HTTP_COOKIE", cookie));
    }
    let request = Environment::from_pairs(pairs);
    let mut output = Vec::new();
    service
        .serve(&request, &mut std::io::empty(), &mut output, &app, now)
        .unwrap();
    String::from_utf8(output).unwrap()
}

/// The `shop=…` cookie a response sets.
fn cookie_of(response: &str) -> String {
    response
        .lines()
        .find_map(|l| l.strip_prefix("Set-Cookie: "))
        .and_then(|c| c.split(';').next())
        .filter(|c| c.len() > "shop=".len())
        .unwrap_or_else(|| panic!("no cookie: {response}"))
        .to_owned()
}

fn key_of(cookie: &str) -> SessionKey {
    SessionKey::new(
        "shop".parse().unwrap(),
        SessionId::named(cookie.split_once('=').unwrap().1).unwrap(),
    )
}

/// An old store whose next delete fails once `failing` is set, as a Redis or PostgreSQL that
/// does not answer the DEL within pso's deadline does (a 503), or as a process killed between
/// the save into the new store and the delete from the old leaves it.
struct FlakyOld {
    inner: Arc<dyn Store>,
    failing: Arc<AtomicBool>,
}

struct FlakyLock {
    inner: Box<dyn LockedSession>,
    failing: Arc<AtomicBool>,
}

impl Store for FlakyOld {
    fn lock(&self, key: &SessionKey, options: LockOptions) -> pso::Result<Box<dyn LockedSession>> {
        Ok(Box::new(FlakyLock {
            inner: self.inner.lock(key, options)?,
            failing: self.failing.clone(),
        }))
    }
    fn exists(&self, key: &SessionKey) -> pso::Result<bool> {
        self.inner.exists(key)
    }
    fn peek(&self, key: &SessionKey) -> pso::Result<Option<Record>> {
        self.inner.peek(key)
    }
    fn delete(&self, key: &SessionKey) -> pso::Result<()> {
        self.inner.delete(key)
    }
    fn keys(&self) -> pso::Result<Box<dyn Iterator<Item = pso::Result<SessionKey>> + '_>> {
        self.inner.keys()
    }
    fn collect_garbage(&self, now: SystemTime, budget: Duration) -> pso::Result<GcReport> {
        self.inner.collect_garbage(now, budget)
    }
}

impl LockedSession for FlakyLock {
    fn key(&self) -> &SessionKey {
        self.inner.key()
    }
    fn load(&mut self) -> pso::Result<Option<Record>> {
        self.inner.load()
    }
    fn save(&mut self, record: &Record) -> pso::Result<()> {
        self.inner.save(record)
    }
    fn delete(&mut self) -> pso::Result<()> {
        if self.failing.swap(false, Ordering::SeqCst) {
            return Err(Error::new(
                ErrorKind::Unavailable,
                "the old store: no answer within 1000 ms",
            ));
        }
        self.inner.delete()
    }
    fn lock_sibling(
        &self,
        id: SessionId,
        options: LockOptions,
    ) -> pso::Result<Box<dyn LockedSession>> {
        self.inner.lock_sibling(id, options)
    }
    fn release(self: Box<Self>) -> pso::Result<()> {
        self.inner.release()
    }
}

// ---------------------------------------------------------------------------------------------
// Finding 1: a session signed out in the new store comes back from the old one.
//
// A move that saved into the new store but did not delete from the old (the delete failed:
// a server that did not answer in time, a 503; or the process was killed in between) leaves
// the session in both stores. `MovingLock::settle` keeps the new store's copy ("the new
// store's copy wins"), and requests never tidy the old copy. But the new copy wins only while
// it exists: when the new store forgets the key on its own (collection of an expired record,
// Redis' TTL, PostgreSQL's collection), the next request finds nothing in the new store, sees
// the old copy, and moves it back. The documented sign-out (`clear()`, `regenerate_id()`,
// set a flash) leaves the old id as a forward with a 5 s deadline; once it is collected,
// the pre-sign-out session, signed in, is back under the old id for whoever holds it.

#[test]
fn a_session_signed_out_during_a_move_comes_back_from_the_old_store() {
    let t0 = SystemTime::now();
    let at = |secs: u64| t0 + Duration::from_secs(secs);
    let old = Arc::new(MemoryStore::new());
    let new = Arc::new(MemoryStore::new());
    // Before the move: ada signs in on the old store.
    let before = pso::Service::new(site_env(&[])).with_store(old.clone());
    let ada = cookie_of(&visit(&before, None, "do=sign-in", at(1)));
    // The switch: PSOSessionStoreMovingFrom. The first request of ada's session moves it;
    // the old store does not answer the delete in time.
    let failing = Arc::new(AtomicBool::new(true));
    let flaky: Arc<dyn Store> = Arc::new(FlakyOld {
        inner: old.clone(),
        failing: failing.clone(),
    });
    let moving = Arc::new(MovingStore::new(new.clone(), flaky));
    let during = pso::Service::new(site_env(&[])).with_store(moving.clone());
    let failed = visit(&during, Some(&ada), "", at(10));
    assert!(failed.starts_with("Status: 5"), "{failed}");
    let key = key_of(&ada);
    assert!(old.exists(&key).unwrap() && new.exists(&key).unwrap());
    // The site goes on: the new store's copy is served.
    let page = visit(&during, Some(&ada), "", at(20));
    assert!(page.contains("user=Some(\"ada\")"), "{page}");
    // Ada signs out the way the README shows.
    let out = visit(&during, Some(&ada), "do=sign-out", at(30));
    assert!(out.contains("user=None"), "{out}");
    // A minute later the site collects expired records (a share of requests does it; with
    // Redis as the new store, its TTL; PostgreSQL's collection): the old id's forward goes.
    moving
        .collect_garbage(at(90), Duration::from_secs(5))
        .unwrap();
    // Whoever kept ada's old cookie (the other tab, a shared computer, a thief).
    let back = visit(&during, Some(&ada), "", at(100));
    assert!(
        back.contains("user=None"),
        "ada signed out, but her session came back from the old store: {back}"
    );
}

// ---------------------------------------------------------------------------------------------
// Finding 2: a damaged user record in the old store. Under the old store alone, pso counts it
// as "logged out" and the next request that may write rebuilds it (every name that leads to
// it logged out before that moment), so later sign-ins work. During a move, nothing rebuilds
// it: `MovingLock::load` turns the old store's Corrupt into "nothing here" (`Unreadable`), so
// `user_record::repair` sees no damage and saves nothing, while `MovingStore::peek` keeps
// reading the damaged copy (Corrupt). Every sign-in of that user is logged out at its next
// request for as long as the move lasts (the file store's collection keeps damaged user
// records; `pso sessions migrate` leaves unreadable records). Once the move ends (the variable
// removed), the damaged record is simply not consulted any more: sessions of that user that
// the command moved, signed in before the logout the record stood for, are signed in again.

/// A file store where ada signed in on two devices and logged out everywhere from one; her
/// user record then damaged on disk.
fn damaged_user_record(dir: &Path, t: impl Fn(u64) -> SystemTime) -> Arc<FileStore> {
    let files = Arc::new(FileStore::open(dir).unwrap());
    let alone = pso::Service::new(site_env(&[])).with_store(files.clone());
    let laptop = cookie_of(&visit(&alone, None, "do=sign-in", t(1)));
    let phone = cookie_of(&visit(&alone, None, "do=sign-in", t(3)));
    let _ = visit(&alone, Some(&phone), "do=everywhere", t(4));
    let record = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .find(|entry| entry.file_name().to_string_lossy().contains(".user-"))
        .expect("ada's user record")
        .path();
    std::fs::write(&record, b"garbage: not a record").unwrap();
    drop(laptop);
    files
}

#[test]
fn a_damaged_user_record_in_the_old_store_signs_its_user_out_for_the_whole_move() {
    let t0 = SystemTime::now();
    let at = move |secs: u64| t0 + Duration::from_secs(secs);
    // Under the old store alone: one request sees the damage and rebuilds the record; a
    // sign-in after that stays signed in.
    let dir = tempfile::tempdir().unwrap();
    let files = damaged_user_record(&dir.path().join("s"), at);
    let alone = pso::Service::new(site_env(&[])).with_store(files.clone());
    let s = cookie_of(&visit(&alone, None, "do=sign-in", at(11)));
    let _ = visit(&alone, Some(&s), "", at(12));
    let s = cookie_of(&visit(&alone, None, "do=sign-in", at(14)));
    let page = visit(&alone, Some(&s), "", at(15));
    assert!(
        page.contains("user=Some(\"ada\")"),
        "files alone (the reference): {page}"
    );
    // The same damage, during a move to another store.
    let dir = tempfile::tempdir().unwrap();
    let files = damaged_user_record(&dir.path().join("s"), at);
    let moving = Arc::new(MovingStore::new(Arc::new(MemoryStore::new()), files));
    let during = pso::Service::new(site_env(&[])).with_store(moving);
    // As under the old store alone, the first request that sees the damage is logged out and
    // rebuilds the record (in the new store); every sign-in after that stays.
    let s = cookie_of(&visit(&during, None, "do=sign-in", at(11)));
    let _ = visit(&during, Some(&s), "", at(12));
    let mut signed_out = Vec::new();
    for round in 0..3u64 {
        let s = cookie_of(&visit(&during, None, "do=sign-in", at(21 + 10 * round)));
        let page = visit(&during, Some(&s), "", at(22 + 10 * round));
        if !page.contains("user=Some(\"ada\")") {
            signed_out.push(page);
        }
    }
    assert!(
        signed_out.is_empty(),
        "every sign-in of ada was logged out at its next request during the move: {signed_out:?}"
    );
}

#[test]
fn sessions_logged_out_by_a_damaged_user_record_are_signed_in_again_after_the_move() {
    // In the past: the command rebuilds the record at the time it runs, after the sign-ins.
    let t0 = SystemTime::now() - Duration::from_secs(100);
    let at = move |secs: u64| t0 + Duration::from_secs(secs);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let files = Arc::new(FileStore::open(&path).unwrap());
    let alone = pso::Service::new(site_env(&[])).with_store(files.clone());
    // Ada's laptop signs in; her phone logs out everywhere; the record is then damaged.
    let laptop = cookie_of(&visit(&alone, None, "do=sign-in", at(1)));
    let phone = cookie_of(&visit(&alone, None, "do=sign-in", at(3)));
    let _ = visit(&alone, Some(&phone), "do=everywhere", at(4));
    let record = std::fs::read_dir(&path)
        .unwrap()
        .flatten()
        .find(|entry| entry.file_name().to_string_lossy().contains(".user-"))
        .expect("ada's user record")
        .path();
    std::fs::write(&record, b"garbage: not a record").unwrap();
    // The move: the laptop's session is not visited; `pso sessions migrate` moves it (what
    // the command does is MovingStore::move_one over the old store's keys).
    let new = Arc::new(MemoryStore::new());
    let moving = MovingStore::new(new.clone(), files.clone());
    let keys: Vec<SessionKey> = files.keys().unwrap().map(Result::unwrap).collect();
    for key in &keys {
        let _ = moving.move_one(key, Duration::from_secs(1));
    }
    // The move is over: PSOSessionStoreMovingFrom goes, the site runs on the new store.
    let after = pso::Service::new(site_env(&[])).with_store(new);
    let page = visit(&after, Some(&laptop), "", at(60));
    assert!(
        !page.contains("user=Some(\"ada\")"),
        "ada logged out everywhere before the move; her laptop is signed in after it: {page}"
    );
}

// ---------------------------------------------------------------------------------------------
// Finding 3: `Environment`'s Debug shows credentials under the names Apache gives them after
// an internal redirect (`REDIRECT_` + the name: mod_rewrite rules, ErrorDocument, the
// `RewriteRule .* - [E=HTTP_AUTHORIZATION:%{HTTP:Authorization}]` that PHP sites use to pass
// the Authorization header to CGI programs), and the session id itself when ids travel in
// URLs (`PSOSessionUrl=on`: `QUERY_STRING`, `REQUEST_URI`, `HTTP_REFERER`).

#[test]
fn environment_debug_shows_redirected_credentials_and_ids_in_urls() {
    let id = "0123456789abcdefghijklmnopqrstuv";
    let env = Environment::from_pairs([
        (
            "REDIRECT_HTTP_AUTHORIZATION",
            "Basic YWRhOmhvcnNlLWJhdHRlcnk=",
        ),
        (
            "REDIRECT_HTTP_COOKIE",
            "shop=0123456789abcdefghijklmnopqrstuv",
        ),
        ("PSOSessionUrl", "on"),
        ("QUERY_STRING", &format!("shop={id}&page=2")),
        ("REQUEST_URI", &format!("/cgi-bin/shop?shop={id}&page=2")),
        (
            "HTTP_REFERER",
            &format!("https://shop.example/cgi-bin/shop?shop={id}"),
        ),
    ]);
    let shown = format!("{env:?}");
    let mut leaks = Vec::new();
    if shown.contains("YWRhOmhvcnNlLWJhdHRlcnk") {
        leaks.push("REDIRECT_HTTP_AUTHORIZATION");
    }
    if shown.contains(id) {
        leaks.push("a session id");
    }
    assert!(leaks.is_empty(), "{leaks:?} in {shown}");
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL: the waiter cap (MAX_WAITERS = 8).

/// Requests waiting for `key`'s advisory lock, as pg_locks counts them in every database.
fn waiting(server: &common::postgres::PostgresServer, database: &str) -> usize {
    server
        .sql(&format!(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
              WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = '{database}'"
        ))
        .parse()
        .unwrap()
}

// Finding 4: the cap counts waiters of every database of the cluster. `LOCK` counts
// not-granted advisory locks in `pg_locks` by classid/objid/objsubid only; pg_locks lists the
// locks of every database, and an advisory lock's key is per database. Another site (another
// tenant) on the same cluster whose requests wait on the same key (the same service and id:
// user records `user-<hash of the name>` and forced ids are the same on every site; or any
// role that calls pg_advisory_lock(k) with the key's hash) makes this site's second request
// on a busy session a 503 at once instead of a wait.

#[test]
fn waiters_in_another_database_make_a_request_refused_at_once() {
    let server = common::postgres::PostgresServer::start().expect("PostgreSQL is not installed");
    server.sql("CREATE DATABASE tenant OWNER app");
    let url = |db: &str| {
        server_url(&format!(
            "postgres://app:{}@127.0.0.1:{}/{db}",
            common::postgres::APP_PASSWORD,
            server.port
        ))
    };
    let (site, tenant) = (url("app"), url("tenant"));
    PostgresStore::open(&site, None).unwrap().init().unwrap();
    PostgresStore::open(&tenant, None).unwrap().init().unwrap();
    let key = a_key();
    // The other database: one holder and 8 waiters on the same key.
    let other = PostgresStore::open(&tenant, None).unwrap();
    let held_there = other
        .lock(&key, LockOptions::new(Duration::from_secs(1)))
        .unwrap();
    let waiters: Vec<_> = (0..8)
        .map(|_| {
            let (store, key) = (other.clone(), key.clone());
            std::thread::spawn(move || {
                let _ = store.lock(&key, LockOptions::new(Duration::from_secs(6)));
            })
        })
        .collect();
    let started = std::time::Instant::now();
    while waiting(&server, "tenant") < 8 {
        assert!(started.elapsed() < Duration::from_secs(5), "no waiters");
        std::thread::sleep(Duration::from_millis(20));
    }
    // This site: a request holds the session for 300 ms; a second one on it waits for it.
    let store = PostgresStore::open(&site, None).unwrap();
    let holder = store
        .lock(&key, LockOptions::new(Duration::from_secs(1)))
        .unwrap();
    let second = {
        let (store, key) = (store.clone(), key.clone());
        std::thread::spawn(move || {
            store
                .lock(&key, LockOptions::new(Duration::from_secs(3)))
                .map(drop)
                .map_err(|e| pso::ErrorChain(&e).to_string())
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    drop(holder);
    let second = second.join().unwrap();
    drop(held_there);
    for waiter in waiters {
        waiter.join().unwrap();
    }
    assert!(
        second.is_ok(),
        "no request waited for this session in this database, yet: {second:?}"
    );
}

// Held: the count and the wait are one statement but not one atomic step, so requests that
// arrive together might all count fewer than 8 waiters and all wait. 40 requests released at
// once on one busy session never had more than 8 waiting here (pg_locks is read under every
// lock partition's LWLock, which serialises the counts with the waits). Timing-dependent, so
// run by hand.

#[test]
#[ignore = "attack 4: held (timing-dependent, run by hand)"]
fn held_a_burst_of_requests_on_one_session_stays_within_the_waiter_cap() {
    let server = common::postgres::PostgresServer::start().expect("PostgreSQL is not installed");
    let url = server_url(&format!(
        "postgres://app:{}@127.0.0.1:{}/app",
        common::postgres::APP_PASSWORD,
        server.port
    ));
    let store = PostgresStore::open(&url, None).unwrap();
    store.init().unwrap();
    let key = a_key();
    let holder = store
        .lock(&key, LockOptions::new(Duration::from_secs(1)))
        .unwrap();
    const BURST: usize = 40;
    // Each request its own process under CGI: a store (and a connection) of its own, already
    // connected, as a FastCGI worker's idle connection is.
    let stores: Vec<PostgresStore> = (0..BURST)
        .map(|_| {
            let store = PostgresStore::open(&url, None).unwrap();
            let _ = store.exists(&key).unwrap();
            store
        })
        .collect();
    let gate = Arc::new(Barrier::new(BURST + 1));
    let crowded = Arc::new(AtomicUsize::new(0));
    let burst: Vec<_> = stores
        .into_iter()
        .map(|store| {
            let (gate, key, crowded) = (gate.clone(), key.clone(), crowded.clone());
            std::thread::spawn(move || {
                gate.wait();
                if let Err(e) = store.lock(&key, LockOptions::new(Duration::from_secs(4)))
                    && e.to_string().contains("already wait")
                {
                    crowded.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    gate.wait();
    let mut most = 0;
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        most = most.max(waiting(&server, "app"));
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(holder);
    for request in burst {
        request.join().unwrap();
    }
    assert!(
        most <= pso::store::postgres::MAX_WAITERS as usize,
        "{most} requests waited on one session at once (the cap is 8; {} were refused)",
        crowded.load(Ordering::SeqCst)
    );
}
