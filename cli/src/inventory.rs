//! The sessions of a store as tools see them: `pso sessions` uses this module, and so can
//! the development server's `/_pso/` page (to list sessions and to end one).
//!
//! The API, all over any store's administration interface ([`Admin`]), opened with [`open`]:
//! - [`open`]`(path)`: opens an existing session directory (never creates it) with the largest
//!   record cap any pso program may use, so that a record another program wrote under a bigger
//!   `PSOSessionMaxBytes` is read, not reported as corrupt; [`open_server`] a server's store.
//! - [`for_each`]`(store, service, now, f)`: streams every session as a [`Summary`], and every
//!   entry that is not a readable session as a [`Skipped`], in directory order, in bounded
//!   memory; `f` returns [`ControlFlow::Break`] to stop early.
//! - [`detail`]`(store, key, now)`: one session's [`Detail`]: its summary and each key with its
//!   size and, where it reads as one, its value ([`Shown`]).
//! - [`remove`]`(store, key, timeout)`: ends one session under its lock.
//! - [`resolve`]`(store, service, text)`: the session a command-line id or unambiguous id
//!   prefix names.
//!
//! Nothing here panics on what it finds in the directory: every file is input from outside.

use std::fmt;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Duration;

use std::sync::Arc;

use pso::store::{Admin, FileStore, Listed, MAX_RECORD_BYTES, ServerUrl, SessionKey};
use pso::{ErrorKind, Meta, ServiceId, SessionId};

/// Shortest id prefix that `resolve` accepts when the text is not a whole id: a session id is
/// a secret, so a short guess must not pick one out of many.
pub const MIN_PREFIX: usize = 6;

/// Opens the store in `path` for tools: never creates the directory, and reads records of any
/// size a pso program may write.
pub fn open(path: impl Into<PathBuf>) -> pso::Result<FileStore> {
    Ok(FileStore::open_existing(path)?.with_max_bytes(MAX_RECORD_BYTES))
}

/// Opens the store at a server's URL for tools, with the largest record cap, and the
/// password from `password_file` if given.
pub fn open_server(
    url: &ServerUrl,
    password_file: Option<&std::path::Path>,
) -> pso::Result<Arc<dyn Admin>> {
    pso::store::open_server(url, password_file, MAX_RECORD_BYTES)
}

/// One session, from its metadata alone. Times are seconds since the Unix epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// The service and the session's id.
    pub key: SessionKey,
    /// When the session was created.
    pub created: u64,
    /// When a request last saved it.
    pub last_access: u64,
    /// Its absolute deadline; `None` for a session that lasts until the browser closes.
    pub deadline: Option<u64>,
    /// The last second it may stay unused: past it, it has expired (last access + max idle).
    pub idle_deadline: Option<u64>,
    /// The record's encoded length (what `PSOSessionMaxBytes` caps).
    pub bytes: u64,
    /// What keeping it costs the store (a file's disk space), where the store says.
    pub disk_bytes: Option<u64>,
    /// Whether it has expired at the `now` it was read with.
    pub expired: bool,
}

impl Summary {
    fn new(key: SessionKey, meta: &Meta, bytes: u64, disk_bytes: Option<u64>, now: u64) -> Summary {
        Summary {
            key,
            created: meta.created,
            last_access: meta.last_access,
            deadline: meta.deadline,
            idle_deadline: meta
                .max_idle
                .map(|idle| meta.last_access.saturating_add(idle)),
            bytes,
            disk_bytes,
            expired: meta.is_expired(now),
        }
    }
}

/// A directory entry that is not a readable session of this pso.
#[derive(Debug)]
pub enum Skipped {
    /// A file not named like a session: another program's, or put there by hand.
    NotASession {
        /// Its name.
        name: String,
    },
    /// A save's temporary file (removed by collection once abandoned).
    Temporary,
    /// A session file that cannot be read: damaged, or not a regular file of ours.
    Unreadable {
        /// The session it is named for.
        key: SessionKey,
        /// Why.
        error: pso::Error,
    },
    /// A session file of a format version this pso does not read (another pso wrote it).
    OtherVersion {
        /// The session it is named for.
        key: SessionKey,
    },
    /// An empty session file: reserved, no record saved yet.
    Reservation,
}

/// What a stored value reads as. A MessagePack value (what pso writes) says whether it is an
/// integer or a string; a bincode value (format version 1) carries no type tag, so for it this
/// is a best guess.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shown {
    /// An integer. In bincode: bytes that decode exactly as an unsigned integer (its
    /// variable-length encoding; a signed one shows zigzag-encoded, `-1` as `1`).
    Integer(i128),
    /// A string. In bincode: bytes that decode exactly as a UTF-8 string (or bytes that happen
    /// to be UTF-8).
    Text(String),
}

