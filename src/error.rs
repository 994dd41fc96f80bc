//! The crate's one error type: an [`ErrorKind`] to branch on, and the cause kept for the log.

use std::error::Error as StdError;
use std::fmt;
use std::io;

/// A `Result` whose error is pso's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Any error a handler may return with `?`: pso's own, I/O, or the program's.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// What went wrong, coarse enough to decide on (which HTTP status, retry or not).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Reading or writing the store, the request body or the response failed.
    Io,
    /// The store is full or read-only (`ENOSPC`, `EDQUOT`, `EROFS`): nothing was written.
    StorageFull,
    /// The session lock was not free within `PSOSessionLockTimeout`.
    LockTimeout,
    /// A session file or record is truncated, garbled, of an unknown version or too large.
    Corrupt,
    /// A session value does not decode as the type asked for.
    Decode,
    /// A value could not be encoded, or the session would exceed `PSOSessionMaxBytes`.
    Encode,
    /// A session id, service id, header or other input is not of its required form.
    Invalid,
    /// An expiry expression or date does not parse or evaluate.
    Expiry,
    /// The session directory is unusable (not ours, a symlink, not a directory).
    Directory,
}

/// pso's error: a kind, a message saying what was being done, and the underlying cause.
///
/// ```
/// let err = pso::Expiry::parse("1/0").unwrap_err();
/// assert_eq!(err.kind(), pso::ErrorKind::Expiry);
/// assert!(err.to_string().contains("division by zero"));
/// ```
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<BoxError>,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    pub(crate) fn with_source(
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Error {
        Error {
            kind,
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// An I/O error, classified: a full or read-only disk becomes [`ErrorKind::StorageFull`].
    pub(crate) fn io(message: impl Into<String>, err: io::Error) -> Error {
        let kind = match err.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EROFS) => ErrorKind::StorageFull,
            _ if err.kind() == io::ErrorKind::StorageFull => ErrorKind::StorageFull,
            _ => ErrorKind::Io,
        };
        Error::with_source(kind, message, err)
    }

    /// What kind of error this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

impl From<io::Error> for Error {
    fn from(err: io::Error) -> Error {
        Error::io("I/O error", err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_disk_is_its_own_kind() {
        let err = Error::io("saving", io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(err.kind(), ErrorKind::StorageFull);
        let err = Error::io("saving", io::Error::from_raw_os_error(libc::EACCES));
        assert_eq!(err.kind(), ErrorKind::Io);
    }

    #[test]
    fn display_keeps_the_cause() {
        let err = Error::io("saving x", io::Error::from_raw_os_error(libc::EIO));
        let text = err.to_string();
        assert!(text.starts_with("saving x: "), "{text}");
        assert!(err.source().is_some());
    }
}
