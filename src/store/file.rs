//! The file store: one file per session in a private directory, locked with `flock`.
//!
//! Layout: `<dir>/<service>.<id>.pso`, in the format of [`crate::Record::encode`]; while a save is
//! under way, `<dir>/.<service>.<id>.<pid>-<n>.tmp`. The directory is `0700` and owned by the
//! user pso runs as, files are `0600`, and no file is opened through a symbolic link.
//!
//! Locking: a request locks the session's file itself (`flock`, std's [`File::lock`]) from load
//! to the end of the request. A save writes a new file and renames it over the old one, so a
//! request waiting on the old file wakes up holding a lock on a file that is no longer the
//! session; it therefore checks, after locking, that its descriptor is still the file at the path
//! (same device and inode, still linked) and starts again if not. The saver locks the new file
//! *before* renaming it into place, so it never leaves the session unlocked mid-request.

use std::ffi::OsStr;
use std::fs::{self, DirBuilder, File, OpenOptions, TryLockError};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::config::MAX_SESSION_BYTES;
use crate::error::{Error, ErrorKind, Result};
use crate::expiry::unix_secs;
use crate::id::SessionId;
use crate::record::{HEADER_LEN, Record};
use crate::store::{
    GcReport, LockOptions, LockedSession, SessionKey, Store, deleted_error, lock_deadline,
    time_left,
};

const EXTENSION: &str = ".pso";
const TEMP_EXTENSION: &str = ".tmp";
/// A temporary file (or an empty reservation) this old belongs to a process that died.
const ABANDONED_AGE: u64 = 3_600;
/// Longest pause between two tries of a busy lock.
const MAX_LOCK_PAUSE: Duration = Duration::from_millis(10);
/// How often opening removes something that is not a session file before it gives up.
const MAX_REOPENS: u32 = 64;

/// Sessions as files in one directory. Cheap to clone.
///
/// ```
/// use pso::store::{FileStore, LockOptions, SessionKey, Store};
/// use std::time::Duration;
///
/// let dir = tempfile::tempdir()?;
/// let store = FileStore::open(dir.path().join("sessions"))?;
/// let key = SessionKey::new("shop".parse()?, pso::SessionId::generate()?);
/// let options = LockOptions { timeout: Duration::from_secs(5), create: false };
///
/// let mut session = store.lock(&key, options)?; // held until dropped
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
    dir: PathBuf,
    sync: bool,
    max_bytes: u64,
    uid: u32,
}

