//! The session a handler sees: typed values, expiry control, explicit save and revert.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, ErrorKind, Result};
use crate::expiry::{Expiry, from_unix_secs, unix_secs};
use crate::form_token::{COOKIE_TOKEN_LEN, FormCookie, FormCookieChange};
use crate::id::{GENERATED_ID_LEN, ServiceId, SessionId, same_secret};
use crate::record::{Checkpoint, Meta, Record};
use crate::store::{LockOptions, LockedSession};

/// An unchanged session is rewritten only to record its last access, and at most this often.
const ACCESS_RESOLUTION: u64 = 60;
/// Where a session keeps its form tokens; keys that start with `pso.` are pso's own.
const FORM_TOKENS: &str = "pso.form_tokens";
/// The user a session is signed in as, and since when (Unix seconds).
pub(crate) const USER: &str = "pso.user";
pub(crate) const USER_SINCE: &str = "pso.user_since";
/// In a user's own record: for each user whose name leads to that record (names can share
/// one, the id is a 64-bit hash), the time in milliseconds before which every session signed
/// in as that user is logged out.
pub(crate) const USER_RECORD: &str = "pso.logged_out_before";
/// In a user record rebuilt after it could not be read: a time before which every user whose
/// name leads to it is logged out.
const EVERY_USER_LOGGED_OUT_BEFORE: &str = "pso.every_user_logged_out_before";
/// Where the first format of a user record kept its one user's time.
const EARLIER_REVOKED_BEFORE: &str = "pso.revoked_before";
/// The deadlines of values set with `set_for`: key to Unix seconds.
const KEY_DEADLINES: &str = "pso.key_deadlines";
/// A session's own idle limit, in seconds, set by `set_idle_limit`.
const IDLE_LIMIT: &str = "pso.idle";
/// In the record an old id keeps after `regenerate_id()`: the id the session moved to.
pub(crate) const MOVED_TO: &str = "pso.moved_to";
/// Form tokens kept per session: the newest, so that a user with many forms open still posts
/// the recent ones, and a session cannot grow without bound.
const MAX_FORM_TOKENS: usize = 16;

/// One visitor's session, locked for the duration of the request.
///
/// Values are any serde type, each stored under a string key; values of different types
/// coexist. The session is saved when the handler returns `Ok` and discarded when it fails.
///
/// ```
/// # let mut session = pso::Session::detached(std::time::SystemTime::now())?;
/// let n: u64 = session.get("reloads")?.unwrap_or(0) + 1;
/// session.set("reloads", &n)?;
/// session.set("name", "Eggs")?;
/// assert_eq!(session.get::<String>("name")?.as_deref(), Some("Eggs"));
/// assert!(session.get::<u64>("name").is_err(), "a value read as the wrong type is an error");
/// assert_eq!(session.keys().collect::<Vec<_>>(), ["name", "reloads"]);
/// # Ok::<(), pso::Error>(())
/// ```
pub struct Session {
    lock: Box<dyn LockedSession>,
    record: Record,
    /// What the store holds for this session (as loaded, or as last saved), as a checkpoint of
    /// `record`: the values themselves are not copied. `None` while the store holds nothing.
    stored: Option<Checkpoint>,
    /// The session as loaded, and whether this request has saved it since: a request refused
    /// for coming with an old id puts it back as it was.
    loaded: Option<Checkpoint>,
    saved: bool,
    /// The session's own idle limit as loaded: an old id's request may not end up looser.
    loaded_idle: Option<u64>,
    new: bool,
    /// Deleted in this request: the id is dead and must not be saved again.
    ended: bool,
    now: u64,
    /// The same instant in milliseconds: sign-in and "log out everywhere" times, which
    /// must order events of the same second.
    now_millis: u64,
    idle: Rules,
    origin: Origin,
    /// The data of the expired session this one replaces, until the handler takes it.
    expired: Option<Record>,
    /// Set by `release()`: the cookie decided then, and the session as it was then.
    released: Option<(CookieAction, Checkpoint)>,
    /// After `regenerate_id()`: the old id's lock, until the session is saved under the new
    /// id; only then does the old id become a forward (or go). A request that fails before
    /// leaves the old id as it was.
    old_lock: Option<Box<dyn LockedSession>>,
    /// The client address of this request (`REMOTE_ADDR`).
    request_addr: Option<String>,
    /// Reached through this old id of a regenerated session, in its grace: served, but never
    /// handed the new id (whoever holds an old id must not learn the new one), which is also
    /// why `id()` answers this one.
    arrived_as: Option<SessionId>,
    /// The server's configuration forces this session's id: it cannot get another.
    forced: bool,
    /// The response head is out: no cookie can change any more.
    head_sent: bool,
    /// The form cookie: tokens for a visitor the store holds nothing for.
    form: FormCookie,
}

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
    /// Its user logged out everywhere ([`Session::log_out_everywhere`]) after it was signed
    /// in.
    LoggedOut,
    /// It belongs to another client address (`PSOSessionCheckIP`): not adopted, and left
    /// alone for its owner. Logged as suspicious.
    OtherAddress,
    /// The cookies named several live sessions, or more than pso checks (cookie tossing?):
    /// none was adopted, and they all ended.
    Ambiguous,
}

/// The configuration a session lives by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Rules {
    /// `PSOSessionIdle`, in seconds.
    pub limit: Option<u64>,
    /// `PSOSessionGCMaxLifetime`, in seconds: the idle limit of a browser-close session.
    pub browser_close: u64,
    /// `PSOSessionLazy`: a session without values is not stored, and one emptied is deleted.
    pub lazy: bool,
    /// `PSOSessionRegenerateGrace`, in seconds.
    pub grace: u64,
    /// `PSOSessionCheckIP`.
    pub check_ip: bool,
}

impl Rules {
    /// The rules of a configuration.
    pub fn of(config: &crate::config::Config) -> Rules {
        Rules {
            limit: config.idle.map(|idle| idle.as_secs()),
            browser_close: config.gc_max_lifetime.as_secs(),
            lazy: config.lazy,
            grace: config.regenerate_grace.as_secs(),
            check_ip: config.check_ip,
        }
    }

    /// The idle limit stored with a session of this `deadline`, and of its own limit if it
    /// has one (never longer than the configured one).
    fn max_idle(self, deadline: Option<u64>, own: Option<u64>) -> Option<u64> {
        let limit = match (self.limit, own) {
            (Some(configured), Some(own)) => Some(configured.min(own)),
            (configured, own) => configured.or(own),
        };
        match (limit, deadline) {
            (Some(limit), None) => Some(limit.min(self.browser_close)),
            (Some(limit), Some(_)) => Some(limit),
            (None, None) => Some(self.browser_close),
            (None, Some(_)) => None,
        }
    }

    /// Why `meta` is no longer alive at `now`, if it is not: past its deadline, or unused for
    /// longer than its stored idle limit or the configured one (a limit lowered since the
    /// session was saved applies at once). A last access in the future counts as now.
    pub fn ended(self, meta: &Meta, now: u64) -> Option<Ended> {
        if meta.deadline.is_some_and(|deadline| now >= deadline) {
            return Some(Ended::Lifetime);
        }
        let unused = now.saturating_sub(meta.last_access);
        let limit = match (meta.max_idle, self.limit) {
            (Some(stored), Some(configured)) => Some(stored.min(configured)),
            (stored, configured) => stored.or(configured),
        };
        limit.filter(|&limit| unused > limit).map(|_| Ended::Idle)
    }
}

