//! Sessions in a real PostgreSQL (a private cluster started by each test, see
//! `common/postgres.rs`): the store suite, the reload counter as CGI (TCP and unix socket)
//! and FastCGI, holders that die or go quiet, a server that goes away and comes back,
//! passwords, collection, ended sessions, statements that take too long.

#![cfg(feature = "postgres")]

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::fcgi::FcgiProcess;
use common::postgres::{APP_PASSWORD, PostgresServer};
use common::{Reply, Site};
use pso::store::{LockOptions, PostgresStore, SessionKey, Store, StoreLocation};
use pso::{ErrorKind, Meta, Record, SessionId};

static RELOAD: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| common::example("reload"));
static LOGIN: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| common::example("login"));

fn server() -> PostgresServer {
    PostgresServer::start().expect("PostgreSQL is not installed (apt install postgresql)")
}

fn store_at(url: &str) -> PostgresStore {
    let StoreLocation::Server(url) = StoreLocation::parse(url).unwrap() else {
        panic!("not a server: {url}")
    };
    PostgresStore::open(&url, None).unwrap()
}

#[cfg(feature = "store-suite")]
mod suite {
    pso::store_suite!(|| {
        let server = super::server();
        let store = std::sync::Arc::new(super::store_at(&server.url()));
        (server, store)
    });
}

fn counter_site(url: String) -> Site {
    let mut site = Site::new(RELOAD.as_str());
    site.set("PSOSessionStore", url);
    site
}

fn id_of(cookie: &str) -> &str {
    cookie.split_once('=').unwrap().1
}

fn key() -> SessionKey {
    SessionKey::new("svc".parse().unwrap(), SessionId::generate().unwrap())
}

fn counted(n: u64) -> Record {
    let mut record = Record::new(Meta::new(1_900_000_000));
    record.set("n", &n).unwrap();
    record
}

fn wait() -> LockOptions {
    LockOptions::new(Duration::from_secs(10))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn counter_counts_as_cgi(server: &PostgresServer, url: String) {
    let site = counter_site(url);
    let first = site.get(None);
    assert_eq!(first.count(), 1, "{first:?}");
    let cookie = first.cookie();
    assert_eq!(site.get(Some(&cookie)).count(), 2);
    assert_eq!(site.get(Some(&cookie)).count(), 3);
    assert!(site.files().is_empty(), "{:?}", site.files());
    let id = id_of(&cookie);
    assert_eq!(
        server.sql(&format!(
            "SELECT count(*) FROM pso_sessions WHERE service = 'reload' AND id = '{id}'"
        )),
        "1"
    );
    // A browser-close session: collected a day (PSOSessionGCMaxLifetime) after its last use.
    let expires: i64 = server
        .sql("SELECT extract(epoch FROM expires_at - now())::bigint FROM pso_sessions")
        .parse()
        .unwrap();
    assert!((86_000..=86_401).contains(&expires), "{expires}");
    // No lock is left behind.
    assert_eq!(
        server.sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"),
        "0"
    );
}

#[test]
fn the_counter_counts_one_two_three_as_cgi_over_tcp_with_no_file_written() {
    let server = server();
    counter_counts_as_cgi(&server, server.url());
}

#[test]
fn the_counter_counts_one_two_three_as_cgi_over_a_unix_socket() {
    let server = server();
    counter_counts_as_cgi(&server, server.socket_url());
}

#[test]
fn the_counter_counts_one_two_three_as_fastcgi() {
    let server = server();
    let dir = tempfile::tempdir().unwrap();
    let url = server.url();
    let mut process = FcgiProcess::start(
        RELOAD.as_str().as_ref(),
        &[("PSOSessionStore", &url)],
        &dir.path().join("stderr"),
    );
    let first = process.get("", &[]);
    let cookie = first.cookie().expect("a cookie");
    assert!(
        first.body().contains("You reloaded: 1 times"),
        "{}",
        first.text()
    );
    for n in 2..=3 {
        let answer = process.get("", &[("HTTP_COOKIE", &cookie)]);
        assert!(
            answer.body().contains(&format!("You reloaded: {n} times")),
            "{}",
            answer.text()
        );
    }
    assert_eq!(server.sql("SELECT count(*) FROM pso_sessions"), "1");
    // Its connection is kept for the next request, and holds no lock between requests.
    assert_eq!(
        server.sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pso'"),
        "1"
    );
    assert_eq!(
        server.sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"),
        "0"
    );
    process.terminate();
}

#[test]
fn a_holder_whose_connection_closes_without_a_release_frees_the_session() {
    let server = server();
    let store = store_at(&server.url());
    let k = key();
    let mut lock = store.lock(&k, wait()).unwrap();
    lock.save(&counted(1)).unwrap();
    let busy = LockOptions::new(Duration::ZERO);
    assert_eq!(
        store.lock(&k, busy).err().unwrap().kind(),
        ErrorKind::LockTimeout
    );
    // What a killed process leaves: its connection closes, nothing is released. Here the
    // server ends the holder's backend.
    let ended = server
        .sql("SELECT count(pg_terminate_backend(pid)) FROM pg_locks WHERE locktype = 'advisory'");
    assert_eq!(ended, "1");
    let mut next = store.lock(&k, wait()).unwrap();
    assert_eq!(
        next.load().unwrap(),
        Some(counted(1)),
        "what was saved stays"
    );
    // The old holder can save nothing more, and its release says so.
    assert!(lock.save(&counted(99)).is_err());
    let err = lock.release().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::LockLost, "{err}");
    next.save(&counted(2)).unwrap();
    next.release().unwrap();
    assert_eq!(store.peek(&k).unwrap(), Some(counted(2)));
}

