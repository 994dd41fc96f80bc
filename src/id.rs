//! Session ids and service ids: validated newtypes, so no unchecked string reaches a path or header.
//!
//! The only ways to get a [`SessionId`] are to generate one from the OS CSPRNG or to parse one
//! that matches the grammar exactly; the same holds for [`ServiceId`]. Both alphabets are
//! `[A-Za-z0-9_-]`, which is safe in a cookie, a URL and a file name, and contains neither `/`
//! nor `.`, so `..` and absolute paths cannot be spelled.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, ErrorKind, Result};

/// Random bytes in a generated id: 192 bits, well above the 128 that OWASP asks for.
const ID_RANDOM_BYTES: usize = 24;
/// Length of a generated id: the random bytes in lowercase hex.
pub(crate) const GENERATED_ID_LEN: usize = ID_RANDOM_BYTES * 2;
/// How the ids of pso's per-user records start; no other id may.
const USER_RECORD_PREFIX: &str = "user-";
/// Longest id or service id accepted from configuration.
const MAX_NAME_LEN: usize = 64;

/// A session id.
///
/// Generated ids are 48 lowercase hex digits (192 bits from the OS CSPRNG); lowercase only, so
/// two ids never name one file on a case-insensitive file system. A cookie value is a session id
/// only if it has exactly that form ([`SessionId::from_str`]). Ids forced by the server's own
/// configuration (`SetEnv MyService 007`, as pso had it) may be any 1 to 64 characters of
/// `[A-Za-z0-9_-]` ([`SessionId::forced`]).
///
/// ```
/// let id = pso::SessionId::generate()?;
/// assert_eq!(id.as_str().len(), 48);
/// assert_eq!(id.to_string().parse::<pso::SessionId>()?, id);
/// assert!("../../etc/passwd".parse::<pso::SessionId>().is_err());
/// assert!(pso::SessionId::forced("007").is_ok());
/// # Ok::<(), pso::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(String);

impl SessionId {
    /// A fresh id from the OS CSPRNG (`getrandom`: `getrandom(2)` on Linux, fork-safe).
    pub fn generate() -> Result<SessionId> {
        let mut bytes = [0u8; ID_RANDOM_BYTES];
        getrandom::fill(&mut bytes).map_err(|e| {
            Error::new(
                ErrorKind::Io,
                format!("the OS random number generator failed: {e}"),
            )
        })?;
        let mut text = String::with_capacity(GENERATED_ID_LEN);
        for byte in bytes {
            text.push(hex_digit(byte >> 4));
            text.push(hex_digit(byte & 0xf));
        }
        Ok(SessionId(text))
    }

    /// Whether this id has the form pso generates (48 lowercase hex digits): a visitor's
    /// session, disposable when damaged. Ids of other forms are records kept on purpose (an id
    /// the server forces, a user's "log out everywhere" record).
    ///
    /// ```
    /// assert!(pso::SessionId::generate()?.is_generated());
    /// assert!(!pso::SessionId::forced("007")?.is_generated());
    /// # Ok::<(), pso::Error>(())
    /// ```
    pub fn is_generated(&self) -> bool {
        self.0.parse::<SessionId>().is_ok()
    }

    /// An id chosen by the server's configuration: 1 to 64 characters of `[A-Za-z0-9_-]`, not
    /// starting with `user-` in any case (the ids of pso's per-user "log out everywhere"
    /// records), and not of the form of a generated id.
    ///
    /// ```
    /// assert!(pso::SessionId::forced("007").is_ok());
    /// assert!(pso::SessionId::forced("user-539195603a6bed0f").is_err());
    /// assert!(pso::SessionId::forced("USER-539195603a6bed0f").is_err());
    /// let generated = pso::SessionId::generate()?;
    /// assert!(pso::SessionId::forced(generated.as_str()).is_err());
    /// assert!(pso::SessionId::forced(&generated.as_str().to_uppercase()).is_err());
    /// assert!(pso::SessionId::forced("../etc").is_err());
    /// # Ok::<(), pso::Error>(())
    /// ```
    pub fn forced(text: &str) -> Result<SessionId> {
        let prefix = text.get(..USER_RECORD_PREFIX.len());
        if prefix.is_some_and(|prefix| prefix.eq_ignore_ascii_case(USER_RECORD_PREFIX)) {
            return Err(Error::new(
                ErrorKind::Invalid,
                "a forced session id cannot start with user- (pso's own records use those ids)",
            ));
        }
        if text.len() == GENERATED_ID_LEN && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            // A cookie could name it from any script of the service, and collection would take
            // a damaged one for a visitor's.
            return Err(Error::new(
                ErrorKind::Invalid,
                "a forced session id cannot look like a generated one (48 lowercase hex digits)",
            ));
        }
        SessionId::named(text)
    }

    /// Any id a store may hold under a name: 1 to 64 characters of `[A-Za-z0-9_-]` (a
    /// generated id, a forced one, a user record's). For tools that read a store's names.
    pub fn named(text: &str) -> Result<SessionId> {
        if is_safe_name(text) {
            Ok(SessionId(text.to_owned()))
        } else {
            Err(Error::new(
                ErrorKind::Invalid,
                "a session id must be 1 to 64 characters of A-Z a-z 0-9 _ -",
            ))
        }
    }

    /// The id of the record that keeps "log out everywhere" times for the user names whose
    /// hash is `hash`.
    pub(crate) fn user_record(hash: u64) -> SessionId {
        SessionId(format!("{USER_RECORD_PREFIX}{hash:016x}"))
    }

    /// Whether this is the id of a user record (what [`SessionId::user_record`] makes).
    pub(crate) fn is_user_record(&self) -> bool {
        self.0.starts_with(USER_RECORD_PREFIX)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A prefix that identifies the id in a log line without giving it away.
    ///
    /// ```
    /// let id: pso::SessionId = "0123456789abcdef0123456789abcdef0123456789abcdef".parse()?;
    /// assert_eq!(id.short(), "012345...");
    /// # Ok::<(), pso::Error>(())
    /// ```
    pub fn short(&self) -> String {
        let prefix: String = self.0.chars().take(6).collect();
        if prefix.len() < self.0.len() {
            // ASCII: log lines are, and Apache would escape anything else.
            format!("{prefix}...")
        } else {
            prefix
        }
    }
}