/// What the response must tell the client about its session cookie.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CookieAction {
    /// Hand out (or refresh) the cookie for this id, valid until the deadline.
    Set(SessionId, Option<SystemTime>),
    /// Make the client drop its cookie.
    Revoke,
    /// Nothing was stored, so there is no cookie to send.
    Nothing,
}

impl Session {
    /// A session the store already holds, as loaded under its lock.
    pub(crate) fn existing(
        lock: Box<dyn LockedSession>,
        record: Record,
        now: SystemTime,
        idle: Rules,
        origin: Origin,
    ) -> Session {
        let mut session = Session::assemble(lock, record, true, now, idle, origin);
        session.drop_expired_values();
        session
    }

    /// A session of `record` under `lock`, as the store holds it (`stored`) or new.
    fn assemble(
        lock: Box<dyn LockedSession>,
        record: Record,
        stored: bool,
        now: SystemTime,
        idle: Rules,
        origin: Origin,
    ) -> Session {
        Session {
            lock,
            stored: stored.then(|| record.checkpoint()),
            loaded: stored.then(|| record.checkpoint()),
            saved: false,
            loaded_idle: record.get(IDLE_LIMIT).ok().flatten(),
            record,
            new: !stored,
            ended: false,
            now: unix_secs(now),
            now_millis: unix_millis(now),
            idle,
            origin,
            expired: None,
            released: None,
            old_lock: None,
            request_addr: None,
            arrived_as: None,
            forced: false,
            head_sent: false,
            form: FormCookie::default(),
        }
    }

    /// Removes the values set with [`Session::set_for`] whose time is up.
    fn drop_expired_values(&mut self) {
        let Ok(Some(mut deadlines)) = self.record.get::<BTreeMap<String, u64>>(KEY_DEADLINES)
        else {
            return;
        };
        let now = self.now;
        let before = deadlines.len();
        deadlines.retain(|key, deadline| {
            let alive = *deadline > now;
            if !alive {
                self.record.remove(key);
            }
            alive
        });
        if deadlines.len() == before {
            return;
        }
        if deadlines.is_empty() || self.record.set(KEY_DEADLINES, &deadlines).is_err() {
            self.record.remove(KEY_DEADLINES);
        }
    }

    /// Forgets the deadline of `key`, if it had one.
    fn forget_deadline(&mut self, key: &str) -> Result<()> {
        if !self.record.contains(KEY_DEADLINES) {
            return Ok(());
        }
        let mut deadlines: BTreeMap<String, u64> =
            self.record.get(KEY_DEADLINES)?.unwrap_or_default();
        if deadlines.remove(key).is_some() {
            if deadlines.is_empty() {
                self.record.remove(KEY_DEADLINES);
            } else {
                self.record.set(KEY_DEADLINES, &deadlines)?;
            }
        }
        Ok(())
    }

    /// Stores `value` under `key` for `lifetime` only (CGI::Session's `expire(param, time)`):
    /// from the first request after that, the key is gone. A one-time code, a notice shown
    /// until it is read or stale.
    ///
    /// ```
    /// # let mut session = pso::Session::detached(std::time::SystemTime::now())?;
    /// use std::time::Duration;
    /// session.set_for("code", "493817", Duration::from_secs(10 * 60))?;
    /// assert_eq!(session.get::<String>("code")?.as_deref(), Some("493817"));
    /// # Ok::<(), pso::Error>(())
    /// ```
    pub fn set_for<T: Serialize + ?Sized>(
        &mut self,
        key: &str,
        value: &T,
        lifetime: Duration,
    ) -> Result<()> {
        self.set(key, value)?;
        let mut deadlines: BTreeMap<String, u64> =
            self.record.get(KEY_DEADLINES)?.unwrap_or_default();
        deadlines.insert(key.to_owned(), self.now.saturating_add(lifetime.as_secs()));
        self.record.set(KEY_DEADLINES, &deadlines)
    }

    /// A new, empty session expiring per `lifetime`.
    pub(crate) fn fresh(
        lock: Box<dyn LockedSession>,
        now: SystemTime,
        lifetime: Expiry,
        client_addr: Option<&str>,
        idle: Rules,
    ) -> Session {
        let mut meta = Meta::new(unix_secs(now));
        meta.deadline = lifetime.deadline(now).map(unix_secs);
        meta.client_addr = client_addr.map(str::to_owned);
        Session::assemble(lock, Record::new(meta), false, now, idle, Origin::New)
    }

    /// The session of a read-only request: `record` as read without the lock (none for a new
    /// visitor), released from the start, so that reading works and any change is an error.
    pub(crate) fn read_only(
        key: crate::store::SessionKey,
        record: Option<Record>,
        now: SystemTime,
        idle: Rules,
        origin: Origin,
        arrived_as: Option<SessionId>,
    ) -> Session {
        let known = record.is_some();
        let forwarded = arrived_as.is_some();
        let record = record.unwrap_or_else(|| Record::new(Meta::new(unix_secs(now))));
        // The cookie is sent again as it was (never the new id through a forward): a reading
        // request renews nothing.
        let action = if known && !forwarded {
            CookieAction::Set(key.id.clone(), record.meta.deadline.map(from_unix_secs))
        } else {
            CookieAction::Nothing
        };
        let checkpoint = record.checkpoint();
        let mut session =
            Session::assemble(Box::new(Released(key)), record, known, now, idle, origin);
        session.released = Some((action, checkpoint));
        session.arrived_as = arrived_as;
        session
    }

    /// Records the request's client address (kept in the forward a regenerated id leaves).
    pub(crate) fn requested_from(mut self, addr: Option<&str>) -> Session {
        self.request_addr = addr.map(str::to_owned);
        self
    }

    /// Gives the session the request's form cookie.
    pub(crate) fn with_form_cookie(mut self, form: FormCookie) -> Session {
        self.form = form;
        self
    }

    /// What the response must say about the form cookie, if anything.
    pub(crate) fn form_cookie_change(&self) -> Option<FormCookieChange> {
        self.form.change()
    }

    /// The response head goes out now: the cookies it carries are final.
    pub(crate) fn head_sent(&mut self) {
        self.head_sent = true;
    }

    /// Marks a session reached through `old`, the old id of a regenerated session.
    pub(crate) fn forwarded(mut self, old: SessionId) -> Session {
        self.arrived_as = Some(old);
        self
    }

    /// Marks a session whose id the server's configuration forces.
    pub(crate) fn forced(mut self) -> Session {
        self.forced = true;
        self
    }

    /// Marks a new session that takes the place of a record the store holds under the same
    /// (forced) id, expired or logged out: saving it overwrites that record, and if it ends
    /// up without values, that record is deleted.
    pub(crate) fn over_stored(mut self) -> Session {
        self.stored = Some(self.record.checkpoint());
        self
    }

