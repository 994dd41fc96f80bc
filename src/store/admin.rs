//! What tools do with a store: list what it holds in bounded memory, look at one session,
//! end one under its lock, collect with an outcome per entry, and check the place where it
//! keeps sessions. `pso sessions`, `pso config` and the dev server's `/_pso/` page use this
//! interface only, whichever store a site configures.

use std::time::{Duration, SystemTime};

use crate::error::{Error, ErrorKind, Result};
use crate::id::ServiceId;
use crate::record::{Meta, Record};
use crate::store::{GcOutcome, GcReport, LockOptions, SessionKey, Store};

/// One entry of a store as tools list it.
#[derive(Debug)]
#[non_exhaustive]
pub enum Listed {
    /// A session, from its metadata.
    Session {
        /// Its service and id.
        key: SessionKey,
        /// Its metadata.
        meta: Meta,
        /// The record's encoded length: what `PSOSessionMaxBytes` caps.
        bytes: u64,
        /// What keeping it costs the store (a file's disk space), if the store says.
        footprint: Option<u64>,
    },
    /// A session that cannot be read: damaged, or not of the store's making.
    Unreadable {
        /// The session it is named for.
        key: SessionKey,
        /// Why.
        error: Error,
    },
    /// A session of a format version this pso does not read (another pso wrote it).
    OtherVersion {
        /// The session it is named for.
        key: SessionKey,
    },
    /// A name reserved for a session that has no record yet.
    Reservation,
    /// A save's temporary file (collection removes it once abandoned).
    Temporary,
    /// Not named like anything of pso's: another program's.
    Foreign {
        /// Its name, as the store shows it.
        name: String,
    },
}

/// How serious a [`Finding`] about a store's place is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Worth knowing.
    Note,
    /// Sessions can be lost or exposed this way.
    Warning,
    /// The store cannot be used.
    Error,
}

/// Something [`Admin::check`] found about the place where a store keeps sessions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// How serious it is.
    pub severity: Severity,
    /// What it is, in a sentence.
    pub message: String,
}

impl Finding {
    /// A finding of `severity` saying `message`.
    pub fn new(severity: Severity, message: impl Into<String>) -> Finding {
        Finding {
            severity,
            message: message.into(),
        }
    }
}

/// The administration side of a store.
///
/// ```
/// use pso::store::{Admin, Listed, LockOptions, MemoryStore, SessionKey, Store};
/// let store = MemoryStore::new();
/// let key = SessionKey::new("shop".parse()?, pso::SessionId::generate()?);
/// store.lock(&key, LockOptions::new(std::time::Duration::from_secs(1)))?.save(&pso::Record::default())?;
/// let listed: Vec<Listed> = store.list(None)?.collect::<pso::Result<_>>()?;
/// assert!(matches!(&listed[..], [Listed::Session { key: k, .. }] if *k == key));
/// assert!(store.remove(&key, std::time::Duration::from_secs(1))?);
/// # Ok::<(), pso::Error>(())
/// ```
pub trait Admin: Store {
    /// Where the sessions are, for people: a directory, or a server's URL without its
    /// password.
    fn place(&self) -> String;

    /// Everything the store holds (of `service` only, if given: other services' sessions are
    /// passed over unread), streamed: memory does not grow with the store. No lock is taken
    /// and nothing is changed. The default, for a store that holds nothing but sessions,
    /// looks at each key [`Store::keys`] lists with [`Admin::inspect`].
    fn list<'a>(
        &'a self,
        service: Option<&'a ServiceId>,
    ) -> Result<Box<dyn Iterator<Item = Result<Listed>> + 'a>> {
        listed_keys(self, service)
    }

    /// What [`Admin::list`] shows of one session; `None` if the store has nothing under
    /// `key`.
    fn inspect(&self, key: &SessionKey) -> Result<Option<Listed>>;

    /// Ends `key`'s session under its lock, waiting at most `timeout` for a request that
    /// holds it; whether there was one.
    fn remove(&self, key: &SessionKey, timeout: Duration) -> Result<bool> {
        let mut session = self.lock(key, LockOptions::new(timeout))?;
        // Judged under the lock: a session gone meanwhile is not reported as removed; a
        // damaged one is there, and goes.
        let existed = !matches!(session.load(), Ok(None));
        session.delete()?;
        session.release()?;
        Ok(existed)
    }

    /// Removes sessions expired at `now` (of `service` only, if given), skipping held ones,
    /// and tells `observe` what became of each entry looked at. A store that expires
    /// sessions itself (Redis, by TTL) looks at nothing and says so in the report.
    fn collect(
        &self,
        now: SystemTime,
        service: Option<&ServiceId>,
        observe: &mut dyn FnMut(GcOutcome),
    ) -> Result<GcReport>;

    /// Checks the place where the store keeps sessions, without changing anything: that it
    /// can be reached and used, and settings of it that could lose or expose sessions.
    fn check(&self) -> Vec<Finding>;

    /// Makes what the store needs before a first request can use it (PostgreSQL's table and
    /// index), as `pso sessions init` does: for a role that may create it now but should not
    /// at run time. Safe to run again and while requests are served. What it made ready, for
    /// people; `None` for a store that needs nothing made (the default: files, Redis).
    fn prepare(&self) -> Result<Option<String>> {
        Ok(None)
    }

    /// Whether this store removes expired sessions by itself, so that collection has
    /// nothing to do.
    fn expires_by_itself(&self) -> bool {
        false
    }
}

/// What a whole stored record lists as: a session by its metadata, or why not. For stores
/// that read the record whole (memory, PostgreSQL).
pub(crate) fn listed_record(key: &SessionKey, bytes: &[u8]) -> Listed {
    if Record::is_other_version(bytes) {
        return Listed::OtherVersion { key: key.clone() };
    }
    match Record::read_meta(bytes) {
        Ok(Some(meta)) => Listed::Session {
            key: key.clone(),
            meta,
            bytes: bytes.len() as u64,
            footprint: None,
        },
        Ok(None) => unreadable(
            key,
            Error::new(ErrorKind::Corrupt, "a record shorter than its metadata"),
        ),
        Err(error) => unreadable(key, error),
    }
}

/// The error for a store that cannot tell a session's metadata from what it read.
pub(crate) fn unreadable(key: &SessionKey, error: Error) -> Listed {
    Listed::Unreadable {
        key: key.clone(),
        error,
    }
}

/// A listing of keys from [`Store::keys`], each looked at with [`Admin::inspect`]: for a
/// store that lists nothing but sessions.
fn listed_keys<'a, A: Admin + ?Sized>(
    store: &'a A,
    service: Option<&'a ServiceId>,
) -> Result<Box<dyn Iterator<Item = Result<Listed>> + 'a>> {
    let keys = store.keys()?;
    Ok(Box::new(keys.filter_map(move |key| {
        let key = match key {
            Ok(key) => key,
            Err(e) => return Some(Err(e)),
        };
        if service.is_some_and(|s| key.service != *s) {
            return None;
        }
        match store.inspect(&key) {
            Ok(Some(listed)) => Some(Ok(listed)),
            // Removed since it was listed.
            Ok(None) => None,
            Err(e) if e.kind() == ErrorKind::Corrupt => Some(Ok(unreadable(&key, e))),
            Err(e) => Some(Err(e)),
        }
    })))
}