#[test]
fn a_cgi_process_killed_while_it_holds_its_session_frees_it() {
    let server = server();
    let store = store_at(&server.url());
    let mut site = counter_site(server.url());
    let cookie = site.get(None).cookie();
    // The sign-in page reads its form after the session is locked: a body that never comes
    // keeps the process holding the lock.
    site.set("REQUEST_METHOD", "POST")
        .set("CONTENT_TYPE", "application/x-www-form-urlencoded")
        .set("CONTENT_LENGTH", "100");
    let command = site.command(Some(&cookie));
    let mut holder = std::process::Command::new(LOGIN.as_str());
    holder
        .env_clear()
        .envs(command.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = holder.spawn().unwrap();
    let k = SessionKey::new(
        "reload".parse().unwrap(),
        SessionId::named(id_of(&cookie)).unwrap(),
    );
    let busy = LockOptions::new(Duration::ZERO);
    let started = Instant::now();
    while store.lock(&k, busy).is_ok() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the process never took the lock"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"token=").unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    drop(stdin);
    let mut lock = store.lock(&k, wait()).expect("freed when the process died");
    let record = lock.load().unwrap().expect("the session stays");
    assert_eq!(record.get::<u64>("reloads").unwrap(), Some(1));
    drop(lock);
    site.set("REQUEST_METHOD", "GET").unset("CONTENT_LENGTH");
    assert_eq!(site.get(Some(&cookie)).count(), 2);
}

/// A request that runs past its lease without a statement keeps its lock: the process renews
/// it (a statement on the lock's connection every third of the lease), so a waiter waits and
/// the holder's save lands; once it lets go, nothing renews it any more.
#[test]
fn a_holder_that_runs_long_keeps_its_lock_while_its_process_renews_it() {
    let server = server();
    let store = store_at(&server.url());
    let k = key();
    let short = wait().with_lease(Duration::from_secs(1));
    let mut long = store.lock(&k, short).unwrap();
    long.save(&counted(1)).unwrap();
    let waited = std::thread::spawn({
        let store = store.clone();
        let k = k.clone();
        move || {
            store
                .lock(&k, LockOptions::new(Duration::from_millis(3_200)))
                .map(drop)
                .map_err(|e| e.kind())
        }
    });
    std::thread::sleep(Duration::from_millis(3_500));
    assert_eq!(waited.join().unwrap(), Err(ErrorKind::LockTimeout));
    long.save(&counted(2)).unwrap();
    long.release().unwrap();
    let mut next = store.lock(&k, wait()).unwrap();
    assert_eq!(next.load().unwrap(), Some(counted(2)));
    next.release().unwrap();
}

#[test]
fn a_holder_that_goes_quiet_past_its_lease_loses_the_lock() {
    let server = server();
    // Quiet as a stalled process is: nothing renews its lease.
    let store = store_at(&server.url()).with_lease_renewal(false);
    let k = key();
    let short = wait().with_lease(Duration::from_secs(1));
    let mut quiet = store.lock(&k, short).unwrap();
    quiet.save(&counted(1)).unwrap();
    // Renewed, it lasts past its first term.
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(600));
        quiet.renew().unwrap();
    }
    // Quiet: the server closes its connection after the lease, and the next holder comes in.
    let started = Instant::now();
    let mut next = store.lock(&k, wait()).unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "waited too long"
    );
    next.save(&counted(7)).unwrap();
    let err = quiet.save(&counted(99)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::LockLost, "{err}");
    assert!(quiet.release().is_err());
    // The late holder's release freed nothing of the next one's.
    let busy = LockOptions::new(Duration::ZERO);
    assert_eq!(
        store.lock(&k, busy).err().unwrap().kind(),
        ErrorKind::LockTimeout
    );
    drop(next);
    assert_eq!(store.peek(&k).unwrap(), Some(counted(7)));
}

