//! The store's files as tools see them (`pso sessions`, an admin page): every entry of the
//! directory named for what it is, and a session file's metadata read without taking its lock
//! and without reading its values into memory.
//!
//! Nothing here writes, removes or locks: looking at a store never changes it.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::{
    Entry, FileStore, Front, GC_CURSOR, GC_READ, c_name, classify, disk_bytes, file_name, layout,
    read_front,
};
use crate::error::{Error, ErrorKind, Result};
use crate::record::Meta;
use crate::store::SessionKey;

/// What a name in the session directory is.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EntryKind {
    /// A session file, `<service>.<id>.pso`.
    Session(SessionKey),
    /// A save's temporary file (`.<service>.<id>.<pid>-<n>.tmp`), or one of collection's.
    Temporary,
    /// Where collection stopped last (`.pso-gc-cursor`).
    GcCursor,
    /// Anything else: not pso's (another program's file, a file put there by hand).
    Other,
}

/// One entry of the session directory, as [`FileStore::entries`] lists it.
#[derive(Clone, Debug)]
pub struct DirEntry {
    name: OsString,
    kind: EntryKind,
}

impl DirEntry {
    /// The entry's file name (any bytes: other programs' names need not be UTF-8).
    pub fn name(&self) -> &OsStr {
        &self.name
    }

    /// What the name says the entry is; its contents are not looked at.
    pub fn kind(&self) -> &EntryKind {
        &self.kind
    }
}

/// The entries of a session directory, streamed: see [`FileStore::entries`].
pub struct Entries {
    listing: rustix::fs::Dir,
    path: std::path::PathBuf,
}

impl Iterator for Entries {
    type Item = Result<DirEntry>;

    fn next(&mut self) -> Option<Result<DirEntry>> {
        loop {
            let entry = match self.listing.read()? {
                Ok(entry) => entry,
                Err(e) => {
                    return Some(Err(Error::io(
                        format!("listing {}", self.path.display()),
                        e.into(),
                    )));
                }
            };
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let name = OsStr::from_bytes(name);
            let kind = if name == GC_CURSOR {
                EntryKind::GcCursor
            } else {
                match classify(name) {
                    Some(Entry::Session(key)) => EntryKind::Session(key),
                    Some(Entry::Temp) => EntryKind::Temporary,
                    None => EntryKind::Other,
                }
            };
            return Some(Ok(DirEntry {
                name: name.to_owned(),
                kind,
            }));
        }
    }
}

/// A session file's metadata and sizes, as [`FileStore::inspect`] reads them.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionFile {
    /// What the file holds.
    pub contents: Contents,
    /// The file's length.
    pub file_bytes: u64,
    /// The disk space the file takes (its second slot is a hole until it is first used).
    pub disk_bytes: u64,
    /// When the file was last written, in seconds since the Unix epoch.
    pub modified: u64,
}

/// What a session file holds.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Contents {
    /// A record of `bytes` bytes (its encoded length), with its metadata.
    Record {
        /// The session's metadata.
        meta: Meta,
        /// The record's encoded length: what `PSOSessionMaxBytes` caps.
        bytes: u64,
    },
    /// An empty file: the key is reserved but no record was saved yet (or its process died).
    Reservation,
    /// A file or record of a format version this pso does not read: another pso wrote it.
    OtherVersion,
}

