//! Where sessions live: the [`Store`] trait, and its implementations, one file each.
//!
//! The runner talks only to this trait. A store owns its locking: the runner asks for a
//! session's lock, loads, saves or deletes through the [`LockedSession`] it gets, and drops it.
//! Nothing here assumes a file system, so a Redis or SQL store fits the same shape.

pub mod file;
pub mod memory;

use std::fmt;
use std::time::{Duration, Instant, SystemTime};

use crate::error::{Error, ErrorKind, Result};
use crate::id::{ServiceId, SessionId};
use crate::record::Record;

/// The largest record any pso program reads or writes (64 MiB), the top of
/// `PSOSessionMaxBytes`. Tools open stores with it ([`FileStore::with_max_bytes`]), so that a
/// record another program wrote under a bigger cap is not taken for a corrupt one.
pub use crate::record::MAX_RECORD_BYTES;
pub use file::{Contents, DirEntry, Entries, EntryKind, FileStore, SessionFile};
pub use memory::MemoryStore;

/// A session's full name in a store: its service and its id.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionKey {
    /// The service (namespace) the session belongs to.
    pub service: ServiceId,
    /// The session's id within the service.
    pub id: SessionId,
}

impl SessionKey {
    /// The key of session `id` of `service`.
    pub fn new(service: ServiceId, id: SessionId) -> SessionKey {
        SessionKey { service, id }
    }
}

/// Shows the service and only a prefix of the id: keys end up in log lines.
impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.service, self.id.short())
    }
}

/// How to take a session's lock.
///
/// ```
/// use std::time::Duration;
/// let options = pso::store::LockOptions::new(Duration::from_secs(5));
/// assert!(!options.create);
/// assert!(options.with_create(true).create);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockOptions {
    /// The longest wait for another holder to let go; past it, [`crate::ErrorKind::LockTimeout`].
    pub timeout: Duration,
    /// Reserve the key even when it has no record yet, so that the first requests of an id
    /// chosen by configuration serialize too. Never set for ids from clients: an unknown id
    /// must leave no trace in the store. Stores whose locks need no record ignore it.
    pub create: bool,
}

impl LockOptions {
    /// Wait at most `timeout`; do not reserve a key that has no record.
    pub fn new(timeout: Duration) -> LockOptions {
        LockOptions {
            timeout,
            create: false,
        }
    }

    /// Whether to reserve the key even when it has no record yet (see [`LockOptions::create`]).
    pub fn with_create(mut self, create: bool) -> LockOptions {
        self.create = create;
        self
    }
}

/// When a lock wait that starts now must give up; `None` for a timeout too long to represent.
pub(crate) fn lock_deadline(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

/// How long is left until `deadline` (`None`: no deadline); `Err` once it has passed.
pub(crate) fn time_left(deadline: Option<Instant>, key: &SessionKey) -> Result<Option<Duration>> {
    match deadline {
        None => Ok(None),
        Some(deadline) => {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                Err(Error::new(
                    ErrorKind::LockTimeout,
                    format!("session {key:?} stayed locked past PSOSessionLockTimeout"),
                ))
            } else {
                Ok(Some(left))
            }
        }
    }
}

/// The error for saving through a lock whose session was deleted.
pub(crate) fn deleted_error(key: &SessionKey) -> Error {
    Error::new(
        ErrorKind::Invalid,
        format!("session {key:?} was deleted in this request and cannot be saved again"),
    )
}

/// What a pass of garbage collection did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GcReport {
    /// Directory entries (or slots) read, sessions or not.
    pub listed: u64,
    /// Sessions looked at.
    pub examined: u64,
    /// Expired or unreadable sessions (and abandoned temporary files) removed.
    pub removed: u64,
    /// Sessions skipped because a request held them.
    pub busy: u64,
    /// Whether the time budget ran out before every session was looked at.
    pub incomplete: bool,
}

