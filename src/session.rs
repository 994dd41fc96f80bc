//! The session a handler sees: typed values, expiry control, explicit save and revert; and the
//! session's life in one request as explicit state (held, ended, released), with how the
//! request named it (a new session, its current id, an old id, a forced id).

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, ErrorKind, Result};
use crate::expiry::{Clock, Expiry, from_unix_secs, unix_secs};
use crate::form_token::{COOKIE_TOKEN_LEN, FormCookie, FormCookieChange};
use crate::id::{GENERATED_ID_LEN, ServiceId, SessionId, same_secret};
use crate::origin::Origin;
use crate::record::{Checkpoint, Meta, Record};
use crate::reserved::{
    FORM_TOKENS, IDLE_LIMIT, KEY_DEADLINES, MOVED_TO, USER, USER_SINCE, is_reserved,
};
use crate::rules::Rules;
use crate::store::{LockOptions, LockedSession, SessionKey};
use crate::user_record;

/// An unchanged session is rewritten only to record its last access, and at most this often.
const ACCESS_RESOLUTION: u64 = 60;
/// Form tokens kept per session: the newest, so that a user with many forms open still posts
/// the recent ones, and a session cannot grow without bound.
const MAX_FORM_TOKENS: usize = 16;
/// The longest wait for the lock of a new id (`regenerate_id`): nobody else knows it yet.
const NEW_ID_LOCK_TIMEOUT: Duration = Duration::from_secs(1);

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
    /// The session's key in the store; after `regenerate_id()`, the new one.
    key: SessionKey,
    record: Record,
    /// Where the session is in its life in this request.
    state: State,
    /// How the request named the session.
    named: Named,
    /// The id came in the URL (`PSOSessionUrl`): no cookie is ever set for it.
    from_url: bool,
    /// The session as the request found it; `None` for a new one.
    loaded: Option<Loaded>,
    clock: Clock,
    rules: Rules,
    origin: Origin,
    /// The data of the expired session this one replaces, until the handler takes it.
    expired: Option<Record>,
    /// The form cookie: tokens for a visitor the store holds nothing for.
    form: FormCookie,
    /// The client address of this request (`REMOTE_ADDR`).
    client_addr: Option<String>,
    /// The response head is out: no cookie can change any more.
    head_sent: bool,
    /// The head went out without a cookie for a session the browser does not have: the
    /// session can no longer reach the visitor, so a change to it would be silently lost.
    unreachable: bool,
    /// The request was handed an expired session's data: its response is one visitor's.
    had_expired: bool,
    /// When this request logged its user out everywhere (milliseconds), if it did: a sign-in
    /// later in the same request must come after it.
    logged_out_at: Option<u64>,
}

/// Whether a save keeps the session's lock (more may come) or lets go with it (the last).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Hold {
    Keep,
    Release,
}

/// Where a session is in its life in one request.
enum State {
    /// The request holds the session's lock: changes are saved at its end.
    Held(Held),
    /// Deleted in this request (expired, logged out, emptied): its id is dead, and it cannot
    /// be saved again. Changes are taken and go with it. The lock is kept to the end.
    Ended {
        _lock: Option<Box<dyn LockedSession>>,
    },
    /// Let go of: by `release()`, from the start for a read-only request, or after a refusal
    /// for an old id. Reading works; a change is an error. What the response says about the
    /// cookie was decided when it was let go.
    Released {
        cookie: CookieAction,
        then: Checkpoint,
    },
}

/// A session whose lock the request holds.
struct Held {
    lock: Box<dyn LockedSession>,
    /// What the store holds for this session (as loaded, or as last saved), as a checkpoint of
    /// the record: the values themselves are not copied. `None` while it holds nothing.
    stored: Option<Checkpoint>,
    /// After `regenerate_id()`: the old id's lock, until the session is saved under the new id;
    /// only then does the old id become a forward (or go). A request that fails before leaves
    /// the old id as it was.
    moving_from: Option<Box<dyn LockedSession>>,
    /// Whether this request saved: a refusal for an old id undoes it.
    saved: bool,
}

/// How the request named the session it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Named {
    /// By nothing it has: a new session.
    Nothing,
    /// By its current id.
    Current,
    /// By an old id of a regenerated session, within its grace: served the session to read,
    /// but never handed the new id (whoever holds an old id must not learn the new one) and
    /// never allowed to change it (nor to leave anything in it for later, a form token
    /// included).
    OldId(SessionId),
    /// By the id the server's configuration forces: it cannot get another.
    Forced,
}

/// The session as the request found it.
struct Loaded {
    /// The id it was stored under (for an old id, the session's current one).
    id: SessionId,
    checkpoint: Checkpoint,
}

/// What a session starts from in a request besides its record and lock, as adoption found it.
pub(crate) struct Start {
    pub clock: Clock,
    pub rules: Rules,
    pub origin: Origin,
    pub named: Named,
    pub from_url: bool,
    /// The request's client address.
    pub client_addr: Option<String>,
    /// The data of the expired session a new one replaces, for the handler to read once.
    pub expired: Option<Record>,
}

/// What the response must tell the client about its session cookie.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CookieAction {
    /// Hand out the cookie for this id, valid until the deadline: the browser does not have
    /// it yet (a new session, a new id), or its lifetime changed.
    Set(SessionId, Option<SystemTime>),
    /// The browser has this cookie already: sent again only where the cookie's lifetime runs
    /// from each response (`PSOCookieSession_Max-Age` as a duration). Only a request that
    /// held the session to its end says so; any other could overwrite a newer cookie.
    Refresh(SessionId, Option<SystemTime>),
    /// Make the client drop its cookie.
    Revoke,
    /// Nothing to say: send no session cookie.
    Nothing,
}

impl Session {
    /// A session the store holds, as loaded under its lock.
    pub(crate) fn held(lock: Box<dyn LockedSession>, record: Record, start: Start) -> Session {
        let key = lock.key().clone();
        let loaded = Loaded {
            id: key.id.clone(),
            checkpoint: record.checkpoint(),
        };
        let state = State::Held(Held {
            lock,
            stored: Some(record.checkpoint()),
            moving_from: None,
            saved: false,
        });
        let mut session = Session::assemble(key, record, state, Some(loaded), start);
        session.drop_expired_values();
        session
    }

    /// A new, empty session under `lock`, expiring per `lifetime`. With `replaces`, the store
    /// holds a record under this (forced) id that the new session takes over: saving
    /// overwrites it, and if the session ends up without values, that record is deleted.
    pub(crate) fn fresh(
        lock: Box<dyn LockedSession>,
        lifetime: Expiry,
        replaces: bool,
        start: Start,
    ) -> Session {
        let key = lock.key().clone();
        let mut meta = Meta::new(start.clock.secs());
        meta.deadline = lifetime.deadline(start.clock.now()).map(unix_secs);
        meta.client_addr = start.client_addr.clone();
        let record = Record::new(meta);
        let state = State::Held(Held {
            lock,
            stored: replaces.then(|| record.checkpoint()),
            moving_from: None,
            saved: false,
        });
        Session::assemble(key, record, state, None, start)
    }

    /// The session of a read-only request: `record` as read without the lock (none for a new
    /// visitor), released from the start, so that reading works and any change is an error.
    /// It sends no session cookie: a request that changes nothing must not overwrite a newer
    /// cookie (a sign-in's, answered meanwhile).
    pub(crate) fn read_only(key: SessionKey, record: Option<Record>, start: Start) -> Session {
        let loaded = record.as_ref().map(|record| Loaded {
            id: key.id.clone(),
            checkpoint: record.checkpoint(),
        });
        let record = record.unwrap_or_else(|| Record::new(Meta::new(start.clock.secs())));
        let state = State::Released {
            cookie: CookieAction::Nothing,
            then: record.checkpoint(),
        };
        Session::assemble(key, record, state, loaded, start)
    }

