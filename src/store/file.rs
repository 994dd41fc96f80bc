//! The file store: one file per session in a private directory, locked with `flock`.
//!
//! Names: `<dir>/<service>.<id>.pso`, laid out as the `layout` module says (two slots written in turn,
//! in place); while a new file is written, `<dir>/.<service>.<id>.<pid>-<n>.tmp`. The
//! directory is `0700` and owned by the user pso runs as, files are `0600`, and no file is
//! opened through a symbolic link.
//!
//! The directory is opened once, as a handle (`O_DIRECTORY | O_NOFOLLOW`), checked with `fstat`,
//! and every file operation after that is relative to the handle (`openat`, `renameat`,
//! `unlinkat`, `fstatat` without following links). Whoever renames the directory or puts a
//! symbolic link in its place afterwards changes nothing for this store: it keeps working in the
//! directory it checked.
//!
//! Locking: a request locks the session's file itself (`flock`, std's [`File::lock`]) from load
//! to the end of the request. A save writes in place, so the file stays the one locked. Only a
//! new file (a session's first save, a record that outgrew its slots, a version-1 file) is
//! renamed over the name; a request waiting on the old file then wakes up holding a lock on a
//! file that is no longer the session, so after locking it checks that its descriptor is still
//! the file at the name (same device and inode, still linked) and starts again if not. The
//! saver locks the new file *before* renaming it into place, so it never leaves the session
//! unlocked mid-request.

// Reached by the `fuzzing` feature's wrappers (src/fuzzing.rs).
mod admin;
pub(crate) mod layout;
mod listing;

use layout::Layout;
pub use listing::{Contents, DirEntry, Entries, EntryKind, SessionFile};

use std::ffi::{CStr, CString, OsStr};
use std::fs::{File, TryLockError};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, Stat};
use rustix::io::Errno;

use crate::error::{Error, ErrorChain, ErrorKind, Result};
use crate::expiry::unix_secs;
use crate::id::{ServiceId, SessionId};
use crate::record::{HEADER_LEN, MAX_RECORD_BYTES, Meta, Record};
use crate::store::{
    GcOutcome, GcRemoval, GcReport, LockOptions, LockedSession, SessionKey, Store, deleted_error,
    lock_deadline, time_left,
};

const EXTENSION: &str = ".pso";
const TEMP_EXTENSION: &str = ".tmp";
/// Where garbage collection stopped last, so that the next pass goes on from there.
const GC_CURSOR: &str = ".pso-gc-cursor";
/// A temporary file (or an empty reservation) this old belongs to a process that died.
const ABANDONED_AGE: u64 = 3_600;
/// Longest pause between two tries of a busy lock.
const MAX_LOCK_PAUSE: Duration = Duration::from_millis(10);
/// How often opening removes something that is not a session file before it gives up.
const MAX_REOPENS: u32 = 64;
/// How much of a session file garbage collection reads to judge it: the metadata is at the
/// front and small, so collection never holds a whole record in memory.
const GC_READ: usize = 4096;

/// Sessions as files in one directory. Cheap to clone: clones share the directory handle.
///
/// ```
/// use pso::store::{FileStore, LockOptions, SessionKey, Store};
/// use std::time::Duration;
///
/// let dir = tempfile::tempdir()?;
/// let store = FileStore::open(dir.path().join("sessions"))?;
/// let key = SessionKey::new("shop".parse()?, pso::SessionId::generate()?);
///
/// let mut session = store.lock(&key, LockOptions::new(Duration::from_secs(5)))?; // held until dropped
/// assert!(session.load()?.is_none());
/// let mut record = pso::Record::new(pso::Meta::new(1_700_000_000));
/// record.set("user", "eggs")?;
/// session.save(&record)?;
/// drop(session);
///
/// assert_eq!(store.peek(&key)?.unwrap().get::<String>("user")?.as_deref(), Some("eggs"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct FileStore {
    dir: Arc<Directory>,
    sync: bool,
    max_bytes: u64,
    /// Syncs a test makes fail, as a failing disk would.
    #[cfg(test)]
    faults: Arc<Faults>,
}

/// Syncs that fail on purpose, in tests.
#[cfg(test)]
#[derive(Debug, Default)]
struct Faults {
    file_sync: std::sync::atomic::AtomicBool,
    dir_sync: std::sync::atomic::AtomicBool,
    /// Exchanges that succeed before the next ones fail; negative: none fail.
    exchanges_left: std::sync::atomic::AtomicI32,
}

/// The session directory, opened and checked once.
#[derive(Debug)]
struct Directory {
    handle: OwnedFd,
    /// The path it was opened by: for messages and tools only, never to reach a file.
    path: PathBuf,
    uid: u32,
}

/// What is at a session's name.
enum Found {
    /// A regular file of ours with one link, opened; `created` if this open made it.
    File { file: File, created: bool },
    /// Nothing.
    Missing,
    /// Something that is not a session file and cannot be removed (a directory with entries):
    /// this id cannot be used.
    Blocked,
}

impl FileStore {
    /// Opens the store in `dir`, creating the directory `0700` if it does not exist (but not
    /// its parent).
    ///
    /// The directory is opened once without following a symbolic link and checked through
    /// the open handle: it must be a real directory owned by the user pso runs as, of mode
    /// `0700`. One that others could read or write is refused rather than tightened: file names
    /// are session ids, and whoever opened it while it was loose can list it still. A
    /// directory on NFS or SMB is logged: `flock` is not reliable there.
    pub fn open(dir: impl Into<PathBuf>) -> Result<FileStore> {
        FileStore::open_with(dir.into(), true)
    }

