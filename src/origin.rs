//! Why a request holds the session it holds: a first visit, a returning one, a forced id, or a
//! new session because the one named has ended, and why it ended.

/// Why a request holds the session it holds: a handler can tell a first visit from a session
/// that timed out, and write an audit line for the latter.
///
/// ```
/// # let session = pso::Session::detached(std::time::SystemTime::now())?;
/// use pso::{Ended, Origin};
/// match session.origin() {
///     Origin::Replaced(Ended::Idle) => println!("your session timed out: log in again"),
///     Origin::Replaced(Ended::Lifetime) => println!("your session has ended: log in again"),
///     Origin::Returning => println!("welcome back"),
///     _ => println!("welcome"),
/// }
/// # Ok::<(), pso::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Origin {
    /// No session cookie came: a new visitor (or one that refuses cookies).
    New,
    /// The visitor's own session, from its cookie.
    Returning,
    /// The visitor's own session, reached through the id it had just before
    /// [`crate::Session::regenerate_id`] moved it (at sign-in, say): a request already under
    /// way, within `PSOSessionRegenerateGrace`, from the address that moved it. It is served
    /// the session to read, under the old id, and nothing more: any change is an error of kind
    /// [`crate::ErrorKind::OldId`], and no cookie goes out, since whoever holds an old id must
    /// neither learn the new one nor leave anything in the session for later.
    Moved,
    /// The id the server's configuration forces (a variable named like the service id).
    Forced,
    /// A new session, because the one the cookie named has ended, for this reason.
    Replaced(Ended),
}

/// Why the session a cookie named is no more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ended {
    /// Unused for longer than its idle limit (`PSOSessionIdle`; for a session that lasts until
    /// the browser closes, at most `PSOSessionGCMaxLifetime`).
    Idle,
    /// Past the end of its lifetime (`PSOSessionExpire`, or `expire()`).
    Lifetime,
    /// Unknown to the store: forged, collected long ago, or ended by a logout. Logged as
    /// suspicious: strict mode never adopts an id the server did not issue.
    Unknown,
    /// Its file could not be read (damaged, or written by an incompatible version).
    Unreadable,
    /// Its user logged out everywhere ([`crate::Session::log_out_everywhere`]) after it was
    /// signed in. Judged before anything else: such a session is logged out whatever else
    /// could be said of it, and its data goes to no one.
    LoggedOut,
    /// It belongs to another client address (`PSOSessionCheckIP`): not adopted, and left
    /// alone for its owner. Logged as suspicious.
    OtherAddress,
    /// The cookies named several live sessions, or more than pso checks (cookie tossing?):
    /// none was adopted, and they all ended.
    Ambiguous,
}

impl Ended {
    /// Which of two reasons a request that named several dead sessions gives: the one that
    /// matters most for the visitor (a logout everywhere, then an expiry), down to an id pso
    /// never knew.
    pub(crate) fn weight(self) -> u8 {
        match self {
            Ended::Ambiguous => 7,
            Ended::LoggedOut => 6,
            Ended::Idle | Ended::Lifetime => 5,
            Ended::Unreadable => 4,
            Ended::OtherAddress => 3,
            Ended::Unknown => 2,
        }
    }
}