fn assert_unavailable(reply: &Reply, server: &PostgresServer) {
    assert_eq!(
        reply.status(),
        "Status: 503 Service Unavailable",
        "{reply:?}"
    );
    assert!(reply.head.contains("Retry-After: "), "{reply:?}");
    let lines: Vec<&str> = reply.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one log line: {lines:?}");
    assert!(
        lines[0].contains(&format!(
            "PostgreSQL at postgres://pso@127.0.0.1:{}/postgres",
            server.port
        )),
        "{lines:?}"
    );
}

#[test]
fn a_postgres_that_goes_away_gives_503s_then_the_sessions_go_on() {
    let mut server = server();
    let site = counter_site(server.url());
    let cookie = site.get(None).cookie();
    assert_eq!(site.get(Some(&cookie)).count(), 2);
    server.stop();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        let asked = Instant::now();
        let reply = Reply::from_output(site.command(Some(&cookie)).output().unwrap());
        assert!(asked.elapsed() < Duration::from_secs(5), "a bounded answer");
        assert_unavailable(&reply, &server);
        std::thread::sleep(Duration::from_millis(300));
    }
    // Stopped as by a crash: what was committed is there after the restart.
    server.restart();
    assert_eq!(site.get(Some(&cookie)).count(), 3);
    assert_eq!(site.get(Some(&cookie)).count(), 4);
}

#[test]
fn a_fastcgi_process_reconnects_after_postgres_comes_back() {
    let mut server = server();
    let dir = tempfile::tempdir().unwrap();
    let url = server.url();
    let mut process = FcgiProcess::start(
        RELOAD.as_str().as_ref(),
        &[("PSOSessionStore", &url)],
        &dir.path().join("stderr"),
    );
    let cookie = process.get("", &[]).cookie().unwrap();
    server.stop();
    let down = process.get("", &[("HTTP_COOKIE", &cookie)]);
    assert!(down.status().contains("503"), "{}", down.text());
    server.restart();
    // The connection it kept was closed by the restart: the first request after it works.
    let back = process.get("", &[("HTTP_COOKIE", &cookie)]);
    assert!(
        back.body().contains("You reloaded: 2 times"),
        "{}",
        back.text()
    );
    assert!(process.alive());
    process.terminate();
}

