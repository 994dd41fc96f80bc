//! Sessions in a real Redis (`redis-server` from Debian, started by each test): the store
//! suite, the reload counter as CGI and FastCGI, leases of killed holders, a server that goes
//! away and comes back, passwords.

#![cfg(feature = "redis")]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::fcgi::FcgiProcess;
use common::redis::{RedisCluster, RedisServer};
use common::{Reply, Site};
use pso::store::{LockOptions, RedisStore, SessionKey, Store, StoreLocation};
use pso::{ErrorKind, Meta, Record, SessionId};

static RELOAD: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| common::example("reload"));

fn server() -> RedisServer {
    RedisServer::start().expect("redis-server is not installed (apt install redis-server)")
}

fn store_at(url: &str) -> RedisStore {
    let StoreLocation::Server(url) = StoreLocation::parse(url).unwrap() else {
        panic!("not a server: {url}")
    };
    RedisStore::open(&url, None).unwrap()
}

/// A store whose locks are not renewed while held: what a stalled process (stopped, paging,
/// cut off from Redis for a whole lease) leaves behind, or, for a lock forgotten with
/// `mem::forget`, a killed one.
fn stalling_store_at(url: &str) -> RedisStore {
    store_at(url).with_lease_renewal(false)
}

#[cfg(feature = "store-suite")]
mod suite {
    pso::store_suite!(|| {
        let server = super::server();
        let store = std::sync::Arc::new(super::store_at(&server.url()));
        (server, store)
    });
}

/// The suite on a site moving from files to Redis: what requests see must not change.
#[cfg(feature = "store-suite")]
mod moving_from_files_suite {
    pso::store_suite!(|| {
        let server = super::server();
        let dir = tempfile::tempdir().unwrap();
        let files = pso::store::FileStore::open(dir.path().join("sessions")).unwrap();
        let store = std::sync::Arc::new(pso::store::MovingStore::new(
            std::sync::Arc::new(super::store_at(&server.url())),
            std::sync::Arc::new(files),
        ));
        ((server, dir), store)
    });
}

fn counter_site(server: &RedisServer) -> Site {
    let mut site = Site::new(RELOAD.as_str());
    site.set("PSOSessionStore", server.url());
    site
}

fn session_key(cookie: &str) -> String {
    format!("pso:{{reload:{}}}", cookie.split_once('=').unwrap().1)
}

#[test]
fn the_counter_counts_one_two_three_as_cgi_with_no_file_written() {
    let server = server();
    let site = counter_site(&server);
    let first = site.get(None);
    assert_eq!(first.count(), 1, "{first:?}");
    let cookie = first.cookie();
    assert_eq!(site.get(Some(&cookie)).count(), 2);
    assert_eq!(site.get(Some(&cookie)).count(), 3);
    assert!(site.files().is_empty(), "{:?}", site.files());
    let key = session_key(&cookie);
    assert_eq!(server.cli(&["EXISTS", &key]), "1");
    // Browser-close session: Redis drops it a day (PSOSessionGCMaxLifetime) and an hour after
    // its last use.
    let ttl: u64 = server.cli(&["TTL", &key]).parse().unwrap();
    assert!((86_400..=90_000).contains(&ttl), "{ttl}");
    // No lock, wake-up list or waiter count is left behind.
    let keys = server.cli(&["KEYS", "*"]);
    assert_eq!(keys, key, "{keys}");
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
    assert_eq!(server.cli(&["DBSIZE"]), "1");
    process.terminate();
}

fn key() -> SessionKey {
    SessionKey::new("svc".parse().unwrap(), SessionId::generate().unwrap())
}

fn counted(n: u64) -> Record {
    let mut record = Record::new(Meta::new(1_900_000_000));
    record.set("n", &n).unwrap();
    record
}

#[test]
fn a_holder_that_never_lets_go_blocks_its_session_at_most_its_lease() {
    let server = server();
    let store = stalling_store_at(&server.url());
    let k = key();
    let short = LockOptions::new(Duration::from_secs(10)).with_lease(Duration::from_secs(1));
    let mut lock = store.lock(&k, short).unwrap();
    lock.save(&counted(1)).unwrap();
    // A process killed now sends no release: forget the lock as it would.
    std::mem::forget(lock);
    let started = Instant::now();
    let mut next = store.lock(&k, short).unwrap();
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(5), "waited {waited:?}");
    assert_eq!(
        next.load().unwrap(),
        Some(counted(1)),
        "what was saved stays"
    );
    next.save(&counted(2)).unwrap();
    next.release().unwrap();
    assert_eq!(store.peek(&k).unwrap(), Some(counted(2)));
}

