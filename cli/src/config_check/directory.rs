//! The session directory as pso will find it, checked for the user the programs run as,
//! without creating or changing anything: the same rules `FileStore::open` enforces, so a
//! directory that passes here is one pso accepts.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use pso::store::FileStore;

use super::Level;
use super::user::User;

/// One check and its outcome.
pub struct Check {
    /// What was checked: `exists`, `type`, `owner`, `mode`, `writable`, `file system`, `parent`.
    pub name: &'static str,
    pub level: Level,
    pub message: String,
}

impl Check {
    fn new(name: &'static str, level: Level, message: impl Into<String>) -> Check {
        Check {
            name,
            level,
            message: message.into(),
        }
    }
}

/// Read, write and search: what pso needs of its directory.
const RWX: u32 = 0o7;
/// Write and search: what creating an entry in a directory needs.
const WX: u32 = 0o3;

/// Checks `dir` for `user`.
pub fn check(dir: &Path, user: &User) -> Vec<Check> {
    let shown = dir.display();
    let mut checks = Vec::new();
    let dotted = FileStore::has_dot_components(dir);
    let (Some(parent), Some(_), false) = (dir.parent(), dir.file_name(), dotted) else {
        checks.push(Check::new(
            "path",
            Level::Error,
            format!("{shown} cannot be the session directory: name a directory of its own, without . or .."),
        ));
        return checks;
    };
    match std::fs::symlink_metadata(dir) {
        Ok(meta) => {
            checks.push(Check::new("exists", Level::Ok, "it exists"));
            let kind = meta.file_type();
            if kind.is_symlink() {
                checks.push(Check::new(
                    "type",
                    Level::Error,
                    "it is a symbolic link, which pso refuses (it opens the directory with O_NOFOLLOW): configure the real path",
                ));
                return checks;
            }
            if !kind.is_dir() {
                let what = if kind.is_file() {
                    "a regular file"
                } else if kind.is_fifo() || kind.is_socket() {
                    "a FIFO or a socket"
                } else {
                    "a device or something else"
                };
                checks.push(Check::new(
                    "type",
                    Level::Error,
                    format!("it is not a directory but {what}"),
                ));
                return checks;
            }
            checks.push(Check::new(
                "type",
                Level::Ok,
                "a directory, not a symbolic link",
            ));
            checks.push(owner(&meta, user));
            checks.push(mode(&meta, dir));
            checks.push(access(dir, &meta, user, RWX, |who| {
                format!("{who} can read, write and enter it")
            }));
            checks.push(file_system(dir));
            checks.extend(parent_check(parent, user));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let parent_meta = match std::fs::metadata(parent) {
                Ok(meta) if meta.is_dir() => meta,
                Ok(_) => {
                    checks.push(Check::new(
                        "exists",
                        Level::Error,
                        format!(
                            "it does not exist, and its parent {} is not a directory",
                            parent.display()
                        ),
                    ));
                    return checks;
                }
                Err(e) => {
                    checks.push(Check::new(
                        "exists",
                        Level::Error,
                        format!(
                            "neither it nor its parent {} exists ({e}); pso creates only the directory itself",
                            parent.display()
                        ),
                    ));
                    return checks;
                }
            };
            checks.push(Check::new(
                "exists",
                Level::Warning,
                format!(
                    "it does not exist yet: pso creates it (mode 0700) on the first request, in {}",
                    parent.display()
                ),
            ));
            checks.push(access(parent, &parent_meta, user, WX, |who| {
                format!("{who} can create it in {}", parent.display())
            }));
            checks.push(file_system(parent));
            checks.extend(parent_check(parent, user));
        }
        Err(e) => checks.push(Check::new(
            "exists",
            Level::Error,
            format!("it cannot be inspected: {e}"),
        )),
    }
    checks
}