/// Parses an id of the generated form only: what a cookie may carry.
impl FromStr for SessionId {
    type Err = Error;

    fn from_str(text: &str) -> Result<SessionId> {
        if text.len() == GENERATED_ID_LEN
            && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            Ok(SessionId(text.to_owned()))
        } else {
            Err(Error::new(
                ErrorKind::Invalid,
                "a session id is 48 lowercase hex digits",
            ))
        }
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Ids are secrets: `Debug` shows only their prefix, so a `{:?}` in a log leaks nothing.
impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({})", self.short())
    }
}

/// The service id (`PSOServiceId`): names the session cookie and the session namespace.
///
/// 1 to 64 characters of `[A-Za-z0-9_-]`: a valid cookie name, and safe in a file name.
///
/// ```
/// let service: pso::ServiceId = "reload".parse()?;
/// assert_eq!(service.as_str(), "reload");
/// assert!("my service".parse::<pso::ServiceId>().is_err());
/// assert!("a/../b".parse::<pso::ServiceId>().is_err());
/// # Ok::<(), pso::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId(String);

impl ServiceId {
    /// `pso`: the service id when neither `PSOServiceId` nor a usable script name gives one.
    pub(crate) fn fallback() -> ServiceId {
        ServiceId(String::from("pso"))
    }

    /// The service id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ServiceId {
    type Err = Error;

    fn from_str(text: &str) -> Result<ServiceId> {
        if is_safe_name(text) {
            Ok(ServiceId(text.to_owned()))
        } else {
            Err(Error::new(
                ErrorKind::Invalid,
                "a service id must be 1 to 64 characters of A-Z a-z 0-9 _ -",
            ))
        }
    }
}

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_safe_name(text: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn hex_digit(nibble: u8) -> char {
    char::from(b"0123456789abcdef"[usize::from(nibble & 0xf)])
}

/// Whether two secrets (tokens, passwords) are equal, in time that depends only on their
/// lengths, so that how long a comparison takes tells nothing of how close a guess came.
///
/// ```
/// assert!(pso::same_secret(b"493817", b"493817"));
/// assert!(!pso::same_secret(b"493817", b"493818"));
/// assert!(!pso::same_secret(b"4938", b"493817"));
/// ```
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const VALID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn cookie_ids_must_match_the_grammar_exactly() {
        let cases: &[(&str, bool)] = &[
            (VALID, true),
            ("", false),
            ("../../etc/passwd", false),
            (&VALID[1..], false),
            (&format!("{VALID}0"), false),
            ("0123456789ABCDEF0123456789abcdef0123456789abcdef", false),
            ("0123456789abcdef0123456789abcdef0123456789abcde/", false),
            ("0123456789abcdef0123456789abcdef0123456789abcd\0e", false),
            ("0123456789abcdef0123456789abcdef0123456789abcdé", false),
            ("007", false),
        ];
        for (text, ok) in cases {
            assert_eq!(text.parse::<SessionId>().is_ok(), *ok, "{text:?}");
        }
    }

    #[test]
    fn forced_ids_are_a_safe_charset() {
        for ok in ["007", "a", "A-b_c", &"x".repeat(64)] {
            assert!(SessionId::forced(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a.b", "a b", &"x".repeat(65), "a\nb"] {
            assert!(SessionId::forced(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn generated_ids_differ_and_round_trip() {
        let a = SessionId::generate().unwrap();
        let b = SessionId::generate().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.as_str().parse::<SessionId>().unwrap(), a);
        assert!(!format!("{a:?}").contains(a.as_str()));
    }

    proptest! {
        #[test]
        fn parsing_never_panics_and_accepts_only_safe_text(text in ".{0,80}") {
            if let Ok(id) = text.parse::<SessionId>() {
                prop_assert_eq!(id.as_str(), text.as_str());
                prop_assert!(!text.contains('/') && !text.contains('.'));
            }
            if let Ok(service) = text.parse::<ServiceId>() {
                prop_assert_eq!(service.to_string(), text.clone());
                prop_assert!(!text.contains('/') && !text.contains('.'));
            }
        }

        #[test]
        fn hex_ids_round_trip(bytes in proptest::array::uniform24(any::<u8>())) {
            let text: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let id: SessionId = text.parse().unwrap();
            prop_assert_eq!(id.to_string(), text);
        }
    }
}