#[test]
fn a_holder_whose_lease_ran_out_writes_nothing_over_the_next_holder() {
    let server = server();
    let store = stalling_store_at(&server.url());
    let k = key();
    let short = LockOptions::new(Duration::from_secs(10)).with_lease(Duration::from_secs(1));
    let mut late = store.lock(&k, short).unwrap();
    late.save(&counted(1)).unwrap();
    std::thread::sleep(Duration::from_millis(1_200));
    let mut next = store
        .lock(&k, LockOptions::new(Duration::from_secs(10)))
        .unwrap();
    next.save(&counted(7)).unwrap();
    assert_eq!(
        late.save(&counted(99)).unwrap_err().kind(),
        ErrorKind::LockLost
    );
    assert_eq!(late.renew().unwrap_err().kind(), ErrorKind::LockLost);
    assert_eq!(late.release().unwrap_err().kind(), ErrorKind::LockLost);
    // The late holder's release did not free the next holder's lock.
    let busy = LockOptions::new(Duration::ZERO);
    assert_eq!(
        store.lock(&k, busy).err().unwrap().kind(),
        ErrorKind::LockTimeout
    );
    drop(next);
    assert_eq!(store.peek(&k).unwrap(), Some(counted(7)));
}

#[test]
fn a_long_request_whose_session_nobody_wanted_saves_after_its_lease() {
    let server = server();
    let store = stalling_store_at(&server.url());
    let k = key();
    let short = LockOptions::new(Duration::from_secs(10)).with_lease(Duration::from_secs(1));
    let mut lock = store.lock(&k, short).unwrap();
    lock.save(&counted(1)).unwrap();
    std::thread::sleep(Duration::from_millis(1_200));
    // Nobody took the lock or changed the record: the save takes the lock again.
    lock.save(&counted(2)).unwrap();
    let busy = LockOptions::new(Duration::ZERO);
    assert_eq!(
        store.lock(&k, busy).err().unwrap().kind(),
        ErrorKind::LockTimeout
    );
    lock.release().unwrap();
    // Someone read it meanwhile without changing it: the same.
    let mut lock = store.lock(&k, short).unwrap();
    std::thread::sleep(Duration::from_millis(1_200));
    store.lock(&k, busy).unwrap().release().unwrap();
    lock.save(&counted(3)).unwrap();
    drop(lock);
    // Someone changed it meanwhile: the late save is lost, not the change.
    let mut lock = store.lock(&k, short).unwrap();
    std::thread::sleep(Duration::from_millis(1_200));
    let mut other = store.lock(&k, busy).unwrap();
    other.save(&counted(30)).unwrap();
    other.release().unwrap();
    assert_eq!(
        lock.save(&counted(4)).unwrap_err().kind(),
        ErrorKind::LockLost
    );
    drop(lock);
    assert_eq!(store.peek(&k).unwrap(), Some(counted(30)));
}

#[test]
fn the_last_save_lets_go_in_the_same_round_trip() {
    let server = server();
    let store = store_at(&server.url());
    let k = key();
    let mut lock = store
        .lock(&k, LockOptions::new(Duration::from_secs(5)))
        .unwrap();
    lock.save_and_release(&counted(1)).unwrap();
    // Free before the first lock is even dropped.
    let mut next = store.lock(&k, LockOptions::new(Duration::ZERO)).unwrap();
    assert_eq!(next.load().unwrap(), Some(counted(1)));
    next.save(&counted(2)).unwrap();
    drop(lock);
    // Dropping the first lock did not free the second's.
    let busy = LockOptions::new(Duration::ZERO);
    assert_eq!(
        store.lock(&k, busy).err().unwrap().kind(),
        ErrorKind::LockTimeout
    );
}

#[test]
fn a_lease_is_renewed_while_its_holder_runs_past_it() {
    let server = server();
    let store = Arc::new(store_at(&server.url()));
    let k = key();
    let short = LockOptions::new(Duration::from_secs(10)).with_lease(Duration::from_secs(1));
    let mut lock = store.lock(&k, short).unwrap();
    lock.save(&counted(1)).unwrap();
    // Another request asks all along, for longer than three leases: it never gets the lock.
    let (store2, k2) = (store.clone(), k.clone());
    let waiter = std::thread::spawn(move || {
        store2
            .lock(&k2, LockOptions::new(Duration::from_millis(3_500)))
            .err()
            .map(|e| e.kind())
    });
    // The holder runs on without a save, which would renew its lease itself.
    std::thread::sleep(Duration::from_millis(3_200));
    let lock_key = format!("pso:{{svc:{}}}:lock", k.id);
    let ttl: i64 = server.cli(&["PTTL", &lock_key]).parse().unwrap();
    assert!(ttl > 0, "the lock's lease lapsed: {ttl}");
    assert_eq!(waiter.join().unwrap(), Some(ErrorKind::LockTimeout));
    assert_eq!(
        store
            .lock(&k, LockOptions::new(Duration::ZERO))
            .err()
            .map(|e| e.kind()),
        Some(ErrorKind::LockTimeout)
    );
    // Its save lands, and nothing anyone else wrote was there to be lost.
    lock.save_and_release(&counted(2)).unwrap();
    assert_eq!(store.peek(&k).unwrap(), Some(counted(2)));
    drop(lock);
}

