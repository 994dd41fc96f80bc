//! Where sessions are kept, as `PSOSessionStore` names it: files, or a server's URL, which is
//! shown everywhere (log lines, error pages, `pso config`, `Debug`) without its password.

use std::fmt;
use std::io::Read;
use std::path::Path;

use rustix::fs::{FileType, Mode, OFlags};

use crate::error::{Error, ErrorKind, Result};

/// The largest password file read: a password, not a document.
const MAX_PASSWORD_FILE: u64 = 4096;

/// The longest `PSOSessionStore` value taken: a URL, not a document.
const MAX_URL_LEN: usize = 2048;

/// Where sessions are kept (`PSOSessionStore`).
///
/// ```
/// use pso::store::{ServerKind, StoreLocation};
/// assert_eq!(StoreLocation::parse("files")?, StoreLocation::Files);
/// let redis = StoreLocation::parse("redis://:s3cret@10.0.0.5:6379/2")?;
/// assert_eq!(redis.to_string(), "redis://:***@10.0.0.5:6379/2");
/// assert!(matches!(redis, StoreLocation::Server(ref url) if url.kind() == ServerKind::Redis));
/// assert!(StoreLocation::parse("memcached://10.0.0.5").is_err());
/// # Ok::<(), pso::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum StoreLocation {
    /// Files in the session directory (`PSOSessionFileLoader_Path`): the default.
    #[default]
    Files,
    /// A server, named by its URL.
    Server(ServerUrl),
    /// A value that names no store pso knows: every request fails (a 500, logged) rather than
    /// keep its sessions somewhere the other machines of the site do not look.
    Unusable,
}

/// The kinds of server a [`ServerUrl`] names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum ServerKind {
    /// `redis://host:port/db`
    Redis,
    /// `rediss://host:port/db`: Redis over TLS.
    RedisTls,
    /// `redis+unix:///path/redis.sock` (also `unix://`).
    RedisUnix,
    /// `redis+cluster://host:port,host:port,…` (also `rediss+cluster://`, over TLS).
    RedisCluster,
    /// `postgres://user@host/db` (also `postgresql://`).
    Postgres,
}

impl ServerKind {
    /// The cargo feature of pso that builds this kind of store in.
    pub fn feature(self) -> &'static str {
        match self {
            ServerKind::Redis | ServerKind::RedisUnix => "redis",
            ServerKind::RedisTls => "redis-tls",
            ServerKind::RedisCluster => "redis-cluster",
            ServerKind::Postgres => "postgres",
        }
    }
}

/// A server's URL, password and all. It prints (`Display` and `Debug`) with the password
/// replaced by `***`; only the store that connects reads it whole.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServerUrl {
    kind: ServerKind,
    url: String,
}

impl StoreLocation {
    /// Reads a `PSOSessionStore` value: empty or `files` (in any case) for files, else a
    /// server URL of a scheme pso knows.
    pub fn parse(text: &str) -> Result<StoreLocation> {
        let text = text.trim();
        if text.is_empty() || text.eq_ignore_ascii_case("files") {
            return Ok(StoreLocation::Files);
        }
        let invalid = |why: &str| Error::new(ErrorKind::Invalid, format!("PSOSessionStore: {why}"));
        if text.len() > MAX_URL_LEN {
            return Err(invalid("longer than 2048 bytes"));
        }
        if text.chars().any(|c| c.is_control() || c == ' ') {
            return Err(invalid("a URL has no spaces or control characters"));
        }
        let Some((scheme, rest)) = text.split_once("://") else {
            return Err(invalid("neither files nor a URL (scheme://...)"));
        };
        let kind = match scheme.to_ascii_lowercase().as_str() {
            "redis" => ServerKind::Redis,
            "rediss" => ServerKind::RedisTls,
            "redis+unix" | "unix" => ServerKind::RedisUnix,
            "redis+cluster" | "rediss+cluster" => ServerKind::RedisCluster,
            "postgres" | "postgresql" => ServerKind::Postgres,
            _ => {
                // The value may hold a password: name the scheme only.
                return Err(invalid(&format!(
                    "no store of scheme {:?} (files, redis, rediss, redis+unix, redis+cluster, postgres)",
                    scheme.chars().take(20).collect::<String>()
                )));
            }
        };
        if rest.is_empty() {
            return Err(invalid("the URL names no server"));
        }
        Ok(StoreLocation::Server(ServerUrl {
            kind,
            url: text.to_owned(),
        }))
    }
}