/// An integer as digits, a string quoted and escaped: control characters from a session
/// value must not reach a terminal.
impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shown::Integer(n) => write!(f, "{n}"),
            Shown::Text(text) => write!(f, "{text:?}"),
        }
    }
}

/// One key of a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    /// The key.
    pub name: String,
    /// The size of its encoded value.
    pub bytes: usize,
    /// The value, where it reads as an integer or a string.
    pub shown: Option<Shown>,
}

/// One session in full: its summary, the rest of its metadata and its keys, in key order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Detail {
    /// What [`for_each`] shows of it.
    pub summary: Summary,
    /// The longest time it may stay unused, in seconds.
    pub max_idle: Option<u64>,
    /// The client's address when it was created.
    pub client_addr: Option<String>,
    /// Its keys.
    pub keys: Vec<KeyInfo>,
}

/// Streams the sessions of `store` (of `service` only, if given) to `each`, with every entry
/// that is not a readable session as a [`Skipped`]; the entries of other services are passed
/// over unread. Only the first 4 KiB of each record are held, and only while it is read, so
/// memory does not grow with the directory. No lock is taken and nothing is changed.
///
/// The error is a failure to list the directory; everything about one file is a [`Skipped`].
pub fn for_each(
    store: &dyn Admin,
    service: Option<&ServiceId>,
    now: u64,
    mut each: impl FnMut(Result<Summary, Skipped>) -> ControlFlow<()>,
) -> pso::Result<()> {
    for listed in store.list(service)? {
        if each(summarize(listed?, now)).is_break() {
            break;
        }
    }
    Ok(())
}

/// A listed entry as a summary, or why it is none.
fn summarize(listed: Listed, now: u64) -> Result<Summary, Skipped> {
    match listed {
        Listed::Session {
            key,
            meta,
            bytes,
            footprint,
        } => Ok(Summary::new(key, &meta, bytes, footprint, now)),
        Listed::Unreadable { key, error } => Err(Skipped::Unreadable { key, error }),
        Listed::OtherVersion { key } => Err(Skipped::OtherVersion { key }),
        Listed::Reservation => Err(Skipped::Reservation),
        Listed::Temporary => Err(Skipped::Temporary),
        Listed::Foreign { name } => Err(Skipped::NotASession { name }),
        _ => Err(Skipped::NotASession {
            name: "(an entry this pso does not know)".to_owned(),
        }),
    }
}

/// One session in full; `None` if the store has no record under `key`. The record is read
/// whole (up to the largest cap) without its lock: a save under way is seen before or after,
/// never half-done, as every store guarantees of `peek`.
pub fn detail(store: &dyn Admin, key: &SessionKey, now: u64) -> pso::Result<Option<Detail>> {
    let (bytes, footprint) = match store.inspect(key)? {
        None | Some(Listed::Reservation) => return Ok(None),
        Some(Listed::Session {
            bytes, footprint, ..
        }) => (bytes, footprint),
        // Read anyway: the error says what is wrong with it.
        Some(_) => (0, None),
    };
    let Some(record) = store.peek(key)? else {
        return Ok(None);
    };
    let keys = record
        .keys()
        .map(|name| KeyInfo {
            name: name.to_owned(),
            bytes: record.value_len(name).unwrap_or(0),
            shown: shown(&record, name),
        })
        .collect();
    Ok(Some(Detail {
        summary: Summary::new(key.clone(), &record.meta, bytes, footprint, now),
        max_idle: record.meta.max_idle,
        client_addr: record.meta.client_addr.clone(),
        keys,
    }))
}

/// The value under `name` if it reads as an integer, else as a string. An integer is tried
/// first: in bincode, a small one's single byte would also read as a short string.
fn shown(record: &pso::Record, name: &str) -> Option<Shown> {
    if let Ok(Some(n)) = record.get::<u64>(name) {
        return Some(Shown::Integer(n.into()));
    }
    if let Ok(Some(n)) = record.get::<i64>(name)
        && record.is_bincode(name) == Some(false)
    {
        return Some(Shown::Integer(n.into()));
    }
    record.get::<String>(name).ok().flatten().map(Shown::Text)
}

/// Ends `key`'s session: takes its lock (waiting at most `timeout` for a request that holds
/// it), then removes it. `false` if there was no such session.
pub fn remove(store: &dyn Admin, key: &SessionKey, timeout: Duration) -> pso::Result<bool> {
    store.remove(key, timeout)
}