#[test]
fn a_password_comes_from_the_url_or_a_private_file_and_is_never_printed() {
    let server = server();
    let app = |userinfo: &str| format!("postgres://{userinfo}@127.0.0.1:{}/app", server.port);
    let mut site = counter_site(app("app"));
    // No password: refused by the server, a 500 and a line in the log without any secret.
    let refused = Reply::from_output(site.command(None).output().unwrap());
    assert_eq!(
        refused.status(),
        "Status: 500 Internal Server Error",
        "{refused:?}"
    );
    // In the URL.
    site.set("PSOSessionStore", app(&format!("app:{APP_PASSWORD}")));
    let first = site.get(None);
    assert_eq!(first.count(), 1, "{first:?}");
    // In a file of ours that nobody else may read.
    let file = site.root.path().join("postgres.pass");
    std::fs::write(&file, format!("{APP_PASSWORD}\n")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    site.set("PSOSessionStore", app("app"));
    site.set("PSOSessionStorePasswordFile", &file);
    assert_eq!(site.get(Some(&first.cookie())).count(), 2);
    // A file others may read is refused, and says so.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let open = Reply::from_output(site.command(None).output().unwrap());
    assert_eq!(open.status(), "Status: 500 Internal Server Error");
    assert!(open.stderr.contains("0600"), "{open:?}");
    // A wrong password is refused, and not printed either.
    site.set("PSOSessionStore", app("app:wrong-pw"));
    site.unset("PSOSessionStorePasswordFile");
    let wrong = Reply::from_output(site.command(None).output().unwrap());
    assert_eq!(wrong.status(), "Status: 500 Internal Server Error");
    assert!(
        wrong.stderr.contains("postgres://app:***@127.0.0.1"),
        "{wrong:?}"
    );
    for reply in [&refused, &first, &open, &wrong] {
        let all = format!("{}{}{}", reply.head, reply.body, reply.stderr);
        assert!(
            !all.contains(APP_PASSWORD) && !all.contains("wrong-pw"),
            "{all}"
        );
    }
}

/// A record past its deadline `ago` seconds ago.
fn expired(ago: u64) -> Record {
    let now = now_secs();
    let mut record = Record::new(Meta::new(now - ago - 10));
    record.meta.deadline = Some(now - ago);
    record
}

#[test]
fn collection_removes_expired_rows_in_batches_and_skips_held_ones() {
    let server = server();
    let store = store_at(&server.url());
    // More than a batch (200) of expired sessions, a few of them held, and live ones.
    let dead: Vec<SessionKey> = (0..450).map(|_| key()).collect();
    for k in &dead {
        store
            .lock(k, wait())
            .unwrap()
            .save(&expired(3_600))
            .unwrap();
    }
    let live: Vec<SessionKey> = (0..5).map(|_| key()).collect();
    for k in &live {
        store.lock(k, wait()).unwrap().save(&counted(1)).unwrap();
    }
    let mut user = Record::new(Meta::new(1_000));
    user.set("never", &true).unwrap();
    let forever = key();
    store.lock(&forever, wait()).unwrap().save(&user).unwrap();
    let held: Vec<_> = dead[..3]
        .iter()
        .map(|k| store.lock(k, wait()).unwrap())
        .collect();
    // No time at all: nothing done, and it says so.
    let none = store
        .collect_garbage(SystemTime::now(), Duration::ZERO)
        .unwrap();
    assert!(none.incomplete && none.removed == 0, "{none:?}");
    let report = store
        .collect_garbage(SystemTime::now(), Duration::from_secs(30))
        .unwrap();
    assert!(!report.incomplete, "{report:?}");
    assert_eq!((report.removed, report.busy), (447, 3), "{report:?}");
    assert_eq!(report.examined, 450, "{report:?}");
    assert_eq!(server.sql("SELECT count(*) FROM pso_sessions"), "9");
    for k in &dead[..3] {
        assert!(
            store.exists(k).unwrap(),
            "a held session is never collected"
        );
    }
    for k in live.iter().chain([&forever]) {
        assert!(store.peek(k).unwrap().is_some());
    }
    // Let go, they go at the next pass.
    drop(held);
    let report = store
        .collect_garbage(SystemTime::now(), Duration::from_secs(30))
        .unwrap();
    assert_eq!((report.removed, report.busy), (3, 0), "{report:?}");
    assert_eq!(server.sql("SELECT count(*) FROM pso_sessions"), "6");
}

#[test]
fn a_session_ended_while_held_stays_ended_even_one_its_holder_never_saw() {
    let server = server();
    let store = store_at(&server.url());
    // The holder found nothing: a tombstone fails its first save all the same.
    let k = key();
    let mut held = store.lock(&k, wait()).unwrap();
    assert_eq!(held.load().unwrap(), None);
    store.delete(&k).unwrap();
    assert_eq!(
        held.save(&counted(1)).unwrap_err().kind(),
        ErrorKind::LockLost
    );
    drop(held);
    assert_eq!(store.peek(&k).unwrap(), None);
    assert!(!store.exists(&k).unwrap());
    assert!(store.keys().unwrap().all(|item| item.unwrap() != k));
    // The tombstone row is there, without a record, until collection takes it.
    assert_eq!(
        server.sql("SELECT count(*) FROM pso_sessions WHERE record IS NULL"),
        "1"
    );
    let report = store
        .collect_garbage(
            SystemTime::now() + Duration::from_secs(1),
            Duration::from_secs(10),
        )
        .unwrap();
    assert_eq!(report.removed, 1, "{report:?}");
    assert_eq!(server.sql("SELECT count(*) FROM pso_sessions"), "0");
    // A later request of that key starts afresh.
    let mut again = store.lock(&k, wait()).unwrap();
    assert_eq!(again.load().unwrap(), None);
    again.save(&counted(2)).unwrap();
    drop(again);
    assert_eq!(store.peek(&k).unwrap(), Some(counted(2)));
}

#[test]
fn keys_are_listed_a_page_at_a_time() {
    let server = server();
    let store = store_at(&server.url());
    store.init().unwrap();
    // 2,500 rows straight in: more than two pages of 1,000.
    let bytes = counted(1).encode().unwrap();
    let mut admin = server.admin();
    let mut expected = Vec::new();
    for _ in 0..2_500 {
        let k = key();
        admin
            .execute(
                "INSERT INTO pso_sessions (service, id, record, generation) VALUES ($1, $2, $3, 1)",
                &[&k.service.as_str(), &k.id.as_str(), &bytes],
            )
            .unwrap();
        expected.push(k);
    }
    let mut listed: Vec<SessionKey> = store.keys().unwrap().map(Result::unwrap).collect();
    listed.sort();
    expected.sort();
    assert_eq!(listed.len(), 2_500);
    assert!(listed == expected);
}

#[test]
fn the_table_is_made_once_whoever_asks_at_the_same_time() {
    let server = server();
    let store = Arc::new(store_at(&server.url()));
    let makers: Vec<_> = (0..6)
        .map(|i| {
            let store = store.clone();
            std::thread::spawn(move || {
                if i % 2 == 0 {
                    store.init()
                } else {
                    // The first lock makes it too.
                    let mut lock = store.lock(&key(), wait())?;
                    lock.save(&counted(i))
                }
            })
        })
        .collect();
    for maker in makers {
        maker.join().unwrap().unwrap();
    }
    assert_eq!(
        server.sql("SELECT count(*) FROM pg_indexes WHERE tablename = 'pso_sessions'"),
        "2"
    );
    // Before any table, reads see no session and fail nothing.
    let other = self::server();
    let empty = store_at(&other.url());
    assert_eq!(empty.peek(&key()).unwrap(), None);
    assert!(!empty.exists(&key()).unwrap());
    assert_eq!(empty.keys().unwrap().count(), 0);
    empty.delete(&key()).unwrap();
    let report = empty
        .collect_garbage(SystemTime::now(), Duration::from_secs(1))
        .unwrap();
    assert_eq!(report.examined, 0);
}

#[test]
fn a_statement_that_takes_too_long_is_a_503_not_a_hang() {
    let server = server();
    let store = store_at(&server.url());
    let k = key();
    store.lock(&k, wait()).unwrap().save(&counted(1)).unwrap();
    // Another program holds the whole table: every statement of the store waits for it.
    let mut blocker = server.admin();
    blocker
        .batch_execute("BEGIN; LOCK TABLE pso_sessions IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    let started = Instant::now();
    let err = store.peek(&k).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // The lock is taken (it needs no table), but the read after it waits too: the lock is
    // let go with the connection.
    let err = store.lock(&k, wait()).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    blocker.batch_execute("ROLLBACK").unwrap();
    let mut lock = store.lock(&k, LockOptions::new(Duration::ZERO)).unwrap();
    assert_eq!(lock.load().unwrap(), Some(counted(1)));
}

/// The bound of one round trip on pso's side: `statement_timeout` (500 ms) and a margin
/// (500 ms). The test allows half a second more.
const ROUND_TRIP: Duration = Duration::from_millis(1_000);

fn given_up_within(started: Instant, bound: Duration) {
    let took = started.elapsed();
    assert!(
        took >= bound.saturating_sub(Duration::from_millis(100))
            && took < bound + Duration::from_millis(500),
        "given up after {took:?}, not about {bound:?}"
    );
}

#[test]
fn a_frozen_server_is_a_503_within_a_second_and_then_the_sessions_go_on() {
    let server = server();
    let store = store_at(&server.url());
    let k = key();
    let mut holder = store.lock(&k, wait()).unwrap();
    holder.save(&counted(1)).unwrap();
    holder.load().unwrap();
    // An idle connection, for the next call.
    assert!(store.exists(&k).unwrap());
    server.freeze();
    // It is given up after a round trip, and not tried again on a new one.
    let started = Instant::now();
    let err = store.peek(&k).unwrap_err();
    given_up_within(started, ROUND_TRIP);
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    // In the middle of a request: the server took the statement and says nothing more.
    let started = Instant::now();
    let err = holder.load().unwrap_err();
    given_up_within(started, ROUND_TRIP);
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    let text = pso::ErrorChain(&err).to_string();
    assert!(
        text.contains("reading a locked session") && text.contains("no answer within 1000 ms"),
        "{text}"
    );
    // Its lock went with its connection: nothing more is tried on it.
    let started = Instant::now();
    assert_eq!(
        holder.save(&counted(2)).unwrap_err().kind(),
        ErrorKind::LockLost
    );
    assert!(started.elapsed() < Duration::from_millis(100));
    // The idle connections went too (a connection that failed takes them with it). A new
    // connection: its login is given up (LOGIN_TIMEOUT).
    let started = Instant::now();
    let err = store.lock(&k, wait()).err().unwrap();
    given_up_within(started, Duration::from_secs(2));
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(
        pso::ErrorChain(&err)
            .to_string()
            .contains("no login within"),
        "{err}"
    );
    server.thaw();
    // The server sees the closed connections and frees the lock: what was saved is there.
    let mut next = store.lock(&k, wait()).unwrap();
    assert_eq!(next.load().unwrap(), Some(counted(1)));
    next.save(&counted(2)).unwrap();
    next.release().unwrap();
    assert_eq!(store.peek(&k).unwrap(), Some(counted(2)));
    assert_eq!(
        server.sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"),
        "0"
    );
}

#[test]
fn a_save_into_a_frozen_server_is_a_503_and_loses_nothing_committed() {
    let server = server();
    let store = store_at(&server.url());
    let k = key();
    let mut holder = store.lock(&k, wait()).unwrap();
    holder.save(&counted(1)).unwrap();
    server.freeze();
    let started = Instant::now();
    let err = holder.save(&counted(2)).unwrap_err();
    given_up_within(started, ROUND_TRIP);
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(holder.release().is_err());
    server.thaw();
    // The save was sent before the server froze: it may be committed once the server goes
    // on (the request's 503 did not say otherwise), but what was committed before stays.
    let mut next = store.lock(&k, wait()).unwrap();
    let n: u64 = next.load().unwrap().unwrap().get("n").unwrap().unwrap();
    assert!(n == 1 || n == 2, "{n}");
    next.save(&counted(n + 1)).unwrap();
    next.release().unwrap();
    assert_eq!(store.peek(&k).unwrap(), Some(counted(n + 1)));
}

#[test]
fn a_lock_waited_for_longer_than_a_round_trip_is_not_given_up() {
    let server = server();
    let store = store_at(&server.url());
    let k = key();
    let mut holder = store.lock(&k, wait()).unwrap();
    holder.save(&counted(1)).unwrap();
    let waiter = {
        let store = store.clone();
        let k = k.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut lock = store.lock(&k, wait()).unwrap();
            let waited = started.elapsed();
            let record = lock.load().unwrap();
            lock.release().unwrap();
            (waited, record)
        })
    };
    std::thread::sleep(Duration::from_millis(2_000));
    holder.release().unwrap();
    let (waited, record) = waiter.join().unwrap();
    assert!(waited >= Duration::from_millis(1_500), "{waited:?}");
    assert_eq!(record, Some(counted(1)));
}