impl ServerUrl {
    /// What kind of server it names.
    pub fn kind(&self) -> ServerKind {
        self.kind
    }

    /// The whole URL, password included: for connecting, never for printing.
    pub fn expose(&self) -> &str {
        &self.url
    }

    /// Whether the URL itself carries a password (in its user part, or as a `pass` or
    /// `password` parameter).
    pub fn has_password(&self) -> bool {
        !self.secrets().is_empty()
    }

    /// The URL with every password in it replaced by `***`. Generous on purpose: rather than
    /// trust one reading of the URL, it masks whatever any reading could take for a password,
    /// wherever it occurs in the text.
    fn redacted(&self) -> String {
        let mut secrets = self.secrets();
        secrets.sort_by_key(|secret| std::cmp::Reverse(secret.len()));
        secrets.dedup();
        let mut shown = self.url.clone();
        for secret in secrets {
            shown = shown.replace(secret, "***");
        }
        shown
    }

    /// What a client could read as a password: the user part's, taken as far as the last `@`
    /// of the whole URL (a password may hold `/`, `?` or `#` unescaped) and as URL parsers
    /// take it (within the authority), and the value of every query parameter not known to
    /// hold no secret, after any `?` (a value may hold `@`).
    fn secrets(&self) -> Vec<&str> {
        let rest = self
            .url
            .split_once("://")
            .map_or(self.url.as_str(), |(_, rest)| rest);
        let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
        let user_parts = [rest.rsplit_once('@'), authority.rsplit_once('@')];
        let passwords = user_parts
            .into_iter()
            .flatten()
            .filter_map(|(userinfo, _)| userinfo.split_once(':'))
            .map(|(_, password)| password);
        let queries = rest.match_indices('?').map(|(at, _)| {
            let query = &rest[at + 1..];
            &query[..query.find('#').unwrap_or(query.len())]
        });
        let values = queries.flat_map(|query| {
            query
                .split(['&', '?'])
                .filter_map(|pair| match pair.split_once('=') {
                    Some((name, value)) if !PLAIN_PARAMETERS.contains(&name) => Some(value),
                    _ => None,
                })
        });
        passwords
            .chain(values)
            .filter(|secret| !secret.is_empty())
            .collect()
    }
}

/// Query parameters of store URLs that hold no secret, shown as they are.
const PLAIN_PARAMETERS: &[&str] = &[
    "db",
    "protocol",
    "user",
    "host",
    "port",
    "dbname",
    "connect_timeout",
    "sslmode",
    "application_name",
];

impl fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerUrl({:?})", self.redacted())
    }
}

impl fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreLocation::Files => f.write_str("files"),
            StoreLocation::Server(url) => url.fmt(f),
            StoreLocation::Unusable => f.write_str("unusable"),
        }
    }
}