/// Why a command-line id names no single session.
#[derive(Debug)]
pub enum LookupError {
    /// Not of a session id's alphabet and length: never used in a path.
    Invalid(pso::Error),
    /// No session has that id, or an id that starts with it.
    NotFound,
    /// A prefix shorter than [`MIN_PREFIX`] that is not a whole id.
    TooShort,
    /// Several sessions match: `services` names where (up to a few).
    Ambiguous {
        /// How many sessions match (counting stops at a few).
        matches: usize,
        /// The services of the matches seen.
        services: Vec<ServiceId>,
    },
    /// The directory could not be listed.
    Store(pso::Error),
}

impl fmt::Display for LookupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LookupError::Invalid(e) => write!(f, "not a session id: {e}"),
            LookupError::NotFound => f.write_str("no such session"),
            LookupError::TooShort => write!(
                f,
                "no session has that id, and a prefix must be at least {MIN_PREFIX} characters"
            ),
            LookupError::Ambiguous { matches, services } => {
                let services: Vec<&str> = services.iter().map(ServiceId::as_str).collect();
                let more = if *matches >= AMBIGUOUS_STOP {
                    " or more"
                } else {
                    ""
                };
                write!(
                    f,
                    "{matches}{more} sessions match (services: {}); give more of the id or --service",
                    services.join(", ")
                )
            }
            LookupError::Store(e) => write!(f, "{}", pso::ErrorChain(e)),
        }
    }
}

/// Counting matches stops here: two already make a prefix ambiguous.
const AMBIGUOUS_STOP: usize = 5;

/// The session that `text` names: a whole id (in `service`, or in the one service that has it),
/// or an unambiguous prefix of at least [`MIN_PREFIX`] characters. `text` is checked against
/// the id alphabet before anything else, and only ever compared with names listed from the
/// directory: it never becomes part of a path.
pub fn resolve(
    store: &dyn Admin,
    service: Option<&ServiceId>,
    text: &str,
) -> Result<SessionKey, LookupError> {
    let id = SessionId::named(text).map_err(LookupError::Invalid)?;
    if let Some(service) = service {
        let key = SessionKey::new(service.clone(), id.clone());
        if store.exists(&key).map_err(LookupError::Store)? {
            return Ok(key);
        }
    }
    let (mut exact, mut prefixed) = (Vec::new(), Vec::new());
    for key in store.keys().map_err(LookupError::Store)? {
        let key = &key.map_err(LookupError::Store)?;
        if service.is_some_and(|s| key.service != *s) {
            continue;
        }
        if key.id == id {
            exact.push(key.clone());
        } else if key.id.as_str().starts_with(text) && prefixed.len() < AMBIGUOUS_STOP {
            prefixed.push(key.clone());
        }
        if exact.len() >= AMBIGUOUS_STOP {
            break;
        }
    }
    let matches = if !exact.is_empty() {
        exact
    } else if text.len() < MIN_PREFIX {
        return Err(LookupError::TooShort);
    } else {
        prefixed
    };
    match matches.len() {
        0 => Err(LookupError::NotFound),
        1 => Ok(matches.into_iter().next().ok_or(LookupError::NotFound)?),
        n => {
            let mut services: Vec<ServiceId> = matches.into_iter().map(|k| k.service).collect();
            services.sort();
            services.dedup();
            Err(LookupError::Ambiguous {
                matches: n,
                services,
            })
        }
    }
}

/// Whether an error from [`remove`] means the session stayed locked past the timeout.
pub fn is_lock_timeout(error: &pso::Error) -> bool {
    error.kind() == ErrorKind::LockTimeout
}

#[cfg(test)]
mod tests {
    use super::*;
    use pso::store::{LockOptions, Store};
    use pso::{Record, SessionId};

    fn store() -> (tempfile::TempDir, FileStore) {
        let dir = tempfile::tempdir().unwrap();
        FileStore::open(dir.path().join("s")).unwrap();
        let store = open(dir.path().join("s")).unwrap();
        (dir, store)
    }

    fn save(store: &FileStore, service: &str, id: &str, record: &Record) -> SessionKey {
        let key = SessionKey::new(service.parse().unwrap(), SessionId::named(id).unwrap());
        store
            .lock(&key, LockOptions::new(Duration::from_secs(5)))
            .unwrap()
            .save(record)
            .unwrap();
        key
    }

    fn shown_values(store: &FileStore, key: &SessionKey) -> Vec<(String, Option<String>)> {
        let detail = detail(store, key, 1_000).unwrap().unwrap();
        detail
            .keys
            .iter()
            .map(|k| (k.name.clone(), k.shown.as_ref().map(Shown::to_string)))
            .collect()
    }