#[test]
fn a_lock_let_go_is_renewed_no_more() {
    let server = server();
    let store = store_at(&server.url());
    let stalling = stalling_store_at(&server.url());
    let k = key();
    let lock_key = format!("pso:{{svc:{}}}:lock", k.id);
    let short = LockOptions::new(Duration::from_secs(10)).with_lease(Duration::from_secs(1));
    let busy = LockOptions::new(Duration::ZERO);
    // Released, saved and released, dropped: each way of letting go.
    for way in 0..3 {
        let mut lock = store.lock(&k, short).unwrap();
        match way {
            0 => lock.release().unwrap(),
            1 => lock.save_and_release(&counted(way)).unwrap(),
            _ => drop(lock),
        }
        assert_eq!(server.cli(&["EXISTS", &lock_key]), "0", "way {way}");
        // The next holder dies holding it (it renews nothing): the lock lapses after its
        // own lease, so nobody renewed it for the holder before.
        std::mem::forget(stalling.lock(&k, short).unwrap());
        std::thread::sleep(Duration::from_millis(1_500));
        assert_eq!(server.cli(&["EXISTS", &lock_key]), "0", "way {way}");
        store.lock(&k, busy).unwrap().release().unwrap();
    }
}

#[test]
fn a_renewed_lease_outlives_its_first_term() {
    let server = server();
    let store = store_at(&server.url());
    let k = key();
    let short = LockOptions::new(Duration::from_secs(10)).with_lease(Duration::from_secs(1));
    let mut lock = store.lock(&k, short).unwrap();
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(600));
        lock.renew().unwrap();
    }
    lock.save(&counted(3)).unwrap();
}

#[test]
fn too_many_waiters_are_turned_away_at_once() {
    let server = server();
    let store = Arc::new(store_at(&server.url()));
    let k = key();
    let held = store.lock(&k, LockOptions::new(Duration::ZERO)).unwrap();
    let waiters: Vec<_> = (0..pso::store::redis::MAX_WAITERS + 8)
        .map(|_| {
            let (store, k) = (store.clone(), k.clone());
            std::thread::spawn(move || {
                store
                    .lock(&k, LockOptions::new(Duration::from_secs(3)))
                    .err()
                    .map(|e| e.kind())
            })
        })
        .collect();
    let kinds: Vec<_> = waiters.into_iter().map(|w| w.join().unwrap()).collect();
    drop(held);
    assert!(
        kinds.iter().all(|k| *k == Some(ErrorKind::LockTimeout)),
        "{kinds:?}"
    );
    // The count of waiters went back to nothing.
    let waiting = format!("pso:{{svc:{}}}:waiting", k.id);
    assert_eq!(server.cli(&["EXISTS", &waiting]), "0");
}

#[test]
fn a_release_wakes_a_waiter() {
    let server = server();
    let store = Arc::new(store_at(&server.url()));
    let k = key();
    let mut held = store.lock(&k, LockOptions::new(Duration::ZERO)).unwrap();
    held.save(&counted(1)).unwrap();
    let (store2, k2) = (store.clone(), k.clone());
    let waiter = std::thread::spawn(move || {
        let mut lock = store2
            .lock(&k2, LockOptions::new(Duration::from_secs(10)))
            .unwrap();
        let n: u64 = lock.load().unwrap().unwrap().get("n").unwrap().unwrap();
        lock.save(&counted(n + 1)).unwrap();
    });
    std::thread::sleep(Duration::from_millis(300));
    held.save(&counted(5)).unwrap();
    held.release().unwrap();
    waiter.join().unwrap();
    assert_eq!(store.peek(&k).unwrap(), Some(counted(6)));
}

fn assert_unavailable(reply: &Reply, server: &RedisServer) {
    assert_eq!(
        reply.status(),
        "Status: 503 Service Unavailable",
        "{reply:?}"
    );
    assert!(reply.head.contains("Retry-After: "), "{reply:?}");
    let lines: Vec<&str> = reply.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one log line: {lines:?}");
    assert!(
        lines[0].contains(&format!("Redis at redis://127.0.0.1:{}/0", server.port)),
        "{lines:?}"
    );
}

