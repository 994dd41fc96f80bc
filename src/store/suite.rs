//! The behaviour every [`Store`] must show, as functions that check one property each on a
//! store they are given, and [`crate::store_suite!`], which makes a test of each. pso runs
//! them on its own stores; a store written outside pso runs them in its own tests (with pso's
//! `store-suite` feature). They panic on failure, as tests do.
//!
//! Each property uses keys of its own (fresh random ids), so properties may run at once on
//! one store, and on a store that holds other sessions.

use crate::ErrorKind;
use crate::id::SessionId;
use crate::record::Meta;
use crate::record::Record;
use crate::store::{LockOptions, SessionKey, Store};
use std::sync::{Arc, Barrier};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A fresh key of `service`, with a generated id.
pub fn key(service: &str) -> SessionKey {
    SessionKey::new(service.parse().unwrap(), SessionId::generate().unwrap())
}

/// Lock options the properties use: a wait of 10 s.
pub fn options() -> LockOptions {
    LockOptions::new(Duration::from_secs(10))
}

fn record(n: u64) -> Record {
    let mut record = Record::new(Meta::new(1_000));
    record.set("n", &n).unwrap();
    record
}

/// A record saved through a lock loads back, through the lock and without it; deleted, it is gone.
pub fn round_trip(store: Arc<dyn Store>) {
    let k = key("svc");
    let mut lock = store.lock(&k, options()).unwrap();
    assert_eq!(lock.key(), &k);
    assert_eq!(lock.load().unwrap(), None);
    lock.save(&record(1)).unwrap();
    assert_eq!(lock.load().unwrap(), Some(record(1)));
    lock.save(&record(2)).unwrap();
    drop(lock);
    assert_eq!(store.peek(&k).unwrap(), Some(record(2)));
    let mut lock = store.lock(&k, options()).unwrap();
    assert_eq!(lock.load().unwrap(), Some(record(2)));
    lock.delete().unwrap();
    drop(lock);
    assert_eq!(store.peek(&k).unwrap(), None);
}

/// A lock on a key that holds nothing, dropped without a save, leaves no session behind.
pub fn unknown_keys_leave_no_trace(store: Arc<dyn Store>) {
    let k = key("svc");
    let mut lock = store.lock(&k, options()).unwrap();
    assert_eq!(lock.load().unwrap(), None);
    drop(lock);
    assert!(store.keys().unwrap().all(|item| item.unwrap() != k));
}

/// Every saved session is listed by [`Store::keys`], whatever its service.
pub fn keys_lists_saved_sessions(store: Arc<dyn Store>) {
    let (a, b) = (key("one"), key("two"));
    for k in [&a, &b] {
        store.lock(k, options()).unwrap().save(&record(0)).unwrap();
    }
    let keys: Vec<SessionKey> = store.keys().unwrap().map(Result::unwrap).collect();
    assert!(keys.contains(&a) && keys.contains(&b), "{keys:?}");
}

/// A lock another holds is refused with [`ErrorKind::LockTimeout`] once the wait is over.
pub fn lock_timeout(store: Arc<dyn Store>) {
    let k = key("svc");
    let mut held = store.lock(&k, options()).unwrap();
    held.save(&record(0)).unwrap();
    let short = LockOptions::new(Duration::from_millis(50));
    let err = store.lock(&k, short).err().expect("the lock is held");
    assert_eq!(err.kind(), ErrorKind::LockTimeout);
}

