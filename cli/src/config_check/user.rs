//! The user whose view of the session directory `pso config` checks: the current one, or the
//! one the web server runs CGI programs as (`--user www-data`), read from `/etc/passwd` and
//! `/etc/group` by hand (no NSS: what a deploy check needs is the local files).

use std::path::Path;

/// A user's ids, as the kernel checks access with them.
#[derive(Clone, Debug)]
pub struct User {
    /// The name, when the passwd file has one.
    pub name: Option<String>,
    pub uid: u32,
    /// The primary group, when known.
    pub gid: Option<u32>,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

impl User {
    /// The user `pso` runs as, with its effective ids.
    pub fn current() -> User {
        let uid = rustix::process::geteuid().as_raw();
        let name = read_passwd(Path::new("/etc/passwd"))
            .into_iter()
            .find(|entry| entry.uid == uid)
            .map(|entry| entry.name);
        User {
            name,
            uid,
            gid: Some(rustix::process::getegid().as_raw()),
            groups: rustix::process::getgroups()
                .map(|groups| groups.into_iter().map(|gid| gid.as_raw()).collect())
                .unwrap_or_default(),
        }
    }

    /// Whether this is the user `pso` runs as.
    pub fn is_current(&self) -> bool {
        self.uid == rustix::process::geteuid().as_raw()
    }

    /// Whether `gid` is one of the user's groups.
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == Some(gid) || self.groups.contains(&gid)
    }
}

impl std::fmt::Display for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.name {
            Some(name) => write!(f, "{name} (uid {})", self.uid),
            None => write!(f, "uid {}", self.uid),
        }
    }
}

/// Parses `--user`: a name from `/etc/passwd`, or a numeric uid (known there or not).
pub fn parse(text: &str) -> Result<User, String> {
    resolve(text, Path::new("/etc/passwd"), Path::new("/etc/group"))
}

fn resolve(text: &str, passwd: &Path, group: &Path) -> Result<User, String> {
    let entries = read_passwd(passwd);
    let numeric = text.parse::<u32>().ok();
    let entry = entries
        .into_iter()
        .find(|entry| entry.name == text || Some(entry.uid) == numeric);
    let Some(entry) = entry else {
        return match numeric {
            Some(uid) => Ok(User {
                name: None,
                uid,
                gid: None,
                groups: Vec::new(),
            }),
            None => Err(format!("no user {text:?} in {}", passwd.display())),
        };
    };
    let groups = std::fs::read_to_string(group)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            let gid = fields.get(2)?.parse().ok()?;
            let members = fields.get(3)?;
            members
                .split(',')
                .any(|member| member == entry.name)
                .then_some(gid)
        })
        .collect();
    Ok(User {
        name: Some(entry.name),
        uid: entry.uid,
        gid: Some(entry.gid),
        groups,
    })
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

/// The entries of a passwd file; lines that do not parse (comments, `+` NIS lines) are skipped.
fn read_passwd(path: &Path) -> Vec<PasswdEntry> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let _password = fields.next()?;
            let uid = fields.next()?.parse().ok()?;
            let gid = fields.next()?.parse().ok()?;
            (!name.is_empty()).then(|| PasswdEntry {
                name: name.to_owned(),
                uid,
                gid,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_names_and_uids_from_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let passwd = dir.path().join("passwd");
        let group = dir.path().join("group");
        std::fs::write(
            &passwd,
            "# comment\nroot:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\n",
        )
        .unwrap();
        std::fs::write(
            &group,
            "www-data:x:33:\nsessions:x:1001:alice,www-data\nother:x:7:alice\n",
        )
        .unwrap();
        let user = resolve("www-data", &passwd, &group).unwrap();
        assert_eq!(
            (user.uid, user.gid, user.groups.as_slice()),
            (33, Some(33), &[1001][..])
        );
        assert!(user.in_group(1001) && user.in_group(33) && !user.in_group(7));
        assert_eq!(user.to_string(), "www-data (uid 33)");
        assert_eq!(
            resolve("33", &passwd, &group).unwrap().name.as_deref(),
            Some("www-data")
        );
        let unknown = resolve("4242", &passwd, &group).unwrap();
        assert_eq!((unknown.name, unknown.uid, unknown.gid), (None, 4242, None));
        assert!(
            resolve("nobody-here", &passwd, &group)
                .unwrap_err()
                .contains("nobody-here")
        );
    }
}