    /// Says why this new session exists, with the data of the expired one it replaces.
    pub(crate) fn replacing(mut self, origin: Origin, expired: Option<Record>) -> Session {
        self.origin = origin;
        self.expired = expired;
        self
    }

    /// Moves the session to a new id, keeping its data, and sends the new id's cookie: call it
    /// at login and at every change of privilege (PHP's `session_regenerate_id(true)`,
    /// Django's `cycle_key`), so that an id someone learnt before (fixation) is worth nothing
    /// after. The old id is not deleted at once: for `PSOSessionRegenerateGrace` (5 seconds by
    /// default) it still leads to this session, and only to it, so that requests already
    /// under way on a slow connection are not dropped; then it is dead.
    ///
    /// ```
    /// # let mut session = pso::Session::detached(std::time::SystemTime::now())?;
    /// session.set("user", "eggs")?;
    /// let before = session.id().clone();
    /// session.regenerate_id()?;
    /// assert_ne!(session.id(), &before);
    /// assert_eq!(session.get::<String>("user")?.as_deref(), Some("eggs"));
    /// # Ok::<(), pso::Error>(())
    /// ```
    ///
    /// The move is made when the session is saved (at the end of a successful request, or by
    /// [`Session::save`]): a request that fails leaves the old id as it was. Form tokens
    /// issued before are void. A request still carrying the old id during the grace, from the
    /// address that signed in, is served this session but never handed the new id; for it,
    /// this call (and [`Session::set_user`], [`Session::set_idle_limit`]) is an error of kind
    /// [`ErrorKind::OldId`], a 409, after which the request changes nothing. It is an error
    /// too once the response head is out ([`crate::Context::stream`]), and for an id the
    /// server forces.
    pub fn regenerate_id(&mut self) -> Result<()> {
        self.check_held()?;
        // Moving the session again would hand whoever holds the old id the newest one; going
        // on as if it had moved would let them sign the owner's session in as someone else.
        self.check_current_id("regenerate_id()")?;
        if self.forced {
            return Err(Error::new(
                ErrorKind::Invalid,
                "the server's configuration forces this session's id: it cannot get another",
            ));
        }
        if self.head_sent {
            // The new id's cookie could not reach the client, and the session would be lost
            // with the old id's grace.
            return Err(Error::new(
                ErrorKind::Invalid,
                "the response head is out (stream()): a new id could no longer reach the client",
            ));
        }
        if self.ended {
            return Err(Error::new(
                ErrorKind::Invalid,
                "a session that ended in this request cannot get a new id",
            ));
        }
        if self.old_lock.is_some() {
            // The first new id is not stored yet: it simply gives way to another one.
            self.lock.delete().ok();
        }
        let options = LockOptions::new(Duration::from_secs(1)).with_create(true);
        let new_lock = self.lock.lock_sibling(SessionId::generate()?, options)?;
        let old_lock = std::mem::replace(&mut self.lock, new_lock);
        // Tokens issued to the old id (perhaps to whoever planted it) are void, and so are
        // those of the form cookie (perhaps tossed in by someone who can set cookies).
        self.record.remove(FORM_TOKENS);
        self.form.void();
        if self.stored.take().is_some() && self.old_lock.is_none() {
            self.old_lock = Some(old_lock);
        }
        Ok(())
    }

    /// After a regenerated session is saved under its new id: the old id becomes a forward
    /// for the grace period, from this request's address only, or goes at once.
    fn finish_move(&mut self) -> Result<()> {
        let Some(mut old) = self.old_lock.take() else {
            return Ok(());
        };
        if self.idle.grace == 0 {
            return old.delete();
        }
        let mut forward = Record::new(Meta::new(self.now));
        forward.meta.deadline = Some(self.now.saturating_add(self.idle.grace));
        forward.meta.client_addr = self.request_addr.clone();
        forward.set(MOVED_TO, self.lock.key().id.as_str())?;
        old.save(&forward)
    }

    /// Names the user this session is signed in as (at login, after
    /// [`Session::regenerate_id`]), so that [`Session::log_out_everywhere`] can end every
    /// session of that user at once.
    pub fn set_user(&mut self, user: &str) -> Result<()> {
        let now = self.now_millis;
        self.check_held()?;
        self.check_current_id("set_user()")?;
        self.record.set(USER, user)?;
        self.record.set(USER_SINCE, &now)
    }

    /// The user this session is signed in as, if [`Session::set_user`] named one.
    pub fn user(&self) -> Option<String> {
        self.record.get(USER).ok().flatten()
    }

    /// Logs the signed-in user out everywhere ("log out everywhere", after a password change):
    /// every session signed in as this user before now ends at its next request
    /// ([`Ended::LoggedOut`]), this one at the end of this request. The store keeps one small
    /// record per user for it, so nothing is scanned, and nothing needs cleaning when
    /// sessions expire or are collected. Times are in milliseconds: a session signed in in the
    /// same millisecond as the call ends too.
    ///
    /// ```
    /// # let mut session = pso::Session::detached(std::time::SystemTime::now())?;
    /// session.set_user("eggs")?;
    /// session.log_out_everywhere()?;
    /// assert_eq!(session.expiry(), pso::Expiry::Now);
    /// # Ok::<(), pso::Error>(())
    /// ```
    pub fn log_out_everywhere(&mut self) -> Result<()> {
        self.check_held()?;
        let Some(user) = self.user() else {
            return Err(Error::new(
                ErrorKind::Invalid,
                "log_out_everywhere() needs a session signed in with set_user()",
            ));
        };
        let options = LockOptions::new(Duration::from_secs(5)).with_create(true);
        let mut lock = self.lock.lock_sibling(user_record_id(&user), options)?;
        note_logged_out(&mut *lock, &user, self.now, self.now_millis)?;
        drop(lock);
        self.expire(Expiry::Now)
    }

