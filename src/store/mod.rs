//! Where sessions live: the [`Store`] trait, and its implementations, one file each.
//!
//! The runner talks only to this trait. A store owns its locking: the runner asks for a
//! session's lock, loads, saves or deletes through the [`LockedSession`] it gets, and drops it.
//! Nothing here assumes a file system, so a Redis or SQL store fits the same shape.

mod admin;
pub mod file;
#[cfg(any(feature = "redis", feature = "postgres"))]
mod lease;
mod location;
pub mod memory;
mod moving;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(any(test, feature = "store-suite"))]
pub mod suite;

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::error::{Error, ErrorKind, Result};
use crate::id::{ServiceId, SessionId};
use crate::record::Record;

/// The largest record any pso program reads or writes (64 MiB), the top of
/// `PSOSessionMaxBytes`. Tools open stores with it ([`FileStore::with_max_bytes`]), so that a
/// record another program wrote under a bigger cap is not taken for a corrupt one.
pub use crate::record::MAX_RECORD_BYTES;
pub use admin::{Admin, Finding, Listed, Severity};
pub use file::{Contents, DirEntry, Entries, EntryKind, FileStore, SessionFile};
pub use location::{ServerKind, ServerUrl, StoreLocation};
pub use memory::MemoryStore;
pub use moving::{Moved, MovingStore};
#[cfg(feature = "postgres")]
pub use postgres::PostgresStore;
#[cfg(feature = "redis")]
pub use redis::RedisStore;

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
/// assert_eq!(options.with_lease(Duration::from_secs(9)).lease, Duration::from_secs(9));
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
    /// How long the lock lasts unless renewed ([`LockedSession::renew`]), for stores whose
    /// locks are leases (a server's): a holder that dies blocks its session at most this long.
    /// A lock that lasts as long as its holder (a file's `flock`) ignores it.
    pub lease: Duration,
}

/// The lease of a [`LockOptions`] that names none: 30 s, as `PSOSessionLockLease`.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

impl LockOptions {
    /// Wait at most `timeout`; do not reserve a key that has no record.
    pub fn new(timeout: Duration) -> LockOptions {
        LockOptions {
            timeout,
            create: false,
            lease: DEFAULT_LEASE,
        }
    }

    /// Lasts `lease` unless renewed (see [`LockOptions::lease`]).
    pub fn with_lease(mut self, lease: Duration) -> LockOptions {
        self.lease = lease;
        self
    }

    /// Whether to reserve the key even when it has no record yet (see [`LockOptions::create`]).
    pub fn with_create(mut self, create: bool) -> LockOptions {
        self.create = create;
        self
    }
}

/// Opens the store at a server's URL (`PSOSessionStore`), with the password read from
/// `password_file` (`PSOSessionStorePasswordFile`) if one is named. A kind of server this
/// program was built without is an error that names the cargo feature it needs.
///
/// ```
/// let pso::store::StoreLocation::Server(url) = pso::store::StoreLocation::parse("postgres://db/app")? else {
///     unreachable!()
/// };
/// # #[cfg(not(feature = "postgres"))]
/// assert!(pso::store::open_server(&url, None, 1 << 20).err().unwrap().to_string().contains("`postgres` feature"));
/// # Ok::<(), pso::Error>(())
/// ```
pub fn open_server(
    url: &ServerUrl,
    password_file: Option<&Path>,
    max_bytes: u64,
) -> Result<Arc<dyn Admin>> {
    let password = password_file
        .map(location::read_password_file)
        .transpose()?;
    let _ = (&password, max_bytes);
    match url.kind() {
        #[cfg(feature = "redis")]
        ServerKind::Redis | ServerKind::RedisUnix => Ok(Arc::new(
            RedisStore::open(url, password.as_deref())?.with_max_bytes(max_bytes),
        )),
        #[cfg(feature = "redis-tls")]
        ServerKind::RedisTls => Ok(Arc::new(
            RedisStore::open(url, password.as_deref())?.with_max_bytes(max_bytes),
        )),
        #[cfg(feature = "redis-cluster")]
        ServerKind::RedisCluster => Ok(Arc::new(
            RedisStore::open(url, password.as_deref())?.with_max_bytes(max_bytes),
        )),
        #[cfg(feature = "postgres")]
        ServerKind::Postgres => Ok(Arc::new(
            PostgresStore::open(url, password.as_deref())?.with_max_bytes(max_bytes),
        )),
        // Every kind is built in with every feature.
        #[allow(unreachable_patterns)]
        kind => Err(Error::new(
            ErrorKind::Invalid,
            format!(
                "PSOSessionStore names {url}, but this program was built without pso's `{feature}` feature (cargo build --features pso/{feature})",
                feature = kind.feature()
            ),
        )),
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

    /// The last save of a request: saves as [`LockedSession::save`] does and lets go of the
    /// lock with it, in one round trip where the store can (a server's); the lock can then do
    /// nothing more but be dropped. The default saves and lets go at drop.
    fn save_and_release(&mut self, record: &Record) -> Result<()> {
        self.save(record)
    }

    /// Removes the record. The key stays reserved until drop, but this lock can no longer
    /// save: a deleted session's id must not come back in the same request.
    fn delete(&mut self) -> Result<()>;

    /// Locks session `id` of the same service in the same store, for a session that moves to
    /// a new id ([`crate::Session::regenerate_id`]). Locks are taken in the order old, then
    /// new, so two requests never wait on each other's.
    fn lock_sibling(&self, id: SessionId, options: LockOptions) -> Result<Box<dyn LockedSession>>;

    /// Extends a lock that is a lease by its lease, from now, for a request that runs long;
    /// [`crate::ErrorKind::LockLost`] if it expired meanwhile and another request may have
    /// taken it. Locks that last as long as their holder need nothing: the default does
    /// nothing.
    fn renew(&mut self) -> Result<()> {
        Ok(())
    }

    /// Lets go of the lock and says whether that worked. Dropping the lock lets go too, and
    /// can only log a failure: for a server's lock, a release that does not arrive leaves the
    /// session locked until its lease ends. The default, for locks that cannot fail to
    /// release, drops it.
    fn release(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}