impl FileStore {
    /// Opens the store in `dir`, creating the directory `0700` if it does not exist.
    ///
    /// An existing directory must be a real directory (not a symbolic link) owned by the user
    /// pso runs as; if others may read or write it, its mode is tightened to `0700`, since file
    /// names are session ids. A directory on NFS or SMB is logged: `flock` is not reliable there.
    pub fn open(dir: impl Into<PathBuf>) -> Result<FileStore> {
        let dir = dir.into();
        let uid = effective_uid();
        prepare_directory(&dir, uid)?;
        warn_if_network_file_system(&dir);
        Ok(FileStore {
            dir,
            sync: false,
            max_bytes: 1 << 20,
            uid,
        })
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

    /// The session directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file that holds `key`'s session.
    pub fn path_of(&self, key: &SessionKey) -> PathBuf {
        // Both parts are validated to [A-Za-z0-9_-]+, so the name has no '/' and is never
        // "." or "..": the path's parent is always `dir`.
        self.dir
            .join(format!("{}.{}{EXTENSION}", key.service, key.id))
    }

    /// Opens the session file without following a symbolic link; `None` if there is none.
    ///
    /// Anything at the path that is not a regular file of ours with one link (a planted
    /// symlink, a hard link to another file, a FIFO) is removed, never followed or written.
    fn open_file(&self, key: &SessionKey, path: &Path, create: bool) -> Result<Option<File>> {
        for _ in 0..MAX_REOPENS {
            let mut options = OpenOptions::new();
            options
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOFOLLOW);
            if create {
                options.create(true).mode(0o600);
            }
            match options.open(path) {
                Ok(file) => {
                    let meta = file
                        .metadata()
                        .map_err(|e| Error::io(format!("inspecting session {key:?}"), e))?;
                    if meta.nlink() == 0 {
                        // Replaced by another request's save between open and fstat.
                        continue;
                    }
                    if self.is_our_file(&meta) {
                        if meta.mode() & 0o777 != 0o600 {
                            set_private(&file, key)?;
                        }
                        return Ok(Some(file));
                    }
                    // Remove the name only if it still is what we inspected: a save may have
                    // renamed a good file into place meanwhile.
                    if !same_file(&meta, path) {
                        continue;
                    }
                    log::warn!(
                        "session {key:?}: the file is not a regular file of ours with one link; removing it"
                    );
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                    if !fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
                        continue;
                    }
                    log::warn!("session {key:?}: the file is a symbolic link; removing the link");
                }
                Err(e) => return Err(Error::io(format!("opening session {key:?}"), e)),
            }
            remove_if_present(path)
                .map_err(|e| Error::io(format!("removing session {key:?}"), e))?;
        }
        Err(Error::new(
            ErrorKind::Io,
            format!("session {key:?}: the file keeps changing"),
        ))
    }

    fn is_our_file(&self, meta: &fs::Metadata) -> bool {
        meta.file_type().is_file() && meta.uid() == self.uid && meta.nlink() == 1
    }

    /// Creates a new private temporary file for `key`'s next version.
    fn create_temp(&self, key: &SessionKey) -> Result<(PathBuf, File)> {
        let pid = std::process::id();
        for attempt in 0u32..64 {
            let path = self.dir.join(format!(
                ".{}.{}.{pid}-{attempt}{TEMP_EXTENSION}",
                key.service, key.id
            ));
            // Readable too: after the rename this descriptor is the locked session file.
            match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
            {
                Ok(file) => {
                    if let Err(e) = set_private(&file, key) {
                        let _ = fs::remove_file(&path);
                        return Err(e);
                    }
                    return Ok((path, file));
                }
                // Left behind by a killed process whose pid we now have.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(Error::io(
                        format!("creating a new file for session {key:?}"),
                        e,
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
        File::open(&self.dir)?.sync_all()
    }

    /// Looks at one directory entry for garbage collection.
    fn collect_entry(&self, entry: &fs::DirEntry, now: u64, report: &mut GcReport) {
        let name = entry.file_name();
        let Some(kind) = classify(&name) else { return };
        // DirEntry::metadata does not follow symlinks.
        let Ok(meta) = entry.metadata() else { return };
        if !self.is_our_file(&meta) {
            return;
        }
        let path = entry.path();
        let age = now.saturating_sub(u64::try_from(meta.mtime()).unwrap_or(0));
        match kind {
            Entry::Session(key) => {
                report.examined += 1;
                let Ok(Some(file)) = self.open_for_reading(&path) else {
                    return;
                };
                match file.try_lock() {
                    Ok(()) => {}
                    Err(TryLockError::WouldBlock) => {
                        report.busy += 1;
                        return;
                    }
                    Err(TryLockError::Error(_)) => return,
                }
                if !still_current(&file, &path) {
                    return;
                }
                // The directory may be shared with other programs, other settings and other
                // versions of pso: judge only by what holds for all of them. A record over this
                // program's size cap or of a format version it does not know is left alone.
                let dead = match read_bytes(&file, MAX_SESSION_BYTES) {
                    Ok(None) => age > ABANDONED_AGE,
                    Ok(Some(bytes)) if Record::is_other_version(&bytes) => false,
                    Ok(Some(bytes)) => match Record::decode(&bytes, MAX_SESSION_BYTES) {
                        Ok(record) => record.is_expired(now),
                        Err(e) => {
                            log::warn!("removing unreadable session {key:?}: {e}");
                            true
                        }
                    },
                    Err(_) => false,
                };
                if dead && remove_if_present(&path).is_ok() {
                    report.removed += 1;
                }
            }
            Entry::Temp => {
                if age > ABANDONED_AGE
                    && let Ok(Some(file)) = self.open_for_reading(&path)
                    && file.try_lock().is_ok()
                    && remove_if_present(&path).is_ok()
                {
                    report.removed += 1;
                }
            }
        }
    }

    /// Opens a session file read-only, without following a symlink; `None` unless it is a
    /// regular file of ours with one link.
    fn open_for_reading(&self, path: &Path) -> std::io::Result<Option<File>> {
        match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
        {
            Ok(file) if file.metadata().is_ok_and(|m| self.is_our_file(&m)) => Ok(Some(file)),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl Store for FileStore {
    fn lock(&self, key: &SessionKey, options: LockOptions) -> Result<Box<dyn LockedSession>> {
        let path = self.path_of(key);
        let deadline = lock_deadline(options.timeout);
        loop {
            let Some(file) = self.open_file(key, &path, options.create)? else {
                // No file: nothing to lock, and nobody else can reach a session that does not
                // exist yet. The first save creates the file already locked.
                return Ok(Box::new(FileLock {
                    store: self.clone(),
                    key: key.clone(),
                    path,
                    file: None,
                    deleted: false,
                }));
            };
            wait_for_lock(&file, deadline, key)?;
            if still_current(&file, &path) {
                return Ok(Box::new(FileLock {
                    store: self.clone(),
                    key: key.clone(),
                    path,
                    file: Some(file),
                    deleted: false,
                }));
            }
            // Replaced or removed while we waited: lock whatever is there now, within the
            // same deadline.
            time_left(deadline, key)?;
        }
    }

    fn peek(&self, key: &SessionKey) -> Result<Option<Record>> {
        let path = self.path_of(key);
        match self.open_for_reading(&path) {
            Ok(Some(file)) => read_record(&file, self.max_bytes),
            Ok(None) => Ok(None),
            Err(e) => Err(Error::io(format!("opening session {key:?}"), e)),
        }
    }

    fn keys(&self) -> Result<Box<dyn Iterator<Item = Result<SessionKey>> + '_>> {
        let entries = fs::read_dir(&self.dir)
            .map_err(|e| Error::io(format!("listing {}", self.dir.display()), e))?;
        Ok(Box::new(entries.filter_map(|entry| match entry {
            Ok(entry) => match classify(&entry.file_name()) {
                Some(Entry::Session(key)) => Some(Ok(key)),
                _ => None,
            },
            Err(e) => Some(Err(Error::io("listing the session directory", e))),
        })))
    }

    fn collect_garbage(&self, now: SystemTime, budget: Duration) -> Result<GcReport> {
        let started = Instant::now();
        let now = unix_secs(now);
        let mut report = GcReport::default();
        // Start at a random entry, so that when the budget is too small for the whole
        // directory, successive passes still reach every part of it. Skipping costs only
        // readdir; the size estimate (bytes per entry) needs only to be rough.
        let estimate = fs::metadata(&self.dir).map_or(1, |m| (m.len() / 64).max(1));
        let skip = usize::try_from(getrandom::u64().unwrap_or(0) % estimate).unwrap_or(0);
        for pass in 0..2 {
            let entries = fs::read_dir(&self.dir)
                .map_err(|e| Error::io(format!("listing {}", self.dir.display()), e))?;
            for (index, entry) in entries.enumerate() {
                if pass == 0 && index < skip {
                    continue;
                }
                if pass == 1 && index >= skip {
                    break;
                }
                if started.elapsed() >= budget {
                    report.incomplete = true;
                    return Ok(report);
                }
                if let Ok(entry) = entry {
                    self.collect_entry(&entry, now, &mut report);
                }
            }
            if skip == 0 {
                break;
            }
        }
        Ok(report)
    }
}

/// A locked session file; the lock is released when this is dropped (the descriptor closes).
struct FileLock {
    store: FileStore,
    key: SessionKey,
    path: PathBuf,
    /// The locked file; `None` while the session has no file.
    file: Option<File>,
    /// Whether `delete` was called: the file is gone and must not come back through this lock.
    deleted: bool,
}

impl LockedSession for FileLock {
    fn key(&self) -> &SessionKey {
        &self.key
    }

    fn load(&mut self) -> Result<Option<Record>> {
        match &self.file {
            Some(file) => read_record(file, self.store.max_bytes),
            None => Ok(None),
        }
    }

    fn save(&mut self, record: &Record) -> Result<()> {
        let key = &self.key;
        if self.deleted {
            // Another request may already hold a new file at the path; never rename over it.
            return Err(deleted_error(key));
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
        let (temp_path, mut temp) = self.store.create_temp(key)?;
        let written = (|| {
            // Locked before it becomes the session, so no other request can take it meanwhile.
            temp.try_lock()
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            temp.write_all(&bytes)?;
            if self.store.sync {
                temp.sync_data()?;
            }
            fs::rename(&temp_path, &self.path)
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&temp_path);
            return Err(Error::io(format!("saving session {key:?}"), e));
        }
        // The old file (and its lock) goes; waiters on it will find the new one.
        self.file = Some(temp);
        if self.store.sync {
            self.store
                .sync_dir()
                .map_err(|e| Error::io(format!("syncing the directory of session {key:?}"), e))?;
        }
        Ok(())
    }

    fn delete(&mut self) -> Result<()> {
        self.deleted = true;
        if self.file.take().is_some() {
            remove_if_present(&self.path)
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

/// What a name in the session directory is.
enum Entry {
    Session(SessionKey),
    Temp,
}

fn classify(name: &OsStr) -> Option<Entry> {
    let name = name.to_str()?;
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
        SessionId::forced(id).ok()?,
    ))
}

/// Reads and decodes a session file; an empty file is a reservation without a record yet.
fn read_record(file: &File, max_bytes: u64) -> Result<Option<Record>> {
    match read_bytes(file, max_bytes)? {
        Some(bytes) => Record::decode(&bytes, max_bytes).map(Some),
        None => Ok(None),
    }
}

/// A session file's bytes, `None` if it is empty; a file larger than a record of `max_bytes`
/// is [`ErrorKind::Corrupt`] and is not read.
fn read_bytes(file: &File, max_bytes: u64) -> Result<Option<Vec<u8>>> {
    let cap = max_bytes.saturating_add(HEADER_LEN as u64);
    let len = file
        .metadata()
        .map_err(|e| Error::io("inspecting a session file", e))?
        .len();
    if len == 0 {
        return Ok(None);
    }
    if len > cap {
        return Err(Error::new(
            ErrorKind::Corrupt,
            format!("session file of {len} bytes is larger than PSOSessionMaxBytes"),
        ));
    }
    // Positional, so the descriptor's offset (at the end after a save) does not matter. Files
    // are never written in place, so the length read above is the length to read.
    let mut bytes = vec![0u8; usize::try_from(len).unwrap_or(0)];
    file.read_exact_at(&mut bytes, 0)
        .map_err(|e| Error::io("reading a session file", e))?;
    Ok(Some(bytes))
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

/// Whether the locked descriptor is still the file at `path` (not replaced, not removed).
/// When in doubt (an error), it is not: the caller opens the path again.
fn still_current(file: &File, path: &Path) -> bool {
    file.metadata()
        .is_ok_and(|held| held.nlink() > 0 && same_file(&held, path))
}

/// Whether `path` names the file `meta` describes, without following a symlink.
fn same_file(meta: &fs::Metadata, path: &Path) -> bool {
    fs::symlink_metadata(path)
        .is_ok_and(|current| current.dev() == meta.dev() && current.ino() == meta.ino())
}

fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// `0600` whatever the umask.
fn set_private(file: &File, key: &SessionKey) -> Result<()> {
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io(format!("setting the mode of session {key:?}"), e))
}

fn prepare_directory(dir: &Path, uid: u32) -> Result<()> {
    let shown = dir.display();
    let meta = match fs::symlink_metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs::create_dir_all(parent)
                    .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
            }
            match DirBuilder::new().mode(0o700).create(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(Error::io(
                        format!("creating the session directory {shown}"),
                        e,
                    ));
                }
            }
            fs::symlink_metadata(dir)
                .map_err(|e| Error::io(format!("inspecting the session directory {shown}"), e))?
        }
        Err(e) => {
            return Err(Error::io(
                format!("inspecting the session directory {shown}"),
                e,
            ));
        }
    };
    if meta.file_type().is_symlink() {
        return Err(Error::new(
            ErrorKind::Directory,
            format!("the session directory {shown} is a symbolic link; configure the real path"),
        ));
    }
    if !meta.is_dir() {
        return Err(Error::new(
            ErrorKind::Directory,
            format!("the session directory {shown} is not a directory"),
        ));
    }
    if meta.uid() != uid {
        return Err(Error::new(
            ErrorKind::Directory,
            format!(
                "the session directory {shown} belongs to uid {}, but pso runs as uid {uid}",
                meta.uid()
            ),
        ));
    }
    // Exactly 0700: others must not list it (file names are session ids), and a umask must
    // not have taken our own rights away.
    if meta.mode() & 0o777 != 0o700 {
        log::warn!(
            "the session directory {shown} had mode {:o}; making it 0700",
            meta.mode() & 0o7777
        );
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io(format!("making {shown} private"), e))?;
    }
    Ok(())
}