    /// Opens the store in `dir` like [`FileStore::open`], but never creates the directory: a
    /// missing one is an error of kind [`ErrorKind::Directory`]. For tools that only look, so
    /// that a mistyped path is reported rather than made.
    ///
    /// ```
    /// use pso::store::FileStore;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let missing = dir.path().join("sessions");
    /// let err = FileStore::open_existing(&missing).unwrap_err();
    /// assert_eq!(err.kind(), pso::ErrorKind::Directory);
    /// assert!(!missing.exists());
    /// FileStore::open(&missing)?;
    /// FileStore::open_existing(&missing)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open_existing(dir: impl Into<PathBuf>) -> Result<FileStore> {
        FileStore::open_with(dir.into(), false)
    }

    fn open_with(path: PathBuf, create: bool) -> Result<FileStore> {
        let uid = effective_uid();
        let handle = open_directory(&path, uid, create)?;
        warn_if_network_file_system(&handle, &path);
        Ok(FileStore {
            dir: Arc::new(Directory { handle, path, uid }),
            sync: false,
            max_bytes: 1 << 20,
            #[cfg(test)]
            faults: Arc::new(Faults {
                exchanges_left: std::sync::atomic::AtomicI32::new(-1),
                ..Faults::default()
            }),
        })
    }

    /// The default session directory: `pso-<uid>` in the system's temporary directory, private
    /// to the user the web server runs CGI programs as.
    pub fn default_dir() -> PathBuf {
        std::env::temp_dir().join(format!("pso-{}", effective_uid()))
    }

    /// One pass of garbage collection over the whole directory, however long it takes, calling
    /// `observe` with what became of each directory entry (for a progress bar and a summary).
    /// With a `service`, only that service's sessions are looked at (every other entry is
    /// [`GcOutcome::Ignored`], abandoned temporary files included).
    ///
    /// It removes what [`Store::collect_garbage`] removes and nothing else: only files of
    /// pso's naming and ours, each locked without waiting (a session a request holds is
    /// [`GcOutcome::Busy`] and stays) and judged under that lock, so a request cannot renew a
    /// session between the judgement and the removal. Safe to run while programs use the store.
    ///
    /// ```
    /// use pso::store::{FileStore, GcOutcome, LockOptions, SessionKey, Store};
    /// use std::time::{Duration, UNIX_EPOCH};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = FileStore::open(dir.path().join("sessions"))?;
    /// let key = SessionKey::new("shop".parse()?, pso::SessionId::generate()?);
    /// let mut meta = pso::Meta::new(1_000);
    /// meta.deadline = Some(2_000);
    /// store.lock(&key, LockOptions::new(Duration::from_secs(5)))?.save(&pso::Record::new(meta))?;
    ///
    /// let mut removed = 0;
    /// let now = UNIX_EPOCH + Duration::from_secs(3_000);
    /// let report = store.collect_observed(now, None, &mut |outcome| {
    ///     if let GcOutcome::Removed { .. } = outcome {
    ///         removed += 1;
    ///     }
    /// })?;
    /// assert_eq!((removed, report.removed), (1, 1));
    /// assert!(!store.exists(&key)?);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn collect_observed(
        &self,
        now: SystemTime,
        service: Option<&ServiceId>,
        observe: &mut dyn FnMut(GcOutcome),
    ) -> Result<GcReport> {
        self.collect(unix_secs(now), service, &mut || false, observe)
    }

    /// Whether saves are synced to the disk (`PSOSessionSync`), for durability across power
    /// loss: each save's data (`fdatasync`), and the directory when a file is created at its
    /// name, renamed into place or removed. Off by default: a save is atomic without it (a kill
    /// at any instant leaves the old record or the new), but a power cut may lose what the
    /// disk had not written yet, the previous save included.
    pub fn with_sync(mut self, sync: bool) -> FileStore {
        self.sync = sync;
        self
    }

    /// The largest record read or written (`PSOSessionMaxBytes`).
    pub fn with_max_bytes(mut self, max_bytes: u64) -> FileStore {
        self.max_bytes = max_bytes;
        self
    }

    /// Whether `path` has a `.` or `..` component, which a session directory's path may not
    /// have (std's `Path` drops `.`: `/tmp/.` would be `/tmp`, so the bytes are read as given).
    ///
    /// ```
    /// use pso::store::FileStore;
    /// use std::path::Path;
    /// assert!(FileStore::has_dot_components(Path::new("/var/lib/../tmp")));
    /// assert!(FileStore::has_dot_components(Path::new("/tmp/.")));
    /// assert!(!FileStore::has_dot_components(Path::new("/var/lib/pso")));
    /// ```
    pub fn has_dot_components(path: &Path) -> bool {
        path.as_os_str()
            .as_bytes()
            .split(|&b| b == b'/')
            .any(|part| part == b"." || part == b"..")
    }

    /// Whether a user other than `uid` and root could rename or remove entries of the
    /// directory `parent` or of any directory above it: [`FileStore::open`] refuses a session
    /// directory in such a place, since that user could move it away or put another in its
    /// place. `/tmp` (sticky) is fine.
    ///
    /// ```
    /// use pso::store::FileStore;
    /// assert!(!FileStore::others_can_change(std::path::Path::new("/tmp"), 0)?);
    /// # Ok::<(), pso::Error>(())
    /// ```
    pub fn others_can_change(parent: &Path, uid: u32) -> Result<bool> {
        Ok(FileStore::changeable_by_others(parent, uid)?.is_some())
    }

    /// The first directory on the path to `dir` (itself included), walked from the root and
    /// through symbolic links as [`FileStore::open`] walks it, that a user other than `uid` and
    /// root could rename or remove entries of; `None` if there is none. Whoever can change a
    /// directory further up the path can swap the session directory as well as whoever can
    /// change its parent.
    ///
    /// ```
    /// use pso::store::FileStore;
    /// assert_eq!(FileStore::changeable_by_others(std::path::Path::new("/tmp"), 0)?, None);
    /// # Ok::<(), pso::Error>(())
    /// ```
    pub fn changeable_by_others(dir: &Path, uid: u32) -> Result<Option<PathBuf>> {
        match walk_trusted(dir, uid) {
            Ok(Walk::Safe(_)) => Ok(None),
            Ok(Walk::Unsafe { dir, .. }) => Ok(Some(dir)),
            Err((at, e)) => Err(Error::io(format!("inspecting {}", at.display()), e.into())),
        }
    }

    /// The network file system (`NFS`, `SMB`, `CIFS`, `SMB2`) that holds `path`, if it is on
    /// one: `flock` is not reliable there, so [`FileStore::open`] warns about it. Follows
    /// symbolic links; detected on Linux only (elsewhere always `None`).
    ///
    /// ```
    /// let on = pso::store::FileStore::network_file_system(&std::env::temp_dir())?;
    /// if let Some(name) = on {
    ///     eprintln!("sessions under the temporary directory would be on {name}");
    /// }
    /// # Ok::<(), pso::Error>(())
    /// ```
    pub fn network_file_system(path: &Path) -> Result<Option<&'static str>> {
        let stats = rustix::fs::statfs(path).map_err(|e| {
            Error::io(
                format!("finding the file system of {}", path.display()),
                e.into(),
            )
        })?;
        Ok(network_file_system_name(&stats))
    }

    /// The path the session directory was opened by.
    pub fn dir(&self) -> &Path {
        &self.dir.path
    }

    /// The path of the file that holds `key`'s session, for tools and tests; the store itself
    /// reaches files only through its directory handle.
    pub fn path_of(&self, key: &SessionKey) -> PathBuf {
        self.dir.path.join(file_name(key))
    }

    /// Opens the session file named `name` without following a symbolic link.
    ///
    /// What is at the name is looked at first (`fstatat`, not following a link) and opened
    /// only if it is a regular file: a device or FIFO is never opened. Anything that is not a
    /// regular file of ours with one link (a planted symlink, a hard link to another file, a
    /// directory, a FIFO, a socket, a device, a file we may not open) is removed, never
    /// followed or written; what cannot be removed makes the id [`Found::Blocked`].
    fn open_file(&self, key: &SessionKey, name: &CStr, create: bool) -> Result<Found> {
        let dir = &self.dir.handle;
        for _ in 0..MAX_REOPENS {
            let seen = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) => Some(stat),
                Err(Errno::NOENT) if !create => return Ok(Found::Missing),
                Err(Errno::NOENT) => None,
                Err(e) => return Err(Error::io(format!("inspecting session {key:?}"), e.into())),
            };
            if let Some(stat) = &seen {
                let kind = FileType::from_raw_mode(stat.st_mode);
                // Looked up just as another request's save replaced it (the lookup found the
                // old file, whose last link then went): look again.
                if stat.st_nlink == 0 {
                    continue;
                }
                if kind != FileType::RegularFile || !self.is_our_file(stat) {
                    // Remove the name only if it still is what we looked at: a save may have
                    // renamed a good file into place meanwhile.
                    if !self.names(name, stat) {
                        continue;
                    }
                    log::warn!(
                        "session {key:?}: a {} that is not ours alone is where the file should be; removing it",
                        describe(kind)
                    );
                    if !self.remove_planted(key, name, kind)? {
                        return Ok(Found::Blocked);
                    }
                    continue;
                }
            }
            // A name that was free is created exclusively, so two requests cannot both think
            // they made it; one that held a file is opened only if it still is that file.
            let mut flags = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
            if seen.is_none() {
                flags |= OFlags::CREATE | OFlags::EXCL;
            }
            let file = match rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(0o600)) {
                Ok(fd) => File::from(fd),
                // Created, replaced or removed by another request meanwhile: look again.
                Err(Errno::EXIST | Errno::NOENT | Errno::LOOP) => continue,
                Err(Errno::ACCESS | Errno::PERM) => {
                    log::warn!("session {key:?}: the file cannot be opened; removing it");
                    if !self.remove_planted(key, name, FileType::RegularFile)? {
                        return Ok(Found::Blocked);
                    }
                    continue;
                }
                Err(e) => return Err(Error::io(format!("opening session {key:?}"), e.into())),
            };
            // What was opened is checked once it is locked (`still_current`): the file at the
            // name, regular, ours, with one link.
            return Ok(Found::File {
                file,
                created: seen.is_none(),
            });
        }
        Err(Error::new(
            ErrorKind::Io,
            format!("session {key:?}: the file keeps changing"),
        ))
    }

    /// Removes what is at `name`; `false` (logged) if it cannot be removed.
    fn remove_planted(&self, key: &SessionKey, name: &CStr, kind: FileType) -> Result<bool> {
        let flags = if kind == FileType::Directory {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        match rustix::fs::unlinkat(&self.dir.handle, name, flags) {
            Ok(()) | Err(Errno::NOENT) => Ok(true),
            Err(
                e @ (Errno::NOTEMPTY | Errno::EXIST | Errno::PERM | Errno::ACCESS | Errno::BUSY),
            ) => {
                log::warn!(
                    "session {key:?}: cannot remove the {} at its name ({e}); the id is not used",
                    describe(kind)
                );
                Ok(false)
            }
            Err(e) => Err(Error::io(format!("removing session {key:?}"), e.into())),
        }
    }

    fn is_our_file(&self, stat: &Stat) -> bool {
        FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile
            && stat.st_uid == self.dir.uid
            && stat.st_nlink == 1
    }

    /// Whether `name` in the directory is the file `stat` describes (not following a link).
    fn names(&self, name: &CStr, stat: &Stat) -> bool {
        rustix::fs::statat(&self.dir.handle, name, AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|current| current.st_dev == stat.st_dev && current.st_ino == stat.st_ino)
    }

    /// The locked descriptor's size if it is still the session's file, the one at `name`, a
    /// regular file of ours, made `0600` if it was not. When in doubt (an error), it is not:
    /// the caller opens the name again.
    ///
    /// One link is not enough to tell: a save that needs a new file exchanges it with the old
    /// one (`RENAME_EXCHANGE`), which then has its one link at a temporary name until it is
    /// removed, and a saver killed in between leaves it there. A request that waited on the
    /// old file must not take it for the session.
    fn still_current(&self, file: &File, name: &CStr) -> Option<u64> {
        let held = rustix::fs::fstat(file).ok()?;
        if !self.is_our_file(&held) || !self.names(name, &held) {
            return None;
        }
        if held.st_mode & 0o777 != 0o600 {
            rustix::fs::fchmod(file, Mode::from_raw_mode(0o600)).ok()?;
        }
        Some(u64::try_from(held.st_size).unwrap_or(0))
    }

    fn unlink(&self, name: &CStr) -> std::io::Result<()> {
        match rustix::fs::unlinkat(&self.dir.handle, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Creates a new private temporary file for `key`'s next version.
    fn create_temp(&self, key: &SessionKey) -> Result<(CString, File)> {
        let pid = std::process::id();
        for attempt in 0u32..64 {
            let name = c_name(format!(
                ".{}.{}.{pid}-{attempt}{TEMP_EXTENSION}",
                key.service, key.id
            ));
            // Readable too: after the rename this descriptor is the locked session file.
            let flags =
                OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            match rustix::fs::openat(&self.dir.handle, &name, flags, Mode::from_raw_mode(0o600)) {
                Ok(fd) => {
                    let file = File::from(fd);
                    if let Err(e) = set_private(&file, key) {
                        let _ = self.unlink(&name);
                        return Err(e);
                    }
                    return Ok((name, file));
                }
                // Left behind by a killed process whose pid we now have.
                Err(Errno::EXIST) => continue,
                Err(e) => {
                    return Err(Error::io(
                        format!("creating a new file for session {key:?}"),
                        e.into(),
                    ));
                }
            }
        }
        Err(Error::new(
            ErrorKind::Io,
            format!("session {key:?}: no free temporary file name"),
        ))
    }

    fn sync_dir(&self) -> std::io::Result<()> {
        #[cfg(test)]
        if self.faults.dir_sync.load(Ordering::SeqCst) {
            return Err(std::io::Error::from_raw_os_error(Errno::IO.raw_os_error()));
        }
        rustix::fs::fsync(&self.dir.handle).map_err(Into::into)
    }

    /// `fdatasync` of a session file.
    fn sync_file(&self, file: &File) -> std::io::Result<()> {
        #[cfg(test)]
        if self.faults.file_sync.load(Ordering::SeqCst) {
            return Err(std::io::Error::from_raw_os_error(Errno::IO.raw_os_error()));
        }
        file.sync_data()
    }

    /// Looks at one directory entry for garbage collection.
    fn collect_entry(
        &self,
        name: &CStr,
        now: u64,
        service: Option<&ServiceId>,
        report: &mut GcReport,
    ) -> GcOutcome {
        let Some(kind) = classify(OsStr::from_bytes(name.to_bytes())) else {
            return GcOutcome::Ignored;
        };
        let of_service = match &kind {
            Entry::Session(key) => service.is_none_or(|service| key.service == *service),
            // Temporary names are not parsed for their service: only a pass over every
            // service removes abandoned ones.
            Entry::Temp => service.is_none(),
        };
        if !of_service {
            return GcOutcome::Ignored;
        }
        let Some((file, stat)) = self.open_for_reading(name) else {
            return GcOutcome::Skipped;
        };
        let age = now.saturating_sub(u64::try_from(stat.st_mtime).unwrap_or(0));
        let removal = match kind {
            Entry::Session(key) => {
                report.examined += 1;
                match file.try_lock() {
                    Ok(()) => {}
                    Err(TryLockError::WouldBlock) => {
                        report.busy += 1;
                        return GcOutcome::Busy;
                    }
                    Err(TryLockError::Error(_)) => return GcOutcome::Skipped,
                }
                if self.still_current(&file, name).is_none() {
                    return GcOutcome::Skipped;
                }
                match self.is_dead(&key, &file, &stat, now, age) {
                    Ok(removal) => removal,
                    Err(kept) => return kept,
                }
            }
            Entry::Temp => {
                if age <= ABANDONED_AGE {
                    return GcOutcome::Kept;
                }
                if file.try_lock().is_err() {
                    return GcOutcome::Busy;
                }
                GcRemoval::Abandoned
            }
        };
        // The lock is held, so no request can have saved into this file; the name is checked
        // to still be this file so that nothing else put there is removed in its place.
        if !self.names(name, &stat) || self.unlink(name).is_err() {
            return GcOutcome::Skipped;
        }
        report.removed += 1;
        GcOutcome::Removed {
            reason: removal,
            bytes: disk_bytes(&stat),
        }
    }

    /// Why a locked session file may go: expired, or unreadable; otherwise how it is kept.
    ///
    /// Only the metadata at the front is read, so collection never holds a record in memory.
    /// The directory may be shared with other programs, other settings and other versions of
    /// pso: a record of a format version this pso does not know is left alone, and nothing is
    /// judged by this program's size cap.
    fn is_dead(
        &self,
        key: &SessionKey,
        file: &File,
        stat: &Stat,
        now: u64,
        age: u64,
    ) -> std::result::Result<GcRemoval, GcOutcome> {
        // Under the lock: nothing changes it meanwhile.
        let size = u64::try_from(stat.st_size).unwrap_or(0);
        match read_front(file, size) {
            Ok(Front::Record { meta, .. }) if meta.is_expired(now) => Ok(GcRemoval::Expired),
            // A reservation that never got its record.
            Ok(Front::Reservation) if age > ABANDONED_AGE => Ok(GcRemoval::Abandoned),
            Ok(_) => Err(GcOutcome::Kept),
            Err(e) if e.kind() == ErrorKind::Corrupt && key.id.is_generated() => {
                log::warn!("removing unreadable session {key:?}: {e}");
                Ok(GcRemoval::Unreadable)
            }
            Err(e) if e.kind() == ErrorKind::Corrupt => {
                // A record kept on purpose (a user's logout record, a forced id): pso reads a
                // damaged one as "logged out", which removing it would undo.
                log::warn!("leaving unreadable record {key:?} for a person to look at: {e}");
                Err(GcOutcome::KeptDamaged)
            }
            Err(_) => Err(GcOutcome::Kept),
        }
    }

    /// Opens a file of the directory read-only, without following a symlink; `None` unless it
    /// is a regular file of ours with one link.
    fn open_for_reading(&self, name: &CStr) -> Option<(File, Stat)> {
        let (file, stat) = self.open_any(name)?;
        self.is_our_file(&stat).then_some((file, stat))
    }

    /// Opens what is at `name` read-only, without following a symlink, and looks at it.
    fn open_any(&self, name: &CStr) -> Option<(File, Stat)> {
        let flags =
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY;
        let file =
            File::from(rustix::fs::openat(&self.dir.handle, name, flags, Mode::empty()).ok()?);
        let stat = rustix::fs::fstat(&file).ok()?;
        Some((file, stat))
    }

    /// A listing of the directory through its handle, with its own position.
    fn listing(&self) -> Result<rustix::fs::Dir> {
        rustix::fs::Dir::read_from(&self.dir.handle)
            .map_err(|e| Error::io(format!("listing {}", self.dir.path.display()), e.into()))
    }

    /// Collects garbage until `out_of_time` says so (asked before every entry), telling
    /// `observe` what became of each entry.
    fn collect(
        &self,
        now: u64,
        service: Option<&ServiceId>,
        out_of_time: &mut dyn FnMut() -> bool,
        observe: &mut dyn FnMut(GcOutcome),
    ) -> Result<GcReport> {
        let mut report = GcReport::default();
        let mut listing = self.listing()?;
        // Go on where the last pass stopped, so that passes too short for the whole directory
        // still reach every part of it in turn. A stale position costs one pass from the start.
        let mut start = self.read_cursor();
        if start != 0 && listing.seek(start).is_err() {
            listing = self.listing()?;
            start = 0;
        }
        let mut wrapped = start == 0;
        let mut position = start;
        loop {
            if out_of_time() {
                report.incomplete = true;
                break;
            }
            match listing.read() {
                Some(Ok(entry)) => {
                    report.listed += 1;
                    position = entry.offset();
                    observe(self.collect_entry(entry.file_name(), now, service, &mut report));
                    if wrapped && position >= start && start != 0 {
                        break;
                    }
                }
                Some(Err(e)) => {
                    return Err(Error::io(
                        format!("listing {}", self.dir.path.display()),
                        e.into(),
                    ));
                }
                None if wrapped => {
                    position = 0;
                    break;
                }
                None => {
                    // The end: go round from the start to where this pass began.
                    wrapped = true;
                    listing = self.listing()?;
                }
            }
        }
        if position != start {
            self.write_cursor(position);
        }
        Ok(report)
    }

    fn read_cursor(&self) -> i64 {
        let Some((file, _)) = self.open_for_reading(&c_name(GC_CURSOR.to_owned())) else {
            return 0;
        };
        let mut bytes = [0u8; 8];
        match file.read_exact_at(&mut bytes, 0) {
            Ok(()) => i64::from_le_bytes(bytes).max(0),
            Err(_) => 0,
        }
    }

    /// Saves where collection stopped: a new file renamed over the old name, so whatever was
    /// put at the name (a FIFO, a link to another file) is replaced, never opened or written.
    fn write_cursor(&self, position: i64) {
        // Unique in this process too: passes may run on several threads at once.
        static PASSES: AtomicU64 = AtomicU64::new(0);
        let pass = PASSES.fetch_add(1, Ordering::Relaxed);
        let temp = c_name(format!(
            "{GC_CURSOR}.{}-{pass}{TEMP_EXTENSION}",
            std::process::id()
        ));
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let dir = &self.dir.handle;
        let _ = self.unlink(&temp);
        let Ok(fd) = rustix::fs::openat(dir, &temp, flags, Mode::from_raw_mode(0o600)) else {
            return;
        };
        let written = File::from(fd)
            .write_all_at(&position.to_le_bytes(), 0)
            .is_ok();
        if !written || rustix::fs::renameat(dir, &temp, dir, c_name(GC_CURSOR.to_owned())).is_err()
        {
            let _ = self.unlink(&temp);
        }
    }
}

impl Store for FileStore {
    fn lock(&self, key: &SessionKey, options: LockOptions) -> Result<Box<dyn LockedSession>> {
        let name = c_name(file_name(key));
        let deadline = lock_deadline(options.timeout);
        loop {
            let (file, created) = match self.open_file(key, &name, options.create)? {
                Found::File { file, created } => (file, created),
                found => {
                    // No file: nothing to lock, and nobody else can reach a session that does
                    // not exist yet. The first save creates the file already locked.
                    return Ok(Box::new(FileLock {
                        store: self.clone(),
                        key: key.clone(),
                        name,
                        file: None,
                        size: 0,
                        layout: Some(Layout::Empty),
                        blocked: matches!(found, Found::Blocked),
                        deleted: false,
                        unsynced_entry: false,
                    }));
                }
            };
            wait_for_lock(&file, deadline, key)?;
            if let Some(size) = self.still_current(&file, &name) {
                return Ok(Box::new(FileLock {
                    store: self.clone(),
                    key: key.clone(),
                    name,
                    file: Some(file),
                    size,
                    // What a file holds is known once it is loaded; an empty one holds nothing.
                    layout: (size == 0).then_some(Layout::Empty),
                    blocked: false,
                    deleted: false,
                    // An empty file may have been created by a lock whose first save failed:
                    // its name is not known to be on the disk either.
                    unsynced_entry: created || size == 0,
                }));
            }
            // Replaced or removed while we waited: lock whatever is there now, within the
            // same deadline.
            time_left(deadline, key)?;
        }
    }

    fn exists(&self, key: &SessionKey) -> Result<bool> {
        match rustix::fs::statat(
            &self.dir.handle,
            c_name(file_name(key)),
            AtFlags::SYMLINK_NOFOLLOW,
        ) {
            Ok(_) => Ok(true),
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(Error::io(format!("inspecting session {key:?}"), e.into())),
        }
    }

    fn peek(&self, key: &SessionKey) -> Result<Option<Record>> {
        let name = c_name(file_name(key));
        for _ in 0..MAX_REOPENS {
            let Some((file, stat)) = self.open_any(&name) else {
                return Ok(None);
            };
            if stat.st_nlink == 0 {
                // Replaced (a save that needed a new file) or removed since it was opened:
                // whatever is at the name now is the session.
                continue;
            }
            if !self.is_our_file(&stat) {
                return Ok(None);
            }
            let (bytes, _) = layout::load_settled(&file, record_cap(self.max_bytes))?;
            return decode_record(bytes, self.max_bytes);
        }
        Err(Error::new(
            ErrorKind::LockTimeout,
            format!("session {key:?}: its file kept being replaced while it was read"),
        ))
    }

    fn delete(&self, key: &SessionKey) -> Result<()> {
        let name = c_name(file_name(key));
        let dir = &self.dir.handle;
        match rustix::fs::statat(dir, &name, AtFlags::SYMLINK_NOFOLLOW) {
            // Only a session file of ours; anything else at the name is the lock's to judge.
            Ok(stat) if self.is_our_file(&stat) => {}
            Ok(_) | Err(Errno::NOENT) => return Ok(()),
            Err(e) => return Err(Error::io(format!("inspecting session {key:?}"), e.into())),
        }
        self.unlink(&name)
            .map_err(|e| Error::io(format!("removing session {key:?}"), e))?;
        if self.sync {
            self.sync_dir()
                .map_err(|e| Error::io(format!("syncing the directory of session {key:?}"), e))?;
        }
        Ok(())
    }

    fn keys(&self) -> Result<Box<dyn Iterator<Item = Result<SessionKey>> + '_>> {
        let listing = self.listing()?;
        Ok(Box::new(listing.filter_map(|entry| match entry {
            Ok(entry) => match classify(OsStr::from_bytes(entry.file_name().to_bytes())) {
                Some(Entry::Session(key)) => Some(Ok(key)),
                _ => None,
            },
            Err(e) => Some(Err(Error::io("listing the session directory", e.into()))),
        })))
    }

    fn collect_garbage(&self, now: SystemTime, budget: Duration) -> Result<GcReport> {
        let started = Instant::now();
        self.collect(
            unix_secs(now),
            None,
            &mut || started.elapsed() >= budget,
            &mut |_| {},
        )
    }
}

/// A locked session file; the lock is released when this is dropped (the descriptor closes).
struct FileLock {
    store: FileStore,
    key: SessionKey,
    name: CString,
    /// The locked file; `None` while the session has no file.
    file: Option<File>,
    /// The locked file's size.
    size: u64,
    /// Where the file's newest record lies, once loaded or saved; `None` while that is not
    /// known (not loaded yet, or unreadable): the next save then writes a whole new file, since
    /// a slot it cannot read may still hold a higher sequence number than a save in place
    /// would write, and would win every later load.
    layout: Option<Layout>,
    /// Something that cannot be removed occupies the name: the session cannot be stored.
    blocked: bool,
    /// Whether `delete` was called: the file is gone and must not come back through this lock.
    deleted: bool,
    /// The file was created at its name (`LockOptions::create`), by this lock or by one whose
    /// first save failed, and the directory not synced since: the first synced save syncs it
    /// too.
    unsynced_entry: bool,
}

impl FileLock {
    /// Puts the new file `temp_name` at the session's name. A file this lock holds is
    /// exchanged with it (`RENAME_EXCHANGE`), so that a name removed meanwhile by
    /// [`Store::delete`] is noticed ([`ErrorKind::LockLost`]) instead of brought back; the old
    /// file, now at `temp_name`, is removed before its lock is let go. On an error the new
    /// file is removed, wherever it is, and nothing else: what the name held stays.
    fn take_name(&self, temp_name: &CStr) -> Result<()> {
        let key = &self.key;
        let dir = &self.store.dir.handle;
        let saving = |e: Errno| Error::io(format!("saving session {key:?}"), e.into());
        let exchange = || {
            #[cfg(test)]
            if self
                .store
                .faults
                .exchanges_left
                .fetch_sub(1, Ordering::SeqCst)
                == 0
            {
                return Err(Errno::IO);
            }
            rustix::fs::renameat_with(dir, temp_name, dir, &self.name, RenameFlags::EXCHANGE)
        };
        let drop_new = || {
            let _ = self.store.unlink(temp_name);
        };
        let Some(old) = &self.file else {
            if let Err(e) = rustix::fs::renameat(dir, temp_name, dir, &self.name) {
                drop_new();
                return Err(saving(e));
            }
            if let Err(e) = self.sync_dir_if_synced() {
                // Not known to be on the disk: the session had no file, and has none again.
                let _ = self.store.unlink(&self.name);
                return Err(e);
            }
            return Ok(());
        };
        if ended_meanwhile(old) {
            drop_new();
            return Err(lock_lost(key));
        }
        match exchange() {
            Ok(()) => {}
            Err(Errno::NOENT) => {
                drop_new();
                return Err(lock_lost(key));
            }
            // A file system without atomic exchange: looked at above, then renamed over (a
            // removal between the two is missed there, and a failed sync after it cannot be
            // undone: the save stands, as loads will find it).
            Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {
                if let Err(e) = rustix::fs::renameat(dir, temp_name, dir, &self.name) {
                    drop_new();
                    return Err(saving(e));
                }
                if let Err(e) = self.sync_dir_if_synced() {
                    log::error!(
                        "session {key:?}: {}; the save stands, not known to be on the disk",
                        ErrorChain(&e)
                    );
                }
                return Ok(());
            }
            Err(e) => {
                drop_new();
                return Err(saving(e));
            }
        }
        // What came out must be the file this lock holds. Anything else means the session was
        // removed and something else put at its name meanwhile: that goes back.
        let held = rustix::fs::fstat(old).map_err(saving)?;
        if !self.store.names(temp_name, &held) {
            match exchange() {
                Ok(()) => drop_new(),
                Err(e) => {
                    // The new file stays at the name: removed from there, so that the ended
                    // session stays ended; what was put at the name is left where it is.
                    log::error!("session {key:?}: cannot put back what was at its name ({e})");
                    let _ = self.store.unlink(&self.name);
                }
            }
            return Err(lock_lost(key));
        }
        if let Err(e) = self.sync_dir_if_synced() {
            // Not known to be on the disk: back to the old file, which is.
            match exchange() {
                Ok(()) => {
                    drop_new();
                    return Err(e);
                }
                // Cannot be undone (a disk that failed twice, or went read-only): the save
                // stands, since it is what loads will find; the old file goes as it would.
                Err(back) => log::error!(
                    "session {key:?}: {}, and its old file cannot be put back ({back}); the save stands, not known to be on the disk",
                    ErrorChain(&e)
                ),
            }
        }
        if let Err(e) = self.store.unlink(temp_name) {
            log::error!(
                "session {key:?}: the file it replaced cannot be removed ({e}); a request waiting on it may read it"
            );
        }
        Ok(())
    }

    /// Syncs the directory when saves are synced.
    fn sync_dir_if_synced(&self) -> Result<()> {
        if !self.store.sync {
            return Ok(());
        }
        self.store.sync_dir().map_err(|e| {
            Error::io(
                format!("syncing the directory of session {:?}", self.key),
                e,
            )
        })
    }

    /// Syncs a save written in place, when saves are synced: the file's data, and after the
    /// first save into a file this lock created at its name, the directory, so that the name
    /// is on the disk too.
    fn sync_in_place(&self, file: &File) -> Result<()> {
        if !self.store.sync {
            return Ok(());
        }
        self.store
            .sync_file(file)
            .map_err(|e| Error::io(format!("syncing session {:?}", self.key), e))?;
        if self.unsynced_entry {
            self.sync_dir_if_synced()?;
        }
        Ok(())
    }
}

impl LockedSession for FileLock {
    fn key(&self) -> &SessionKey {
        &self.key
    }

    fn lock_sibling(
        &self,
        id: crate::SessionId,
        options: LockOptions,
    ) -> Result<Box<dyn LockedSession>> {
        self.store
            .lock(&SessionKey::new(self.key.service.clone(), id), options)
    }

    fn load(&mut self) -> Result<Option<Record>> {
        if self.blocked {
            return Err(blocked_error(&self.key));
        }
        match &self.file {
            Some(file) => {
                self.layout = None;
                let cap = record_cap(self.store.max_bytes);
                let (bytes, layout) = layout::load(file, self.size, cap)?;
                let record = decode_record(bytes, self.store.max_bytes)?;
                self.layout = Some(layout);
                Ok(record)
            }
            None => Ok(None),
        }
    }

    fn save(&mut self, record: &Record) -> Result<()> {
        let key = &self.key;
        if self.deleted {
            // Another request may already hold a new file at the name; never rename over it.
            return Err(deleted_error(key));
        }
        if self.blocked {
            return Err(blocked_error(key));
        }
        let bytes = record.encode()?;
        let payload = u64::try_from(bytes.len() - HEADER_LEN).unwrap_or(u64::MAX);
        if payload > self.store.max_bytes {
            return Err(Error::new(
                ErrorKind::Encode,
                format!(
                    "session {key:?} would be {payload} bytes, more than PSOSessionMaxBytes ({})",
                    self.store.max_bytes
                ),
            ));
        }
        // In place only into slots: a first save into an empty reservation gets a new file,
        // so that no reader ever sees a file half laid out.
        if let (Some(file), Some(known @ Layout::Slots { .. })) = (&self.file, self.layout) {
            match layout::save_in_place(file, known, &bytes) {
                Ok(Some(layout)) => {
                    if let Err(e) = self.sync_in_place(file) {
                        // Not known to be on the disk, so not told to the request as saved:
                        // then it must not be what later loads find either (a failed fsync
                        // may leave the page in the cache, readable, and is not retried).
                        self.layout = match layout::void_newest(file, layout, known) {
                            Ok(()) => Some(known),
                            Err(_) => None,
                        };
                        return Err(e);
                    }
                    self.layout = Some(layout);
                    if self.store.sync {
                        self.unsynced_entry = false;
                    }
                    if ended_meanwhile(file) {
                        return Err(lock_lost(key));
                    }
                    return Ok(());
                }
                Ok(None) => {}
                Err(e) => {
                    if known == Layout::Empty {
                        // Back to an empty reservation rather than a half-laid-out file.
                        let _ = file.set_len(0);
                    }
                    return Err(e);
                }
            }
        }
        // No file yet, a record larger than its slots, a version-1 file, or a file whose
        // slots could not be read: a new file, complete and locked before it takes the name.
        let (temp_name, temp) = self.store.create_temp(key)?;
        let written = (|| {
            temp.try_lock().map_err(|e| {
                Error::io(
                    "locking a new session file",
                    std::io::Error::other(e.to_string()),
                )
            })?;
            let seq = self.layout.map_or(1, layout::next_seq);
            let layout = layout::write_new(&temp, &bytes, seq)?;
            if self.store.sync {
                self.store
                    .sync_file(&temp)
                    .map_err(|e| Error::io(format!("syncing session {key:?}"), e))?;
            }
            Ok(layout)
        })();
        let layout = match written {
            Ok(layout) => layout,
            Err(e) => {
                let _ = self.store.unlink(&temp_name);
                return Err(e);
            }
        };
        // Cleans up after itself: on an error the name holds what it held.
        self.take_name(&temp_name)?;
        // The old file (and its lock) goes; waiters on it will find the new one.
        self.size = temp.metadata().map_or(0, |m| m.len());
        self.file = Some(temp);
        self.layout = Some(layout);
        self.unsynced_entry = false;
        Ok(())
    }

    fn delete(&mut self) -> Result<()> {
        self.deleted = true;
        if self.file.take().is_some() {
            self.store
                .unlink(&self.name)
                .map_err(|e| Error::io(format!("removing session {:?}", self.key), e))?;
            if self.store.sync {
                self.store.sync_dir().map_err(|e| {
                    Error::io(
                        format!("syncing the directory of session {:?}", self.key),
                        e,
                    )
                })?;
            }
        }
        Ok(())
    }
}

/// Whether the file a lock holds was removed from its name since (by [`Store::delete`]): what
/// is written into it now reaches no one.
fn ended_meanwhile(file: &File) -> bool {
    rustix::fs::fstat(file).is_ok_and(|stat| stat.st_nlink == 0)
}

fn lock_lost(key: &SessionKey) -> Error {
    Error::new(
        ErrorKind::LockLost,
        format!("session {key:?} was ended by another request while this one held it"),
    )
}

fn blocked_error(key: &SessionKey) -> Error {
    Error::new(
        ErrorKind::Corrupt,
        format!("session {key:?}: its name is taken by something that cannot be removed"),
    )
}

/// The file name of `key`'s session. Both parts are validated to `[A-Za-z0-9_-]+`, so the name
/// has no `/` and is never `.` or `..`.
fn file_name(key: &SessionKey) -> String {
    format!("{}.{}{EXTENSION}", key.service, key.id)
}

/// A name for the `*at` calls; names built here never hold a NUL.
fn c_name(name: String) -> CString {
    CString::new(name).unwrap_or_default()
}

fn describe(kind: FileType) -> &'static str {
    match kind {
        FileType::Directory => "directory",
        FileType::Symlink => "symbolic link",
        FileType::Fifo => "FIFO",
        FileType::Socket => "socket",
        FileType::CharacterDevice | FileType::BlockDevice => "device",
        FileType::RegularFile => "file",
        _ => "special file",
    }
}

