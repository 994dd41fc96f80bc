//! pso's own keys in a record: what pso keeps beside a handler's values.
//!
//! They all start with `pso.`, which a handler can neither set nor remove, so that a key a
//! visitor chooses cannot pose as one. They are ordinary values of the record (as Django keeps
//! `_auth_user_id` in the session dict), so the record format stays as it is.

/// The form tokens a session keeps.
pub(crate) const FORM_TOKENS: &str = "pso.form_tokens";
/// The user a session is signed in as.
pub(crate) const USER: &str = "pso.user";
/// When the session was signed in, in milliseconds since the Unix epoch.
pub(crate) const USER_SINCE: &str = "pso.user_since";
/// The deadlines of values set with `set_for`: key to Unix seconds.
pub(crate) const KEY_DEADLINES: &str = "pso.key_deadlines";
/// A session's own idle limit, in seconds, set by `set_idle_limit`.
pub(crate) const IDLE_LIMIT: &str = "pso.idle";
/// In the record an old id keeps after `regenerate_id()`: the id the session moved to.
pub(crate) const MOVED_TO: &str = "pso.moved_to";

/// In a user's record: for each name that leads to it, the time in milliseconds before which
/// every session signed in under that name is logged out. Its presence makes a record a user
/// record, which is never anyone's session.
pub(crate) const LOGGED_OUT_BEFORE: &str = "pso.logged_out_before";
/// In a user record rebuilt after it could not be read: a time before which every name that
/// leads to it is logged out.
pub(crate) const EVERY_USER_LOGGED_OUT_BEFORE: &str = "pso.every_user_logged_out_before";
/// Where the first format of a user record kept its one user's time.
pub(crate) const EARLIER_REVOKED_BEFORE: &str = "pso.revoked_before";

/// Whether `key` is one of pso's own: a handler cannot set or remove it.
pub(crate) fn is_reserved(key: &str) -> bool {
    key.starts_with("pso.")
}