#[test]
fn a_fastcgi_process_answers_503s_while_postgres_is_frozen_then_counts_on() {
    let server = server();
    let dir = tempfile::tempdir().unwrap();
    let url = server.url();
    let mut process = FcgiProcess::start(
        RELOAD.as_str().as_ref(),
        &[("PSOSessionStore", &url)],
        &dir.path().join("stderr"),
    );
    let cookie = process.get("", &[]).cookie().unwrap();
    assert!(
        process
            .get("", &[("HTTP_COOKIE", &cookie)])
            .body()
            .contains("2 times")
    );
    let site = counter_site(url.clone());
    let other = site.get(None).cookie();
    server.freeze();
    // Its kept connection: given up after a round trip.
    let asked = Instant::now();
    let down = process.get("", &[("HTTP_COOKIE", &cookie)]);
    assert!(down.status().contains("503"), "{}", down.text());
    given_up_within(asked, ROUND_TRIP);
    let logged = String::from_utf8_lossy(&down.stderr).into_owned();
    assert!(logged.contains("no answer within 1000 ms"), "{logged}");
    // A new connection: after the login's bound.
    let asked = Instant::now();
    let down = process.get("", &[("HTTP_COOKIE", &cookie)]);
    assert!(down.status().contains("503"), "{}", down.text());
    given_up_within(asked, Duration::from_secs(2));
    let logged = String::from_utf8_lossy(&down.stderr).into_owned();
    assert!(logged.contains("no login within 2000 ms"), "{logged}");
    // A CGI run: the same.
    let asked = Instant::now();
    let reply = Reply::from_output(site.command(Some(&other)).output().unwrap());
    assert!(
        asked.elapsed() < Duration::from_millis(2_500),
        "a bounded answer"
    );
    assert_unavailable(&reply, &server);
    server.thaw();
    let back = process.get("", &[("HTTP_COOKIE", &cookie)]);
    assert!(back.body().contains("3 times"), "{}", back.text());
    assert_eq!(site.get(Some(&other)).count(), 2);
    assert!(process.alive());
    process.terminate();
}