/// What a name in the session directory is.
enum Entry {
    Session(SessionKey),
    Temp,
}

fn classify(name: &OsStr) -> Option<Entry> {
    let name = name.to_str()?;
    if let Some(pid) = name
        .strip_prefix(GC_CURSOR)
        .and_then(|n| n.strip_prefix('.'))
        .and_then(|n| n.strip_suffix(TEMP_EXTENSION))
    {
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let (pid, pass) = pid.split_once('-')?;
        return (digits(pid) && digits(pass)).then_some(Entry::Temp);
    }
    if let Some(inner) = name
        .strip_prefix('.')
        .and_then(|n| n.strip_suffix(TEMP_EXTENSION))
    {
        let mut parts = inner.splitn(3, '.');
        let (service, id) = (parts.next()?, parts.next()?);
        parse_key(service, id)?;
        return Some(Entry::Temp);
    }
    let (service, id) = name.strip_suffix(EXTENSION)?.split_once('.')?;
    parse_key(service, id).map(Entry::Session)
}

fn parse_key(service: &str, id: &str) -> Option<SessionKey> {
    Some(SessionKey::new(
        service.parse().ok()?,
        SessionId::named(id).ok()?,
    ))
}

/// The largest record bytes (header included) a store that reads records up to `max_bytes`
/// takes from a file.
fn record_cap(max_bytes: u64) -> u64 {
    max_bytes
        .min(MAX_RECORD_BYTES)
        .saturating_add(HEADER_LEN as u64)
}