    fn assemble(
        key: SessionKey,
        record: Record,
        state: State,
        loaded: Option<Loaded>,
        start: Start,
    ) -> Session {
        Session {
            key,
            record,
            state,
            named: start.named,
            from_url: start.from_url,
            loaded,
            clock: start.clock,
            rules: start.rules,
            origin: start.origin,
            had_expired: start.expired.is_some(),
            expired: start.expired,
            form: FormCookie::default(),
            client_addr: start.client_addr,
            head_sent: false,
            unreachable: false,
            logged_out_at: None,
        }
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

    /// The response head goes out now: the cookies it carries are final. `reaches_browser`:
    /// it carries this session's cookie, or links will carry its id.
    pub(crate) fn head_sent(&mut self, reaches_browser: bool) {
        self.head_sent = true;
        self.unreachable = !reaches_browser && self.loaded.is_none() && self.named != Named::Forced;
    }

    /// Whether the response is one visitor's: made from a stored session, or from the data
    /// of an expired one.
    pub(crate) fn is_personal(&self) -> bool {
        self.loaded.is_some() || self.had_expired
    }

    /// Removes the values set with [`Session::set_for`] whose time is up.
    fn drop_expired_values(&mut self) {
        let Ok(Some(mut deadlines)) = self.record.get::<BTreeMap<String, u64>>(KEY_DEADLINES)
        else {
            return;
        };
        let now = self.clock.secs();
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
        let deadline = self.clock.secs().saturating_add(lifetime.as_secs());
        deadlines.insert(key.to_owned(), deadline);
        self.record.set(KEY_DEADLINES, &deadlines)
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
    /// address that moved it, is served this session to read ([`Origin::Moved`]), under the
    /// old id: any change through it is an error of kind [`ErrorKind::OldId`], a 409. This
    /// call is an error too once the response head is out ([`crate::Context::stream`]), and
    /// for an id the server forces.
    pub fn regenerate_id(&mut self) -> Result<()> {
        self.check_writable()?;
        if matches!(self.state, State::Ended { .. }) {
            return Err(Error::new(
                ErrorKind::Invalid,
                "a session that ended in this request cannot get a new id",
            ));
        }
        if self.named == Named::Forced {
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
        let State::Held(held) = &mut self.state else {
            return Err(released_error());
        };
        if held.moving_from.is_some() {
            // The first new id is not stored yet: it simply gives way to another one.
            held.lock.delete().ok();
        }
        let options = LockOptions::new(NEW_ID_LOCK_TIMEOUT).with_create(true);
        let new_lock = held.lock.lock_sibling(SessionId::generate()?, options)?;
        let old_lock = std::mem::replace(&mut held.lock, new_lock);
        if held.stored.take().is_some() && held.moving_from.is_none() {
            held.moving_from = Some(old_lock);
        }
        self.key = held.lock.key().clone();
        // Tokens issued to the old id (perhaps to whoever planted it) are void, and so are
        // those of the form cookie (perhaps tossed in by someone who can set cookies).
        self.record.remove(FORM_TOKENS);
        self.form.void();
        Ok(())
    }

    /// After a regenerated session is saved under its new id: the old id becomes a forward
    /// for the grace period, from this request's address only, or goes at once.
    fn finish_move(&mut self) -> Result<()> {
        let State::Held(held) = &mut self.state else {
            return Ok(());
        };
        let Some(mut old) = held.moving_from.take() else {
            return Ok(());
        };
        if self.rules.grace == 0 {
            return old.delete();
        }
        // Dated from when this request began, so that requests already waiting for it then
        // are served; its grace runs from when it is written, so that a sign-in that ran long
        // still leaves the whole of it.
        let mut forward = Record::new(Meta::new(self.clock.secs()));
        forward.meta.deadline = Some(self.clock.secs_now().saturating_add(self.rules.grace));
        forward.meta.client_addr = self.client_addr.clone();
        forward.set(MOVED_TO, self.key.id.as_str())?;
        old.save(&forward)
    }

    /// Names the user this session is signed in as (at login, after
    /// [`Session::regenerate_id`]), so that [`Session::log_out_everywhere`] can end every
    /// session of that user at once.
    pub fn set_user(&mut self, user: &str) -> Result<()> {
        self.check_lasting()?;
        // When the request began (a request loaded before a "log out everywhere" must not
        // outlive it by signing in again), but after a "log out everywhere" of this very
        // request (to sign everything else out and stay signed in here).
        let since = match self.logged_out_at {
            Some(logout) => self.clock.millis().max(logout.saturating_add(1)),
            None => self.clock.millis(),
        };
        self.record.set(USER, user)?;
        self.record.set(USER_SINCE, &since)
    }

    /// The user this session is signed in as, if [`Session::set_user`] named one.
    pub fn user(&self) -> Option<String> {
        user_record::user_of(&self.record)
    }

    /// Logs the signed-in user out everywhere ("log out everywhere", after a password change):
    /// every session signed in as this user before now ends at its next request
    /// ([`crate::Ended::LoggedOut`]), this one at the end of this request. The store keeps one
    /// small record per user for it, so nothing is scanned, and nothing needs cleaning when
    /// sessions expire or are collected. The time kept is when that record is written (in
    /// milliseconds), and it only ever rises: a call in a request that began earlier and
    /// ends later never undoes a newer one.
    ///
    /// ```
    /// # let mut session = pso::Session::detached(std::time::SystemTime::now())?;
    /// session.set_user("eggs")?;
    /// session.log_out_everywhere()?;
    /// assert_eq!(session.expiry(), pso::Expiry::Now);
    /// # Ok::<(), pso::Error>(())
    /// ```
    pub fn log_out_everywhere(&mut self) -> Result<()> {
        self.check_writable()?;
        let Some(user) = self.user() else {
            return Err(Error::new(
                ErrorKind::Invalid,
                "log_out_everywhere() needs a session signed in with set_user()",
            ));
        };
        let State::Held(held) = &self.state else {
            return Err(ended_error(&self.key));
        };
        let mut lock = held
            .lock
            .lock_sibling(user_record::id_for(&user), user_record::lock_options())?;
        // Read now that the record is locked: every sign-in before this moment is covered.
        let written_at = self.clock.millis_now();
        user_record::log_out(&mut *lock, &user, self.clock.secs(), written_at)?;
        drop(lock);
        self.logged_out_at = Some(written_at);
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
        self.check_writable()?;
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
    /// sign-out page that shows the sign-in form), and for one this request cannot change
    /// (after `release()`, in a read-only request, through an old id). Such a token is accepted only from a
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
        let nothing_to_store = self.rules.lazy && self.holds_nothing();
        let ending = matches!(self.state, State::Ended { .. }) || self.ends_now();
        // Nor can a session that this request may not change keep one: one read only (a
        // released or read-only request), or reached through an old id, whose holder must
        // leave nothing in the session for later (a token would be one).
        let unchangeable = matches!(self.state, State::Released { .. });
        if nothing_to_store || ending || unchangeable {
            return self.form.token(self.head_sent);
        }
        self.check_writable()?;
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
        self.check_writable()?;
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
    /// Only the request that removed the expired session is handed its data: a read-only
    /// request, which removes nothing, never is.
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
        use crate::store::{MemoryStore, Store};
        let key = SessionKey::new(ServiceId::fallback(), SessionId::generate()?);
        let lock = MemoryStore::new().lock(&key, LockOptions::new(Duration::ZERO))?;
        let start = Start {
            clock: Clock::starting_at(now),
            rules: Rules {
                idle_limit: None,
                browser_close_idle: 86_400,
                lazy: true,
                grace: 5,
                check_ip: false,
            },
            origin: Origin::New,
            named: Named::Nothing,
            from_url: false,
            client_addr: None,
            expired: None,
        };
        Ok(Session::fresh(lock, Expiry::BrowserClose, false, start))
    }

    /// The session id (a secret: do not log it whole, see [`SessionId::short`]). For a request
    /// that came with the old id of a regenerated session, within its grace, the old id: its
    /// holder must never learn the new one.
    pub fn id(&self) -> &SessionId {
        match &self.named {
            Named::OldId(old) => old,
            _ => &self.key.id,
        }
    }

    /// The service this session belongs to.
    pub fn service(&self) -> &ServiceId {
        &self.key.service
    }

    /// Whether this request started the session (no valid session came with it).
    pub fn is_new(&self) -> bool {
        self.loaded.is_none()
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
    /// A struct's fields are matched by name, so a type may change between releases as serde
    /// allows (a field added with `#[serde(default)]` or as an `Option`, a field removed, one
    /// renamed with `#[serde(alias)]`; see [`crate::Record::get`]). A value that does not read
    /// as `T` is an error of kind [`crate::ErrorKind::Decode`], not a panic, and stays: for a
    /// value that may be lost instead, see [`Session::get_or_remove`].
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        self.record.get(key)
    }

    /// Stores `value` under `key`.
    pub fn set<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<()> {
        self.check_lasting()?;
        if is_reserved(key) {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!("the key {key:?} is pso's own (keys that start with pso. are reserved)"),
            ));
        }
        self.forget_deadline(key)?;
        self.record.set(key, value)
    }

    /// The value under `key` as a `T`, removed from the session: for a message shown once
    /// (a flash), as tower-sessions' `remove`. `None` if there is none. An error once the
    /// session was released; a value of another type is an error and stays.
    ///
    /// ```
    /// # let mut session = pso::Session::detached(std::time::SystemTime::now())?;
    /// session.set("flash", "Saved.")?;
    /// assert_eq!(session.take::<String>("flash")?.as_deref(), Some("Saved."));
    /// assert_eq!(session.take::<String>("flash")?, None);
    /// # Ok::<(), pso::Error>(())
    /// ```
    pub fn take<T: DeserializeOwned>(&mut self, key: &str) -> Result<Option<T>> {
        self.check_writable()?;
        if is_reserved(key) {
            return Ok(None);
        }
        let value = self.get(key)?;
        if value.is_some() {
            self.remove(key)?;
        }
        Ok(value)
    }

    /// The value under `key` as a `T`; `None` if there is none, or if it does not read as a
    /// `T`, in which case it is removed and a warning logged with the key and why (never the
    /// value). For a value whose type changed in a way serde cannot follow (another type
    /// altogether, a field added without `#[serde(default)]`, values pso wrote in bincode
    /// before format version 2): the visitor loses that value and goes on, instead of getting
    /// an error page at every request until the session expires, sign-out included.
    ///
    /// [`Session::get`] is for values that must not be lost silently: it keeps them and
    /// returns an error of kind [`crate::ErrorKind::Decode`]. A session that can no longer
    /// change ([`Session::release`]) keeps the unreadable value, and the warning says so.
    ///
    /// ```
    /// # let mut session = pso::Session::detached(std::time::SystemTime::now())?;
    /// session.set("cart", "a cart of an earlier release")?;
    /// let cart: Vec<u32> = session.get_or_remove("cart")?.unwrap_or_default();
    /// assert!(cart.is_empty());
    /// assert!(!session.contains("cart"));
    /// # Ok::<(), pso::Error>(())
    /// ```
    pub fn get_or_remove<T: DeserializeOwned>(&mut self, key: &str) -> Result<Option<T>> {
        let error = match self.record.get::<T>(key) {
            Ok(value) => return Ok(value),
            Err(error) if error.kind() == ErrorKind::Decode && !is_reserved(key) => error,
            Err(error) => return Err(error),
        };
        let why = std::error::Error::source(&error)
            .map(|cause| redacted(&crate::ErrorChain(cause).to_string()))
            .unwrap_or_default();
        let asked = std::any::type_name::<T>();
        match self.remove(key) {
            Ok(_) => {
                log::warn!("session value {key:?} does not read as {asked} and is removed: {why}")
            }
            Err(kept) => log::warn!(
                "session value {key:?} does not read as {asked}, and is kept ({kept}): {why}"
            ),
        }
        Ok(None)
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
        self.check_writable()?;
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
    pub fn clear(&mut self) -> Result<()> {
        self.check_writable()?;
        self.record.clear();
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
    /// the request ends and revokes the cookie; setting a value afterwards is an error (it
    /// would go with the session), unless a later `expire` gives it a future again. To sign
    /// out and leave a message for the next page, empty the session and move it to a new id
    /// instead:
    ///
    /// ```
    /// # let mut session = pso::Session::detached(std::time::SystemTime::now())?;
    /// # session.set_user("eggs")?;
    /// session.clear()?; // every value and the signed-in user go
    /// session.regenerate_id()?; // the old id is worth nothing
    /// session.set("flash", "You are signed out.")?;
    /// assert_eq!(session.user(), None);
    /// # session.expire(pso::Expiry::Now)?;
    /// # assert!(session.set("flash", "lost").is_err());
    /// # Ok::<(), pso::Error>(())
    /// ```
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
        self.check_writable()?;
        self.record.meta.deadline = expiry.deadline(self.clock.now()).map(unix_secs);
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
        self.write(Hold::Keep)
    }

    /// [`Session::save`], letting go of the lock with the save when it is the request's last.
    fn write(&mut self, hold: Hold) -> Result<()> {
        self.check_writable()?;
        let ends_now = self.ends_now();
        let State::Held(held) = &mut self.state else {
            return if ends_now {
                Ok(())
            } else {
                Err(ended_error(&self.key))
            };
        };
        if ends_now {
            return self.end();
        }
        // When it is saved, not when the request began: a long upload must not leave its
        // session idle-expired the moment it is done.
        self.record.meta.last_access = self.clock.secs_now();
        let own = self.record.get::<u64>(IDLE_LIMIT).ok().flatten();
        self.record.meta.max_idle = self.rules.stored_idle(self.record.meta.deadline, own);
        match hold {
            Hold::Keep => held.lock.save(&self.record)?,
            Hold::Release => held.lock.save_and_release(&self.record)?,
        }
        held.stored = Some(self.record.checkpoint());
        held.saved = true;
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
        let stored = match &self.state {
            State::Held(held) => held.stored.as_ref(),
            State::Released { then, .. } => Some(then),
            State::Ended { .. } => None,
        };
        match stored {
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
        self.settle(true, Hold::Keep)
    }

    /// [`Session::commit`] at the very end of a request: a save lets go of the lock with it
    /// (one round trip for a server's store), as nothing can change the session afterwards.
    pub(crate) fn commit_last(&mut self) -> Result<CookieAction> {
        self.settle(true, Hold::Release)
    }

    /// [`Session::commit`]; `held_to_the_end` when the request holds the session until its
    /// response goes out (not so for `release()`), the only case a cookie the browser has may
    /// be sent again.
    fn settle(&mut self, held_to_the_end: bool, hold: Hold) -> Result<CookieAction> {
        let stored = match &self.state {
            State::Released { cookie, then } => {
                if !self.record.matches(then) {
                    return Err(Error::new(
                        ErrorKind::Invalid,
                        "the session changed after release(): the change cannot be saved",
                    ));
                }
                return Ok(cookie.clone());
            }
            State::Ended { .. } => return Ok(CookieAction::Revoke),
            State::Held(held) => held.stored.clone(),
        };
        if self.ends_now() {
            self.end()?;
            return Ok(CookieAction::Revoke);
        }
        if self.rules.lazy && self.holds_nothing() {
            if stored.is_none() {
                return Ok(self.cookie_for_nothing_stored());
            }
            self.end()?;
            return Ok(CookieAction::Revoke);
        }
        let needs_saving = match &stored {
            None => true,
            Some(stored) => !self.record.matches(stored) || self.access_is_stale(stored),
        };
        if needs_saving {
            self.write(hold)?;
        }
        Ok(self.cookie_for_browser(held_to_the_end))
    }

    /// The cookie of a response that stores no session: a revocation when the request's
    /// cookie named a session that is no more (logged out, expired, unknown, ...), so that the
    /// browser stops sending a dead id (and each of its requests stops being logged); none
    /// otherwise. A session of another address (`PSOSessionCheckIP`) is left alone for its
    /// owner, its cookie with it.
    fn cookie_for_nothing_stored(&self) -> CookieAction {
        match self.origin() {
            Origin::Replaced(crate::origin::Ended::OtherAddress) => CookieAction::Nothing,
            Origin::Replaced(_) => CookieAction::Revoke,
            _ => CookieAction::Nothing,
        }
    }

    /// Whether the last access the store holds is old enough to record again: often enough
    /// that a short idle limit never expires a session in use.
    fn access_is_stale(&self, stored: &Checkpoint) -> bool {
        let meta = stored.meta();
        let resolution = self
            .rules
            .applied_idle(meta.max_idle)
            .map_or(ACCESS_RESOLUTION, |idle| ACCESS_RESOLUTION.min(idle / 2));
        // Now, not when the request began: a long request must record that it used the
        // session, or the session times out under it.
        self.clock.secs_now().saturating_sub(meta.last_access) >= resolution
    }

    /// The cookie a stored session's response carries: none for an old id (its holder must
    /// never learn the new one) or for an id the URL brought; the cookie when the browser
    /// does not have it yet (a new session, a new id) or its lifetime changed; otherwise at
    /// most a refresh, for a request that held the session to its end. A forced id gets its
    /// cookie once, when the session is created.
    fn cookie_for_browser(&self, held_to_the_end: bool) -> CookieAction {
        let id = self.key.id.clone();
        let deadline = self.record.meta.deadline.map(from_unix_secs);
        let loaded = match (&self.named, &self.loaded) {
            (Named::OldId(_), _) => return CookieAction::Nothing,
            (Named::Forced, Some(_)) => return CookieAction::Nothing,
            (_, None) => return CookieAction::Set(id, deadline),
            (_, Some(loaded)) => loaded,
        };
        if loaded.id != self.key.id {
            return CookieAction::Set(id, deadline);
        }
        // A response that goes out after the lock was let go may arrive after a sign-in's,
        // and must not put this id back: only a new session or id is sent from it (nobody
        // else can have moved an id the browser does not have yet). A new lifetime reaches
        // the server then, not the cookie.
        if self.from_url || !held_to_the_end {
            return CookieAction::Nothing;
        }
        if loaded.checkpoint.meta().deadline != self.record.meta.deadline {
            return CookieAction::Set(id, deadline);
        }
        CookieAction::Refresh(id, deadline)
    }

    /// The cookie a response must carry even if the request fails now: for a session this
    /// request already stored under an id the browser does not have (a new session saved, or
    /// a move to a new id saved, with `save()` or `release()`). Anything else the failure
    /// leaves as it was, the browser's cookie included.
    pub(crate) fn cookie_owed(&self) -> CookieAction {
        let stored = match &self.state {
            State::Released {
                cookie: cookie @ CookieAction::Set(..),
                ..
            } => return cookie.clone(),
            State::Held(Held {
                saved: true,
                stored: Some(stored),
                ..
            }) => stored,
            _ => return CookieAction::Nothing,
        };
        let browser_has_it = match (&self.named, &self.loaded) {
            (Named::OldId(_), _) => return CookieAction::Nothing,
            (_, Some(loaded)) => loaded.id == self.key.id,
            (_, None) => false,
        };
        if browser_has_it || self.from_url && self.loaded.is_some() {
            return CookieAction::Nothing;
        }
        CookieAction::Set(
            self.key.id.clone(),
            stored.meta().deadline.map(from_unix_secs),
        )
    }

    /// Saves the session now and lets go of its lock (PHP's `session_write_close`), so that the
    /// rest of a slow request does not hold up the session's other requests. Called first
    /// thing, it makes a read-only request (PHP's `read_and_close`): the lock is held only
    /// while the session loads, so a page's many AJAX calls run side by side. Reading goes on
    /// working; a change afterwards (`set`, `remove`, `clear`, `expire`, ...) is an error
    /// returned by that call, never silently lost. The cookie is decided here, and sent only
    /// for a session or id the browser does not have yet: a response that comes after the lock
    /// was let go must not overwrite a newer cookie (a lifetime changed before `release()`
    /// reaches the server, not the cookie).
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
        if matches!(self.state, State::Released { .. }) {
            return Ok(());
        }
        // No revocation from here: the response comes after the lock was let go, and could
        // arrive after a sign-in's and remove its cookie; the session is gone from the store
        // already, so the browser's cookie names nothing.
        let cookie = match self.settle(false, Hold::Keep)? {
            CookieAction::Revoke => CookieAction::Nothing,
            cookie => cookie,
        };
        // Dropping the lock lets the next request of this session in.
        self.state = State::Released {
            cookie,
            then: self.record.checkpoint(),
        };
        Ok(())
    }

    /// An error when the session may not change: through an old id ([`ErrorKind::OldId`]),
    /// once it was released, or once the response head went out without a cookie for a
    /// session the browser does not have (a change would be stored where nobody can reach it).
    fn check_writable(&self) -> Result<()> {
        match (&self.state, &self.named) {
            (State::Released { .. }, Named::OldId(old)) => Err(Error::new(
                ErrorKind::OldId,
                format!(
                    "{} is the old id of a session that regenerate_id() moved moments ago: a request through it may read the session, not change it",
                    old.short()
                ),
            )),
            (State::Released { .. }, _) => Err(Error::new(
                ErrorKind::Invalid,
                "the session was released (release()): it can no longer change",
            )),
            _ if self.unreachable => Err(Error::new(
                ErrorKind::Invalid,
                "the response head went out (stream()) without a cookie for this new session: a change now could never reach the visitor",
            )),
            (State::Held(_) | State::Ended { .. }, _) => Ok(()),
        }
    }

    /// An error when a value set now would be lost: the session may not change
    /// ([`Session::check_writable`]), or it ends with this request (deleted, or set to expire
    /// now), taking the value with it.
    fn check_lasting(&self) -> Result<()> {
        self.check_writable()?;
        if matches!(self.state, State::Ended { .. }) || self.ends_now() {
            return Err(Error::new(
                ErrorKind::Invalid,
                "the session ends with this request (expire(Now), log_out_everywhere() or its deadline): a value set now would go with it. To sign out and leave a message for the next page, clear() and regenerate_id(), then set it",
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
            .is_some_and(|deadline| deadline <= self.clock.secs())
    }

    /// Deletes what the store holds of the session (and the old id it is moving from): the
    /// id is dead for the rest of the request.
    fn end(&mut self) -> Result<()> {
        let State::Held(held) = &mut self.state else {
            return Ok(());
        };
        let moved = held.moving_from.is_some();
        if let Some(mut old) = held.moving_from.take() {
            // Regenerated, then ended: the old id ends too, and the new one's reservation.
            old.delete()?;
        }
        if held.stored.take().is_some() || moved {
            held.lock.delete()?;
        }
        self.record.clear();
        if let State::Held(held) = std::mem::replace(&mut self.state, State::Ended { _lock: None })
        {
            self.state = State::Ended {
                _lock: Some(held.lock),
            };
        }
        Ok(())
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("key", &self.key)
            .field("new", &self.is_new())
            .field("values", &self.record.len())
            .finish()
    }
}

fn released_error() -> Error {
    Error::new(ErrorKind::Invalid, "the session's lock was released")
}

fn ended_error(key: &SessionKey) -> Error {
    Error::new(
        ErrorKind::Invalid,
        format!("session {key:?} ended in this request and cannot be saved again"),
    )
}

/// An error message of serde's with every quoted part left out: serde quotes what it read
/// (`invalid type: string "..."`, ``integer `...` ``, ``unknown variant `...` ``), and a session
/// value does not belong in a log. The names of the type's own fields stay (``missing field
/// `stars` ``): they come from the program, not from the value.
fn redacted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut chars = message.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        let close = match c {
            '"' => '"',
            '`' => '`',
            _ => continue,
        };
        let own_name = ["missing field `", "duplicate field `"]
            .iter()
            .any(|before| out.ends_with(before));
        if !own_name {
            out.push_str("...");
        }
        let mut escaped = false;
        for inner in chars.by_ref() {
            if inner == close && !escaped {
                out.push(close);
                break;
            }
            if own_name {
                out.push(inner);
            }
            escaped = close == '"' && inner == '\\' && !escaped;
        }
    }
    out
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

    /// How a session starts at `now`: a browser-close idle limit of `idle` seconds.
    fn start(now: u64, idle: u64, named: Named) -> Start {
        Start {
            clock: Clock::starting_at(at(now)),
            rules: Rules {
                idle_limit: None,
                browser_close_idle: idle,
                lazy: true,
                grace: 5,
                check_ip: false,
            },
            origin: Origin::New,
            named,
            from_url: false,
            client_addr: Some("192.0.2.1".into()),
            expired: None,
        }
    }

    fn fresh(store: &MemoryStore, now: u64) -> Session {
        let lock = store.lock(&suite::key("svc"), suite::options()).unwrap();
        Session::fresh(
            lock,
            Expiry::BrowserClose,
            false,
            start(now, 3600, Named::Nothing),
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
        let key = SessionKey::new("svc".parse().unwrap(), id.clone());
        let mut lock = store.lock(&key, suite::options()).unwrap();
        let record = lock.load().unwrap().expect("stored");
        Session::held(lock, record, start(now, 3600, Named::Current))
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
    fn a_value_of_another_type_is_an_error_for_get_and_gone_for_get_or_remove() {
        #[derive(serde::Serialize)]
        struct Entry {
            name: String,
        }
        #[derive(serde::Deserialize, Debug, PartialEq)]
        struct Review {
            #[allow(dead_code)]
            rating: u8,
        }
        let store = MemoryStore::new();
        let mut session = fresh(&store, T0);
        let entries = vec![Entry {
            name: "secret".into(),
        }];
        session.set("entries", &entries).unwrap();
        session.set("n", &1u64).unwrap();
        let id = session.id().clone();
        session.commit().unwrap();
        drop(session);

        let mut session = reopen(&store, &id, T0 + 10);
        let err = session.get::<Vec<Review>>("entries").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Decode);
        assert!(session.contains("entries"), "get keeps it");
        assert_eq!(session.get_or_remove::<u64>("n").unwrap(), Some(1));
        assert_eq!(session.get_or_remove::<u64>("none").unwrap(), None);
        assert_eq!(
            session.get_or_remove::<Vec<Review>>("entries").unwrap(),
            None
        );
        assert!(!session.contains("entries"));
        session.commit().unwrap();
        drop(session);

        let mut session = reopen(&store, &id, T0 + 20);
        assert!(!session.contains("entries"), "the removal was saved");
        assert_eq!(session.keys().collect::<Vec<_>>(), ["n"]);
        // Released: the value cannot go, and stays.
        session.set("entries", &entries).unwrap();
        session.release().unwrap();
        assert_eq!(
            session.get_or_remove::<Vec<Review>>("entries").unwrap(),
            None
        );
        assert!(session.contains("entries"));
    }

    #[test]
    fn get_or_remove_leaves_psos_own_keys_alone() {
        let store = MemoryStore::new();
        let mut session = fresh(&store, T0);
        session.set_user("eggs").unwrap();
        let err = session.get_or_remove::<u64>(USER).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Decode);
        assert_eq!(session.user(), Some("eggs".to_owned()));
    }

    #[test]
    fn what_serde_read_is_left_out_of_its_messages() {
        for (message, shown) in [
            (
                r#"invalid type: string "hunter2", expected u8"#,
                r#"invalid type: string "...", expected u8"#,
            ),
            (
                r#"invalid type: string "a \" b", expected u8"#,
                r#"invalid type: string "...", expected u8"#,
            ),
            (
                "invalid value: integer `1234`, expected a digit",
                "invalid value: integer `...`, expected a digit",
            ),
            (
                "unknown variant `Secret`, expected `A` or `B`",
                "unknown variant `...`, expected `...` or `...`",
            ),
            (r#"cut "open"#, r#"cut "..."#),
            ("missing field `stars`", "missing field `stars`"),
            ("duplicate field `a`", "duplicate field `a`"),
            ("depth limit exceeded", "depth limit exceeded"),
        ] {
            assert_eq!(redacted(message), shown, "{message}");
        }
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

    /// The browser is sent a cookie only when it needs one: not for a session it already
    /// has (unless the request held it to the end, as a refresh), never after release().
    #[test]
    fn a_cookie_goes_out_only_when_the_browser_needs_it() {
        let store = MemoryStore::new();
        let mut session = fresh(&store, T0);
        session.set("n", &1u64).unwrap();
        let id = session.id().clone();
        assert_eq!(
            session.commit().unwrap(),
            CookieAction::Set(id.clone(), None)
        );
        drop(session);
        let mut again = reopen(&store, &id, T0 + 1);
        again.set("n", &2u64).unwrap();
        assert_eq!(
            again.commit().unwrap(),
            CookieAction::Refresh(id.clone(), None)
        );
        drop(again);
        let mut released = reopen(&store, &id, T0 + 2);
        released.set("n", &3u64).unwrap();
        released.release().unwrap();
        assert_eq!(released.commit().unwrap(), CookieAction::Nothing);
        drop(released);
        // A new lifetime goes out with a request that held the session to its end; after
        // release() it reaches the server only.
        let mut released = reopen(&store, &id, T0 + 3);
        released
            .expire(Expiry::In(Duration::from_secs(60)))
            .unwrap();
        released.release().unwrap();
        assert_eq!(released.commit().unwrap(), CookieAction::Nothing);
        drop(released);
        let mut dated = reopen(&store, &id, T0 + 4);
        dated.expire(Expiry::In(Duration::from_secs(60))).unwrap();
        let deadline = Some(at(T0 + 64));
        assert_eq!(
            dated.commit().unwrap(),
            CookieAction::Set(id, deadline),
            "a new lifetime"
        );
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
        // A value set now would go with the session: an error, not a silent loss.
        assert_eq!(
            session
                .set_for("late", &true, Duration::from_secs(60))
                .unwrap_err()
                .kind(),
            ErrorKind::Invalid
        );
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
        let key = SessionKey::new("svc".parse().unwrap(), session.id().clone());
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
        session.save().unwrap();
        session.expire(Expiry::In(Duration::from_secs(60))).unwrap();
        assert_eq!(
            session.set("n", &2u64).unwrap_err().kind(),
            ErrorKind::Invalid
        );
        assert_eq!(session.save().unwrap_err().kind(), ErrorKind::Invalid);
        assert_eq!(session.commit().unwrap(), CookieAction::Revoke);
        drop(session);
        assert_eq!(store.keys().unwrap().count(), 0);
    }

    #[test]
    fn a_short_idle_limit_is_refreshed_often_enough() {
        let store = MemoryStore::new();
        let lock = store.lock(&suite::key("svc"), suite::options()).unwrap();
        let mut session = Session::fresh(
            lock,
            Expiry::BrowserClose,
            false,
            start(T0, 30, Named::Nothing),
        );
        session.set("n", &1u64).unwrap();
        session.commit().unwrap();
        let id = session.id().clone();
        drop(session);
        // Used every 10 seconds, unchanged: it must never go 30 seconds without a recorded use.
        for t in (10..=120).step_by(10) {
            let key = SessionKey::new("svc".parse().unwrap(), id.clone());
            let mut lock = store.lock(&key, suite::options()).unwrap();
            let record = lock.load().unwrap().unwrap();
            assert!(!record.is_expired(T0 + t), "expired at +{t}s while in use");
            Session::held(lock, record, start(T0 + t, 30, Named::Current))
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

    #[test]
    fn form_tokens_issued_before_regenerate_are_void() {
        let store = MemoryStore::new();
        let mut session = fresh(&store, T0);
        let token = session.create_form_token().unwrap();
        session.regenerate_id().unwrap();
        assert!(!session.take_form_token(&token).unwrap());
    }

    /// A session regenerated and then ended in the same request leaves nothing: not the old
    /// id, not the new one's reservation.
    #[test]
    fn a_session_regenerated_then_ended_leaves_nothing() {
        let store = MemoryStore::new();
        let id = stored(&store, T0).id().clone();
        let mut session = reopen(&store, &id, T0 + 1);
        session.regenerate_id().unwrap();
        session.expire(Expiry::Now).unwrap();
        assert_eq!(session.commit().unwrap(), CookieAction::Revoke);
        drop(session);
        assert_eq!(store.keys().unwrap().count(), 0);
    }

    // ---------------------------------------------------------------------------------------
    // Through the request path: regenerate_id and old ids, release, values with a life.

    use crate::BoxError;
    use crate::runner::Context;
    use crate::testing::{Site, counter, counter_with_origin, login, look, say_who, signed_in};
    use std::io::Write;

    #[test]
    fn a_planted_id_is_worth_nothing_after_sign_in_even_in_the_grace() {
        let site = Site::new();
        // The attacker gets an id and plants it in the victim's browser; the victim signs in.
        let attacker = "203.0.113.66";
        let planted = site.visit().from(attacker).issued(&login);
        let victims = site
            .visit()
            .cookie(&planted)
            .query("login")
            .at(1)
            .send(&login);
        let victims = victims.cookie().unwrap().to_owned();
        // Within the grace, from the attacker's address: not the victim's session.
        let theirs = site
            .visit()
            .from(attacker)
            .cookie(&planted)
            .at(2)
            .send(&login);
        assert_eq!(theirs.body(), "Replaced(OtherAddress) n=1 user=None");
        assert_ne!(theirs.cookie(), Some(victims.as_str()));
        let victim = site.visit().cookie(&victims).at(3).send(&login);
        assert_eq!(
            victim.body(),
            "Returning n=3 user=Some(\"eggs\")",
            "the victim goes on"
        );
    }

    #[test]
    fn a_request_that_fails_after_regenerate_leaves_the_old_id_as_it_was() {
        let failing = |cx: &mut Context<'_>| -> std::result::Result<(), BoxError> {
            cx.session.set("cart", "spam")?;
            if cx.request.query("login").is_some() {
                cx.session.regenerate_id()?;
                return Err("the page failed after the new id".into());
            }
            write!(cx.response, "{:?}", cx.session.origin())?;
            Ok(())
        };
        let site = Site::new();
        let cookie = site.visit().issued(&failing);
        let failed = site
            .visit()
            .cookie(&cookie)
            .query("login")
            .at(1)
            .send(&failing);
        assert!(failed.text.starts_with("Status: 500"), "{}", failed.text);
        assert_eq!(failed.cookie(), None);
        let later = site.visit().cookie(&cookie).at(60).send(&failing);
        assert_eq!(later.body(), "Returning", "the old id still holds the cart");
    }

    #[test]
    fn regenerate_moves_the_data_and_the_old_id_leads_there_only_during_its_grace() {
        let site = Site::new();
        let (old, new) = signed_in(&site);
        assert_ne!(new, old, "a new id at login");
        // A request already under way with the old id, within the grace: the same session to
        // read, but never the new id (whoever holds the old id must not learn it), and no
        // change: the count a page of it tries to raise is a 409.
        let late = site.visit().cookie(&old).at(4).send(&look);
        assert_eq!(late.body(), "Moved n=2 user=Some(\"eggs\")");
        assert_eq!(late.set_cookies(), Vec::<&str>::new());
        assert!(!late.text.contains(&new[4..]), "{}", late.text);
        let counting = site.visit().cookie(&old).at(4).send(&login);
        assert_eq!(counting.status(), "409 Conflict");
        // Both cookies at once (an old one left on another path): one session, not two.
        let both = site
            .visit()
            .cookie(&format!("{old}; {new}"))
            .at(5)
            .send(&login);
        assert_eq!(both.body(), "Returning n=3 user=Some(\"eggs\")");
        // After the grace the old id is dead; the new one goes on.
        let dead = site.visit().cookie(&old).at(7).send(&login);
        assert_eq!(dead.body(), "Replaced(Unknown) n=1 user=None");
        assert_ne!(dead.cookie(), Some(new.as_str()));
        let going_on = site.visit().cookie(&new).at(8).send(&login);
        assert_eq!(going_on.body(), "Returning n=4 user=Some(\"eggs\")");
    }

    #[test]
    fn a_session_regenerated_twice_within_its_grace_still_serves_its_first_id() {
        // Sign-in, then at once a change of privilege: a request under way with the first id
        // goes through both forwards to the session, and learns neither new id.
        let site = Site::new();
        let (first, second) = signed_in(&site);
        let third = site
            .visit()
            .cookie(&second)
            .query("login")
            .at(2)
            .send(&login);
        let third = third.cookie().unwrap().to_owned();
        assert!(first != second && second != third && first != third);
        for (old, t) in [(&first, 3), (&second, 4)] {
            let reply = site.visit().cookie(old).at(t).send(&look);
            assert_eq!(reply.body(), "Moved n=3 user=Some(\"eggs\")");
            assert_eq!(
                reply.set_cookies(),
                Vec::<&str>::new(),
                "an old id never learns a new one"
            );
        }
        // The grace of the first forward ends first; the newest id goes on.
        let dead = site.visit().cookie(&first).at(7).send(&login);
        assert_eq!(dead.body(), "Replaced(Unknown) n=1 user=None");
        let going_on = site.visit().cookie(&third).at(8).send(&login);
        assert_eq!(going_on.body(), "Returning n=4 user=Some(\"eggs\")");
    }

    #[test]
    fn an_old_id_cannot_regenerate_the_session_it_leads_to() {
        // A request with the old id, in the grace and from the same address, that asks for a
        // new id (a form loaded through it, or someone who planted it) gets a 409: moving the
        // session would hand the old id's holder the newest id.
        let site = Site::new();
        let (old, new) = signed_in(&site);
        let refused = site.visit().cookie(&old).query("login").at(2).send(&login);
        assert!(refused.text.contains("409 Conflict"), "{}", refused.text);
        assert_eq!(refused.set_cookies(), Vec::<&str>::new());
        let owner = site.visit().cookie(&new).at(9).send(&login);
        assert_eq!(
            owner.body(),
            "Returning n=3 user=Some(\"eggs\")",
            "the owner keeps it"
        );
    }

    #[test]
    fn without_a_grace_the_old_id_dies_at_once() {
        let site = Site::new();
        let no_grace = [("PSOSessionRegenerateGrace", "0")];
        let old = site.visit().envs(&no_grace).issued(&login);
        let new = site
            .visit()
            .envs(&no_grace)
            .cookie(&old)
            .query("login")
            .at(1)
            .send(&login);
        assert_ne!(new.cookie(), Some(old.as_str()));
        let dead = site.visit().envs(&no_grace).cookie(&old).at(1).send(&login);
        assert_eq!(dead.body(), "Replaced(Unknown) n=1 user=None");
        assert_eq!(site.records(), 2, "the new session and the one just made");
    }

    #[test]
    fn an_old_id_never_learns_the_new_one_through_links_or_id() {
        // Ids in URLs (PSOSessionUrl=on): links are built from cx.url, which uses the id.
        let linker = |cx: &mut Context<'_>| -> std::result::Result<(), BoxError> {
            if cx.session.is_new() {
                cx.session.set("seen", &true)?;
            }
            if cx.request.query("login").is_some() {
                cx.session.regenerate_id()?;
            }
            write!(cx.response, "{} {}", cx.url("/next"), cx.session.id())?;
            Ok(())
        };
        let site = Site::new();
        let visit = |query: &str, t: u64| {
            site.visit()
                .query(query)
                .env("PSOSessionUrl", "on")
                .env("HTTP_SEC_FETCH_SITE", "same-origin")
                .at(t)
        };
        let first = visit("", 0).send(&linker);
        let old = first
            .cookie()
            .unwrap()
            .split_once('=')
            .unwrap()
            .1
            .to_owned();
        let signed_in = visit(&format!("app={old}&login"), 1).send(&linker);
        let new = signed_in
            .cookie()
            .unwrap()
            .split_once('=')
            .unwrap()
            .1
            .to_owned();
        assert_ne!(old, new);
        let late = visit(&format!("app={old}"), 3).send(&linker);
        assert_eq!(late.body(), format!("/next?app={old} {old}"));
        assert_eq!(late.set_cookies(), Vec::<&str>::new());
        let read = visit(&format!("app={old}"), 3).read_only().send(&linker);
        assert!(!read.text.contains(&new), "{}", read.text);
    }

    #[test]
    fn an_old_id_cannot_sign_the_session_in_as_someone_else() {
        let sign_in = |cx: &mut Context<'_>| -> std::result::Result<(), BoxError> {
            if let Some(user) = cx.request.query("as") {
                cx.session.set_user(&user)?;
            }
            write!(cx.response, "{:?}", cx.session.user())?;
            Ok(())
        };
        let site = Site::new();
        let (old, new) = signed_in(&site);
        let refused = site
            .visit()
            .cookie(&old)
            .query("as=mallory")
            .at(2)
            .send(&sign_in);
        assert!(refused.text.starts_with("Status: 409"), "{}", refused.text);
        let owner = site.visit().cookie(&new).at(3).send(&sign_in);
        assert!(owner.text.ends_with("None"), "unchanged: {}", owner.text);
    }

    /// Signing out with a message for the next page: after `expire(Now)` a value is an error
    /// (it would vanish with the session); emptied and moved to a new id, the session carries
    /// the message and nothing else, and the old id no longer signs anyone in.
    #[test]
    fn a_message_outlives_a_sign_out_only_through_a_new_id() {
        let sign_out = |cx: &mut Context<'_>| -> std::result::Result<(), BoxError> {
            match cx.request.query("do").as_deref() {
                Some("expire") => {
                    cx.session.expire(Expiry::Now)?;
                    let lost = cx.session.set("flash", "signed out");
                    assert_eq!(lost.unwrap_err().kind(), ErrorKind::Invalid);
                }
                Some("flash") => {
                    cx.session.clear()?;
                    cx.session.regenerate_id()?;
                    cx.session.set("flash", "signed out")?;
                }
                _ => {}
            }
            let flash: Option<String> = cx.session.get("flash")?;
            write!(cx.response, "{:?} {flash:?}", cx.session.user())?;
            Ok(())
        };
        let site = Site::new();
        let (_, ada) = signed_in(&site);
        let out = site
            .visit()
            .cookie(&ada)
            .query("do=flash")
            .at(2)
            .send(&sign_out);
        let next = out.cookie().expect("the new id's cookie").to_owned();
        assert_ne!(next, ada);
        let page = site.visit().cookie(&next).at(3).send(&sign_out);
        assert!(
            page.text.ends_with("None Some(\"signed out\")"),
            "{}",
            page.text
        );
        // Past the grace, the signed-in id leads nowhere.
        let old = site.visit().cookie(&ada).at(20).send(&sign_out);
        assert!(old.text.ends_with("None None"), "{}", old.text);
        let (_, bob) = signed_in(&site);
        let ended = site
            .visit()
            .cookie(&bob)
            .query("do=expire")
            .at(30)
            .send(&sign_out);
        assert!(ended.text.starts_with("Status: 200"), "{}", ended.text);
    }

    /// Through the old id (a planted one, polled by someone behind the same address as the
    /// owner), nothing changes: no value, no user, no limit, no lifetime, no form token kept
    /// in the session, not even a sign-out; a handler that answers the refusal with a redirect
    /// leaves the owner's session as it was.
    #[test]
    fn through_an_old_id_nothing_changes() {
        let careless = |cx: &mut Context<'_>| -> std::result::Result<(), BoxError> {
            let tried: std::result::Result<(), crate::Error> =
                match cx.request.query("do").as_deref() {
                    Some("set") => cx.session.set("ship_to", "attacker street"),
                    Some("user") => cx.session.set_user("mallory"),
                    Some("limit") => cx
                        .session
                        .set_idle_limit(Some(Duration::from_secs(100_000))),
                    Some("expire") => cx
                        .session
                        .expire(Expiry::In(Duration::from_secs(365 * 86_400))),
                    Some("logout") => cx.session.expire(Expiry::Now),
                    Some("everywhere") => cx.session.log_out_everywhere(),
                    Some("clear") => cx.session.clear(),
                    Some("regenerate") => cx.session.regenerate_id(),
                    Some("remove") => cx.session.remove("user").map(|_| ()),
                    Some("save") => cx.session.save(),
                    _ => Ok(()),
                };
            if let Err(e) = tried {
                assert_eq!(e.kind(), ErrorKind::OldId, "{e}");
                cx.response.redirect("/")?;
                return Ok(());
            }
            write!(cx.response, "{:?}", cx.session.origin())?;
            Ok(())
        };
        let site = Site::new();
        let (old, new) = signed_in(&site);
        for what in [
            "set",
            "user",
            "limit",
            "expire",
            "logout",
            "everywhere",
            "clear",
            "regenerate",
            "remove",
            "save",
        ] {
            let refused = site
                .visit()
                .cookie(&old)
                .query(&format!("do={what}"))
                .at(2)
                .send(&careless);
            assert_eq!(refused.status(), "302 Found", "{what}: {}", refused.text);
            assert_eq!(refused.set_cookies(), Vec::<&str>::new(), "{what}");
        }
        // A page of it that issues a form token: tied to the requester's form cookie, never
        // kept in the owner's session.
        let token_page = |cx: &mut Context<'_>| -> std::result::Result<(), BoxError> {
            let token = cx.session.create_form_token()?;
            write!(cx.response, "{token}")?;
            Ok(())
        };
        let minted = site.visit().cookie(&old).at(2).send(&token_page);
        assert_eq!(
            minted.body().len(),
            crate::form_token::COOKIE_TOKEN_LEN,
            "{}",
            minted.text
        );
        let later = |cx: &mut Context<'_>| -> std::result::Result<(), BoxError> {
            let token = cx.request.query("token").unwrap_or_default();
            write!(cx.response, "{}", cx.session.take_form_token(&token)?)?;
            Ok(())
        };
        let used = site
            .visit()
            .cookie(&new)
            .query(&format!("token={}", minted.body()))
            .env("HTTP_SEC_FETCH_SITE", "same-origin")
            .at(100)
            .send(&later);
        assert_eq!(
            used.body(),
            "false",
            "the owner's session took no token of it"
        );
        let owner = site.visit().cookie(&new).at(100).send(&look);
        assert_eq!(
            owner.body(),
            "Returning n=2 user=Some(\"eggs\")",
            "untouched"
        );
        let limits = site.visit().cookie(&new).at(100).send(&say_who);
        assert_eq!(limits.body(), "Returning None");
    }