    /// Gives this session an idle limit of its own, shorter than `PSOSessionIdle` (which still
    /// caps it): a signed-in user's session that should time out sooner than a visitor's, say.
    /// `None` goes back to the configured limit. Kept with the session.
    ///
    /// ```
    /// # let mut session = pso::Session::detached(std::time::SystemTime::now())?;
    /// session.set_idle_limit(Some(std::time::Duration::from_secs(5 * 60)))?;
    /// # Ok::<(), pso::Error>(())
    /// ```
    pub fn set_idle_limit(&mut self, limit: Option<Duration>) -> Result<()> {
        self.check_held()?;
        let current: Option<u64> = self.record.get(IDLE_LIMIT).ok().flatten();
        let strictest = current.into_iter().chain(self.loaded_idle).min();
        let looser = match (limit, strictest) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(limit), Some(current)) => limit.as_secs() > current,
        };
        if looser {
            // Whoever holds an old id may not let the owner's session live longer.
            self.check_current_id("set_idle_limit() to a longer limit")?;
        }
        match limit {
            Some(limit) => self.record.set(IDLE_LIMIT, &limit.as_secs()),
            None => {
                self.record.remove(IDLE_LIMIT);
                Ok(())
            }
        }
    }

    /// A new form token: a random value kept in the session (the newest 16), to put in a
    /// hidden field of a form that changes something, so that a post forged by another site,
    /// which cannot read the form, is refused (CSRF). Check it with
    /// [`Session::take_form_token`].
    ///
    /// A visitor the store holds nothing for, and whose session has no values yet (a sign-in
    /// page's visitor, with `PSOSessionLazy` on), is not given a stored session for it: the
    /// token is tied to a random secret in a cookie of its own (`<cookie name>.form`,
    /// `__Host-` under HTTPS, `SameSite=Strict`), so that a page fetched a million times
    /// leaves nothing in the store. The same goes for a session that ends in this request (a
    /// sign-out page that shows the sign-in form). Such a token is accepted only from a
    /// request the browser says comes from the site itself (`Sec-Fetch-Site`, or `Origin`
    /// against `Host`). Nothing stored remembers it, so it is not used up: it is good until
    /// `regenerate_id()` (sign-in) voids the secret, or the browser closes.
    ///
    /// ```
    /// # let mut session = pso::Session::detached(std::time::SystemTime::now())?;
    /// session.set("cart", &["spam"])?; // a session with values keeps its tokens itself
    /// let token = session.create_form_token()?;
    /// let form = format!(r#"<input type="hidden" name="token" value="{token}">"#);
    /// // ... and when the form comes back:
    /// assert!(session.take_form_token(&token)?);
    /// assert!(!session.take_form_token(&token)?, "a token works once");
    /// assert!(!session.take_form_token("forged")?);
    /// # Ok::<(), pso::Error>(())
    /// ```
    pub fn create_form_token(&mut self) -> Result<String> {
        // Nothing stored, nothing to store (a stored session only for a token is what the form
        // cookie avoids), or a session that ends in this request (a sign-out page with a
        // sign-in form): the form cookie keeps the secret. That needs no lock, so it works
        // after release() and in read-only requests too.
        let nothing_to_store = self.idle.lazy && self.holds_nothing();
        if nothing_to_store || self.ended || self.ends_now() {
            return self.form.token(self.head_sent);
        }
        self.check_held()?;
        let token = SessionId::generate()?.as_str().to_owned();
        let mut tokens: Vec<String> = self.record.get(FORM_TOKENS)?.unwrap_or_default();
        tokens.push(token.clone());
        let excess = tokens.len().saturating_sub(MAX_FORM_TOKENS);
        tokens.drain(..excess);
        self.record.set(FORM_TOKENS, &tokens)?;
        Ok(token)
    }

    /// Whether `token` is one this session issued and has not taken yet; taking it uses it up.
    /// Every kept token is compared in full, so the time taken tells nothing of how close a
    /// guess came. A token tied to the form cookie (see [`Session::create_form_token`]) is
    /// good if it masks the secret the request's form cookie holds and the browser says the
    /// request comes from the site itself.
    pub fn take_form_token(&mut self, token: &str) -> Result<bool> {
        if token.len() == COOKIE_TOKEN_LEN {
            return Ok(self.form.take(token));
        }
        if token.len() != GENERATED_ID_LEN {
            // Neither kind: refused, whatever state the session is in.
            return Ok(false);
        }
        self.check_held()?;
        let mut tokens: Vec<String> = self.record.get(FORM_TOKENS)?.unwrap_or_default();
        let mut found = None;
        for (index, kept) in tokens.iter().enumerate() {
            if same_secret(kept.as_bytes(), token.as_bytes()) {
                found = Some(index);
            }
        }
        let Some(index) = found else {
            return Ok(false);
        };
        tokens.remove(index);
        if tokens.is_empty() {
            self.record.remove(FORM_TOKENS);
        } else {
            self.record.set(FORM_TOKENS, &tokens)?;
        }
        Ok(true)
    }

    /// Why the request holds this session: see [`Origin`].
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// The data of the session that expired (by idleness or lifetime) and that this one
    /// replaces, once: the first call takes it, and it is gone from the store already. For an
    /// audit line ("user eggs timed out after 5 minutes"), never to carry on the old session.
    ///
    /// ```
    /// # let mut session = pso::Session::detached(std::time::SystemTime::now())?;
    /// if let Some(old) = session.take_expired() {
    ///     let user: Option<String> = old.get("user")?;
    ///     eprintln!("session of {user:?} expired; last used at {}", old.meta.last_access);
    /// }
    /// assert!(session.take_expired().is_none());
    /// # Ok::<(), pso::Error>(())
    /// ```
    pub fn take_expired(&mut self) -> Option<Record> {
        self.expired.take()
    }

    /// A new session in a private in-memory store: for examples and tests of handlers.
    pub fn detached(now: SystemTime) -> Result<Session> {
        use crate::store::{LockOptions, MemoryStore, SessionKey, Store};
        let key = SessionKey::new(ServiceId::fallback(), SessionId::generate()?);
        let lock = MemoryStore::new().lock(&key, LockOptions::new(Duration::ZERO))?;
        Ok(Session::fresh(
            lock,
            now,
            Expiry::BrowserClose,
            None,
            Rules {
                limit: None,
                browser_close: 86_400,
                lazy: true,
                grace: 5,
                check_ip: false,
            },
        ))
    }

    /// The session id (a secret: do not log it whole, see [`SessionId::short`]). For a request
    /// that came with the old id of a regenerated session, within its grace, the old id: its
    /// holder must never learn the new one.
    pub fn id(&self) -> &SessionId {
        self.arrived_as.as_ref().unwrap_or(&self.lock.key().id)
    }

    /// The service this session belongs to.
    pub fn service(&self) -> &ServiceId {
        &self.lock.key().service
    }

    /// Whether this request started the session (no valid session came with it).
    pub fn is_new(&self) -> bool {
        self.new
    }

    /// When the session was created.
    pub fn created(&self) -> SystemTime {
        from_unix_secs(self.record.meta.created)
    }

    /// When a request last used the session before this one (to within a minute).
    pub fn last_access(&self) -> SystemTime {
        from_unix_secs(self.record.meta.last_access)
    }

    /// The client's address when the session was created.
    pub fn client_addr(&self) -> Option<&str> {
        self.record.meta.client_addr.as_deref()
    }

    /// The value under `key` as a `T`; `None` if there is none.
    ///
    /// A value stored as another type is an error of kind [`crate::ErrorKind::Decode`], not a
    /// panic (types with the same encoding, such as `u32` and `u64`, read each other).
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        self.record.get(key)
    }

    /// Stores `value` under `key`.
    pub fn set<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<()> {
        self.check_held()?;
        if is_reserved(key) {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!("the key {key:?} is pso's own (keys that start with pso. are reserved)"),
            ));
        }
        self.forget_deadline(key)?;
        self.record.set(key, value)
    }

    /// Removes `key`; returns whether it was there. An error once the session was released.
    ///
    /// ```
    /// # let mut session = pso::Session::detached(std::time::SystemTime::now())?;
    /// session.set("flash", "saved")?;
    /// assert!(session.remove("flash")?);
    /// assert!(!session.remove("flash")?);
    /// # Ok::<(), pso::Error>(())
    /// ```
    pub fn remove(&mut self, key: &str) -> Result<bool> {
        self.check_held()?;
        if is_reserved(key) {
            return Ok(false);
        }
        // A deadline that cannot be read goes with its key.
        if self.forget_deadline(key).is_err() {
            self.record.remove(KEY_DEADLINES);
        }
        Ok(self.record.remove(key))
    }

    /// Removes every value, pso's own with them (the signed-in user, form tokens): as with
    /// PHP's `$_SESSION = []`, a session emptied this way is deleted at the end of the request
    /// and its cookie revoked (`PSOSessionLazy`), which signs the visitor out. An error once
    /// the session was released.
    ///
    /// ```
    /// # let mut session = pso::Session::detached(std::time::SystemTime::now())?;
    /// session.set("cart", &["spam"])?;
    /// session.set_user("eggs")?;
    /// session.clear()?;
    /// assert!(session.is_empty());
    /// assert_eq!(session.user(), None);
    /// # Ok::<(), pso::Error>(())
    /// ```
    ///
    /// A request that came with the old id of a regenerated session (within its grace) clears
    /// only the handler's values: it may not sign the owner out or lift the session's limits.
    pub fn clear(&mut self) -> Result<()> {
        self.check_held()?;
        if self.arrived_as.is_none() {
            self.record.clear();
            return Ok(());
        }
        let values: Vec<String> = self.keys().map(str::to_owned).collect();
        for key in values {
            self.record.remove(&key);
        }
        self.record.remove(KEY_DEADLINES);
        Ok(())
    }

    /// Whether there is a value under `key` (pso's own `pso.` keys are not the handler's).
    pub fn contains(&self, key: &str) -> bool {
        !is_reserved(key) && self.record.contains(key)
    }

    /// The keys, sorted; pso's own (`pso.`) are left out.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.record.keys().filter(|key| !is_reserved(key))
    }

    /// The number of values, pso's own left out.
    pub fn len(&self) -> usize {
        self.keys().count()
    }

    /// Whether the session holds no values of the handler's.
    pub fn is_empty(&self) -> bool {
        self.keys().next().is_none()
    }

    /// Sets when the session expires, on the server and in the cookie.
    ///
    /// [`Expiry::Now`] (or any deadline not after now) deletes the session on the server when
    /// the request ends and revokes the cookie; values set afterwards in the same request are
    /// discarded with it.
    ///
    /// ```
    /// use std::time::Duration;
    /// use pso::Expiry;
    /// # let mut session = pso::Session::detached(std::time::SystemTime::now())?;
    /// session.expire(Expiry::In(Duration::from_secs(15 * 60)))?;
    /// session.expire(Expiry::parse("Mon, 15 Apr 2041 19:00:00 GMT")?)?;
    /// session.expire(Expiry::parse_with_format("Mon, 15 APR 2041 19:00:00", "%a, %d %b %Y %H:%M:%S")?)?;
    /// assert!(matches!(session.expiry(), Expiry::At(_)));
    /// session.expire(Expiry::BrowserClose)?;
    /// assert_eq!(session.expiry(), Expiry::BrowserClose);
    /// session.expire(Expiry::Now)?;
    /// assert_eq!(session.expiry(), Expiry::Now);
    /// # Ok::<(), pso::Error>(())
    /// ```
    ///
    /// Once the session was released ([`Session::release`]) this is an error, returned here
    /// and not at the end of the request: a logout after the response has started streaming
    /// must not be lost with only a log line to show for it.
    pub fn expire(&mut self, expiry: Expiry) -> Result<()> {
        self.check_held()?;
        self.record.meta.deadline = expiry.deadline(from_unix_secs(self.now)).map(unix_secs);
        Ok(())
    }

    /// When the session expires, as last set.
    pub fn expiry(&self) -> Expiry {
        match self.record.meta.deadline {
            None => Expiry::BrowserClose,
            Some(_) if self.ends_now() => Expiry::Now,
            Some(deadline) => Expiry::At(from_unix_secs(deadline)),
        }
    }

    /// Saves the session now, mid-request, keeping the lock. The runner saves on success
    /// anyway; call this before a long task, or to keep changes even if the handler fails.
    ///
    /// Once the session has been deleted (by [`Expiry::Now`] and a save), saving it again is an
    /// error: a logged-out id must stay dead.
    pub fn save(&mut self) -> Result<()> {
        self.check_held()?;
        if self.ended {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!(
                    "session {:?} ended in this request and cannot be saved again",
                    self.lock.key()
                ),
            ));
        }
        if self.ends_now() {
            return self.delete();
        }
        self.record.meta.last_access = self.now;
        let own = self.record.get::<u64>(IDLE_LIMIT).ok().flatten();
        self.record.meta.max_idle = self.idle.max_idle(self.record.meta.deadline, own);
        self.lock.save(&self.record)?;
        self.stored = Some(self.record.checkpoint());
        self.saved = true;
        self.finish_move()
    }

    /// Goes back to the state the store holds: as loaded, or as last saved in this request.
    ///
    /// ```
    /// # let mut session = pso::Session::detached(std::time::SystemTime::now())?;
    /// session.set("draft", "v1")?;
    /// session.save()?;
    /// session.set("draft", "v2")?;
    /// session.revert();
    /// assert_eq!(session.get::<String>("draft")?.as_deref(), Some("v1"));
    /// # Ok::<(), pso::Error>(())
    /// ```
    pub fn revert(&mut self) {
        match &self.stored {
            Some(stored) => self.record.restore(stored),
            None => {
                self.record.clear();
                self.record.meta.deadline = None;
            }
        }
        // What the store holds may include values whose time ran out since: still gone.
        self.drop_expired_values();
    }

    /// Stores what needs storing and says which cookie the response carries.
    ///
    /// Lazily (`PSOSessionLazy`, on by default): a new session without values is not stored and
    /// gets no cookie, so a visitor (or a crawler) that never gets session data leaves nothing
    /// in the store; a stored session whose values are all removed is deleted and its cookie
    /// revoked. An unchanged session is rewritten at most once a minute (or half its idle
    /// limit, if shorter), to record its last access.
    pub(crate) fn commit(&mut self) -> Result<CookieAction> {
        if let Some((action, then)) = &self.released {
            if !self.record.matches(then) {
                return Err(Error::new(
                    ErrorKind::Invalid,
                    "the session changed after release(): the change cannot be saved",
                ));
            }
            return Ok(action.clone());
        }
        if self.ended {
            return Ok(CookieAction::Revoke);
        }
        if self.ends_now() {
            self.delete()?;
            return Ok(CookieAction::Revoke);
        }
        if self.holds_nothing() && self.idle.lazy {
            if self.stored.is_none() {
                return Ok(CookieAction::Nothing);
            }
            self.delete()?;
            return Ok(CookieAction::Revoke);
        }
        match &self.stored {
            None => self.save()?,
            Some(stored) => {
                // Often enough that a short idle limit never expires a session in use.
                let meta = stored.meta();
                // The limit the next load will apply: the stored one, or a lower configured one.
                let limit = match (meta.max_idle, self.idle.limit) {
                    (Some(stored), Some(configured)) => Some(stored.min(configured)),
                    (stored, configured) => stored.or(configured),
                };
                let resolution =
                    limit.map_or(ACCESS_RESOLUTION, |idle| ACCESS_RESOLUTION.min(idle / 2));
                let stale = self.now.saturating_sub(meta.last_access) >= resolution;
                if !self.record.matches(stored) || stale {
                    self.save()?;
                }
            }
        }
        if self.arrived_as.is_some() {
            return Ok(CookieAction::Nothing);
        }
        Ok(CookieAction::Set(
            self.lock.key().id.clone(),
            self.record.meta.deadline.map(from_unix_secs),
        ))
    }

    /// Saves the session now and lets go of its lock (PHP's `session_write_close`), so that the
    /// rest of a slow request does not hold up the session's other requests. Called first
    /// thing, it makes a read-only request (PHP's `read_and_close`): the lock is held only
    /// while the session loads, so a page's many AJAX calls run side by side. Reading goes on
    /// working; a change afterwards (`set`, `remove`, `clear`, `expire`, ...) is an error
    /// returned by that call, never silently lost. The cookie is decided here.
    ///
    /// ```
    /// # let mut session = pso::Session::detached(std::time::SystemTime::now())?;
    /// session.set("n", &1u64)?;
    /// session.release()?;
    /// assert_eq!(session.get::<u64>("n")?, Some(1));
    /// assert!(session.set("n", &2u64).is_err());
    /// # Ok::<(), pso::Error>(())
    /// ```
    pub fn release(&mut self) -> Result<()> {
        if self.released.is_some() {
            return Ok(());
        }
        let action = self.commit()?;
        let key = self.lock.key().clone();
        // Dropping the lock lets the next request of this session in.
        self.lock = Box::new(Released(key));
        self.released = Some((action, self.record.checkpoint()));
        Ok(())
    }

    /// An error ([`ErrorKind::OldId`]) for a request that came with the old id of a regenerated
    /// session: it is served the session, but may not change who the session belongs to.
    ///
    /// The request then changes nothing at all: what it changed before is dropped and the
    /// session is released, so a handler that answers the error with `Ok` (a redirect) cannot
    /// leave half a sign-in in the owner's session.
    fn check_current_id(&mut self, what: &str) -> Result<()> {
        let Some(old) = &self.arrived_as else {
            return Ok(());
        };
        let error = Error::new(
            ErrorKind::OldId,
            format!(
                "{what} through {}, the old id of a regenerated session: only its current id may do that",
                old.short()
            ),
        );
        if let Some(loaded) = &self.loaded {
            self.record.restore(loaded);
            self.drop_expired_values();
            if self.saved {
                // A save earlier in this request is undone too: the lock is still ours.
                self.lock.save(&self.record)?;
            }
        }
        let key = self.lock.key().clone();
        self.lock = Box::new(Released(key));
        self.released = Some((CookieAction::Nothing, self.record.checkpoint()));
        Err(error)
    }

    /// An error once the session was released.
    fn check_held(&self) -> Result<()> {
        if self.released.is_some() {
            return Err(Error::new(
                ErrorKind::Invalid,
                "the session was released (release()): it can no longer change",
            ));
        }
        Ok(())
    }

    /// Whether the session holds nothing worth keeping: no value of the handler's and no
    /// signed-in user (form tokens and deadlines go with the values they serve).
    fn holds_nothing(&self) -> bool {
        self.is_empty() && !self.record.contains(USER)
    }

    fn ends_now(&self) -> bool {
        self.record
            .meta
            .deadline
            .is_some_and(|deadline| deadline <= self.now)
    }

    fn delete(&mut self) -> Result<()> {
        if let Some(mut old) = self.old_lock.take() {
            // Regenerated, then ended: the old id ends too.
            old.delete()?;
            self.ended = true;
        }
        if self.stored.is_some() {
            self.lock.delete()?;
            self.stored = None;
            self.ended = true;
        }
        self.record.clear();
        Ok(())
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("key", self.lock.key())
            .field("new", &self.new)
            .field("values", &self.record.len())
            .finish()
    }
}