/// Decodes what a file's newest slot holds; the buffer read becomes the record's: no second
/// copy.
fn decode_record(bytes: Option<Vec<u8>>, max_bytes: u64) -> Result<Option<Record>> {
    bytes
        .map(|bytes| Record::decode_owned(bytes, max_bytes))
        .transpose()
}

/// What the front of a session file says, read without holding its record in memory.
enum Front {
    /// An empty file: a reservation that has no record yet.
    Reservation,
    /// A file or record of a format version this pso does not read.
    OtherVersion,
    /// A record of `len` bytes (checksum verified) and its metadata.
    Record { meta: Meta, len: u64 },
    /// The metadata runs past the first [`GC_READ`] bytes: not judged cheaply.
    Unjudged,
}

/// Reads a session file's metadata: the newest slot that passes its checksum (computed in
/// chunks), then at most [`GC_READ`] bytes of its record. A damaged file is an error of kind
/// [`ErrorKind::Corrupt`]; one that cannot be read, of another kind.
fn read_front(file: &File, size: u64) -> Result<Front> {
    let reading = |e| Error::io("reading a session file", e);
    let mut start = [0u8; 8];
    let read = file.read_at(&mut start, 0).map_err(reading)?;
    let start = &start[..read];
    if layout::is_other_version(start) || Record::is_other_version(start) {
        return Ok(Front::OtherVersion);
    }
    let Some((offset, len)) = layout::locate_newest(file, size)? else {
        return Ok(Front::Reservation);
    };
    let mut prefix = vec![0u8; usize::try_from(len).map_or(GC_READ, |n| n.min(GC_READ))];
    file.read_exact_at(&mut prefix, offset).map_err(reading)?;
    if Record::is_other_version(&prefix) {
        return Ok(Front::OtherVersion);
    }
    match Record::read_meta(&prefix)? {
        Some(meta) => Ok(Front::Record { meta, len }),
        None if len > prefix.len() as u64 => Ok(Front::Unjudged),
        None => Err(Error::new(
            ErrorKind::Corrupt,
            "session record ends inside its metadata",
        )),
    }
}