    #[test]
    fn regenerate_after_the_head_is_out_is_refused_and_the_session_kept() {
        let late = |cx: &mut Context<'_>| -> std::result::Result<(), BoxError> {
            let n: u64 = cx.session.get("n")?.unwrap_or(0) + 1;
            cx.session.set("n", &n)?;
            cx.stream()?;
            let outcome = cx.session.regenerate_id();
            write!(cx.response, "{n} {}", outcome.is_err())?;
            Ok(())
        };
        let site = Site::new();
        let cookie = site.visit().issued(&counter);
        let text = site.visit().cookie(&cookie).send(&late).text;
        assert!(text.ends_with("2 true"), "{text}");
        assert_eq!(
            site.visit().cookie(&cookie).send(&counter).body(),
            "3",
            "nothing lost"
        );
    }

    #[test]
    fn a_forced_id_cannot_be_regenerated() {
        let site = Site::new();
        let forced = [("PSOServiceId", "app"), ("app", "shared-007")];
        assert_eq!(
            site.visit().envs(&forced).send(&login).body(),
            "Forced n=1 user=None"
        );
        let refused = site.visit().envs(&forced).query("login").at(1).send(&login);
        assert_eq!(refused.status(), "500 Internal Server Error");
        let after = site.visit().envs(&forced).at(2).send(&login);
        assert_eq!(after.body(), "Forced n=2 user=None", "the data is intact");
    }

    #[test]
    fn a_released_session_lets_its_next_request_run_meanwhile() {
        use std::sync::mpsc;
        let site = Site::new();
        let cookie = site.visit().issued(&counter);
        let (done, finished) = mpsc::channel::<String>();
        let finished = std::sync::Mutex::new(finished);
        // The slow request releases its session, then waits (boundedly) for a second request
        // of the same session to finish: with the lock still held, that one would wait for
        // the lock instead, and the first would give up.
        let slow = |cx: &mut Context<'_>| -> std::result::Result<(), BoxError> {
            let n: u64 = cx.session.get("n")?.unwrap_or(0);
            cx.session.release()?;
            let other = finished
                .lock()
                .unwrap()
                .recv_timeout(Duration::from_secs(10))?;
            write!(
                cx.response,
                "read {n} while the other request answered {other}"
            )?;
            Ok(())
        };
        std::thread::scope(|scope| {
            let first = scope.spawn(|| {
                site.visit()
                    .cookie(&cookie)
                    .env("PSOSessionLockTimeout", "20")
                    .send(&slow)
            });
            std::thread::sleep(Duration::from_millis(50));
            let second = site.visit().cookie(&cookie).send(&counter);
            done.send(second.body().to_owned()).unwrap();
            let first = first.join().unwrap();
            assert!(
                first
                    .body()
                    .ends_with("read 1 while the other request answered 2"),
                "{}",
                first.text
            );
        });
    }

    /// A page's poll (read-only, or released early) is still on its way when another request
    /// signs in and moves the session to a new id: its answer, arriving last, must not put the
    /// old id back in the browser.
    #[test]
    fn an_answer_that_arrives_during_a_sign_in_never_puts_the_old_id_back() {
        use std::sync::mpsc;
        let site = Site::new();
        let (_, mut cookie) = signed_in(&site);
        for read_only in [true, false] {
            let current = cookie.clone();
            let (signed, signed_in_now) = mpsc::channel::<()>();
            let signed_in_now = std::sync::Mutex::new(signed_in_now);
            let poll = |cx: &mut Context<'_>| -> std::result::Result<(), BoxError> {
                let n: Option<u64> = cx.session.get("n")?;
                cx.session.release()?;
                signed_in_now
                    .lock()
                    .unwrap()
                    .recv_timeout(Duration::from_secs(10))?;
                write!(cx.response, "{n:?}")?;
                Ok(())
            };
            cookie = std::thread::scope(|scope| {
                let polling = scope.spawn(|| {
                    let visit = site.visit().cookie(&current).at(3);
                    if read_only { visit.read_only() } else { visit }.send(&poll)
                });
                std::thread::sleep(Duration::from_millis(50));
                let moved = site
                    .visit()
                    .cookie(&current)
                    .query("login")
                    .at(3)
                    .send(&login);
                let moved = moved.cookie().unwrap().to_owned();
                assert_ne!(moved, current);
                signed.send(()).unwrap();
                let answered = polling.join().unwrap();
                assert_eq!(answered.status(), "200 OK", "{}", answered.text);
                assert_eq!(answered.cookie(), None, "read_only: {read_only}");
                moved
            });
        }
    }

    #[test]
    fn a_change_after_release_fails_the_request_and_is_not_saved() {
        let site = Site::new();
        let cookie = site.visit().issued(&counter);
        let late_remove = |cx: &mut Context<'_>| -> std::result::Result<(), BoxError> {
            cx.session.release()?;
            cx.session.remove("n")?;
            Ok(())
        };
        // Once the response streams, the status cannot change: the handler hears of a logout
        // that cannot happen from the call itself, and can say so.
        let late_logout = |cx: &mut Context<'_>| -> std::result::Result<(), BoxError> {
            cx.session.release()?;
            cx.stream()?;
            match cx.session.expire(crate::Expiry::Now) {
                Ok(()) => write!(cx.response, "signed out")?,
                Err(e) => write!(cx.response, "not signed out: {e}")?,
            }
            Ok(())
        };
        let streamed = site.visit().cookie(&cookie).send(&late_logout);
        assert!(
            streamed.text.ends_with(
                "not signed out: the session was released (release()): it can no longer change"
            ),
            "{}",
            streamed.text
        );
        let late_set = |cx: &mut Context<'_>| -> std::result::Result<(), BoxError> {
            cx.session.release()?;
            cx.session.set("n", &100u64)?;
            Ok(())
        };
        assert_eq!(
            site.visit().cookie(&cookie).send(&late_remove).status(),
            "500 Internal Server Error"
        );
        assert_eq!(
            site.visit().cookie(&cookie).send(&late_set).status(),
            "500 Internal Server Error"
        );
        assert_eq!(
            site.visit().cookie(&cookie).send(&counter).body(),
            "2",
            "nothing was lost or changed"
        );
    }

    #[test]
    fn a_session_with_its_own_idle_limit_times_out_by_it() {
        let short = |cx: &mut Context<'_>| -> std::result::Result<(), BoxError> {
            if cx.request.query("short").is_some() {
                cx.session.set_idle_limit(Some(Duration::from_secs(60)))?;
            }
            cx.session.set("v", &1u8)?;
            write!(cx.response, "{:?}", cx.session.origin())?;
            Ok(())
        };
        let site = Site::new();
        let cookie = site.visit().query("short").issued(&short);
        let at = |t| site.visit().cookie(&cookie).at(t).answer(&short);
        assert_eq!(at(60), "Returning");
        assert_eq!(at(121), "Replaced(Idle)");
    }

    #[test]
    fn a_value_set_for_a_while_is_gone_after_it() {
        let code = |cx: &mut Context<'_>| -> std::result::Result<(), BoxError> {
            if cx.request.query("new").is_some() {
                cx.session.set("user", "eggs")?;
                cx.session
                    .set_for("code", "493817", Duration::from_secs(60))?;
            }
            let code: Option<String> = cx.session.get("code")?;
            let user: Option<String> = cx.session.get("user")?;
            write!(cx.response, "{code:?} {user:?}")?;
            Ok(())
        };
        let site = Site::new();
        let cookie = site.visit().query("new").issued(&code);
        let at = |t| site.visit().cookie(&cookie).at(t).answer(&code);
        assert_eq!(at(59), "Some(\"493817\") Some(\"eggs\")");
        assert_eq!(at(60), "None Some(\"eggs\")");
        assert_eq!(
            at(61),
            "None Some(\"eggs\")",
            "gone from the store, not only hidden"
        );
    }

    /// Sets a value, clears the session (`?clear`), or only looks (`?look`).
    fn tidy(cx: &mut Context<'_>) -> std::result::Result<(), BoxError> {
        if cx.request.query("clear").is_some() {
            cx.session.clear()?;
        } else if cx.request.query("look").is_none() {
            cx.session.set("v", &1u8)?;
        }
        Ok(())
    }

    #[test]
    fn lazily_an_empty_session_is_never_stored_and_an_emptied_one_is_deleted() {
        let site = Site::new();
        let lazily = |query: &str, cookie: &str| {
            site.visit()
                .query(query)
                .cookie(cookie)
                .env("PSOSessionLazy", "on")
                .send(&tidy)
        };
        assert_eq!(lazily("look", "").cookie(), None);
        assert_eq!(site.records(), 0);
        let cookie = lazily("", "").cookie().unwrap().to_owned();
        assert_eq!(site.records(), 1);
        let cleared = lazily("clear", &cookie);
        assert!(
            cleared.text.contains("Max-Age=0"),
            "the cookie is revoked: {}",
            cleared.text
        );
        assert_eq!(site.records(), 0, "the emptied session is gone");
    }

    #[test]
    fn not_lazily_every_visitor_gets_a_stored_session_that_stays_when_emptied() {
        let site = Site::new();
        let eagerly = |query: &str, cookie: &str| {
            site.visit()
                .query(query)
                .cookie(cookie)
                .env("PSOSessionLazy", "off")
                .send(&tidy)
        };
        let looked = eagerly("look", "");
        let cookie = looked
            .cookie()
            .expect("a cookie for a session without values")
            .to_owned();
        assert_eq!(site.records(), 1);
        let cleared = eagerly("clear", &cookie);
        assert_eq!(cleared.status(), "200 OK");
        assert!(!cleared.text.contains("Max-Age=0"), "{}", cleared.text);
        assert_eq!(site.records(), 1);
    }

    #[test]
    fn expire_now_revokes() {
        let site = Site::new();
        let cookie = site.visit().issued(&counter);
        let reply = site
            .visit()
            .cookie(&cookie)
            .query("logout=1")
            .send(&counter);
        assert!(reply.text.contains("Set-Cookie: app=; HttpOnly; SameSite=Lax; Path=/; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT\r\n"), "{}", reply.text);
        assert_eq!(site.visit().cookie(&cookie).send(&counter).body(), "1");
    }

    #[test]
    fn lifetimes_reach_the_cookie_and_the_server() {
        let site = Site::new();
        let lifetime = [("PSOSessionExpire", "15*60")];
        let first = site.visit().envs(&lifetime).send(&counter);
        assert!(
            first.text.contains("; Max-Age=900; Expires="),
            "{}",
            first.text
        );
        let cookie = first.cookie().unwrap().to_owned();
        let later = |t| {
            site.visit()
                .envs(&lifetime)
                .cookie(&cookie)
                .at(t)
                .send(&counter)
        };
        let reply = later(899);
        assert_eq!(reply.body(), "2");
        assert_eq!(
            reply.cookie(),
            None,
            "the browser's cookie runs out by itself"
        );
        assert_eq!(
            later(900).body(),
            "1",
            "past its deadline the session is dead"
        );
        // A cookie lifetime of its own that runs from each response is sent again, by a
        // request that held the session to its end.
        let sliding = [("PSOCookieSession_Max-Age", "3600")];
        let first = site.visit().envs(&sliding).send(&counter);
        let cookie = first.cookie().unwrap().to_owned();
        let again = site
            .visit()
            .envs(&sliding)
            .cookie(&cookie)
            .at(10)
            .send(&counter);
        assert!(
            again.text.contains(&format!("Set-Cookie: {cookie}; ")),
            "{}",
            again.text
        );
        assert!(again.text.contains("; Max-Age=3600"), "{}", again.text);
    }

    /// A sign-in, or an upload, that takes longer than the limits it sets: the old id's grace
    /// and the session's idle clock run from when the session is saved, not from when the
    /// request began.
    #[test]
    fn a_long_request_leaves_the_grace_and_the_idle_clock_from_its_end() {
        let slow = |cx: &mut Context<'_>| -> std::result::Result<(), BoxError> {
            cx.session.set("upload", "done")?;
            if cx.request.query("login").is_some() {
                cx.session.regenerate_id()?;
            }
            std::thread::sleep(Duration::from_millis(1_500));
            Ok(())
        };
        let site = Site::new();
        let limits = [("PSOSessionRegenerateGrace", "1"), ("PSOSessionIdle", "1")];
        let old = site.visit().envs(&limits).issued(&counter);
        let new = site
            .visit()
            .envs(&limits)
            .cookie(&old)
            .query("login")
            .send(&slow)
            .cookie()
            .unwrap()
            .to_owned();
        // Saved a second or more after it began: the grace and the idle limit count from then.
        let late = site.visit().envs(&limits).cookie(&old).at(1).send(&look);
        assert!(late.body().starts_with("Moved"), "{}", late.text);
        let after = site.visit().envs(&limits).cookie(&new).at(2).send(&counter);
        assert_eq!(after.body(), "2", "{}", after.text);
    }

    /// Once the head went out without a cookie for a new session, a change to it could never
    /// reach the visitor: an error, not a value stored where nobody will find it.
    #[test]
    fn a_change_after_the_head_went_out_without_a_cookie_is_an_error() {
        let late = |cx: &mut Context<'_>| -> std::result::Result<(), BoxError> {
            cx.stream()?;
            let tried = cx.session.set("n", &1u64);
            write!(cx.response, "{}", tried.is_err())?;
            Ok(())
        };
        let site = Site::new();
        let reply = site.visit().send(&late);
        assert_eq!(reply.body(), "true", "{}", reply.text);
        assert_eq!(site.records(), 0);
        // A returning visitor's session, or a new one whose cookie went out with the head,
        // goes on changing.
        let stored_first = |cx: &mut Context<'_>| -> std::result::Result<(), BoxError> {
            cx.session.set("n", &1u64)?;
            cx.stream()?;
            cx.session.set("n", &2u64)?;
            Ok(())
        };
        let cookie = site.visit().issued(&stored_first);
        let cookie_then_more = site.visit().cookie(&cookie).send(&late);
        assert_eq!(cookie_then_more.body(), "false");
    }

    /// A request with the old id, already waiting for the lock while a slow sign-in saves, is
    /// served the session to read, as the grace promises; and the grace is the grace, whatever
    /// the idle limit.
    #[test]
    fn a_request_waiting_behind_a_slow_sign_in_is_served_through_the_old_id() {
        let slow_login = |cx: &mut Context<'_>| -> std::result::Result<(), BoxError> {
            cx.session.set("user", "eggs")?;
            cx.session.regenerate_id()?;
            std::thread::sleep(Duration::from_millis(1_200));
            Ok(())
        };
        let site = Site::new();
        let limits = [("PSOSessionRegenerateGrace", "10"), ("PSOSessionIdle", "2")];
        let old = site.visit().envs(&limits).issued(&counter);
        std::thread::scope(|scope| {
            let signing_in = scope.spawn(|| {
                site.visit()
                    .envs(&limits)
                    .cookie(&old)
                    .at(1)
                    .send(&slow_login)
            });
            std::thread::sleep(Duration::from_millis(300));
            let waiting = site.visit().envs(&limits).cookie(&old).at(1).send(&look);
            assert_eq!(
                waiting.body(),
                "Moved n=1 user=Some(\"eggs\")",
                "{}",
                waiting.text
            );
            assert!(signing_in.join().unwrap().cookie().is_some());
        });
        // Past the idle limit of the old id's forward (were it a session), within the grace
        // (and the session it leads to alive).
        let later = site.visit().envs(&limits).cookie(&old).at(4).send(&look);
        assert!(later.body().starts_with("Moved"), "{}", later.text);
    }

    /// A request that changes nothing but runs long records that it used the session.
    #[test]
    fn a_long_request_that_changes_nothing_keeps_its_session_alive() {
        let slow = |cx: &mut Context<'_>| -> std::result::Result<(), BoxError> {
            std::thread::sleep(Duration::from_millis(1_200));
            write!(cx.response, "{:?}", cx.session.origin())?;
            Ok(())
        };
        let site = Site::new();
        let idle = [("PSOSessionIdle", "2")];
        let cookie = site.visit().envs(&idle).issued(&counter);
        assert_eq!(
            site.visit().envs(&idle).cookie(&cookie).at(1).answer(&slow),
            "Returning"
        );
        assert_eq!(
            site.visit()
                .envs(&idle)
                .cookie(&cookie)
                .at(4)
                .answer(&counter_with_origin),
            "Returning 2"
        );
    }

    /// A request that fails after it stored a move to a new id (or a new session) still sends
    /// that id's cookie with its error page: the browser would lose the session otherwise.
    #[test]
    fn a_failure_after_a_stored_move_still_sends_the_new_cookie() {
        let failing = |cx: &mut Context<'_>| -> std::result::Result<(), BoxError> {
            cx.session.set("cart", "spam")?;
            if cx.request.query("login").is_some() {
                cx.session.regenerate_id()?;
            }
            if cx.request.query("release").is_some() {
                cx.session.release()?;
            } else {
                cx.session.save()?;
            }
            Err("the page failed after the save".into())
        };
        let site = Site::new();
        for how in ["login", "login&release"] {
            let fresh = site.visit().send(&failing);
            assert_eq!(fresh.status(), "500 Internal Server Error");
            let cookie = fresh.cookie().expect("the new session's cookie").to_owned();
            let moved = site.visit().cookie(&cookie).query(how).at(1).send(&failing);
            assert_eq!(moved.status(), "500 Internal Server Error", "{how}");
            let new = moved.cookie().expect("the new id's cookie").to_owned();
            assert_ne!(new, cookie);
            let back = site
                .visit()
                .cookie(&new)
                .at(20)
                .answer(&counter_with_origin);
            assert_eq!(
                back, "Returning 1",
                "{how}: the cart is there, counted from it"
            );
        }
    }

    /// A released request that ends its session sends no revocation: it could arrive after a
    /// sign-in's cookie and remove it.
    #[test]
    fn a_released_request_that_ends_its_session_revokes_no_cookie() {
        let last = |cx: &mut Context<'_>| -> std::result::Result<(), BoxError> {
            cx.session.remove("n")?;
            cx.session.release()?;
            Ok(())
        };
        let site = Site::new();
        let cookie = site.visit().issued(&counter);
        let ended = site.visit().cookie(&cookie).send(&last);
        assert_eq!(ended.set_cookies(), Vec::<&str>::new(), "{}", ended.text);
        assert_eq!(site.records(), 0, "ended all the same");
    }

    /// With an id of its own next to the old one, whoever holds the old id cannot end the
    /// session it leads to.
    #[test]
    fn an_old_id_beside_a_session_of_ones_own_ends_nothing_of_the_owners() {
        let site = Site::new();
        let (old, new) = signed_in(&site);
        let mine = site.visit().at(1).issued(&counter);
        let both = site
            .visit()
            .cookie(&format!("{old}; {mine}"))
            .at(2)
            .send(&look);
        assert!(
            both.body().starts_with("Replaced(Ambiguous)"),
            "{}",
            both.text
        );
        let owner = site.visit().cookie(&new).at(3).answer(&look);
        assert_eq!(owner, "Returning n=2 user=Some(\"eggs\")");
    }

    #[test]
    fn the_clock_dates_this_moment_to_the_second() {
        let start = UNIX_EPOCH + Duration::from_millis(T0 * 1000 + 900);
        let clock = Clock::starting_at(start);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(clock.secs(), T0);
        assert_eq!(clock.secs_now(), T0 + 1);
        assert!(clock.millis_now() >= T0 * 1000 + 1_100);
    }
}