/// Many threads increment one counter through the lock: none may lose another's write.
pub fn no_lost_updates(store: Arc<dyn Store>) {
    let k = key("svc");
    store.lock(&k, options()).unwrap().save(&record(0)).unwrap();
    let threads = 8;
    let rounds = 25;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (store, k, barrier) = (store.clone(), k.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                for _ in 0..rounds {
                    let mut lock = store.lock(&k, options()).unwrap();
                    let n: u64 = lock.load().unwrap().unwrap().get("n").unwrap().unwrap();
                    lock.save(&record(n + 1)).unwrap();
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    let n: u64 = store.peek(&k).unwrap().unwrap().get("n").unwrap().unwrap();
    assert_eq!(n, (threads * rounds) as u64);
}

/// Two first requests of a forced id, locking with `create`, run one after the other: the second loads what the first saved.
pub fn create_reserves_the_key(store: Arc<dyn Store>) {
    // Two first requests of a configured id: the second must see the first one's save.
    let k = SessionKey::new("svc".parse().unwrap(), SessionId::forced("007").unwrap());
    let create = options().with_create(true);
    let mut first = store.lock(&k, create).unwrap();
    assert_eq!(first.load().unwrap(), None);
    let (store2, k2) = (store.clone(), k.clone());
    let second = std::thread::spawn(move || {
        let mut lock = store2.lock(&k2, create).unwrap();
        lock.load().unwrap()
    });
    std::thread::sleep(Duration::from_millis(100));
    first.save(&record(7)).unwrap();
    drop(first);
    assert_eq!(second.join().unwrap(), Some(record(7)));
}

/// Collection (by [`Store::collect_garbage`], or by the store itself, as Redis does with its
/// TTLs) removes a session long expired, keeps a live one, and never removes one a request
/// holds that expired a moment ago.
pub fn garbage_collection(store: Arc<dyn Store>) {
    let (live, dead, busy) = (key("svc"), key("svc"), key("svc"));
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).unwrap().as_secs();
    let expired_at = |deadline: u64| {
        let mut record = Record::new(Meta::new(deadline - 10));
        record.meta.deadline = Some(deadline);
        record
    };
    store
        .lock(&live, options())
        .unwrap()
        .save(&record(1))
        .unwrap();
    store
        .lock(&dead, options())
        .unwrap()
        .save(&expired_at(secs - 30 * 86_400))
        .unwrap();
    let mut held = store.lock(&busy, options()).unwrap();
    let just_expired = expired_at(secs - 1);
    held.save(&just_expired).unwrap();
    let report = store.collect_garbage(now, Duration::from_secs(10)).unwrap();
    assert!(!report.incomplete, "{report:?}");
    assert_eq!(store.peek(&dead).unwrap(), None);
    assert_eq!(store.peek(&live).unwrap(), Some(record(1)));
    assert_eq!(
        store.peek(&busy).unwrap(),
        Some(just_expired),
        "a held session is never collected"
    );
}

/// A wait of [`Duration::MAX`] is taken as "no limit", not an overflow.
pub fn huge_timeouts_do_not_overflow(store: Arc<dyn Store>) {
    let k = key("svc");
    let forever = LockOptions::new(Duration::MAX);
    store.lock(&k, forever).unwrap().save(&record(1)).unwrap();
}

/// A lock that deleted its session cannot save it again ([`ErrorKind::Invalid`]).
pub fn a_deleted_session_cannot_be_saved_again(store: Arc<dyn Store>) {
    let k = key("svc");
    let mut lock = store.lock(&k, options()).unwrap();
    lock.save(&record(1)).unwrap();
    lock.delete().unwrap();
    assert_eq!(
        lock.save(&record(2)).unwrap_err().kind(),
        ErrorKind::Invalid
    );
    drop(lock);
    assert_eq!(store.peek(&k).unwrap(), None);
}

/// A lock's sibling (a session moving to a new id) is a lock of the same service in the same store.
pub fn a_sibling_lock_reaches_the_same_store(store: Arc<dyn Store>) {
    let first = key("svc");
    let lock = store.lock(&first, options()).unwrap();
    let id = SessionId::generate().unwrap();
    let mut sibling = lock
        .lock_sibling(id.clone(), options().with_create(true))
        .unwrap();
    assert_eq!(sibling.key(), &SessionKey::new(first.service.clone(), id));
    sibling.save(&record(7)).unwrap();
    let moved = sibling.key().clone();
    drop((sibling, lock));
    let stored = store.peek(&moved).unwrap().expect("saved under the new id");
    assert_eq!(stored.get::<u64>("n").unwrap(), Some(7));
}

/// A session deleted without its lock while a request holds it stays deleted: the
/// holder's saves fail, whether they fit in place or need more room.
pub fn a_session_deleted_while_held_stays_deleted(store: Arc<dyn Store>) {
    for grown in [false, true] {
        let k = key("svc");
        store.lock(&k, options()).unwrap().save(&record(1)).unwrap();
        let mut held = store.lock(&k, options()).unwrap();
        assert!(held.load().unwrap().is_some());
        store.delete(&k).unwrap();
        assert_eq!(store.peek(&k).unwrap(), None);
        let mut next = record(2);
        if grown {
            next.set("big", &vec![7u8; 20_000]).unwrap();
        }
        assert_eq!(
            held.save(&next).unwrap_err().kind(),
            ErrorKind::LockLost,
            "grown: {grown}"
        );
        drop(held);
        assert_eq!(store.peek(&k).unwrap(), None, "grown: {grown}");
        assert!(!store.exists(&k).unwrap());
    }
    // Nothing there: no error.
    store.delete(&key("svc")).unwrap();
}

/// The last save of a request, made with [`crate::store::LockedSession::save_and_release`], is
/// what the next holder loads, and the lock is free for it.
pub fn the_last_save_is_kept_and_lets_go(store: Arc<dyn Store>) {
    let k = key("svc");
    let mut lock = store.lock(&k, options()).unwrap();
    lock.save(&record(1)).unwrap();
    lock.save_and_release(&record(2)).unwrap();
    drop(lock);
    let mut next = store.lock(&k, LockOptions::new(Duration::ZERO)).unwrap();
    assert_eq!(next.load().unwrap(), Some(record(2)));
}

/// A holder that loads again after its session was ended under it (by [`Store::delete`]) still
/// cannot bring it back with a save, whatever that load returned (nothing, or what it held:
/// a file store reads its open file), as found by the second attack on the server stores:
/// they took the second load's "nothing" for a new session.
pub fn a_session_ended_while_held_stays_ended_after_a_second_load(store: Arc<dyn Store>) {
    let k = key("svc");
    store.lock(&k, options()).unwrap().save(&record(1)).unwrap();
    let mut held = store.lock(&k, options()).unwrap();
    assert_eq!(held.load().unwrap(), Some(record(1)));
    store.delete(&k).unwrap();
    let _ = held.load().unwrap();
    let saved = held.save(&record(2));
    drop(held);
    assert_eq!(
        saved.err().map(|e| e.kind()),
        Some(ErrorKind::LockLost),
        "a save after the second load"
    );
    assert_eq!(store.peek(&k).unwrap(), None);
}

/// Every property, one after the other (a failure stops the rest: prefer
/// [`crate::store_suite!`], which makes a test of each).
pub fn all(store: Arc<dyn Store>) {
    for property in PROPERTIES {
        property(store.clone());
    }
}

/// Every property of the suite.
pub const PROPERTIES: &[fn(Arc<dyn Store>)] = &[
    round_trip,
    unknown_keys_leave_no_trace,
    keys_lists_saved_sessions,
    lock_timeout,
    no_lost_updates,
    create_reserves_the_key,
    garbage_collection,
    huge_timeouts_do_not_overflow,
    a_deleted_session_cannot_be_saved_again,
    a_sibling_lock_reaches_the_same_store,
    a_session_deleted_while_held_stays_deleted,
    the_last_save_is_kept_and_lets_go,
    a_session_ended_while_held_stays_ended_after_a_second_load,
];

/// Makes one `#[test]` per property of [`crate::store::suite`] for a store, so that a store
/// written outside pso is held to what pso's own stores do, and one failure does not hide
/// the others. `$make` builds a fresh store for each test and returns it with anything that
/// must live as long as the test (a temporary directory), or `()`. Needs pso's
/// `store-suite` feature (in `[dev-dependencies]`).
///
/// ```
/// mod memory_store {
///     pso::store_suite!(|| ((), std::sync::Arc::new(pso::store::MemoryStore::new())));
/// }
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! store_suite {
    ($make:expr) => {
        $crate::store_suite!(@each $make;
            round_trip,
            unknown_keys_leave_no_trace,
            keys_lists_saved_sessions,
            lock_timeout,
            no_lost_updates,
            create_reserves_the_key,
            garbage_collection,
            huge_timeouts_do_not_overflow,
            a_deleted_session_cannot_be_saved_again,
            a_sibling_lock_reaches_the_same_store,
            a_session_deleted_while_held_stays_deleted,
            the_last_save_is_kept_and_lets_go,
            a_session_ended_while_held_stays_ended_after_a_second_load
        );
    };
    (@each $make:expr; $($property:ident),*) => {
        $(
            #[test]
            fn $property() {
                let (_keep, store) = ($make)();
                $crate::store::suite::$property(store);
            }
        )*
    };
}