fn owner(meta: &std::fs::Metadata, user: &User) -> Check {
    if meta.uid() == user.uid {
        Check::new("owner", Level::Ok, format!("it belongs to {user}"))
    } else if user.uid == 0 && user.is_current() {
        // Checked as root, of a directory a web server's user made: the programs run as that
        // user, not as root, and the directory is right as it is.
        let owner = meta.uid();
        Check::new(
            "owner",
            Level::Warning,
            format!(
                "it belongs to uid {owner}, and this check runs as root: web servers run programs as their own user, so check as that one with `pso config --user {owner}` (pso refuses a directory that is not the programs' user's)"
            ),
        )
    } else {
        Check::new(
            "owner",
            Level::Error,
            format!(
                "it belongs to uid {}, but the programs run as {user}: pso refuses it (chown it, or check another user with --user)",
                meta.uid()
            ),
        )
    }
}

fn mode(meta: &std::fs::Metadata, dir: &Path) -> Check {
    let mode = meta.mode() & 0o777;
    if mode == 0o700 {
        return Check::new("mode", Level::Ok, "0700");
    }
    let why = if mode & 0o077 != 0 {
        format!(
            "others may have read its session ids, and may still hold it open: remove it and let pso create it, or `chmod 0700 {}` if you are sure nobody else has it open",
            dir.display()
        )
    } else {
        format!("`chmod 0700 {}`", dir.display())
    };
    Check::new(
        "mode",
        Level::Error,
        format!("{mode:04o}, but pso accepts only 0700: {why}"),
    )
}

/// Whether `user` has `wanted` (bits of `rwx`) on `path`, by its owner, group and mode as the
/// kernel judges them (root may do anything), and whether its file system is writable. ACLs
/// are not read.
fn access(
    path: &Path,
    meta: &std::fs::Metadata,
    user: &User,
    wanted: u32,
    ok: impl FnOnce(&User) -> String,
) -> Check {
    let mode = meta.mode();
    let bits = if user.uid == 0 {
        RWX
    } else if meta.uid() == user.uid {
        (mode >> 6) & RWX
    } else if user.in_group(meta.gid()) {
        (mode >> 3) & RWX
    } else {
        mode & RWX
    };
    let read_only = rustix::fs::statvfs(path)
        .is_ok_and(|stats| stats.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY));
    if read_only {
        Check::new(
            "writable",
            Level::Error,
            format!("{} is on a read-only file system", path.display()),
        )
    } else if bits & wanted != wanted {
        let needs = if wanted == RWX { "rwx" } else { "wx" };
        Check::new(
            "writable",
            Level::Error,
            format!(
                "{user} cannot write {}: its mode {:04o} and owner uid {} give {user} {}, and pso needs {needs}",
                path.display(),
                mode & 0o7777,
                meta.uid(),
                rwx(bits)
            ),
        )
    } else {
        Check::new("writable", Level::Ok, ok(user))
    }
}

fn rwx(bits: u32) -> String {
    [(4, 'r'), (2, 'w'), (1, 'x')]
        .iter()
        .map(|&(bit, c)| if bits & bit != 0 { c } else { '-' })
        .collect()
}

fn file_system(path: &Path) -> Check {
    match FileStore::network_file_system(path) {
        Ok(None) => Check::new("file system", Level::Ok, "not NFS, SMB or CIFS"),
        Ok(Some(name)) => Check::new(
            "file system",
            Level::Error,
            format!(
                "on {name}: file locks there are unreliable, so concurrent requests may lose updates"
            ),
        ),
        Err(e) => Check::new(
            "file system",
            Level::Warning,
            format!("cannot tell: {}", pso::ErrorChain(&e)),
        ),
    }
}

/// pso refuses a directory under a directory another user can change, its parent or any
/// above it: they could move it away or put another in its place.
fn parent_check(parent: &Path, user: &User) -> Option<Check> {
    let check = match FileStore::changeable_by_others(parent, user.uid) {
        Ok(None) => Check::new(
            "parent",
            Level::Ok,
            format!(
                "no other user can change {} or any directory above it",
                parent.display()
            ),
        ),
        Ok(Some(dir)) => Check::new(
            "parent",
            Level::Error,
            format!(
                "{} can be changed by other users (another owner, or group or others may write it without the sticky bit): they could move the session directory (or what leads to it) away or put another in its place, so pso refuses it",
                dir.display()
            ),
        ),
        Err(e) => Check::new("parent", Level::Error, format!("{e}")),
    };
    Some(check)
}