/// The disk space a file takes (its allocated blocks: the second slot is a hole until used).
fn disk_bytes(stat: &Stat) -> u64 {
    u64::try_from(stat.st_blocks)
        .unwrap_or(0)
        .saturating_mul(512)
}

/// Waits for the exclusive lock until `deadline`, polling with growing pauses.
fn wait_for_lock(file: &File, deadline: Option<Instant>, key: &SessionKey) -> Result<()> {
    let mut pause = Duration::from_micros(200);
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(()),
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(e)) => {
                return Err(Error::io(format!("locking session {key:?}"), e));
            }
        }
        let left = time_left(deadline, key)?.unwrap_or(MAX_LOCK_PAUSE);
        std::thread::sleep(pause.min(left));
        pause = (pause * 2).min(MAX_LOCK_PAUSE);
    }
}

/// `0600` whatever the umask.
fn set_private(file: &File, key: &SessionKey) -> Result<()> {
    rustix::fs::fchmod(file, Mode::from_raw_mode(0o600))
        .map_err(|e| Error::io(format!("setting the mode of session {key:?}"), e.into()))
}

/// Opens the session directory `path` as a handle and checks it through the handle.
fn open_directory(path: &Path, uid: u32, create: bool) -> Result<OwnedFd> {
    let shown = path.display();
    let directory_error = |message: String| Error::new(ErrorKind::Directory, message);
    let (Some(parent), Some(name), false) = (
        path.parent(),
        path.file_name(),
        FileStore::has_dot_components(path),
    ) else {
        return Err(directory_error(format!(
            "{shown} cannot be the session directory; name a directory of its own, without . or .."
        )));
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    // The parent is reached by walking its path (the administrator's choice, links and all)
    // one directory at a time; the session directory itself only by a handle from the
    // parent's handle. Only the directory itself is ever created: a path naming parents that
    // do not exist is a mistake to report, not a tree to build. A user who can rename entries
    // of any directory on the way could swap it (or a link in it) and lead pso to another
    // directory of ours (another site's sessions), or move ours away and let pso create an
    // empty one: the handle makes each request consistent, not the directory the right one.
    let parent_handle = match walk_trusted(parent, uid) {
        Ok(Walk::Safe(handle)) => handle,
        Ok(Walk::Unsafe { dir, stat }) => {
            return Err(directory_error(format!(
                "the session directory {shown} lies under {}, which another user can change (owner uid {}, mode {:o}): they could move what is in it away or put another directory in its place. Put it where every directory on the path is one only uid {uid} or root can change",
                dir.display(),
                stat.st_uid,
                stat.st_mode & 0o7777
            )));
        }
        Err((_, Errno::NOENT)) if !create => {
            return Err(directory_error(format!("no session directory at {shown}")));
        }
        Err((at, e)) => {
            return Err(Error::io(
                format!(
                    "opening {} on the way to {}, the parent of the session directory (pso creates only the directory itself)",
                    at.display(),
                    parent.display()
                ),
                e.into(),
            ));
        }
    };
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let open = || rustix::fs::openat(&parent_handle, name, flags, Mode::empty());
    // Opened first: it exists on every request but the very first.
    let mut created = false;
    let opened = match open() {
        Err(Errno::NOENT) if !create => {
            return Err(directory_error(format!("no session directory at {shown}")));
        }
        Err(Errno::NOENT) => {
            match rustix::fs::mkdirat(&parent_handle, name, Mode::from_raw_mode(0o700)) {
                Ok(()) => {
                    created = true;
                    // Its name on the disk too, once: sessions synced into it rely on it.
                    if let Err(e) = rustix::fs::fsync(&parent_handle) {
                        log::warn!(
                            "the new session directory {shown} may not be on the disk yet: syncing its parent failed ({e})"
                        );
                    }
                }
                Err(Errno::EXIST) => {}
                Err(e) => {
                    return Err(Error::io(
                        format!("creating the session directory {shown}"),
                        e.into(),
                    ));
                }
            }
            open()
        }
        other => other,
    };
    let handle = match opened {
        Ok(handle) => handle,
        Err(Errno::LOOP | Errno::NOTDIR) => {
            let is_link = rustix::fs::statat(&parent_handle, name, AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|stat| FileType::from_raw_mode(stat.st_mode) == FileType::Symlink);
            return Err(directory_error(if is_link {
                format!("the session directory {shown} is a symbolic link; configure the real path")
            } else {
                format!("the session directory {shown} is not a directory")
            }));
        }
        Err(e) => {
            return Err(Error::io(
                format!("opening the session directory {shown}"),
                e.into(),
            ));
        }
    };
    let stat = rustix::fs::fstat(&handle).map_err(|e| {
        Error::io(
            format!("inspecting the session directory {shown}"),
            e.into(),
        )
    })?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
        return Err(directory_error(format!(
            "the session directory {shown} is not a directory"
        )));
    }
    if stat.st_uid != uid {
        return Err(directory_error(format!(
            "the session directory {shown} belongs to uid {}, but pso runs as uid {uid}",
            stat.st_uid
        )));
    }
    if stat.st_mode & 0o777 != 0o700 {
        if !created {
            // Tightening is not enough: whoever opened the directory while it was loose keeps a
            // handle that lists it (the names are session ids) whatever its mode becomes.
            return Err(directory_error(format!(
                "the session directory {shown} has mode {:o}: others may have read its session ids, \
                 and may still hold it open. Remove it and let pso create it (0700), or make it 0700 \
                 yourself if you are sure nobody else has it open",
                stat.st_mode & 0o7777
            )));
        }
        // Ours, just made, and a umask took our own rights away.
        rustix::fs::fchmod(&handle, Mode::from_raw_mode(0o700))
            .map_err(|e| Error::io(format!("making {shown} private"), e.into()))?;
    }
    Ok(handle)
}