    fn owned(shown: &[(&str, Option<&str>)]) -> Vec<(String, Option<String>)> {
        shown
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(str::to_owned)))
            .collect()
    }

    #[test]
    fn values_show_as_integers_or_strings_where_they_are() {
        let (_dir, store) = store();
        let mut record = Record::new(Meta::new(1_000));
        record.set("n", &7u64).unwrap();
        record.set("zero", &0u64).unwrap();
        record.set("big", &u64::MAX).unwrap();
        record.set("neg", &-5i32).unwrap();
        record.set("name", "eggs\u{1b}[31m").unwrap();
        record.set("list", &vec![300u32]).unwrap();
        record.set("small", &vec![1u8, 2]).unwrap();
        record.set("pair", &(1u8, "x")).unwrap();
        let key = save(&store, "svc", "007", &record);
        let max = u64::MAX.to_string();
        assert_eq!(
            shown_values(&store, &key),
            owned(&[
                ("big", Some(&max)),
                ("list", None),
                ("n", Some("7")),
                ("name", Some(r#""eggs\u{1b}[31m""#)),
                ("neg", Some("-5")),
                ("pair", None),
                ("small", None),
                ("zero", Some("0")),
            ])
        );
        let detail = detail(&store, &key, 1_000).unwrap().unwrap();
        assert_eq!(detail.keys[0].bytes, record.value_len("big").unwrap());
    }

    #[test]
    fn bincode_values_of_format_version_1_show_where_they_decode_exactly() {
        fn bincode(value: &impl serde::Serialize) -> serde_bytes::ByteBuf {
            let config = bincode::config::standard();
            serde_bytes::ByteBuf::from(bincode::serde::encode_to_vec(value, config).unwrap())
        }
        let values = std::collections::BTreeMap::from([
            ("big", bincode(&u64::MAX)),
            ("n", bincode(&7u64)),
            ("name", bincode(&"eggs")),
            ("neg", bincode(&-1i64)),
            ("pair", bincode(&(1u8, "x"))),
            ("small", bincode(&vec![1u8, 2])),
        ]);
        let payload =
            bincode::serde::encode_to_vec((Meta::new(1_000), values), bincode::config::standard())
                .unwrap();
        let mut old = b"PSOS\x01".to_vec();
        old.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&old[4..9]);
        crc.update(&payload);
        old.extend_from_slice(&crc.finalize().to_le_bytes());
        old.extend_from_slice(&payload);
        let record = Record::decode(&old, 1 << 20).unwrap();

        let (_dir, store) = store();
        let key = save(&store, "svc", "007", &record);
        let max = u64::MAX.to_string();
        // Best effort: a list of small numbers has the bytes of a string of control
        // characters, and a signed integer shows zigzag-encoded.
        assert_eq!(
            shown_values(&store, &key),
            owned(&[
                ("big", Some(&max)),
                ("n", Some("7")),
                ("name", Some(r#""eggs""#)),
                ("neg", Some("1")),
                ("pair", None),
                ("small", Some(r#""\u{1}\u{2}""#)),
            ])
        );
    }

    #[test]
    fn ids_resolve_whole_or_by_an_unambiguous_prefix() {
        let (_dir, store) = store();
        let record = Record::new(Meta::new(1_000));
        let a = save(&store, "one", "abcdef111111", &record);
        save(&store, "one", "abcdef222222", &record);
        let shared_one = save(&store, "one", "007", &record);
        save(&store, "two", "007", &record);
        let one: ServiceId = "one".parse().unwrap();
        assert_eq!(resolve(&store, None, "abcdef1").unwrap(), a);
        assert_eq!(resolve(&store, None, "abcdef111111").unwrap(), a);
        assert!(matches!(
            resolve(&store, None, "abcdef"),
            Err(LookupError::Ambiguous { matches: 2, .. })
        ));
        assert!(matches!(
            resolve(&store, None, "abc"),
            Err(LookupError::TooShort)
        ));
        assert!(matches!(
            resolve(&store, None, "007"),
            Err(LookupError::Ambiguous { matches: 2, .. })
        ));
        assert_eq!(resolve(&store, Some(&one), "007").unwrap(), shared_one);
        assert!(matches!(
            resolve(&store, None, "../etc"),
            Err(LookupError::Invalid(_))
        ));
        assert!(matches!(
            resolve(&store, None, "ffffff"),
            Err(LookupError::NotFound)
        ));
    }
}