/// A TCP proxy to the server that can go silent: while it is, what clients send is swallowed
/// and nothing comes back, as from a pooler or a peer that took a query and never answers
/// (its kernel acknowledges everything, so TCP sees no fault).
struct SilentProxy {
    port: u16,
    silent: Arc<std::sync::atomic::AtomicBool>,
}

impl SilentProxy {
    fn start(server_port: u16) -> SilentProxy {
        use std::net::{TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let silent = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let swallow = silent.clone();
        // Its threads end with the test's process.
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(upstream) = TcpStream::connect(("127.0.0.1", server_port)) else {
                    continue;
                };
                let (back_from, back_to) =
                    (upstream.try_clone().unwrap(), client.try_clone().unwrap());
                let swallow = swallow.clone();
                std::thread::spawn(move || pump(client, upstream, Some(swallow)));
                std::thread::spawn(move || pump(back_from, back_to, None));
            }
        });
        SilentProxy { port, silent }
    }

    fn url(&self) -> String {
        format!("postgres://pso@127.0.0.1:{}/postgres", self.port)
    }

    fn go_silent(&self, silent: bool) {
        self.silent
            .store(silent, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Copies `from` to `to` until either ends; drops what it reads while `swallow` is set.
fn pump(
    mut from: std::net::TcpStream,
    mut to: std::net::TcpStream,
    swallow: Option<Arc<std::sync::atomic::AtomicBool>>,
) {
    use std::io::Read;
    let mut buf = [0u8; 16_384];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if swallow
                    .as_ref()
                    .is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst))
                {
                    continue;
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

#[test]
fn a_peer_that_takes_a_query_and_never_answers_is_a_503_within_a_second() {
    let server = server();
    let proxy = SilentProxy::start(server.port);
    let store = store_at(&proxy.url());
    let k = key();
    let mut holder = store.lock(&k, wait()).unwrap();
    holder.save(&counted(1)).unwrap();
    proxy.go_silent(true);
    let started = Instant::now();
    let err = holder.save(&counted(2)).unwrap_err();
    given_up_within(started, ROUND_TRIP);
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    let text = pso::ErrorChain(&err).to_string();
    assert!(
        text.contains(&format!("PostgreSQL at {}: saving a session", proxy.url()))
            && text.contains("no answer within 1000 ms"),
        "{text}"
    );
    assert_eq!(holder.release().unwrap_err().kind(), ErrorKind::LockLost);
    // A new connection whose login goes unanswered.
    let started = Instant::now();
    let err = store.peek(&k).unwrap_err();
    given_up_within(started, Duration::from_secs(2));
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    proxy.go_silent(false);
    // The given-up connection closed, so the server let go of its lock; the swallowed save
    // never reached it.
    let mut next = store.lock(&k, wait()).unwrap();
    assert_eq!(next.load().unwrap(), Some(counted(1)));
    next.save(&counted(2)).unwrap();
    next.release().unwrap();
    // A kept connection that goes unanswered.
    proxy.go_silent(true);
    let started = Instant::now();
    let err = store.exists(&k).unwrap_err();
    given_up_within(started, ROUND_TRIP);
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    proxy.go_silent(false);
    assert_eq!(store.peek(&k).unwrap(), Some(counted(2)));
}

#[test]
fn a_record_over_the_size_limit_is_corrupt_without_being_read() {
    let server = server();
    let store = store_at(&server.url());
    let k = key();
    let mut big = counted(1);
    big.set("blob", &vec![7u8; 10_000]).unwrap();
    store.lock(&k, wait()).unwrap().save(&big).unwrap();
    let small = store_at(&server.url()).with_max_bytes(1_000);
    assert_eq!(small.peek(&k).unwrap_err().kind(), ErrorKind::Corrupt);
    let mut lock = small.lock(&k, wait()).unwrap();
    assert_eq!(lock.load().unwrap_err().kind(), ErrorKind::Corrupt);
}

#[test]
fn open_server_opens_a_postgres_url() {
    let server = server();
    let StoreLocation::Server(url) = StoreLocation::parse(&server.url()).unwrap() else {
        unreachable!()
    };
    let store = pso::store::open_server(&url, None, 1 << 20).unwrap();
    let k = key();
    store.lock(&k, wait()).unwrap().save(&counted(5)).unwrap();
    assert_eq!(store.peek(&k).unwrap(), Some(counted(5)));
    let version = store_at(&server.url()).server_version().unwrap();
    assert!(
        version.starts_with(|c: char| c.is_ascii_digit()),
        "{version}"
    );
}

/// `pso sessions init` makes the table as a role that may, so that the site's role needs no
/// right to create; then `pso sessions` lists, counts, shows, removes and collects there.
#[test]
fn pso_sessions_init_makes_the_table_for_a_role_that_cannot_and_the_tools_work() {
    let server = server();
    let port = server
        .url()
        .rsplit_once(':')
        .unwrap()
        .1
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    server
        .admin()
        .batch_execute("CREATE ROLE web LOGIN PASSWORD 'w3b'")
        .unwrap();
    let web = format!("postgres://web:w3b@127.0.0.1:{port}/postgres");
    let pso = |store: &str, args: &[&str]| {
        let output = std::process::Command::new(common::helper())
            .arg("sessions")
            .args(args)
            .env_clear()
            .env("PSOSessionStore", store)
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let site = counter_site(web.clone());
    // The site's role may not create the table: its requests fail until someone does.
    let refused = site.get(None);
    assert!(refused.status().starts_with("Status: 5"), "{refused:?}");
    assert!(
        !pso(&web, &["init"]).0,
        "the site's role cannot make the table"
    );
    for _ in 0..2 {
        let (ok, made, err) = pso(&server.url(), &["init"]);
        assert!(ok && made.contains("pso_sessions"), "{made}{err}");
    }
    server
        .admin()
        .batch_execute("GRANT SELECT, INSERT, UPDATE, DELETE ON pso_sessions TO web")
        .unwrap();
    let cookies: Vec<String> = (0..3).map(|_| site.get(None).cookie()).collect();
    assert_eq!(site.get(Some(&cookies[1])).count(), 2);
    let (ok, list, err) = pso(&web, &["list"]);
    assert!(ok, "{err}");
    for cookie in &cookies {
        assert!(list.contains(&id_of(cookie)[..12]), "{list}");
    }
    let (ok, stats, _) = pso(&web, &["stats"]);
    assert!(
        ok && stats.contains("sessions     3 (0 expired)"),
        "{stats}"
    );
    let (ok, shown, _) = pso(&web, &["show", id_of(&cookies[1])]);
    assert!(
        ok && shown.contains("reloads") && shown.contains('2'),
        "{shown}"
    );
    let (ok, gc, err) = pso(&web, &["gc"]);
    assert!(ok, "{gc}{err}");
    let (ok, _, err) = pso(&web, &["rm", id_of(&cookies[0])]);
    assert!(ok, "{err}");
    assert_eq!(
        server.sql("SELECT count(*) FROM pso_sessions WHERE record IS NOT NULL"),
        "2"
    );
    assert_eq!(site.get(Some(&cookies[0])).count(), 1);
    // Nothing of the password in what the tools print.
    assert!(!format!("{list}{stats}{shown}{gc}").contains("w3b"));
}

/// Not a check but a measure, for comparing changes: a request's round trips through the
/// store (lock, load, save, release) over TCP loopback, timed over `PSO_CYCLES` cycles (2,000).
/// `cargo test --all-features --test postgres -- --ignored --nocapture cycles`
#[test]
#[ignore]
fn cycles_of_lock_load_save_release_timed() {
    let server = server();
    let store = store_at(&server.url());
    let k = key();
    let cycles: u64 = std::env::var("PSO_CYCLES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_000);
    for n in 0..100 {
        let mut lock = store.lock(&k, wait()).unwrap();
        lock.load().unwrap();
        lock.save(&counted(n)).unwrap();
        lock.release().unwrap();
    }
    let started = Instant::now();
    for n in 0..cycles {
        let mut lock = store.lock(&k, wait()).unwrap();
        lock.load().unwrap();
        lock.save(&counted(n)).unwrap();
        lock.release().unwrap();
    }
    let per_cycle = started.elapsed() / u32::try_from(cycles).unwrap();
    eprintln!("{cycles} cycles: {} µs per cycle", per_cycle.as_micros());
}