/// Reads a store's password from `path` (`PSOSessionStorePasswordFile`): a regular file (not a
/// link) of this user's that nobody else may read or change, as the session directory must
/// be; one line, its line end dropped.
pub(crate) fn read_password_file(path: &Path) -> Result<String> {
    let refuse = |why: &str| {
        Error::new(
            ErrorKind::Invalid,
            format!("PSOSessionStorePasswordFile {}: {why}", path.display()),
        )
    };
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    let fd = rustix::fs::open(path, flags, Mode::empty()).map_err(|e| {
        Error::with_source(
            ErrorKind::Invalid,
            format!(
                "PSOSessionStorePasswordFile {}: cannot be opened (a link is refused)",
                path.display()
            ),
            std::io::Error::from(e),
        )
    })?;
    let stat = rustix::fs::fstat(&fd).map_err(|e| {
        Error::with_source(
            ErrorKind::Invalid,
            "reading a password file's owner",
            std::io::Error::from(e),
        )
    })?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(refuse("not a regular file"));
    }
    if stat.st_uid != rustix::process::geteuid().as_raw() {
        return Err(refuse("not owned by the user pso runs as"));
    }
    if stat.st_mode & 0o077 != 0 {
        return Err(refuse(
            "others may read or change it: make it 0600 (chmod 600)",
        ));
    }
    let mut text = String::new();
    std::fs::File::from(fd)
        .take(MAX_PASSWORD_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| Error::with_source(ErrorKind::Invalid, "reading a password file", e))?;
    if text.len() as u64 > MAX_PASSWORD_FILE {
        return Err(refuse("larger than 4 KiB"));
    }
    let password = text.strip_suffix('\n').unwrap_or(&text);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() || password.contains(['\n', '\r']) {
        return Err(refuse("not one line holding a password"));
    }
    Ok(password.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(text: &str) -> String {
        StoreLocation::parse(text).unwrap().to_string()
    }

    #[test]
    fn passwords_never_print() {
        for (url, printed) in [
            ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
            ("redis://user:pw@h", "redis://user:***@h"),
            ("redis://user@h", "redis://user@h"),
            ("redis://h:6379", "redis://h:6379"),
            ("redis://:p@w:d@h/1", "redis://:***@h/1"),
            ("redis://:p/w@h/1", "redis://:***@h/1"),
            (
                "redis+unix:///run/r.sock?db=2&pass=pw",
                "redis+unix:///run/r.sock?db=2&pass=***",
            ),
            (
                "redis+cluster://:pw@h1:7000,h2:7001",
                "redis+cluster://:***@h1:7000,h2:7001",
            ),
            (
                "postgres://app:pw@db/sessions?password=pw2#x",
                "postgres://app:***@db/sessions?password=***#x",
            ),
            ("redis://:pa?ss@h:1/0", "redis://:***@h:1/0"),
            ("redis://:pa#ss@h:1/0", "redis://:***@h:1/0"),
            (
                "redis+cluster://:p?w@a:1,b:2",
                "redis+cluster://:***@a:1,b:2",
            ),
            (
                "redis+unix:///s?db=1&p%61ss=pw",
                "redis+unix:///s?db=1&p%61ss=***",
            ),
            // A value may hold `@` (attack 3, finding 3): it is not the end of a user part.
            (
                "redis+unix:///run/r.sock?db=0&pass=hunter2@pw",
                "redis+unix:///run/r.sock?db=0&pass=***",
            ),
            (
                "postgres://app@/app?host=/run/postgresql&password=hunter2@pw",
                "postgres://app@/app?host=/run/postgresql&password=***",
            ),
            (
                "postgres://app:pw@/app?host=/x&password=pw?x=1",
                "postgres://app:***@/app?host=/x&password=***?x=***",
            ),
        ] {
            assert_eq!(shown(url), printed);
            let location = StoreLocation::parse(url).unwrap();
            assert!(!format!("{location:?}").contains("pw"), "{location:?}");
            let StoreLocation::Server(server) = location else {
                unreachable!()
            };
            assert!(server.has_password() == printed.contains("***"), "{url}");
        }
    }

    #[test]
    fn files_and_unknown_schemes() {
        for files in ["", "files", " FILES "] {
            assert_eq!(StoreLocation::parse(files).unwrap(), StoreLocation::Files);
        }
        for bad in [
            "memcached://h",
            "redis:/h",
            "redis://",
            "redis://h x",
            "redis://h\nx",
            "nonsense",
        ] {
            assert!(StoreLocation::parse(bad).is_err(), "{bad:?}");
        }
        let err = StoreLocation::parse("mongo://u:secret@h").unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    #[test]
    fn a_password_file_must_be_ours_alone() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("redis.pass");
        std::fs::write(&path, "s3cret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_password_file(&path).unwrap(), "s3cret");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = read_password_file(&path).unwrap_err();
        assert!(err.to_string().contains("0600"), "{err}");
        assert!(!err.to_string().contains("s3cret"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(read_password_file(&link).is_err());
        std::fs::write(&path, "two\nlines\n").unwrap();
        assert!(read_password_file(&path).is_err());
        std::fs::write(&path, "").unwrap();
        assert!(read_password_file(&path).is_err());
        assert!(read_password_file(dir.path()).is_err());
    }

    #[test]
    fn kinds_and_features() {
        for (url, kind, feature) in [
            ("redis://h", ServerKind::Redis, "redis"),
            ("REDIS://h", ServerKind::Redis, "redis"),
            ("rediss://h", ServerKind::RedisTls, "redis-tls"),
            ("unix:///s", ServerKind::RedisUnix, "redis"),
            (
                "redis+cluster://a:1,b:2",
                ServerKind::RedisCluster,
                "redis-cluster",
            ),
            ("postgresql://h/db", ServerKind::Postgres, "postgres"),
        ] {
            let StoreLocation::Server(server) = StoreLocation::parse(url).unwrap() else {
                panic!("{url}")
            };
            assert_eq!((server.kind(), server.kind().feature()), (kind, feature));
        }
    }
}