/// Whether `key` is one of pso's own (form tokens, the user, deadlines, forwarding): a handler
/// cannot set or remove them, so a key chosen by a visitor cannot pose as one.
fn is_reserved(key: &str) -> bool {
    key.starts_with("pso.")
}

/// Milliseconds since the Unix epoch (0 before it).
fn unix_millis(time: SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The id of the record that keeps a user's "logged out before" time: derived from the name
/// (FNV-1a, 64 bits), in a form no generated or forced id takes (`user-`); the record keeps a
/// time per name, and adoption never takes such a record for a session.
pub(crate) fn user_record_id(user: &str) -> SessionId {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in user.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    SessionId::user_record(hash)
}

/// Notes in the user record under `lock` that `user` logged out everywhere at `millis`. Every
/// other name the record keeps stays as it was: two names that lead to one record (a hash
/// collision, which someone choosing user names can make on purpose) never undo each other's
/// logout.
fn note_logged_out(lock: &mut dyn LockedSession, user: &str, now: u64, millis: u64) -> Result<()> {
    let (mut record, mut names, _) = user_record_for_update(lock, now, millis)?;
    names.insert(user.to_owned(), millis);
    record.set(USER_RECORD, &names)?;
    lock.save(&record)
}

/// Rebuilds the user record under `lock` if it cannot be read, logging out at `millis` every
/// name that leads to it: the sessions it served stay ended, and new sign-ins work again.
pub(crate) fn repair_user_record(lock: &mut dyn LockedSession, now: SystemTime) -> Result<()> {
    // Sessions signed in before this millisecond: a sign-in made by this very request stays.
    let before = unix_millis(now).saturating_sub(1);
    let (record, _, rebuilt) = user_record_for_update(lock, unix_secs(now), before)?;
    if rebuilt { lock.save(&record) } else { Ok(()) }
}

/// The user record under `lock` and the names it keeps. One that cannot be read comes back
/// rebuilt (and `true`): it logs out at `millis` every name that leads to it, since the names
/// it kept are unknown and forgetting one would revive its sessions.
fn user_record_for_update(
    lock: &mut dyn LockedSession,
    now: u64,
    millis: u64,
) -> Result<(Record, BTreeMap<String, u64>, bool)> {
    let damaged = match lock.load() {
        Ok(Some(record)) => match revocations(&record) {
            Ok((names, _)) => return Ok((record, names, false)),
            Err(e) => e,
        },
        Ok(None) => return Ok((Record::new(Meta::new(now)), BTreeMap::new(), false)),
        Err(e) if e.kind() == ErrorKind::Corrupt => e,
        Err(e) => return Err(e),
    };
    log::error!(
        "the user record {:?} is unreadable ({damaged}); rebuilt, logging out every user it served",
        lock.key()
    );
    let mut record = Record::new(Meta::new(now));
    record.set(EVERY_USER_LOGGED_OUT_BEFORE, &millis)?;
    record.set(USER_RECORD, &BTreeMap::<String, u64>::new())?;
    Ok((record, BTreeMap::new(), true))
}

/// When `user` last logged out everywhere, as the user record says (milliseconds); an error
/// when the record holds what cannot be read, which the caller counts as a logout.
pub(crate) fn logged_out_before(user_record: &Record, user: &str) -> Result<Option<u64>> {
    let (names, every) = revocations(user_record)?;
    Ok(names.get(user).copied().max(every))
}

/// A user record's times: per name, and for every name that leads to it. The format written
/// before names were kept apart (one user, `pso.revoked_before`) counts for every name.
fn revocations(user_record: &Record) -> Result<(BTreeMap<String, u64>, Option<u64>)> {
    let names: BTreeMap<String, u64> = user_record.get(USER_RECORD)?.unwrap_or_default();
    let every: Option<u64> = user_record.get(EVERY_USER_LOGGED_OUT_BEFORE)?;
    let earlier: Option<u64> = user_record.get(EARLIER_REVOKED_BEFORE)?;
    Ok((names, every.max(earlier)))
}

/// Where a released session's lock was: nothing can be loaded or saved through it.
struct Released(crate::store::SessionKey);

impl LockedSession for Released {
    fn key(&self) -> &crate::store::SessionKey {
        &self.0
    }

    fn load(&mut self) -> Result<Option<Record>> {
        Err(released_error())
    }

    fn save(&mut self, _: &Record) -> Result<()> {
        Err(released_error())
    }

    fn delete(&mut self) -> Result<()> {
        Err(released_error())
    }

    fn lock_sibling(&self, _: SessionId, _: LockOptions) -> Result<Box<dyn LockedSession>> {
        Err(released_error())
    }
}

fn released_error() -> Error {
    Error::new(ErrorKind::Invalid, "the session's lock was released")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::suite;
    use crate::store::{MemoryStore, Store};
    use std::time::UNIX_EPOCH;

    const T0: u64 = 1_700_000_000;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// A browser-close idle limit of `secs`, no configured one.
    fn idle_of(secs: u64) -> Rules {
        Rules {
            limit: None,
            browser_close: secs,
            lazy: true,
            grace: 5,
            check_ip: false,
        }
    }

    fn fresh(store: &MemoryStore, now: u64) -> Session {
        let lock = store.lock(&suite::key("svc"), suite::options()).unwrap();
        Session::fresh(
            lock,
            at(now),
            Expiry::BrowserClose,
            Some("192.0.2.1"),
            idle_of(3600),
        )
    }

    /// A session the store holds (it keeps its form tokens itself).
    fn stored(store: &MemoryStore, now: u64) -> Session {
        let mut session = fresh(store, now);
        session.set("v", &1u8).unwrap();
        session.save().unwrap();
        session
    }

    fn reopen(store: &MemoryStore, id: &SessionId, now: u64) -> Session {
        let key = crate::store::SessionKey::new("svc".parse().unwrap(), id.clone());
        let mut lock = store.lock(&key, suite::options()).unwrap();
        let record = lock.load().unwrap().expect("stored");
        Session::existing(lock, record, at(now), idle_of(3600), Origin::Returning)
    }

    #[test]
    fn names_that_share_a_user_record_keep_their_own_logout() {
        // Two names whose hashes collide lead to one record; a logout of the second must not
        // undo the first's (a user name chosen to collide with a victim's would otherwise revive
        // the victim's stolen sessions).
        let store = MemoryStore::new();
        let key = crate::store::SessionKey::new("svc".parse().unwrap(), user_record_id("eggs"));
        let mut lock = store.lock(&key, suite::options()).unwrap();
        note_logged_out(&mut *lock, "eggs", T0, 1_000).unwrap();
        note_logged_out(&mut *lock, "mallory", T0, 2_000).unwrap();
        note_logged_out(&mut *lock, "mallory", T0, 3_000).unwrap();
        let record = lock.load().unwrap().unwrap();
        assert_eq!(logged_out_before(&record, "eggs").unwrap(), Some(1_000));
        assert_eq!(logged_out_before(&record, "mallory").unwrap(), Some(3_000));
        assert_eq!(logged_out_before(&record, "ham").unwrap(), None);

        // A damaged record rebuilt by one name's logout logs out every name that led to it.
        drop(lock);
        store.plant(&key, b"damaged");
        let mut lock = store.lock(&key, suite::options()).unwrap();
        note_logged_out(&mut *lock, "mallory", T0, 4_000).unwrap();
        let record = lock.load().unwrap().unwrap();
        for name in ["eggs", "mallory", "ham"] {
            assert_eq!(
                logged_out_before(&record, name).unwrap(),
                Some(4_000),
                "{name}"
            );
        }
    }

    #[test]
    fn a_user_record_this_pso_cannot_read_counts_as_a_logout() {
        // A field of the wrong type (another version, a damaged value): an error, which
        // adoption counts as "logged out".
        let mut odd = Record::new(Meta::new(T0));
        odd.set(USER_RECORD, "eggs").unwrap();
        assert!(logged_out_before(&odd, "eggs").is_err());
        // The first format (one user, `pso.revoked_before`) counts for every name.
        let mut first = Record::new(Meta::new(T0));
        first.set("pso.user_record", "eggs").unwrap();
        first.set(EARLIER_REVOKED_BEFORE, &5_000u64).unwrap();
        assert_eq!(logged_out_before(&first, "eggs").unwrap(), Some(5_000));
        assert_eq!(logged_out_before(&first, "ham").unwrap(), Some(5_000));
        // Rewriting such a record keeps its time.
        let store = MemoryStore::new();
        let key = crate::store::SessionKey::new("svc".parse().unwrap(), user_record_id("eggs"));
        let mut lock = store.lock(&key, suite::options()).unwrap();
        lock.save(&first).unwrap();
        note_logged_out(&mut *lock, "ham", T0, 6_000).unwrap();
        let record = lock.load().unwrap().unwrap();
        assert_eq!(logged_out_before(&record, "eggs").unwrap(), Some(5_000));
        assert_eq!(logged_out_before(&record, "ham").unwrap(), Some(6_000));
        // And a wrongly typed one is rebuilt logging out every name.
        lock.save(&odd).unwrap();
        note_logged_out(&mut *lock, "ham", T0, 7_000).unwrap();
        let record = lock.load().unwrap().unwrap();
        assert_eq!(logged_out_before(&record, "eggs").unwrap(), Some(7_000));
    }

    #[test]
    fn revert_never_brings_back_a_value_whose_time_ran_out() {
        let store = MemoryStore::new();
        let mut session = fresh(&store, T0);
        session.set("v", &1u8).unwrap();
        session
            .set_for("code", "493817", Duration::from_secs(10))
            .unwrap();
        session.save().unwrap();
        let id = session.id().clone();
        drop(session);
        let mut later = reopen(&store, &id, T0 + 20);
        assert_eq!(later.get::<String>("code").unwrap(), None);
        later.revert();
        assert_eq!(later.get::<String>("code").unwrap(), None, "still gone");
        assert_eq!(later.get::<u8>("v").unwrap(), Some(1));
    }

    #[test]
    fn a_handler_cannot_set_or_remove_psos_own_keys() {
        let store = MemoryStore::new();
        let mut session = stored(&store, T0);
        session.remove("v").unwrap();
        let token = session.create_form_token().unwrap();
        for key in [
            MOVED_TO,
            USER,
            USER_SINCE,
            FORM_TOKENS,
            KEY_DEADLINES,
            IDLE_LIMIT,
            "pso.x",
        ] {
            assert!(session.set(key, "forged").is_err(), "{key}");
            assert!(!session.remove(key).unwrap(), "{key}");
        }
        assert_eq!(
            (session.len(), session.is_empty()),
            (0, true),
            "pso's own keys are not listed"
        );
        assert_eq!(session.keys().count(), 0);
        assert!(
            session.take_form_token(&token).unwrap(),
            "the tokens are untouched"
        );
    }

    #[test]
    fn only_the_newest_form_tokens_are_kept() {
        let store = MemoryStore::new();
        let mut session = stored(&store, T0);
        let tokens: Vec<String> = (0..=MAX_FORM_TOKENS)
            .map(|_| session.create_form_token().unwrap())
            .collect();
        assert!(
            !session.take_form_token(&tokens[0]).unwrap(),
            "the oldest is gone"
        );
        for token in &tokens[1..] {
            assert!(session.take_form_token(token).unwrap());
        }
        assert!(!session.record.contains(FORM_TOKENS), "no tokens, no key");
        assert!(!session.take_form_token("").unwrap());
    }

    #[test]
    fn an_empty_new_session_is_not_stored() {
        let store = MemoryStore::new();
        let mut session = fresh(&store, T0);
        assert_eq!(session.commit().unwrap(), CookieAction::Nothing);
        assert_eq!(store.keys().unwrap().count(), 0);
    }

    #[test]
    fn values_persist_with_metadata() {
        let store = MemoryStore::new();
        let mut session = fresh(&store, T0);
        session.set("n", &1u64).unwrap();
        let id = session.id().clone();
        assert_eq!(
            session.commit().unwrap(),
            CookieAction::Set(id.clone(), None)
        );
        drop(session);
        let session = reopen(&store, &id, T0 + 10);
        assert!(!session.is_new());
        assert_eq!(session.get::<u64>("n").unwrap(), Some(1));
        assert_eq!(session.created(), at(T0));
        assert_eq!(session.last_access(), at(T0));
        assert_eq!(session.client_addr(), Some("192.0.2.1"));
    }

    #[test]
    fn unchanged_sessions_are_rewritten_only_to_record_access() {
        let store = MemoryStore::new();
        let mut session = fresh(&store, T0);
        session.set("n", &1u64).unwrap();
        session.commit().unwrap();
        let id = session.id().clone();
        drop(session);
        reopen(&store, &id, T0 + 30).commit().unwrap();
        assert_eq!(
            reopen(&store, &id, T0).last_access(),
            at(T0),
            "not rewritten within a minute"
        );
        reopen(&store, &id, T0 + 90).commit().unwrap();
        assert_eq!(reopen(&store, &id, T0).last_access(), at(T0 + 90));
    }

    #[test]
    fn expire_now_deletes_and_revokes() {
        let store = MemoryStore::new();
        let mut session = fresh(&store, T0);
        session.set("n", &1u64).unwrap();
        session.commit().unwrap();
        let id = session.id().clone();
        drop(session);
        let mut session = reopen(&store, &id, T0 + 1);
        session.expire(Expiry::Now).unwrap();
        session.set("late", &true).unwrap();
        assert_eq!(session.commit().unwrap(), CookieAction::Revoke);
        drop(session);
        assert_eq!(store.keys().unwrap().count(), 0);
    }

    #[test]
    fn a_past_date_expires_now_and_a_later_expiry_undoes_it() {
        let store = MemoryStore::new();
        let mut session = fresh(&store, T0);
        session
            .expire(
                Expiry::parse_with_format("Mon, 15 APR 2001 19:00:00", "%a, %d %b %Y %H:%M:%S")
                    .unwrap(),
            )
            .unwrap();
        assert_eq!(session.expiry(), Expiry::Now);
        session
            .expire(Expiry::In(Duration::from_secs(900)))
            .unwrap();
        assert_eq!(session.expiry(), Expiry::At(at(T0 + 900)));
        session.set("n", &1u64).unwrap();
        assert_eq!(
            session.commit().unwrap(),
            CookieAction::Set(session.id().clone(), Some(at(T0 + 900)))
        );
    }

    #[test]
    fn browser_close_sessions_carry_an_idle_limit_and_dated_ones_do_not() {
        let store = MemoryStore::new();
        let mut session = fresh(&store, T0);
        session.set("n", &1u64).unwrap();
        session.save().unwrap();
        let id = session.id().clone();
        let key = crate::store::SessionKey::new("svc".parse().unwrap(), id);
        drop(session);
        assert_eq!(store.peek(&key).unwrap().unwrap().meta.max_idle, Some(3600));
    }

    #[test]
    fn an_ended_session_cannot_come_back_in_the_same_request() {
        let store = MemoryStore::new();
        let mut session = fresh(&store, T0);
        session.set("n", &1u64).unwrap();
        session.save().unwrap();
        session.expire(Expiry::Now).unwrap();
        session.save().unwrap();
        session.expire(Expiry::In(Duration::from_secs(60))).unwrap();
        session.set("n", &2u64).unwrap();
        assert_eq!(session.save().unwrap_err().kind(), ErrorKind::Invalid);
        assert_eq!(session.commit().unwrap(), CookieAction::Revoke);
        drop(session);
        assert_eq!(store.keys().unwrap().count(), 0);
    }

    #[test]
    fn a_short_idle_limit_is_refreshed_often_enough() {
        let store = MemoryStore::new();
        let lock = store.lock(&suite::key("svc"), suite::options()).unwrap();
        let mut session = Session::fresh(lock, at(T0), Expiry::BrowserClose, None, idle_of(30));
        session.set("n", &1u64).unwrap();
        session.commit().unwrap();
        let id = session.id().clone();
        drop(session);
        // Used every 10 seconds, unchanged: it must never go 30 seconds without a recorded use.
        for t in (10..=120).step_by(10) {
            let key = crate::store::SessionKey::new("svc".parse().unwrap(), id.clone());
            let mut lock = store.lock(&key, suite::options()).unwrap();
            let record = lock.load().unwrap().unwrap();
            assert!(!record.is_expired(T0 + t), "expired at +{t}s while in use");
            Session::existing(lock, record, at(T0 + t), idle_of(30), Origin::Returning)
                .commit()
                .unwrap();
        }
    }

    #[test]
    fn revert_returns_to_the_stored_state() {
        let store = MemoryStore::new();
        let mut session = fresh(&store, T0);
        session.set("a", &1u64).unwrap();
        session.revert();
        assert!(session.is_empty());
        session.set("a", &2u64).unwrap();
        session.save().unwrap();
        session.set("a", &3u64).unwrap();
        session.remove("a").unwrap();
        session.expire(Expiry::Now).unwrap();
        session.revert();
        assert_eq!(session.get::<u64>("a").unwrap(), Some(2));
        assert_eq!(session.expiry(), Expiry::BrowserClose);
    }
}