/// What one pass of collection did with one directory entry (or slot), as
/// [`FileStore::collect_observed`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GcOutcome {
    /// Removed, freeing `bytes` of disk space.
    Removed {
        /// Why it went.
        reason: GcRemoval,
        /// The disk space it took.
        bytes: u64,
    },
    /// Looked at and kept: live, of a format version this pso does not know, or a temporary
    /// file that may belong to a save under way.
    Kept,
    /// Unreadable, but kept for a person to look at: a record pso keeps on purpose (a user's
    /// "log out everywhere" record, a forced id), not a visitor's disposable session. pso
    /// reads a damaged user record as "logged out"; removing it would undo that.
    KeptDamaged,
    /// Held by a request (its lock was taken): skipped, whatever its age.
    Busy,
    /// A file of pso's naming that could not be opened, locked, read or removed (not ours, an
    /// I/O error, replaced meanwhile): left as it is.
    Skipped,
    /// Not named like anything of pso's (another program's file), or not of the service a
    /// pass was asked for: never opened.
    Ignored,
}

/// Why collection removed something.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GcRemoval {
    /// A session past its deadline or idle limit.
    Expired,
    /// A session file that cannot be read (truncated, garbled).
    Unreadable,
    /// A temporary file or an empty reservation left by a process that died.
    Abandoned,
}

/// A place that keeps session records.
pub trait Store: Send + Sync {
    /// Takes the exclusive lock of `key`, waiting at most `options.timeout`.
    ///
    /// The lock is held until the returned [`LockedSession`] is dropped, so two requests of one
    /// session run their load–modify–save cycles one after the other.
    fn lock(&self, key: &SessionKey, options: LockOptions) -> Result<Box<dyn LockedSession>>;

    /// Whether the store holds anything under `key`, cheaply: no lock, no read. A `true` may
    /// still turn out to be no live session once locked and loaded.
    fn exists(&self, key: &SessionKey) -> Result<bool>;

    /// Reads the record of `key` without its lock, while a request holding the lock may be
    /// saving it: what comes back is a state the store held during the call, whole (never
    /// part of one save and part of another) and never older than a save that finished
    /// before the call began. A record that is damaged is [`crate::ErrorKind::Corrupt`]; one
    /// that keeps changing too fast to be read is [`crate::ErrorKind::LockTimeout`], never
    /// `Corrupt`.
    fn peek(&self, key: &SessionKey) -> Result<Option<Record>>;

    /// Ends the session under `key` now, without waiting for a request that holds its lock:
    /// that request can save nothing more into it (its next save fails with
    /// [`crate::ErrorKind::LockLost`], or, if it landed already, it is gone with the session).
    /// For a session that must end whoever holds it: when a request's cookies name several
    /// live sessions, none can be told to be the visitor's, and a busy one must neither hold
    /// the request up nor survive to be adopted alone later (cookie tossing). Nothing under
    /// `key` is no error.
    fn delete(&self, key: &SessionKey) -> Result<()>;

    /// Every session key in the store, streamed.
    fn keys(&self) -> Result<Box<dyn Iterator<Item = Result<SessionKey>> + '_>>;

    /// Removes sessions that are expired at `now` or unreadable, skipping any that a request
    /// holds, and stops once `budget` has passed.
    fn collect_garbage(&self, now: SystemTime, budget: Duration) -> Result<GcReport>;
}

/// A session whose lock is held: the only way to read and write its record in a request.
pub trait LockedSession: Send {
    /// The key this lock holds.
    fn key(&self) -> &SessionKey;

    /// The record, `None` if the store has none for this key. A record that cannot be read
    /// is an error of kind [`crate::ErrorKind::Corrupt`].
    fn load(&mut self) -> Result<Option<Record>>;

    /// Replaces the record, atomically: after a crash at any instant the store holds either
    /// the old record or the new one. The lock stays held.
    fn save(&mut self, record: &Record) -> Result<()>;

    /// Removes the record. The key stays reserved until drop, but this lock can no longer
    /// save: a deleted session's id must not come back in the same request.
    fn delete(&mut self) -> Result<()>;

    /// Locks session `id` of the same service in the same store, for a session that moves to
    /// a new id ([`crate::Session::regenerate_id`]). Locks are taken in the order old, then
    /// new, so two requests never wait on each other's.
    fn lock_sibling(&self, id: SessionId, options: LockOptions) -> Result<Box<dyn LockedSession>>;
}

#[cfg(test)]
pub(crate) mod suite {
    //! The behaviour every store must show, run against each store.

