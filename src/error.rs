//! The crate's one error type: an [`ErrorKind`] to branch on, and the cause kept for the log.

use std::error::Error as StdError;
use std::fmt;
use std::io;

use rustix::io::Errno;

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
    /// The session lock was not free within `PSOSessionLockTimeout`, or a session kept
    /// changing while it was read without its lock.
    LockTimeout,
    /// The session ended while this request held it: another request ended it without
    /// waiting for the lock (the cookies of that request named several live sessions, so all
    /// of them had to end). Nothing this request saved after that counts; a 503.
    LockLost,
    /// The store could not be reached, or did not answer in time (a Redis or PostgreSQL
    /// server down, restarting, overloaded or failing over). Nothing was saved that was not
    /// acknowledged; a 503, and the next request tries again.
    Unavailable,
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
    /// The request came with the old id of a regenerated session (within its grace) and asked
    /// for what only the session's current id may do: a new id, another signed-in user, its
    /// own idle limit. A 409 unless the handler answers otherwise; the request changes nothing
    /// either way.
    OldId,
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
    /// An error of `kind` saying `message`, for a [`crate::store::Store`] written outside pso
    /// (or a handler) to report what pso reports: a busy session, a lost lock, an unreachable
    /// server.
    ///
    /// ```
    /// let err = pso::Error::new(pso::ErrorKind::Unavailable, "the sessions' server is down");
    /// assert_eq!(err.kind(), pso::ErrorKind::Unavailable);
    /// assert_eq!(err.to_string(), "the sessions' server is down");
    /// ```
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// An error of `kind` saying `message`, caused by `source` (kept for the log, which prints
    /// the chain on one line: see [`ErrorChain`]).
    ///
    /// ```
    /// use std::error::Error as _;
    /// let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
    /// let err = pso::Error::with_source(pso::ErrorKind::Unavailable, "connecting to the store", refused);
    /// assert!(err.source().is_some());
    /// assert!(pso::ErrorChain(&err).to_string().starts_with("connecting to the store: "));
    /// ```
    pub fn with_source(
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
            Some(code)
                if [Errno::NOSPC, Errno::DQUOT, Errno::ROFS]
                    .iter()
                    .any(|full| full.raw_os_error() == code) =>
            {
                ErrorKind::StorageFull
            }
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

/// This error's own message; the cause is [`StdError::source`], so that a reporter walking the
/// chain prints each cause once.
impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// An error and its causes on one line, `message: cause: cause`, for the log. Line ends and
/// other control characters in them (a server's error message is the server's text) are
/// escaped as Rust does (`\n`), so that no cause can start a log line of its own.
///
/// ```
/// use std::error::Error as _;
/// let err = pso::Expiry::parse("1/0").unwrap_err();
/// assert_eq!(pso::ErrorChain(&err).to_string(), err.to_string());
/// let io = std::io::Error::other(err);
/// assert!(pso::ErrorChain(&io).to_string().contains("division by zero"));
/// ```
pub struct ErrorChain<'a>(pub &'a (dyn StdError + 'a));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        one_line(f, self.0)?;
        let mut cause = self.0.source();
        while let Some(err) = cause {
            f.write_str(": ")?;
            one_line(f, err)?;
            cause = err.source();
        }
        Ok(())
    }
}

fn one_line(f: &mut fmt::Formatter<'_>, err: &dyn StdError) -> fmt::Result {
    let text = err.to_string();
    if !text.contains(char::is_control) {
        return f.write_str(&text);
    }
    for c in text.chars() {
        if c.is_control() {
            write!(f, "{}", c.escape_default())?;
        } else {
            write!(f, "{c}")?;
        }
    }
    Ok(())
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
    fn the_cause_is_the_source_and_printed_once() {
        let err = Error::io("saving x", io::Error::from_raw_os_error(libc::EIO));
        assert_eq!(err.to_string(), "saving x");
        assert!(err.source().is_some());
        let line = ErrorChain(&err).to_string();
        assert!(line.starts_with("saving x: "), "{line}");
        assert_eq!(line.matches("Input/output error").count(), 1, "{line}");
    }

    #[test]
    fn a_cause_from_outside_cannot_start_a_line() {
        let server = io::Error::other("bye\npso: error: forged\r");
        let err = Error::with_source(ErrorKind::Unavailable, "connecting", server);
        assert_eq!(
            ErrorChain(&err).to_string(),
            "connecting: bye\\npso: error: forged\\r"
        );
    }
}