impl FileStore {
    /// Every entry of the session directory, streamed in directory order, each classified by
    /// its name alone. Unlike [`crate::store::Store::keys`] it also names what is not a session
    /// (temporary files, other programs' files), so a tool can report them.
    ///
    /// Memory stays the same whatever the size of the directory: entries are read a buffer at
    /// a time, never collected.
    ///
    /// ```
    /// use pso::store::{EntryKind, FileStore};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = FileStore::open(dir.path().join("sessions"))?;
    /// std::fs::write(store.dir().join("sess_php"), "")?;
    /// std::fs::write(store.dir().join("shop.007.pso"), "")?;
    /// let mut kinds: Vec<String> = store
    ///     .entries()?
    ///     .map(|entry| {
    ///         let entry = entry.unwrap();
    ///         match entry.kind() {
    ///             EntryKind::Session(key) => format!("session {}", key.id),
    ///             _ => format!("other {}", entry.name().to_string_lossy()),
    ///         }
    ///     })
    ///     .collect();
    /// kinds.sort();
    /// assert_eq!(kinds, ["other sess_php", "session 007"]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn entries(&self) -> Result<Entries> {
        Ok(Entries {
            listing: self.listing()?,
            path: self.dir.path.clone(),
        })
    }

    /// Reads the metadata and sizes of `key`'s session file without locking it and without
    /// reading its values: the newest slot's checksum is verified in chunks, then only the
    /// first 4 KiB of its record are kept. `None` if there is no file.
    ///
    /// Whatever this store's [`FileStore::with_max_bytes`], no record is judged by its size:
    /// the directory may be shared with programs that allow bigger ones. A file that is
    /// damaged, or that is not a regular file of ours with one link (a symbolic link, a
    /// directory, another user's file), is an error of kind [`ErrorKind::Corrupt`]; it is
    /// never opened through a link, and nothing but a regular file is ever opened.
    ///
    /// ```
    /// use pso::store::{Contents, FileStore, LockOptions, SessionKey, Store};
    /// use std::time::Duration;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = FileStore::open(dir.path().join("sessions"))?;
    /// let key = SessionKey::new("shop".parse()?, pso::SessionId::generate()?);
    /// assert!(store.inspect(&key)?.is_none());
    ///
    /// let mut record = pso::Record::new(pso::Meta::new(1_700_000_000));
    /// record.set("user", "eggs")?;
    /// store.lock(&key, LockOptions::new(Duration::from_secs(5)))?.save(&record)?;
    /// let file = store.inspect(&key)?.unwrap();
    /// match file.contents {
    ///     Contents::Record { meta, bytes } => {
    ///         assert_eq!(meta.created, 1_700_000_000);
    ///         assert_eq!(bytes, record.encode()?.len() as u64);
    ///     }
    ///     other => panic!("{other:?}"),
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn inspect(&self, key: &SessionKey) -> Result<Option<SessionFile>> {
        let name = c_name(file_name(key));
        let dir = &self.dir.handle;
        let not_ours = || {
            Error::new(
                ErrorKind::Corrupt,
                format!("session {key:?}: not a regular file of ours with one link"),
            )
        };
        // A save that needs a new file exchanges it in and removes the old one: a file that
        // lost its link while it was opened is looked for again at the name.
        let mut tries = 0;
        let (file, stat) = loop {
            tries += 1;
            // Looked at before it is opened: a FIFO or a device is never opened.
            let seen = match rustix::fs::statat(dir, &name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) => stat,
                Err(Errno::NOENT) => return Ok(None),
                Err(e) => return Err(Error::io(format!("inspecting session {key:?}"), e.into())),
            };
            if FileType::from_raw_mode(seen.st_mode) != FileType::RegularFile
                || !self.is_our_file(&seen)
            {
                return Err(not_ours());
            }
            let flags = OFlags::RDONLY
                | OFlags::NOFOLLOW
                | OFlags::CLOEXEC
                | OFlags::NONBLOCK
                | OFlags::NOCTTY;
            let file = match rustix::fs::openat(dir, &name, flags, Mode::empty()) {
                Ok(fd) => File::from(fd),
                // Removed (collected, deleted) since it was listed.
                Err(Errno::NOENT) => return Ok(None),
                Err(Errno::LOOP) => return Err(not_ours()),
                Err(e) => return Err(Error::io(format!("opening session {key:?}"), e.into())),
            };
            let stat = rustix::fs::fstat(&file)
                .map_err(|e| Error::io(format!("inspecting session {key:?}"), e.into()))?;
            if stat.st_nlink == 0 && tries < 64 {
                continue;
            }
            if !self.is_our_file(&stat) {
                return Err(not_ours());
            }
            break (file, stat);
        };
        // No lock: a request may be saving into it right now.
        let settled = layout::read_settled(&file, |file| {
            let size = rustix::fs::fstat(file)
                .map_err(|e| Error::io(format!("inspecting session {key:?}"), e.into()))?
                .st_size;
            read_front(file, u64::try_from(size).unwrap_or(0))
        });
        let contents = match settled {
            Ok(Front::Record { meta, len }) => Contents::Record { meta, bytes: len },
            Ok(Front::Reservation) => Contents::Reservation,
            Ok(Front::OtherVersion) => Contents::OtherVersion,
            Ok(Front::Unjudged) => {
                return Err(Error::new(
                    ErrorKind::Corrupt,
                    format!(
                        "session {key:?}: its metadata is longer than {GC_READ} bytes, which pso never writes"
                    ),
                ));
            }
            Err(e) => {
                let kind = e.kind();
                return Err(Error::with_source(
                    kind,
                    format!("session {key:?} cannot be read"),
                    e,
                ));
            }
        };
        Ok(Some(SessionFile {
            contents,
            file_bytes: u64::try_from(stat.st_size).unwrap_or(0),
            disk_bytes: disk_bytes(&stat),
            modified: u64::try_from(stat.st_mtime).unwrap_or(0),
        }))
    }
}