/// Whether a user other than `uid` (and root) can rename or remove entries of a directory:
/// its owner is someone else, or group or others may write it without the sticky bit (which
/// limits renaming and removing to an entry's owner, as in `/tmp`).
/// Where a walk down a path ended.
enum Walk {
    /// Every directory on the way is one only `uid` or root can change: a handle on the last.
    Safe(OwnedFd),
    /// This directory on the way can have its entries replaced by another user.
    Unsafe { dir: PathBuf, stat: Stat },
}

/// Symbolic links a walk follows, at most (as the kernel's own limit).
const MAX_LINKS: u32 = 40;

/// Opens the directory `path` by walking it from the root (or the working directory, for a
/// relative path) one component at a time, checking every directory on the way, the last
/// included, with [`others_can_replace_entries`]. A symbolic link on the way is followed only
/// from a directory found safe (so only its owner or root could have made it), and its target
/// is walked the same way. An error names the path it was at.
fn walk_trusted(path: &Path, uid: u32) -> std::result::Result<Walk, (PathBuf, Errno)> {
    use std::collections::VecDeque;
    use std::path::Component;
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let open_start = |absolute: bool| {
        let start = if absolute { "/" } else { "." };
        rustix::fs::open(start, flags, Mode::empty()).map_err(|e| (PathBuf::from(start), e))
    };
    // A relative path is walked from the root too, through the working directory's path:
    // the directories above it count as much as those below.
    let absolute;
    let path = if path.is_absolute() {
        path
    } else {
        let cwd = std::env::current_dir().map_err(|e| {
            (
                PathBuf::from("."),
                Errno::from_io_error(&e).unwrap_or(Errno::NOENT),
            )
        })?;
        absolute = cwd.join(path);
        &absolute
    };
    let mut at = PathBuf::from("/");
    let mut current = open_start(true)?;
    let mut queue: VecDeque<std::ffi::OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.to_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut links = 0;
    loop {
        let stat = rustix::fs::fstat(&current).map_err(|e| (at.clone(), e))?;
        if others_can_replace_entries(&stat, uid) {
            return Ok(Walk::Unsafe { dir: at, stat });
        }
        let Some(name) = queue.pop_front() else {
            return Ok(Walk::Safe(current));
        };
        match rustix::fs::openat(&current, &name, flags, Mode::empty()) {
            Ok(next) => {
                if name == ".." {
                    at.pop();
                } else {
                    at.push(&name);
                }
                current = next;
            }
            Err(Errno::LOOP | Errno::NOTDIR) => {
                // A link is followed only if it is ours or root's: in a sticky directory
                // (/tmp) anyone may create one, and the directory's safety says nothing of it.
                let link = rustix::fs::statat(&current, &name, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| (at.join(&name), e))?;
                if link.st_uid != uid && link.st_uid != 0 {
                    return Ok(Walk::Unsafe {
                        dir: at.join(&name),
                        stat: link,
                    });
                }
                let target = rustix::fs::readlinkat(&current, &name, Vec::new())
                    .map_err(|_| (at.join(&name), Errno::NOTDIR))?;
                links += 1;
                if links > MAX_LINKS {
                    return Err((at.join(&name), Errno::LOOP));
                }
                let target = PathBuf::from(std::ffi::OsString::from_vec(target.into_bytes()));
                for (i, component) in target
                    .components()
                    .filter_map(|c| match c {
                        Component::Normal(name) => Some(name.to_owned()),
                        Component::ParentDir => Some("..".into()),
                        _ => None,
                    })
                    .enumerate()
                {
                    queue.insert(i, component);
                }
                if target.is_absolute() {
                    current = open_start(true)?;
                    at = PathBuf::from("/");
                }
            }
            Err(e) => return Err((at.join(&name), e)),
        }
    }
}

fn others_can_replace_entries(stat: &Stat, uid: u32) -> bool {
    let foreign_owner = stat.st_uid != uid && stat.st_uid != 0;
    let shared_write = stat.st_mode & 0o022 != 0 && stat.st_mode & 0o1000 == 0;
    foreign_owner || shared_write
}

/// The effective user id: the owner that session files and their directory must have.
pub(crate) fn effective_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Logs a warning when the session directory is on a network file system.
fn warn_if_network_file_system(handle: &OwnedFd, dir: &Path) {
    if let Some(name) = rustix::fs::fstatfs(handle.as_fd())
        .ok()
        .and_then(|stats| network_file_system_name(&stats))
    {
        log::warn!(
            "the session directory {} is on {name}: file locks there are unreliable, so concurrent requests may lose updates",
            dir.display()
        );
    }
}

/// The network file system `stats` describe, by its magic number, if it is one.
#[cfg(target_os = "linux")]
fn network_file_system_name(stats: &rustix::fs::StatFs) -> Option<&'static str> {
    const NETWORK_FILE_SYSTEMS: [(u32, &str); 4] = [
        (0x6969, "NFS"),
        (0x517b, "SMB"),
        (0xff53_4d42, "CIFS"),
        (0xfe53_4d42, "SMB2"),
    ];
    // f_type is signed on some targets; the magic numbers are compared as 32-bit patterns.
    let kind = stats.f_type as u32;
    NETWORK_FILE_SYSTEMS
        .iter()
        .find(|(magic, _)| *magic == kind)
        .map(|(_, name)| *name)
}