#[test]
fn a_redis_that_goes_away_gives_503s_then_the_sessions_go_on() {
    // Every write on disk before it is acknowledged: nothing acknowledged may be lost.
    let Some(mut server) =
        RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"])
    else {
        return;
    };
    let site = counter_site(&server);
    let cookie = site.get(None).cookie();
    assert_eq!(site.get(Some(&cookie)).count(), 2);
    server.stop();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        let reply = Reply::from_output(site.command(Some(&cookie)).output().unwrap());
        assert_unavailable(&reply, &server);
        std::thread::sleep(Duration::from_millis(300));
    }
    server.restart();
    assert_eq!(site.get(Some(&cookie)).count(), 3);
    assert_eq!(site.get(Some(&cookie)).count(), 4);
}

#[test]
fn a_fastcgi_process_reconnects_after_redis_comes_back() {
    let Some(mut server) =
        RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"])
    else {
        return;
    };
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
    let Some(server) = RedisServer::start_with(&["--requirepass", "s3cret-pw"]) else {
        return;
    };
    let mut site = counter_site(&server);
    // No password: refused by the server, a 500 and a line in the log without any secret.
    let refused = Reply::from_output(site.command(None).output().unwrap());
    assert_eq!(
        refused.status(),
        "Status: 500 Internal Server Error",
        "{refused:?}"
    );
    // In the URL.
    site.set(
        "PSOSessionStore",
        format!("redis://:s3cret-pw@127.0.0.1:{}/0", server.port),
    );
    let first = site.get(None);
    assert_eq!(first.count(), 1, "{first:?}");
    // In a file of ours that nobody else may read.
    let file = site.root.path().join("redis.pass");
    std::fs::write(&file, "s3cret-pw\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    site.set("PSOSessionStore", server.url());
    site.set("PSOSessionStorePasswordFile", &file);
    assert_eq!(site.get(Some(&first.cookie())).count(), 2);
    // A file others may read is refused, and says so.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let open = Reply::from_output(site.command(None).output().unwrap());
    assert_eq!(open.status(), "Status: 500 Internal Server Error");
    assert!(open.stderr.contains("0600"), "{open:?}");
    // The password is never printed, whatever went wrong; a wrong one neither.
    site.set(
        "PSOSessionStore",
        format!("redis://:wrong-pw@127.0.0.1:{}/0", server.port),
    );
    site.unset("PSOSessionStorePasswordFile");
    let wrong = Reply::from_output(site.command(None).output().unwrap());
    assert_eq!(wrong.status(), "Status: 500 Internal Server Error");
    for reply in [&refused, &first, &open, &wrong] {
        let all = format!("{}{}{}", reply.head, reply.body, reply.stderr);
        assert!(
            !all.contains("s3cret") && !all.contains("wrong-pw"),
            "{all}"
        );
    }
}

/// pso logs in itself on a connection to one server: the password alone, a user and password
/// (an ACL user), over RESP2 or RESP3 (`HELLO 3 AUTH`), and the database the URL names.
#[test]
fn a_urls_user_password_protocol_and_database_are_used() {
    let Some(server) = RedisServer::start_with(&["--requirepass", "s3cret-pw"]) else {
        return;
    };
    server.cli(&[
        "-a",
        "s3cret-pw",
        "ACL",
        "SETUSER",
        "site",
        "on",
        ">site-pw",
        "~*",
        "+@all",
    ]);
    let port = server.port;
    for (db, url) in [
        (3, format!("redis://:s3cret-pw@127.0.0.1:{port}/3")),
        (
            4,
            format!("redis://:s3cret-pw@127.0.0.1:{port}/4?protocol=resp3"),
        ),
        (5, format!("redis://site:site-pw@127.0.0.1:{port}/5")),
        (
            6,
            format!("redis://site:site-pw@127.0.0.1:{port}/6?protocol=resp3"),
        ),
    ] {
        let store = store_at(&url);
        let k = key();
        let mut lock = store
            .lock(
                &k,
                LockOptions::new(Duration::from_secs(1)).with_create(true),
            )
            .unwrap();
        lock.save_and_release(&counted(db)).unwrap();
        assert_eq!(
            server.cli(&["-a", "s3cret-pw", "-n", &db.to_string(), "DBSIZE"]),
            "1",
            "{url}"
        );
    }
    // A wrong password is refused by the server: an error, not a session.
    let wrong = store_at(&format!("redis://site:wrong-pw@127.0.0.1:{port}/7"));
    assert!(
        wrong
            .lock(&key(), LockOptions::new(Duration::ZERO))
            .is_err()
    );
}

#[test]
fn a_request_cannot_move_the_store_the_process_environment_names() {
    let server = server();
    let process = pso::Environment::from_pairs([
        ("PSOServiceId", "shop"),
        ("PSOSessionStore", server.url().as_str()),
    ]);
    let service = pso::Service::new(process);
    let handler = |cx: &mut pso::Context| {
        cx.session.set("seen", &true)?;
        Ok(())
    };
    // A parameter naming another server (nobody listens on port 1) is ignored, as the store
    // or as the store sessions move from.
    for parameter in ["PSOSessionStore", "PSOSessionStoreMovingFrom"] {
        let request = pso::Environment::from_pairs([
            ("REQUEST_METHOD", "GET"),
            (parameter, "redis://127.0.0.1:1/0"),
        ]);
        let text = served(&service, &request, &handler);
        assert!(text.starts_with("Status: 200 OK"), "{parameter}: {text}");
    }
    assert_eq!(server.cli(&["DBSIZE"]), "2");
}

#[cfg(feature = "redis-cluster")]
mod cluster {
    use super::*;

    fn cluster() -> RedisCluster {
        RedisCluster::start().expect("redis-server is not installed (apt install redis-server)")
    }

    #[cfg(feature = "store-suite")]
    mod suite {
        pso::store_suite!(|| {
            let cluster = super::cluster();
            let store = std::sync::Arc::new(super::super::store_at(&cluster.url()));
            (cluster, store)
        });
    }

    #[test]
    fn the_counter_counts_one_two_three_on_a_cluster_as_cgi_and_fastcgi() {
        let cluster = cluster();
        let mut site = Site::new(RELOAD.as_str());
        site.set("PSOSessionStore", cluster.url());
        let cookie = site.get(None).cookie();
        assert_eq!(site.get(Some(&cookie)).count(), 2);
        assert_eq!(site.get(Some(&cookie)).count(), 3);
        assert_eq!(cluster.dbsize(), 1);
        let dir = tempfile::tempdir().unwrap();
        let url = cluster.url();
        let mut process = FcgiProcess::start(
            RELOAD.as_str().as_ref(),
            &[("PSOSessionStore", &url)],
            &dir.path().join("stderr"),
        );
        let first = process.get("", &[]);
        let cookie = first.cookie().unwrap();
        let answer = process.get("", &[("HTTP_COOKIE", &cookie)]);
        assert!(
            answer.body().contains("You reloaded: 2 times"),
            "{}",
            answer.text()
        );
        process.terminate();
    }

    #[test]
    fn a_primary_killed_fails_over_to_its_replica_and_sessions_go_on() {
        let Some(mut cluster) = RedisCluster::start_with_replicas(1) else {
            return;
        };
        let site = {
            let mut site = Site::new(RELOAD.as_str());
            site.set("PSOSessionStore", cluster.url());
            site
        };
        let cookie = site.get(None).cookie();
        assert_eq!(site.get(Some(&cookie)).count(), 2);
        // Replication is asynchronous: let the last write reach the replica, as it does
        // within milliseconds when nothing fails at that instant.
        let key = session_key(&cookie);
        let primary = cluster.primary_of(&key);
        cluster.wait_replicated(primary);
        cluster.nodes[primary].stop();
        // While the cluster notices (cluster-node-timeout 2 s) and promotes the replica:
        // 503s, each within the timeouts, never a crash; then the count goes on.
        let started = Instant::now();
        let mut unavailable = 0;
        let mut last = None;
        let count = loop {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no failover: {last:?}\n{}",
                cluster
                    .nodes
                    .iter()
                    .find(|n| n.answers())
                    .unwrap()
                    .cli(&["CLUSTER", "NODES"])
            );
            let reply = Reply::from_output(site.command(Some(&cookie)).output().unwrap());
            if reply.status() == "Status: 200 OK" {
                break reply.count();
            }
            assert!(reply.status().contains("503"), "{reply:?}");
            last = Some(reply);
            unavailable += 1;
            std::thread::sleep(Duration::from_millis(200));
        };
        eprintln!(
            "failover: {unavailable} requests got a 503, the first success {:?} after the kill",
            started.elapsed()
        );
        assert_eq!(count, 3, "after {unavailable} 503s");
        assert_eq!(site.get(Some(&cookie)).count(), 4);
    }

    #[test]
    fn sessions_are_listed_across_every_primary() {
        let cluster = cluster();
        let store = store_at(&cluster.url());
        let keys: Vec<SessionKey> = (0..60).map(|_| key()).collect();
        for k in &keys {
            let mut lock = store
                .lock(k, LockOptions::new(Duration::from_secs(5)))
                .unwrap();
            lock.save(&counted(1)).unwrap();
        }
        // Spread over the three primaries, and every one listed.
        assert!(
            cluster
                .nodes
                .iter()
                .all(|node| node.cli(&["DBSIZE"]) != "0")
        );
        let mut listed: Vec<SessionKey> = store.keys().unwrap().map(Result::unwrap).collect();
        listed.sort();
        let mut expected = keys.clone();
        expected.sort();
        assert_eq!(listed, expected);
    }
}