    use super::*;
    use crate::ErrorKind;
    use crate::record::Meta;
    use std::sync::{Arc, Barrier};
    use std::time::{Duration, UNIX_EPOCH};

    pub fn key(service: &str) -> SessionKey {
        SessionKey::new(service.parse().unwrap(), SessionId::generate().unwrap())
    }

    pub fn options() -> LockOptions {
        LockOptions {
            timeout: Duration::from_secs(10),
            create: false,
        }
    }

    fn record(n: u64) -> Record {
        let mut record = Record::new(Meta::new(1_000));
        record.set("n", &n).unwrap();
        record
    }

    pub fn round_trip(store: &dyn Store) {
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

    pub fn unknown_keys_leave_no_trace(store: &dyn Store) {
        let k = key("svc");
        let mut lock = store.lock(&k, options()).unwrap();
        assert_eq!(lock.load().unwrap(), None);
        drop(lock);
        assert!(store.keys().unwrap().all(|item| item.unwrap() != k));
    }

    pub fn keys_lists_saved_sessions(store: &dyn Store) {
        let (a, b) = (key("one"), key("two"));
        for k in [&a, &b] {
            store.lock(k, options()).unwrap().save(&record(0)).unwrap();
        }
        let keys: Vec<SessionKey> = store.keys().unwrap().map(Result::unwrap).collect();
        assert!(keys.contains(&a) && keys.contains(&b), "{keys:?}");
    }

    pub fn lock_timeout(store: &dyn Store) {
        let k = key("svc");
        let mut held = store.lock(&k, options()).unwrap();
        held.save(&record(0)).unwrap();
        let short = LockOptions {
            timeout: Duration::from_millis(50),
            create: false,
        };
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

    pub fn create_reserves_the_key(store: Arc<dyn Store>) {
        // Two first requests of a configured id: the second must see the first one's save.
        let k = SessionKey::new("svc".parse().unwrap(), SessionId::forced("007").unwrap());
        let create = LockOptions {
            create: true,
            ..options()
        };
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

    pub fn garbage_collection(store: &dyn Store) {
        let (live, dead, busy) = (key("svc"), key("svc"), key("svc"));
        let mut expired = Record::new(Meta::new(1_000));
        expired.meta.deadline = Some(1_500);
        store
            .lock(&live, options())
            .unwrap()
            .save(&record(1))
            .unwrap();
        store
            .lock(&dead, options())
            .unwrap()
            .save(&expired)
            .unwrap();
        let mut held = store.lock(&busy, options()).unwrap();
        held.save(&expired).unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(2_000);
        let report = store.collect_garbage(now, Duration::from_secs(10)).unwrap();
        assert!(
            report.removed >= 1 && report.busy >= 1 && !report.incomplete,
            "{report:?}"
        );
        assert_eq!(store.peek(&dead).unwrap(), None);
        assert_eq!(store.peek(&live).unwrap(), Some(record(1)));
        assert_eq!(
            store.peek(&busy).unwrap(),
            Some(expired),
            "a held session is never collected"
        );
    }

    pub fn huge_timeouts_do_not_overflow(store: &dyn Store) {
        let k = key("svc");
        let forever = LockOptions {
            timeout: Duration::MAX,
            create: false,
        };
        store.lock(&k, forever).unwrap().save(&record(1)).unwrap();
    }

    pub fn a_deleted_session_cannot_be_saved_again(store: &dyn Store) {
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

    pub fn a_sibling_lock_reaches_the_same_store(store: &dyn Store) {
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
    pub fn a_session_deleted_while_held_stays_deleted(store: &dyn Store) {
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

    pub fn all(store: Arc<dyn Store>) {
        a_session_deleted_while_held_stays_deleted(&*store);
        a_sibling_lock_reaches_the_same_store(&*store);
        huge_timeouts_do_not_overflow(&*store);
        a_deleted_session_cannot_be_saved_again(&*store);
        round_trip(&*store);
        unknown_keys_leave_no_trace(&*store);
        keys_lists_saved_sessions(&*store);
        lock_timeout(&*store);
        no_lost_updates(store.clone());
        create_reserves_the_key(store.clone());
        garbage_collection(&*store);
    }
}