#[cfg(not(target_os = "linux"))]
fn network_file_system_name(_stats: &rustix::fs::StatFs) -> Option<&'static str> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Meta;
    use crate::store::suite;
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
    use std::os::unix::net::UnixListener;
    use std::sync::Arc;

    fn store() -> (tempfile::TempDir, FileStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path().join("sessions")).unwrap();
        (dir, store)
    }

    fn shared_store() -> (tempfile::TempDir, Arc<FileStore>) {
        let (dir, store) = store();
        (dir, Arc::new(store))
    }

    mod suite_properties {
        crate::store_suite!(super::shared_store);
    }

    #[test]
    fn directory_and_files_are_private() {
        let (_dir, store) = store();
        let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(store.dir()), 0o700);
        let key = suite::key("svc");
        store
            .lock(&key, suite::options())
            .unwrap()
            .save(&Record::default())
            .unwrap();
        assert_eq!(mode(&store.path_of(&key)), 0o600);
    }

    #[test]
    fn a_loose_directory_is_refused_and_so_are_links_and_dots() {
        let dir = tempfile::tempdir().unwrap();
        let loose = dir.path().join("loose");
        fs::create_dir(&loose).unwrap();
        fs::set_permissions(&loose, fs::Permissions::from_mode(0o755)).unwrap();
        let err = FileStore::open(&loose).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Directory);
        assert!(err.to_string().contains("mode 755"), "{err}");
        assert_eq!(
            fs::metadata(&loose).unwrap().mode() & 0o777,
            0o755,
            "not changed: pso did not create it"
        );
        fs::set_permissions(&loose, fs::Permissions::from_mode(0o700)).unwrap();
        FileStore::open(&loose).unwrap();

        let link = dir.path().join("link");
        symlink(&loose, &link).unwrap();
        assert_eq!(
            FileStore::open(&link).unwrap_err().kind(),
            ErrorKind::Directory
        );

        let file = dir.path().join("file");
        fs::write(&file, "").unwrap();
        assert_eq!(
            FileStore::open(&file).unwrap_err().kind(),
            ErrorKind::Directory
        );
        for odd in ["/", "/tmp/.", "/tmp/..", "/tmp/./x"] {
            assert_eq!(
                FileStore::open(odd).unwrap_err().kind(),
                ErrorKind::Directory,
                "{odd}"
            );
        }
    }

    #[test]
    fn a_directory_pso_creates_is_0700_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let previous = rustix::process::umask(Mode::from_raw_mode(0o277));
        let opened = FileStore::open(dir.path().join("s"));
        rustix::process::umask(previous);
        opened.unwrap();
        assert_eq!(
            fs::metadata(dir.path().join("s")).unwrap().mode() & 0o777,
            0o700
        );
    }

    #[test]
    fn a_parent_others_can_change_is_refused_unless_sticky() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        fs::create_dir(&shared).unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).unwrap();
        let sessions = shared.join("sessions");
        let refused = FileStore::open(&sessions).unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::Directory);
        assert!(
            refused.to_string().contains("another user can change"),
            "{refused}"
        );
        assert!(!sessions.exists(), "nothing is created under such a parent");
        for mode in [0o775, 0o757] {
            fs::set_permissions(&shared, fs::Permissions::from_mode(mode)).unwrap();
            assert!(FileStore::open(&sessions).is_err(), "{mode:o}");
        }
        // The sticky bit limits renames to an entry's owner, as in /tmp.
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
        FileStore::open(&sessions).unwrap();
        FileStore::open(&sessions).unwrap();
    }

    /// A failed directory sync whose undo fails too (a disk that failed twice, or went
    /// read-only): the save stands, as loads find it, and says so; the state before it is not
    /// removed while the failed one takes its place.
    #[test]
    fn a_save_whose_sync_and_undo_both_fail_stands() {
        use std::sync::atomic::Ordering::SeqCst;
        let (_dir, store) = store();
        let store = store.with_sync(true);
        let key = suite::key("svc");
        let record = |n: u64, pad: usize| {
            let mut record = Record::new(Meta::new(0));
            record.set("n", &n).unwrap();
            record.set("pad", &vec![1u8; pad]).unwrap();
            record
        };
        let mut lock = store.lock(&key, suite::options()).unwrap();
        lock.save(&record(1, 10)).unwrap();
        store.faults.dir_sync.store(true, SeqCst);
        store.faults.exchanges_left.store(1, SeqCst);
        lock.save(&record(2, 20_000)).unwrap();
        store.faults.dir_sync.store(false, SeqCst);
        store.faults.exchanges_left.store(-1, SeqCst);
        drop(lock);
        let n: u64 = store
            .peek(&key)
            .unwrap()
            .unwrap()
            .get("n")
            .unwrap()
            .unwrap();
        assert_eq!(n, 2);
        let leftovers: Vec<_> = fs::read_dir(store.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    /// A link is followed only if it is ours or root's: in a sticky directory anyone may
    /// make one, however safe the directory.
    #[test]
    fn a_link_someone_else_made_in_a_sticky_directory_is_not_followed() {
        if effective_uid() != 0 {
            return; // Needs to make a link owned by another user.
        }
        let dir = tempfile::tempdir().unwrap();
        let sticky = dir.path().join("tmp");
        fs::create_dir(&sticky).unwrap();
        fs::set_permissions(&sticky, fs::Permissions::from_mode(0o1777)).unwrap();
        let other = dir.path().join("othersite");
        fs::create_dir(&other).unwrap();
        FileStore::open(other.join("sessions")).unwrap();
        let link = sticky.join("site");
        symlink(&other, &link).unwrap();
        std::os::unix::fs::lchown(&link, Some(65534), Some(65534)).unwrap();
        let refused = FileStore::open(link.join("sessions")).unwrap_err();
        assert!(refused.to_string().contains("site"), "{refused}");
        std::os::unix::fs::lchown(&link, Some(0), Some(0)).unwrap();
        FileStore::open(link.join("sessions")).unwrap();
    }

    /// A user who can change a directory further up the path (not only the parent) could
    /// swap it, or a link in it, and lead pso to another directory of ours: refused, and said
    /// where. A link in a directory only we or root can change is followed.
    #[test]
    fn every_directory_on_the_path_must_be_one_others_cannot_change() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("gp");
        fs::create_dir_all(shared.join("app")).unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).unwrap();
        let sessions = shared.join("app/sessions");
        let refused = FileStore::open(&sessions).unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::Directory);
        assert!(
            refused.to_string().contains(&shared.display().to_string()),
            "{refused}"
        );
        assert_eq!(
            FileStore::changeable_by_others(&shared.join("app"), effective_uid()).unwrap(),
            Some(shared.clone())
        );
        // The swap the check stops: the parent replaced by a link to another site's.
        let other = dir.path().join("othersite");
        fs::create_dir(&other).unwrap();
        FileStore::open(other.join("sessions")).unwrap();
        fs::rename(shared.join("app"), shared.join("app.old")).unwrap();
        std::os::unix::fs::symlink(&other, shared.join("app")).unwrap();
        assert!(FileStore::open(&sessions).is_err());
        // A link from a safe place to a safe place is followed.
        let safe = dir.path().join("safe");
        fs::create_dir(&safe).unwrap();
        std::os::unix::fs::symlink(&other, safe.join("link")).unwrap();
        FileStore::open(safe.join("link/sessions")).unwrap();
        std::os::unix::fs::symlink("../othersite", safe.join("relative")).unwrap();
        FileStore::open(safe.join("relative/sessions")).unwrap();
        // A link out of a safe place into an unsafe one is not.
        std::os::unix::fs::symlink(shared.join("app.old"), safe.join("out")).unwrap();
        assert!(FileStore::open(safe.join("out/sessions")).is_err());
    }

    /// A saver killed after it put its new file at the name and before it removed the old
    /// one (now at a temporary name, one link) leaves a request that waited on the old file:
    /// that request must take the file at the name, never the old one.
    #[test]
    fn a_waiter_never_takes_a_file_exchanged_out_for_the_session() {
        let (_dir, store) = store();
        let key = suite::key("svc");
        let record = |n: u64| {
            let mut record = Record::new(Meta::new(0));
            record.set("n", &n).unwrap();
            record
        };
        store
            .lock(&key, suite::options())
            .unwrap()
            .save(&record(1))
            .unwrap();
        let saver = store.lock(&key, suite::options()).unwrap();
        let waiting = {
            let store = store.clone();
            let key = key.clone();
            std::thread::spawn(move || {
                let mut lock = store.lock(&key, suite::options()).unwrap();
                let seen: u64 = lock.load().unwrap().unwrap().get("n").unwrap().unwrap();
                lock.save(&record(seen + 1)).unwrap();
                seen
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        // What the saver did before it died: a new file with its state, exchanged in.
        let (temp, file) = store.create_temp(&key).unwrap();
        layout::write_new(&file, &record(100).encode().unwrap(), 1).unwrap();
        let dir = &store.dir.handle;
        let name = c_name(file_name(&key));
        rustix::fs::renameat_with(dir, &temp, dir, &name, RenameFlags::EXCHANGE).unwrap();
        drop((file, saver));
        assert_eq!(
            waiting.join().unwrap(),
            100,
            "the waiter read the session at the name"
        );
        let n: u64 = store
            .peek(&key)
            .unwrap()
            .unwrap()
            .get("n")
            .unwrap()
            .unwrap();
        assert_eq!(n, 101, "and its save is what the next load finds");
    }

    /// A reader without the lock never takes a session whose saves need new files (exchanged
    /// in) for gone, nor a first save being laid out for damaged.
    #[test]
    fn reads_without_the_lock_beside_saves_of_new_files_see_the_session() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let (_dir, store) = store();
        let key = suite::key("svc");
        let forced = SessionKey::new("svc".parse().unwrap(), SessionId::forced("007").unwrap());
        let record = |n: u64| {
            let mut record = Record::new(Meta::new(0));
            record.set("n", &n).unwrap();
            record.set("pad", &vec![7u8; 6000]).unwrap();
            record
        };
        store
            .lock(&key, suite::options())
            .unwrap()
            .save(&record(0))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (store, key, forced, stop) =
                (store.clone(), key.clone(), forced.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 1;
                while !stop.load(Ordering::SeqCst) {
                    // Never loaded: each save writes a new file and exchanges it in.
                    store
                        .lock(&key, suite::options())
                        .unwrap()
                        .save(&record(n))
                        .unwrap();
                    // A first save into a reservation, then gone again.
                    let mut lock = store
                        .lock(&forced, suite::options().with_create(true))
                        .unwrap();
                    let mut big = record(n);
                    big.set("pad", &vec![7u8; 60_000]).unwrap();
                    lock.save(&big).unwrap();
                    lock.delete().unwrap();
                    n += 1;
                }
            })
        };
        let started = std::time::Instant::now();
        let mut reads = 0;
        while started.elapsed() < Duration::from_millis(1500) {
            assert!(store.peek(&key).unwrap().is_some(), "after {reads} reads");
            store.peek(&forced).expect("never damaged");
            assert!(
                store.inspect(&key).unwrap().is_some(),
                "after {reads} reads"
            );
            reads += 1;
        }
        stop.store(true, Ordering::SeqCst);
        writer.join().unwrap();
    }

    /// Saves through one lock into a reservation, then a load through it: the last save. The
    /// first of them takes a new file.
    #[test]
    fn a_lock_that_saved_loads_what_it_saved() {
        let (_dir, store) = store();
        let forced = SessionKey::new("svc".parse().unwrap(), SessionId::forced("007").unwrap());
        let record = |n: u64| {
            let mut record = Record::new(Meta::new(0));
            record.set("n", &n).unwrap();
            record
        };
        let mut lock = store
            .lock(&forced, suite::options().with_create(true))
            .unwrap();
        assert_eq!(lock.load().unwrap(), None);
        let inode = || fs::metadata(store.path_of(&forced)).unwrap().ino();
        let reservation = inode();
        lock.save(&record(1)).unwrap();
        // Not laid out in place, where a reader could see it half done: a whole new file.
        assert_ne!(inode(), reservation);
        lock.save(&record(2)).unwrap();
        assert_eq!(lock.load().unwrap(), Some(record(2)));
        lock.save(&record(3)).unwrap();
        drop(lock);
        assert_eq!(store.peek(&forced).unwrap(), Some(record(3)));
    }

    #[test]
    fn the_store_keeps_using_the_directory_it_opened() {
        let (dir, store) = store();
        let key = suite::key("svc");
        // The directory is moved away and a symlink to another one put in its place.
        let elsewhere = dir.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        let moved = dir.path().join("moved");
        fs::rename(store.dir(), &moved).unwrap();
        symlink(&elsewhere, store.dir()).unwrap();
        store
            .lock(&key, suite::options())
            .unwrap()
            .save(&Record::default())
            .unwrap();
        assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
        assert!(moved.join(file_name(&key)).exists());
    }

    #[test]
    fn a_planted_symlink_is_removed_and_its_target_untouched() {
        let (dir, store) = store();
        let target = dir.path().join("target");
        fs::write(&target, "precious").unwrap();
        let key = suite::key("svc");
        symlink(&target, store.path_of(&key)).unwrap();

        let mut lock = store.lock(&key, suite::options()).unwrap();
        assert_eq!(lock.load().unwrap(), None);
        lock.save(&Record::default()).unwrap();
        drop(lock);
        assert_eq!(fs::read_to_string(&target).unwrap(), "precious");
        assert!(
            !fs::symlink_metadata(store.path_of(&key))
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }

    #[test]
    fn planted_directories_fifos_and_sockets_are_removed() {
        let (_dir, store) = store();
        type Plant<'a> = &'a dyn Fn(&Path);
        let plant: [(&str, Plant); 3] = [
            ("directory", &|p| fs::create_dir(p).unwrap()),
            ("fifo", &|p| {
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    p,
                    FileType::Fifo,
                    Mode::from_raw_mode(0o600),
                    0,
                )
                .unwrap()
            }),
            ("socket", &|p| drop(UnixListener::bind(p).unwrap())),
        ];
        for (what, plant) in plant {
            let key = suite::key("svc");
            plant(&store.path_of(&key));
            let mut lock = store.lock(&key, suite::options()).unwrap();
            assert_eq!(lock.load().unwrap(), None, "{what}");
            lock.save(&Record::default()).unwrap();
            drop(lock);
            assert!(
                fs::symlink_metadata(store.path_of(&key)).unwrap().is_file(),
                "{what}"
            );
        }
    }

    #[test]
    fn a_directory_that_cannot_be_removed_blocks_only_its_id() {
        let (_dir, store) = store();
        let key = suite::key("svc");
        fs::create_dir(store.path_of(&key)).unwrap();
        fs::write(store.path_of(&key).join("x"), "").unwrap();
        let mut lock = store.lock(&key, suite::options()).unwrap();
        assert_eq!(lock.load().unwrap_err().kind(), ErrorKind::Corrupt);
        assert!(lock.save(&Record::default()).is_err());
        lock.delete().unwrap();
    }

    /// What replaces a session that could not be loaded is what the next load returns: a save
    /// in place would go into the slot with the lower sequence number, beside the one that
    /// could not be read, and every later load would pick that one again.
    #[test]
    fn a_save_after_a_failed_load_is_what_the_next_load_returns() {
        let (_dir, store) = store();
        let key = SessionKey::new("svc".parse().unwrap(), SessionId::forced("007").unwrap());
        let record = |n: u64, pad: usize| {
            let mut record = Record::new(Meta::new(0));
            record.set("n", &n).unwrap();
            record.set("pad", &vec![1u8; pad]).unwrap();
            record
        };
        let mut lock = store
            .lock(&key, suite::options().with_create(true))
            .unwrap();
        lock.load().unwrap();
        lock.save(&record(1, 10)).unwrap();
        lock.save(&record(2, 1500)).unwrap();
        drop(lock);
        // Another program, or a lowered PSOSessionMaxBytes: the newest slot is too large.
        let small = store.clone().with_max_bytes(1024);
        for n in 3..7 {
            let mut lock = small
                .lock(&key, suite::options().with_create(true))
                .unwrap();
            match lock.load() {
                Ok(Some(loaded)) => assert_eq!(loaded.get::<u64>("n").unwrap(), Some(n - 1)),
                Ok(None) => panic!("the session is gone"),
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::Corrupt);
                    assert_eq!(n, 3, "only the first load fails");
                }
            }
            lock.save(&record(n, 10)).unwrap();
        }
        // And a save through a lock that never loaded does not trust the file's slots either.
        let mut lock = store.lock(&key, suite::options()).unwrap();
        lock.save(&record(7, 10)).unwrap();
        drop(lock);
        let loaded = small.peek(&key).unwrap().unwrap();
        assert_eq!(loaded.get::<u64>("n").unwrap(), Some(7));
    }

    /// A save whose sync fails (a failing disk) was not stored, as the request is told: the
    /// next load finds the state before it, whether the save was in place, needed a new file,
    /// or was the first into a file created at its name. Nothing is retried.
    #[test]
    fn a_save_whose_sync_fails_is_not_what_the_next_load_finds() {
        use std::sync::atomic::Ordering::SeqCst;
        let (_dir, store) = store();
        let store = store.with_sync(true);
        let record = |n: u64, pad: usize| {
            let mut record = Record::new(Meta::new(0));
            record.set("n", &n).unwrap();
            record.set("pad", &vec![1u8; pad]).unwrap();
            record
        };
        let n_of = |key: &SessionKey| -> Option<u64> {
            store
                .peek(key)
                .unwrap()
                .map(|r| r.get("n").unwrap().unwrap())
        };
        let key = suite::key("svc");
        let mut lock = store.lock(&key, suite::options()).unwrap();
        lock.save(&record(1, 10)).unwrap();
        for (fault, pad) in [
            (&store.faults.file_sync, 10),
            (&store.faults.file_sync, 20_000),
            (&store.faults.dir_sync, 20_000),
        ] {
            fault.store(true, SeqCst);
            assert!(lock.save(&record(2, pad)).is_err(), "pad {pad}");
            fault.store(false, SeqCst);
            assert_eq!(n_of(&key), Some(1), "pad {pad}");
        }
        // The lock goes on working: the next save lands, and is what loads find.
        lock.save(&record(3, 10)).unwrap();
        drop(lock);
        assert_eq!(n_of(&key), Some(3));
        // A forced id's first save, into the file its lock created: its name must be synced.
        let forced = SessionKey::new("svc".parse().unwrap(), SessionId::forced("007").unwrap());
        for fault in [&store.faults.file_sync, &store.faults.dir_sync] {
            let mut lock = store
                .lock(&forced, suite::options().with_create(true))
                .unwrap();
            assert_eq!(lock.load().unwrap(), None);
            fault.store(true, SeqCst);
            assert!(lock.save(&record(7, 10)).is_err());
            fault.store(false, SeqCst);
            drop(lock);
            assert_eq!(n_of(&forced), None);
        }
        // A new session's first save (a new file renamed into place).
        let fresh = suite::key("svc");
        store.faults.dir_sync.store(true, SeqCst);
        let mut lock = store.lock(&fresh, suite::options()).unwrap();
        assert!(lock.save(&record(9, 10)).is_err());
        store.faults.dir_sync.store(false, SeqCst);
        drop(lock);
        assert_eq!(n_of(&fresh), None);
        assert!(!store.exists(&fresh).unwrap());
        let leftovers: Vec<_> = fs::read_dir(store.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn a_hard_link_to_another_file_is_not_written_through() {
        let (dir, store) = store();
        let other = dir.path().join("sessions/other");
        fs::write(&other, "precious").unwrap();
        let key = suite::key("svc");
        fs::hard_link(&other, store.path_of(&key)).unwrap();
        let mut lock = store.lock(&key, suite::options()).unwrap();
        assert_eq!(lock.load().unwrap(), None);
        lock.save(&Record::default()).unwrap();
        assert_eq!(fs::read_to_string(&other).unwrap(), "precious");
    }

    #[test]
    fn corrupt_and_oversized_files_are_errors_not_panics() {
        let (_dir, store) = store();
        let key = suite::key("svc");
        fs::write(store.path_of(&key), b"PSOS\x01garbage").unwrap();
        let err = store
            .lock(&key, suite::options())
            .unwrap()
            .load()
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt);

        let small = store.clone().with_max_bytes(1024);
        let mut record = Record::new(Meta::new(0));
        record.set("big", &vec![7u8; 4096]).unwrap();
        let err = small
            .lock(&key, suite::options())
            .unwrap()
            .save(&record)
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Encode);
        store
            .lock(&key, suite::options())
            .unwrap()
            .save(&record)
            .unwrap();
        let err = small
            .lock(&key, suite::options())
            .unwrap()
            .load()
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt);
    }

    #[test]
    fn a_failed_save_keeps_the_old_file_and_leaves_no_temporary() {
        let (_dir, store) = store();
        let key = suite::key("svc");
        let mut lock = store.lock(&key, suite::options()).unwrap();
        let mut record = Record::new(Meta::new(0));
        record.set("n", &1u64).unwrap();
        lock.save(&record).unwrap();
        // A record too big for its slot needs a new file renamed over the name; make the
        // rename fail with a directory there.
        let path = store.path_of(&key);
        fs::remove_file(&path).unwrap();
        fs::create_dir(&path).unwrap();
        fs::write(path.join("x"), "").unwrap();
        record.set("big", &vec![0u8; 10_000]).unwrap();
        assert!(lock.save(&record).is_err());
        let leftovers: Vec<_> = fs::read_dir(store.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn names_are_classified_strictly() {
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef";
        assert!(matches!(
            classify(OsStr::new(&format!("svc.{id}.pso"))),
            Some(Entry::Session(_))
        ));
        assert!(matches!(
            classify(OsStr::new("svc.007.pso")),
            Some(Entry::Session(_))
        ));
        assert!(matches!(
            classify(OsStr::new(&format!(".svc.{id}.12-0.tmp"))),
            Some(Entry::Temp)
        ));
        for other in [
            "svc.pso",
            "svc..pso",
            "a.b.c.pso",
            ".pso",
            "notes.txt",
            "..pso",
            ".svc.tmp",
            GC_CURSOR,
        ] {
            assert!(classify(OsStr::new(other)).is_none(), "{other}");
        }
    }

    #[test]
    fn gc_removes_corrupt_files_and_abandoned_temporaries_only() {
        let (_dir, store) = store();
        let corrupt = suite::key("svc");
        fs::write(store.path_of(&corrupt), b"junk").unwrap();
        // A damaged record kept on purpose (a user record, a forced id) is read as "logged
        // out"; removing it would undo that.
        let kept = SessionKey::new(
            "svc".parse().unwrap(),
            SessionId::named("user-0123").unwrap(),
        );
        fs::write(store.path_of(&kept), b"junk").unwrap();
        let temp = store
            .dir()
            .join(format!(".svc.{}.1-0.tmp", SessionId::generate().unwrap()));
        fs::write(&temp, b"partial").unwrap();
        let unrelated = store.dir().join("README");
        fs::write(&unrelated, b"keep").unwrap();
        let now = SystemTime::now();
        store.collect_garbage(now, Duration::from_secs(5)).unwrap();
        assert!(!store.path_of(&corrupt).exists());
        assert!(store.path_of(&kept).exists());
        assert!(
            temp.exists(),
            "a fresh temporary may belong to a save under way"
        );
        assert!(unrelated.exists());
        let later = now + Duration::from_secs(2 * ABANDONED_AGE);
        store
            .collect_garbage(later, Duration::from_secs(5))
            .unwrap();
        assert!(!temp.exists());
        assert!(unrelated.exists());
    }

    #[test]
    fn gc_leaves_other_programs_records_alone() {
        let (_dir, store) = store();
        // A record over this program's size cap, written by a program with a larger one.
        let big = suite::key("other");
        let mut record = Record::new(Meta::new(0));
        record.set("ballast", &vec![0u8; 8192]).unwrap();
        store
            .lock(&big, suite::options())
            .unwrap()
            .save(&record)
            .unwrap();
        // A record of a format version this pso does not know.
        let newer = suite::key("other");
        let mut bytes = Record::new(Meta::new(0)).encode().unwrap();
        bytes[4] = 9;
        fs::write(store.path_of(&newer), &bytes).unwrap();

        let small = store.clone().with_max_bytes(1024);
        small
            .collect_garbage(SystemTime::now(), Duration::from_secs(5))
            .unwrap();
        assert!(store.peek(&big).unwrap().is_some());
        assert!(store.path_of(&newer).exists());
    }

    /// Fills the directory with `n` expired sessions.
    fn expired_sessions(store: &FileStore, n: usize) {
        let mut meta = Meta::new(1_000);
        meta.deadline = Some(1_500);
        let bytes = Record::new(meta).encode().unwrap();
        for _ in 0..n {
            fs::write(store.path_of(&suite::key("svc")), &bytes).unwrap();
        }
    }

    #[test]
    fn gc_asks_the_clock_before_every_entry_and_goes_on_where_it_stopped() {
        let (_dir, store) = store();
        expired_sessions(&store, 50);
        let now = 2_000;
        let mut removed = 0;
        for pass in 0.. {
            let mut asked = 0;
            let report = store
                .collect(
                    now,
                    None,
                    &mut || {
                        asked += 1;
                        asked > 10
                    },
                    &mut |_| {},
                )
                .unwrap();
            assert!(report.listed <= 10, "{report:?}");
            removed += report.removed;
            if !report.incomplete {
                break;
            }
            assert!(pass < 20, "passes must make progress");
        }
        assert_eq!(removed, 50);
        assert_eq!(store.keys().unwrap().count(), 0);
    }

    #[test]
    fn gc_stops_at_its_budget() {
        let (_dir, store) = store();
        expired_sessions(&store, 50);
        let report = store
            .collect_garbage(SystemTime::now(), Duration::ZERO)
            .unwrap();
        assert!(report.incomplete);
        assert_eq!((report.examined, report.listed), (0, 0));
    }
}