/// The effective user id: the owner that session files and their directory must have.
pub(crate) fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(target_os = "linux")]
fn warn_if_network_file_system(dir: &Path) {
    use std::os::unix::ffi::OsStrExt;
    const NETWORK_FILE_SYSTEMS: [(u32, &str); 4] = [
        (0x6969, "NFS"),
        (0x517b, "SMB"),
        (0xff53_4d42, "CIFS"),
        (0xfe53_4d42, "SMB2"),
    ];
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return;
    };
    let mut stats = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: `path` is NUL-terminated and `stats` is a writable statfs that lives past the call.
    if unsafe { libc::statfs(path.as_ptr(), stats.as_mut_ptr()) } != 0 {
        return;
    }
    // SAFETY: statfs returned 0, so it filled `stats` (and it was zeroed before anyway).
    let kind = unsafe { stats.assume_init() }.f_type as u32;
    if let Some((_, name)) = NETWORK_FILE_SYSTEMS
        .iter()
        .find(|(magic, _)| *magic == kind)
    {
        log::warn!(
            "the session directory {} is on {name}: file locks there are unreliable, so concurrent requests may lose updates",
            dir.display()
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn warn_if_network_file_system(_dir: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Meta;
    use crate::store::suite;
    use std::os::unix::fs::symlink;
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
    fn a_loose_directory_is_tightened_and_a_symlinked_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let loose = dir.path().join("loose");
        fs::create_dir(&loose).unwrap();
        fs::set_permissions(&loose, fs::Permissions::from_mode(0o777)).unwrap();
        FileStore::open(&loose).unwrap();
        assert_eq!(fs::metadata(&loose).unwrap().mode() & 0o777, 0o700);

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
        // Make the rename fail: a directory where the session file should be replaced.
        let path = store.path_of(&key);
        fs::remove_file(&path).unwrap();
        fs::create_dir(&path).unwrap();
        fs::write(path.join("x"), "").unwrap();
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
        ] {
            assert!(classify(OsStr::new(other)).is_none(), "{other}");
        }
    }

    #[test]
    fn gc_removes_corrupt_files_and_abandoned_temporaries_only() {
        let (_dir, store) = store();
        let corrupt = suite::key("svc");
        fs::write(store.path_of(&corrupt), b"junk").unwrap();
        let temp = store
            .dir()
            .join(format!(".svc.{}.1-0.tmp", SessionId::generate().unwrap()));
        fs::write(&temp, b"partial").unwrap();
        let unrelated = store.dir().join("README");
        fs::write(&unrelated, b"keep").unwrap();
        let now = SystemTime::now();
        store.collect_garbage(now, Duration::from_secs(5)).unwrap();
        assert!(!store.path_of(&corrupt).exists());
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

    #[test]
    fn gc_stops_at_its_budget() {
        let (_dir, store) = store();
        for _ in 0..50 {
            let key = suite::key("svc");
            store
                .lock(&key, suite::options())
                .unwrap()
                .save(&Record::default())
                .unwrap();
        }
        let report = store
            .collect_garbage(SystemTime::now(), Duration::ZERO)
            .unwrap();
        assert!(report.incomplete);
        assert_eq!(report.examined, 0);
    }
}