#[test]
fn a_holder_killed_while_it_reads_its_body_blocks_the_session_at_most_the_lease() {
    let server = server();
    let mut site = counter_site(&server);
    site.set("PSOServiceId", "shop")
        .set("PSOSessionLockLease", "2")
        .set("PSOSessionLockTimeout", "20");
    let cookie = site.get(None).cookie();
    // The login program, on the same session, posts a form whose body never comes: it holds
    // the session's lock while it waits for it.
    let mut command = std::process::Command::new(common::example("login"));
    command.env_clear();
    for (name, value) in site.command(Some(&cookie)).get_envs() {
        if let Some(value) = value {
            command.env(name, value);
        }
    }
    command
        .env("REQUEST_METHOD", "POST")
        .env("CONTENT_TYPE", "application/x-www-form-urlencoded")
        .env("CONTENT_LENGTH", "100")
        .env("HTTP_SEC_FETCH_SITE", "same-origin");
    let mut holder = command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let lock = format!("pso:{{shop:{}}}:lock", cookie.split_once('=').unwrap().1);
    let started = Instant::now();
    while server.cli(&["EXISTS", &lock]) != "1" {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the holder never locked"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    holder.kill().unwrap();
    holder.wait().unwrap();
    // The next request waits for the lease (2 s), not the lock timeout (20 s), and what was
    // saved before is all there.
    let next = site.get(Some(&cookie));
    assert_eq!(next.count(), 2, "{next:?}");
}

/// One "machine": a service of its own (its own connections), on the shared Redis.
fn machine(redis: &RedisServer) -> pso::Service {
    pso::Service::new(pso::Environment::from_pairs([
        ("PSOServiceId", "shop"),
        ("PSOSessionStore", redis.url().as_str()),
        ("PSOSessionRegenerateGrace", "30"),
    ]))
}

/// A request through `service` with `cookie` and `query`: the response as text.
fn visit(service: &pso::Service, cookie: Option<&str>, query: &str) -> String {
    let mut pairs = vec![
        ("REQUEST_METHOD", "GET"),
        ("REMOTE_ADDR", "192.0.2.7"),
        ("QUERY_STRING", query),
    ];
    if let Some(cookie) = cookie {
        pairs.push(("HTTP_COOKIE", cookie));
    }
    let request = pso::Environment::from_pairs(pairs);
    let handler = |cx: &mut pso::Context| -> Result<(), pso::BoxError> {
        use std::io::Write;
        match cx.request.query("do").as_deref() {
            Some("sign-in") => {
                cx.session.regenerate_id()?;
                cx.session.set_user("ada")?;
            }
            Some("everywhere") => cx.session.log_out_everywhere()?,
            _ => {}
        }
        let mut n: u64 = cx.session.get("n")?.unwrap_or(0);
        // Through an old id the session is there to read, not to change.
        if cx.session.origin() != pso::Origin::Moved {
            n += 1;
            cx.session.set("n", &n)?;
        }
        write!(
            cx.response,
            "n={n} user={:?} origin={:?}",
            cx.session.user(),
            cx.session.origin()
        )?;
        Ok(())
    };
    served(service, &request, &handler)
}

/// What `service` answers `request` with, as text.
fn served(
    service: &pso::Service,
    request: &pso::Environment,
    handler: &impl pso::Handler,
) -> String {
    let mut output = Vec::new();
    service
        .serve(
            request,
            &mut std::io::empty(),
            &mut output,
            handler,
            std::time::SystemTime::now(),
        )
        .unwrap();
    String::from_utf8(output).unwrap()
}

fn cookie_of(response: &str) -> String {
    response
        .lines()
        .find_map(|l| l.strip_prefix("Set-Cookie: "))
        .and_then(|c| c.split(';').next())
        .unwrap_or_else(|| panic!("no cookie: {response}"))
        .to_owned()
}

#[test]
fn log_out_everywhere_on_one_machine_signs_out_the_other() {
    let redis = server();
    let (a, b) = (machine(&redis), machine(&redis));
    // Two browsers sign in as ada, one through each machine.
    let first = cookie_of(&visit(&a, None, ""));
    let laptop = cookie_of(&visit(&a, Some(&first), "do=sign-in"));
    let second = cookie_of(&visit(&b, None, ""));
    let phone = cookie_of(&visit(&b, Some(&second), "do=sign-in"));
    assert!(visit(&b, Some(&laptop), "").contains("user=Some(\"ada\")"));
    assert!(visit(&a, Some(&phone), "").contains("user=Some(\"ada\")"));
    // The phone signs out everywhere through machine b: the laptop, served by a, is out.
    visit(&b, Some(&phone), "do=everywhere");
    let after = visit(&a, Some(&laptop), "");
    assert!(after.contains("user=None"), "{after}");
    assert!(after.contains("LoggedOut"), "{after}");
}

#[test]
fn a_session_regenerated_on_one_machine_is_followed_on_the_other() {
    let redis = server();
    let (a, b) = (machine(&redis), machine(&redis));
    let old = cookie_of(&visit(&a, None, ""));
    let new = cookie_of(&visit(&a, Some(&old), "do=sign-in"));
    assert_ne!(old, new);
    // A request already under way with the old id, served by the other machine, reads the
    // session through it (and cannot change it); the new id carries on.
    let late = visit(&b, Some(&old), "");
    assert!(late.contains("origin=Moved"), "{late}");
    let next = visit(&b, Some(&new), "");
    assert!(
        next.contains("n=3") && next.contains("user=Some(\"ada\")"),
        "{next}"
    );
}

#[test]
fn an_idle_session_ends_and_its_ttl_follows_the_idle_limit() {
    let redis = server();
    let mut site = counter_site(&redis);
    site.set("PSOSessionIdle", "1");
    let cookie = site.get(None).cookie();
    let ttl: u64 = redis.cli(&["TTL", &session_key(&cookie)]).parse().unwrap();
    assert!(
        (3_600..=3_601).contains(&ttl),
        "an idle limit of 1 s and the hour kept: {ttl}"
    );
    std::thread::sleep(Duration::from_millis(2_100));
    let after = site.get(Some(&cookie));
    assert_eq!(after.count(), 1, "{after:?}");
}

#[test]
fn pso_sessions_lists_shows_counts_and_removes_sessions_in_redis() {
    let redis = server();
    let site = counter_site(&redis);
    let cookies: Vec<String> = (0..3).map(|_| site.get(None).cookie()).collect();
    let pso = |args: &[&str]| {
        let output = std::process::Command::new(common::helper())
            .args(args)
            .env_clear()
            .env("PSOSessionStore", redis.url())
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (ok, list, _) = pso(&["sessions", "list"]);
    assert!(ok);
    for cookie in &cookies {
        let id = cookie.split_once('=').unwrap().1;
        assert!(list.contains(&id[..12]), "{list}");
    }
    let (ok, stats, _) = pso(&["sessions", "stats"]);
    assert!(
        ok && stats.contains("sessions     3 (0 expired)"),
        "{stats}"
    );
    let id = cookies[0].split_once('=').unwrap().1;
    let (ok, shown, _) = pso(&["sessions", "show", id]);
    assert!(
        ok && shown.contains("reloads") && shown.contains('1'),
        "{shown}"
    );
    let (ok, gc, _) = pso(&["sessions", "gc"]);
    assert!(ok && gc.contains("nothing to collect"), "{gc}");
    let (ok, _, err) = pso(&["sessions", "rm", id]);
    assert!(ok, "{err}");
    assert_eq!(redis.cli(&["DBSIZE"]), "2");
    // The next visit with the removed session's cookie starts again.
    assert_eq!(site.get(Some(&cookies[0])).count(), 1);
    let (ok, config, _) = pso(&["config"]);
    assert!(
        ok && config.contains("Redis 7") && config.contains("no persistence"),
        "{config}"
    );
}

#[test]
fn a_site_moves_from_files_to_redis_and_no_count_is_lost() {
    let redis = server();
    let site = Site::new(RELOAD.as_str());
    let cookies: Vec<String> = (0..20).map(|_| site.get(None).cookie()).collect();
    for round in 0..10 {
        for cookie in &cookies {
            assert_eq!(site.get(Some(cookie)).count(), round + 2);
        }
    }
    let migrate = || {
        let output = std::process::Command::new(common::helper())
            .args(["sessions", "migrate", "--from", "files", "--from-path"])
            .arg(site.sessions())
            .args(["--to", &redis.url()])
            .env_clear()
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let first = migrate();
    assert!(first.starts_with("moved 20 session(s)"), "{first}");
    // Run again (resumed): nothing left to move.
    let again = migrate();
    assert!(again.starts_with("moved 0 session(s)"), "{again}");
    // The switch: every count goes on from where the files left it.
    let mut moved = Site::new(RELOAD.as_str());
    moved.set("PSOSessionStore", redis.url());
    for cookie in &cookies {
        assert_eq!(moved.get(Some(cookie)).count(), 12);
    }
    // A run after the switch finds nothing to move, and changes nothing on the new store.
    let after = migrate();
    assert!(after.starts_with("moved 0 session(s)"), "{after}");
    assert_eq!(moved.get(Some(&cookies[0])).count(), 13);
}

#[cfg(feature = "redis-tls")]
#[test]
fn sessions_go_to_redis_over_tls_and_an_unknown_certificate_is_refused() {
    let Some(redis) = RedisServer::start_tls() else {
        return;
    };
    let mut site = Site::new(RELOAD.as_str());
    site.set(
        "PSOSessionStore",
        format!("rediss://127.0.0.1:{}/0", redis.port),
    );
    // The test's CA is not among the system's roots: refused, logged, no session.
    let refused = Reply::from_output(site.command(None).output().unwrap());
    assert!(refused.status().starts_with("Status: 5"), "{refused:?}");
    assert!(
        refused.stderr.to_lowercase().contains("certificate"),
        "{refused:?}"
    );
    // Trusted through SSL_CERT_FILE, as the system's roots would be.
    site.set("SSL_CERT_FILE", redis.ca.clone().unwrap());
    let cookie = site.get(None).cookie();
    assert_eq!(site.get(Some(&cookie)).count(), 2);
    assert_eq!(redis.cli(&["DBSIZE"]), "1");
}

#[test]
fn requests_naming_many_stores_cannot_lock_the_process_out_of_its_own() {
    let redis = server();
    let service = pso::Service::new(pso::Environment::from_pairs([
        ("PSOServiceId", "shop"),
        ("PSOSessionStore", redis.url().as_str()),
    ]));
    let handler = |cx: &mut pso::Context| {
        cx.session.set("seen", &true)?;
        Ok(())
    };
    let status = |pairs: Vec<(&str, String)>| {
        let mut all = vec![("REQUEST_METHOD", "GET".to_owned())];
        all.extend(pairs);
        let request = pso::Environment::from_pairs(all.iter().map(|(k, v)| (*k, v.as_str())));
        let mut output = Vec::new();
        service
            .serve(
                &request,
                &mut std::io::empty(),
                &mut output,
                &handler,
                std::time::SystemTime::now(),
            )
            .unwrap();
        String::from_utf8(output)
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .to_owned()
    };
    // Each record cap is a store of its own: past 16, requests that ask for more are refused.
    for n in 0..20 {
        status(vec![("PSOSessionMaxBytes", format!("{}", 2048 + n))]);
    }
    // A request with the process's own configuration is served all the same.
    assert_eq!(status(Vec::new()), "Status: 200 OK");
}

/// Not a check but a measure, for comparing changes to the connection: a request's round trips
/// through the store (lock, load, save and release) over TCP loopback, `PSO_CYCLES` cycles
/// (2,000), their mean and median.
/// `cargo test --features redis --test redis -- --ignored --nocapture cycles`
#[test]
#[ignore]
fn cycles_of_lock_load_save_and_release_timed() {
    let server = server();
    let store = store_at(&server.url());
    let k = key();
    let cycles: u32 = std::env::var("PSO_CYCLES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_000);
    let cycle = |n: u64| {
        let started = Instant::now();
        let mut lock = store
            .lock(&k, LockOptions::new(Duration::from_secs(1)))
            .unwrap();
        lock.load().unwrap();
        lock.save_and_release(&counted(n)).unwrap();
        started.elapsed()
    };
    for n in 0..200 {
        cycle(n);
    }
    let mut times: Vec<Duration> = (0..u64::from(cycles)).map(cycle).collect();
    let total: Duration = times.iter().sum();
    times.sort();
    eprintln!(
        "{cycles} cycles: mean {:.1} µs, median {:.1} µs per cycle",
        (total / cycles).as_secs_f64() * 1e6,
        times[times.len() / 2].as_secs_f64() * 1e6
    );
}

/// The defects a hostile review of the Redis store found, each kept as the test that showed
/// it (all failed before their fixes): a TLS cluster URL that connected in clear, passwords
/// with `?` or `#` printed, a request sending the process's password file to a server of its
/// choosing, connection pools without bound, idle connections Redis closed failing requests,
/// a lock taken late for a request that gave up, waiters' counts that leaked, a key of
/// another type leaving a lock behind.
mod attacks {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::thread;
    use std::time::SystemTime;

    use pso::Environment;

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
            StoreLocation::parse(&format!("rediss+cluster://:TopSecretPw@127.0.0.1:{port}"))
                .unwrap()
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
}
