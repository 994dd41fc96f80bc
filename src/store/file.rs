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
pub(crate) mod layout;
mod listing;

use layout::Layout;
pub use listing::{Contents, DirEntry, Entries, EntryKind, SessionFile};

use std::ffi::{CStr, CString, OsStr};
use std::fs::{File, TryLockError};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, Stat};
use rustix::io::Errno;

use crate::error::{Error, ErrorKind, Result};
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

    /// Whether saves fsync the file and the directory (`PSOSessionSync`), for durability across
    /// power loss. Off by default: the rename alone already makes saves atomic.
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
    /// directory `parent`: [`FileStore::open`] refuses a session directory in such a parent,
    /// since that user could move it away or put another in its place. `/tmp` (sticky) is fine.
    ///
    /// ```
    /// use pso::store::FileStore;
    /// assert!(!FileStore::others_can_change(std::path::Path::new("/tmp"), 0)?);
    /// # Ok::<(), pso::Error>(())
    /// ```
    pub fn others_can_change(parent: &Path, uid: u32) -> Result<bool> {
        let stat = rustix::fs::stat(parent)
            .map_err(|e| Error::io(format!("inspecting {}", parent.display()), e.into()))?;
        Ok(others_can_replace_entries(&stat, uid))
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

    /// The locked descriptor's size if it is still the session's file, a regular file of
    /// ours, made `0600` if it was not. When in doubt (an error), it is not: the caller opens
    /// the name again.
    ///
    /// Still one link means still at its name: pso never leaves a session file linked
    /// elsewhere, it only renames a new file over it (or exchanges the two, and removes the old
    /// one before letting go of its lock) or removes it, and each takes the held file's link.
    /// (`fstat` alone, no second lookup of the name: this runs on every request.)
    fn still_current(&self, file: &File) -> Option<u64> {
        let held = rustix::fs::fstat(file).ok()?;
        if !self.is_our_file(&held) {
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
        rustix::fs::fsync(&self.dir.handle).map_err(Into::into)
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
                if self.still_current(&file).is_none() {
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
        match read_front(file, stat) {
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
        let flags =
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY;
        let file =
            File::from(rustix::fs::openat(&self.dir.handle, name, flags, Mode::empty()).ok()?);
        let stat = rustix::fs::fstat(&file).ok()?;
        self.is_our_file(&stat).then_some((file, stat))
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
            if let Some(size) = self.still_current(&file) {
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
                    unsynced_entry: created,
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
        match self.open_for_reading(&c_name(file_name(key))) {
            Some((file, _)) => {
                let (bytes, _) = layout::load_settled(&file, record_cap(self.max_bytes))?;
                decode_record(bytes, self.max_bytes)
            }
            None => Ok(None),
        }
    }

    fn delete(&self, key: &SessionKey) -> Result<()> {
        let name = c_name(file_name(key));
        let dir = &self.dir.handle;
        match rustix::fs::statat(dir, &name, AtFlags::SYMLINK_NOFOLLOW) {
            // Only a session file of ours; anything else at the name is the lock's to judge.
            Ok(stat) if self.is_our_file(&stat) && self.names(&name, &stat) => {}
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
    /// The file was created at its name by this lock (`LockOptions::create`), and the
    /// directory not synced since: the first synced save syncs it too.
    unsynced_entry: bool,
}

impl FileLock {
    /// Puts the new file `temp_name` at the session's name. A file this lock holds is
    /// exchanged with it (`RENAME_EXCHANGE`), so that a name removed meanwhile by
    /// [`Store::delete`] is noticed ([`ErrorKind::LockLost`]) instead of brought back; the old
    /// file, now at `temp_name`, is removed before its lock is let go, so that a request
    /// waiting on it never finds it linked.
    fn take_name(&self, temp_name: &CStr) -> Result<()> {
        let key = &self.key;
        let dir = &self.store.dir.handle;
        let saving = |e: Errno| Error::io(format!("saving session {key:?}"), e.into());
        let Some(old) = &self.file else {
            return rustix::fs::renameat(dir, temp_name, dir, &self.name).map_err(saving);
        };
        if ended_meanwhile(old) {
            return Err(lock_lost(key));
        }
        match rustix::fs::renameat_with(dir, temp_name, dir, &self.name, RenameFlags::EXCHANGE) {
            Ok(()) => {}
            Err(Errno::NOENT) => return Err(lock_lost(key)),
            // A file system without atomic exchange: looked at above, then renamed over (a
            // removal between the two is missed there).
            Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {
                return rustix::fs::renameat(dir, temp_name, dir, &self.name).map_err(saving);
            }
            Err(e) => return Err(saving(e)),
        }
        // What came out must be the file this lock holds. Anything else means the session was
        // removed and something else put at its name meanwhile: that goes back.
        let held = rustix::fs::fstat(old).map_err(saving)?;
        if !self.store.names(temp_name, &held) {
            if let Err(e) =
                rustix::fs::renameat_with(dir, temp_name, dir, &self.name, RenameFlags::EXCHANGE)
            {
                log::error!("session {key:?}: cannot put back what was at its name ({e})");
            }
            return Err(lock_lost(key));
        }
        if let Err(e) = self.store.unlink(temp_name) {
            log::error!(
                "session {key:?}: the file it replaced cannot be removed ({e}); a request waiting on it may read it"
            );
        }
        Ok(())
    }

    /// Syncs the directory after the first save into a file this lock created at its name,
    /// when saves are synced: the file's data is on disk, and so must its name be.
    fn sync_created_entry(&mut self) -> Result<()> {
        if self.store.sync && self.unsynced_entry {
            self.store.sync_dir().map_err(|e| {
                Error::io(
                    format!("syncing the directory of session {:?}", self.key),
                    e,
                )
            })?;
            self.unsynced_entry = false;
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
        if let (Some(file), Some(known)) = (&self.file, self.layout) {
            match layout::save_in_place(file, known, &bytes) {
                Ok(Some(layout)) => {
                    self.layout = Some(layout);
                    if self.store.sync {
                        file.sync_data()
                            .map_err(|e| Error::io(format!("syncing session {key:?}"), e))?;
                    }
                    if ended_meanwhile(file) {
                        return Err(lock_lost(key));
                    }
                    return self.sync_created_entry();
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
                temp.sync_data()
                    .map_err(|e| Error::io(format!("syncing session {key:?}"), e))?;
            }
            self.take_name(&temp_name)?;
            Ok(layout)
        })();
        let layout = match written {
            Ok(layout) => layout,
            Err(e) => {
                let _ = self.store.unlink(&temp_name);
                return Err(e);
            }
        };
        // The old file (and its lock) goes; waiters on it will find the new one.
        self.size = temp.metadata().map_or(0, |m| m.len());
        self.file = Some(temp);
        self.layout = Some(layout);
        if self.store.sync {
            self.store
                .sync_dir()
                .map_err(|e| Error::io(format!("syncing the directory of session {key:?}"), e))?;
            self.unsynced_entry = false;
        }
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
fn read_front(file: &File, stat: &Stat) -> Result<Front> {
    let size = u64::try_from(stat.st_size).unwrap_or(0);
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
    // The parent is reached by its path (the administrator's choice, links and all); the
    // session directory itself only by a handle from the parent's handle. Only the directory
    // itself is ever created: a path naming parents that do not exist is a mistake to report,
    // not a tree to build.
    let parent_handle = rustix::fs::open(
        parent,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| {
        if !create && e == Errno::NOENT {
            return directory_error(format!("no session directory at {shown}"));
        }
        Error::io(
            format!(
                "opening {}, the parent of the session directory (pso creates only the directory itself)",
                parent.display()
            ),
            e.into(),
        )
    })?;
    // A user who can rename entries of the parent could swap our directory for another of
    // ours (another site's sessions) or move it away and let us create an empty one: the
    // handle makes each request consistent, not the directory the right one.
    let parent_stat = rustix::fs::fstat(&parent_handle).map_err(|e| {
        Error::io(
            format!(
                "inspecting {}, the parent of the session directory",
                parent.display()
            ),
            e.into(),
        )
    })?;
    if others_can_replace_entries(&parent_stat, uid) {
        return Err(directory_error(format!(
            "the session directory {shown} lies in {}, which another user can change (owner uid {}, mode {:o}): they could move it away or put another directory in its place. Put it in a directory that only uid {uid} or root can change",
            parent.display(),
            parent_stat.st_uid,
            parent_stat.st_mode & 0o7777
        )));
    }
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
                Ok(()) => created = true,
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
                "the session directory {shown} has mode {:o}: others may have read its session ids,                  and may still hold it open. Remove it and let pso create it (0700), or make it 0700                  yourself if you are sure nobody else has it open",
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

    #[test]
    fn passes_the_store_suite() {
        let (_dir, store) = store();
        suite::all(Arc::new(store));
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
