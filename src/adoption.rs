//! Which session a request gets, and why: the visitor's own, a forced one, or a fresh one.
//!
//! Strict mode lives here. An id from a cookie is adopted only if the store holds a live
//! session under it; an id that names nothing, an expired or unreadable session is never
//! adopted (and what it names is removed). A header is never resolved by order: when several
//! cookies name live sessions, none is adopted and they all end.
//!
//! Cost is bounded whatever a header holds: ids that name nothing are dropped after a cheap
//! existence check (no lock, no read), so made-up ids cannot crowd out the visitor's own; at
//! most [`MAX_CANDIDATES`] stored sessions are locked and loaded, and a request naming more
//! (someone made that many sessions to toss them) adopts none and ends them all, so the
//! tossed cookies name nothing on the next request.

use std::time::{Duration, Instant, SystemTime};

use crate::config::Config;
use crate::cookies::{MAX_CANDIDATES, MAX_OFFERED, offered_ids};
use crate::error::{ErrorChain, ErrorKind, Result};
use crate::expiry::{Expiry, unix_secs};
use crate::id::SessionId;
use crate::record::Record;
use crate::session::{
    Ended, MOVED_TO, Origin, Rules, Session, USER, USER_RECORD, USER_SINCE, logged_out_before,
    repair_user_record, user_record_id,
};
use crate::store::{LockOptions, LockedSession, SessionKey, Store};

/// Forwards followed from an old id: as many regenerations of one session within its grace
/// as a login flow makes (sign-in, a change of privilege), and no loop.
pub(crate) const MAX_FORWARDS: usize = 4;

/// What the request brings that decides its session.
pub(crate) struct Claim<'a> {
    /// The raw `Cookie` header (`HTTP_COOKIE`), any bytes.
    pub cookie_header: &'a [u8],
    /// `REMOTE_ADDR`, recorded in a new session.
    pub client_addr: Option<&'a str>,
    /// The query string, where the id may be with `PSOSessionUrl=on`.
    pub query: &'a str,
}

/// Finds the request's session, or starts a new one, and says why.
pub(crate) fn adopt(
    store: &dyn Store,
    config: &Config,
    claim: &Claim<'_>,
    now: SystemTime,
) -> Result<(Session, Origin)> {
    let now_secs = unix_secs(now);
    let idle = Rules::of(config);
    let fresh = |lock| Session::fresh(lock, now, config.lifetime, claim.client_addr, idle);
    let options = LockOptions::new(config.lock_timeout);
    if let Some(id) = &config.forced_id {
        // The server chose the id: adopt or (re)create it, never replace it.
        let key = SessionKey::new(config.service.clone(), id.clone());
        let mut lock = store.lock(&key, options.with_create(true))?;
        let loaded = load_live(&mut *lock, idle, claim.client_addr, now_secs)?;
        let session = match forced(store, &key, loaded, Some(now))? {
            Forced::Live(record) => Session::existing(lock, record, now, idle, Origin::Forced),
            // What the store holds goes when this request saves, or ends without values.
            Forced::Gone {
                origin,
                expired,
                replaces: true,
            } => fresh(lock).over_stored().replacing(origin, expired),
            Forced::Gone { origin, .. } => fresh(lock).replacing(origin, None),
            // Another address's (PSOSessionCheckIP): left alone, so this request gets an
            // empty session it cannot store.
            Forced::Foreign(origin) => {
                Session::read_only(key.clone(), None, now, idle, origin, None)
            }
        }
        .forced()
        .requested_from(claim.client_addr);
        let origin = session.origin();
        return Ok((session, origin));
    }

    let offered = offered(config, claim);
    if offered.malformed > 0 {
        log::warn!(
            "ignoring {} malformed value(s) of the session cookie {}",
            offered.malformed,
            config.cookie.name
        );
    }
    // Why a new session, if it comes to that: no cookie, or why the one named ended.
    let mut ended: Option<(Ended, Option<Record>)> = None;
    let offered_any = !offered.ids.is_empty() || offered.too_many;
    if offered.too_many {
        log::warn!(
            "more than {MAX_OFFERED} distinct session cookies named {} (cookie tossing?); adopting none",
            config.cookie.name
        );
        ended = Some((Ended::Ambiguous, None));
    }
    let key = |id| SessionKey::new(config.service.clone(), id);
    let mut candidates: Vec<SessionKey> = Vec::new();
    // One id (the usual visitor) is locked and loaded straight away: the existence check is
    // for telling made-up ids from stored sessions among several.
    let several = offered.ids.len() > 1;
    for id in offered.ids {
        let key = key(id);
        if !several {
            candidates.push(key);
            continue;
        }
        match store.exists(&key) {
            Ok(true) => candidates.push(key),
            Ok(false) => {
                log::warn!("suspicious: session {key:?} is unknown (forged, or long gone)");
                ended.get_or_insert((Ended::Unknown, None));
            }
            Err(e) => log::warn!("cannot look for session {key:?}: {}", ErrorChain(&e)),
        }
    }
    // A fixed order, so two requests that carry the same ids never wait on each other's locks.
    candidates.sort();
    if candidates.len() > MAX_CANDIDATES {
        log::warn!(
            "{} session cookies name stored sessions, more than {MAX_CANDIDATES} (cookie tossing?); ending them all",
            candidates.len()
        );
        end_all(store, candidates);
        candidates = Vec::new();
        ended = Some((Ended::Ambiguous, None));
    }
    // One deadline for all candidates: several cookies must not multiply the wait.
    let started = Instant::now();
    // Each live session, and the old id of a regenerated session it was reached through.
    let mut live: Vec<(Box<dyn LockedSession>, Record, Option<SessionId>)> = Vec::new();
    let named = candidates.clone();
    for key in candidates {
        let timeout = config.lock_timeout.saturating_sub(started.elapsed());
        let mut lock = match store.lock(&key, LockOptions::new(timeout)) {
            Ok(lock) => lock,
            // In use past the lock timeout: the visitor's own session, busy (a 503).
            Err(e) if e.kind() == ErrorKind::LockTimeout => return Err(e),
            Err(e) => {
                log::warn!("cannot lock session {key:?}: {}", ErrorChain(&e));
                continue;
            }
        };
        match load_live(&mut *lock, idle, claim.client_addr, now_secs)? {
            Loaded::Live(record) => live.push((lock, record, None)),
            Loaded::Foreign => {
                ended.get_or_insert((Ended::OtherAddress, None));
            }
            Loaded::Moved(target) => {
                // The old lock goes first, as `regenerate_id` takes them old, then new.
                drop(lock);
                let reached = follow(&key, target, &named, |key| {
                    let timeout = config.lock_timeout.saturating_sub(started.elapsed());
                    let mut lock = store.lock(key, LockOptions::new(timeout))?;
                    let loaded = load_live(&mut *lock, idle, claim.client_addr, now_secs)?;
                    Ok((loaded, lock))
                })?;
                if let Some((_, record, lock)) = reached {
                    live.push((lock, record, Some(key.id.clone())));
                }
            }
            Loaded::Ended(why, record) => {
                // Strict mode: an id the store does not know is never adopted.
                if let Err(e) = lock.delete() {
                    log::warn!("removing dead session {key:?} failed: {}", ErrorChain(&e));
                }
                if !matches!(ended, Some((Ended::Ambiguous, _))) {
                    ended = Some((why, record));
                }
            }
        }
    }
    if live.len() > 1 {
        // Which one is the visitor's own cannot be told: a cookie tossed from a sibling domain
        // can name a live session of the attacker's, kept fresh on purpose. Adopting either
        // could fix the visitor into the attacker's session, so they all end.
        log::warn!(
            "{} session cookies name live sessions (cookie tossing?); ending them all",
            live.len()
        );
        for (mut lock, _, _) in live.drain(..) {
            if let Err(e) = lock.delete() {
                log::warn!("ending session {:?} failed: {}", lock.key(), ErrorChain(&e));
            }
        }
        ended = Some((Ended::Ambiguous, None));
    }
    if let Some((mut lock, record, forwarded)) = live.pop() {
        if logged_out(store, lock.key(), &record, Some(now))? {
            log::info!("session {:?}: its user logged out everywhere", lock.key());
            if let Err(e) = lock.delete() {
                log::warn!("ending session {:?} failed: {}", lock.key(), ErrorChain(&e));
            }
            ended = Some((Ended::LoggedOut, None));
        } else {
            let mut session = Session::existing(lock, record, now, idle, Origin::Returning)
                .requested_from(claim.client_addr);
            if let Some(old) = forwarded {
                session = session.forwarded(old);
            }
            return Ok((session, Origin::Returning));
        }
    }
    if let Expiry::At(at) = config.lifetime
        && at <= now
    {
        log::warn!("PSOSessionExpire names a date in the past: every new session ends at once");
    }
    let (origin, expired) = replacement(ended, offered_any);
    let key = SessionKey::new(config.service.clone(), SessionId::generate()?);
    let session = fresh(store.lock(&key, options)?)
        .replacing(origin, expired)
        .requested_from(claim.client_addr);
    Ok((session, origin))
}

/// Whether `record` is signed in as a user who logged out everywhere since: the user's record
/// says "logged out before" a time (in milliseconds) not before the session signed in. Read
/// without a lock (the store gives a whole record or none). A user record that is damaged, or
/// holds what this pso cannot read, counts as a logout (a damaged file must not undo one) and,
/// given `repair_at`, is rebuilt so that later sign-ins work; one that cannot be read now (a
/// failing disk) fails the request and ends nothing.
fn logged_out(
    store: &dyn Store,
    key: &SessionKey,
    record: &Record,
    repair_at: Option<SystemTime>,
) -> Result<bool> {
    let Ok(Some(user)) = record.get::<String>(USER) else {
        return Ok(false);
    };
    let since: u64 = record.get(USER_SINCE).ok().flatten().unwrap_or(0);
    let user_key = SessionKey::new(key.service.clone(), user_record_id(&user));
    let revoked = match store.peek(&user_key) {
        Ok(Some(user_record)) => logged_out_before(&user_record, &user),
        Ok(None) => return Ok(false),
        Err(e) if e.kind() == ErrorKind::Corrupt => Err(e),
        Err(e) => return Err(e),
    };
    let e = match revoked {
        Ok(before) => return Ok(before.is_some_and(|before| since <= before)),
        Err(e) => e,
    };
    log::error!(
        "the user record {user_key:?} is unreadable ({}); ending session {key:?} to be safe",
        ErrorChain(&e)
    );
    if let Some(now) = repair_at {
        let repaired = store
            .lock(&user_key, LockOptions::new(Duration::from_secs(1)))
            .and_then(|mut lock| repair_user_record(&mut *lock, now));
        if let Err(e) = repaired {
            log::warn!(
                "cannot rebuild the user record {user_key:?}: {}",
                ErrorChain(&e)
            );
        }
    }
    Ok(true)
}

/// What the record under a forced id means for a request.
enum Forced {
    /// A live session: this one.
    Live(Record),
    /// No live session, and why (`Origin::Forced` when there was nothing to speak of); the
    /// data of one that expired; whether the store holds a record a new session takes over.
    Gone {
        origin: Origin,
        expired: Option<Record>,
        replaces: bool,
    },
    /// Another address's live session (`PSOSessionCheckIP`): to be left alone.
    Foreign(Origin),
}

/// Judges what a forced id holds, the same for read-write and read-only requests; a damaged
/// user record is rebuilt given `repair_at` (see [`logged_out`]).
fn forced(
    store: &dyn Store,
    key: &SessionKey,
    loaded: Loaded,
    repair_at: Option<SystemTime>,
) -> Result<Forced> {
    Ok(match loaded {
        Loaded::Live(record) if logged_out(store, key, &record, repair_at)? => {
            log::info!("session {key:?}: its user logged out everywhere");
            Forced::Gone {
                origin: Origin::Replaced(Ended::LoggedOut),
                expired: None,
                replaces: true,
            }
        }
        Loaded::Live(record) => Forced::Live(record),
        Loaded::Ended(why @ (Ended::Idle | Ended::Lifetime | Ended::Unreadable), expired) => {
            Forced::Gone {
                origin: Origin::Replaced(why),
                expired,
                replaces: true,
            }
        }
        Loaded::Foreign => Forced::Foreign(Origin::Replaced(Ended::OtherAddress)),
        Loaded::Ended(..) | Loaded::Moved(_) => Forced::Gone {
            origin: Origin::Forced,
            expired: None,
            replaces: false,
        },
    })
}

/// The ids the request offers: its cookies', or with `PSOSessionUrl=on` and no cookie, the
/// query string's (checked like a cookie's).
fn offered(config: &Config, claim: &Claim<'_>) -> crate::cookies::OfferedIds {
    let offered = offered_ids(claim.cookie_header, &config.cookie.name);
    if !config.url_ids || !offered.ids.is_empty() || offered.too_many {
        return offered;
    }
    let from_url = form_urlencoded::parse(claim.query.as_bytes())
        .filter(|(name, _)| *name == config.cookie.name.as_str())
        .map(|(_, value)| format!("{}={value}", config.cookie.name))
        .collect::<Vec<_>>()
        .join("; ");
    offered_ids(from_url.as_bytes(), &config.cookie.name)
}

/// The session of a read-only request (`run_read_only`): read without its lock (the store
/// gives a whole record or none, never a torn one), so it runs even while another request
/// writes that session; nothing is deleted, renewed or saved. As many ids are looked at as
/// a read-write request would lock, and two live ones adopt neither.
pub(crate) fn adopt_read_only(
    store: &dyn Store,
    config: &Config,
    claim: &Claim<'_>,
    now: SystemTime,
) -> Result<(Session, Origin)> {
    let now_secs = unix_secs(now);
    let idle = Rules::of(config);
    if let Some(id) = &config.forced_id {
        // The server chose the id: read it, whatever the cookies say.
        let key = SessionKey::new(config.service.clone(), id.clone());
        let loaded = judge(store.peek(&key), &key, idle, claim.client_addr, now_secs)?;
        // An expired one's data is not handed over: a reader deletes nothing, so every reader
        // would get it again.
        let (record, origin) = match forced(store, &key, loaded, None)? {
            Forced::Live(record) => (Some(record), Origin::Forced),
            Forced::Gone { origin, .. } | Forced::Foreign(origin) => (None, origin),
        };
        let session = Session::read_only(key, record, now, idle, origin, None).forced();
        return Ok((session, origin));
    }
    let offered = offered(config, claim);
    let mut ended: Option<(Ended, Option<Record>)> = None;
    let mut live: Vec<(SessionKey, Record, Option<SessionId>)> = Vec::new();
    if offered.too_many {
        ended = Some((Ended::Ambiguous, None));
    }
    let named: Vec<SessionKey> = offered
        .ids
        .iter()
        .take(MAX_CANDIDATES)
        .map(|id| SessionKey::new(config.service.clone(), id.clone()))
        .collect();
    for key in &named {
        match judge(store.peek(key), key, idle, claim.client_addr, now_secs)? {
            Loaded::Live(record) => live.push((key.clone(), record, None)),
            Loaded::Moved(target) => {
                let reached = follow(key, target, &named, |key| {
                    let loaded = judge(store.peek(key), key, idle, claim.client_addr, now_secs)?;
                    Ok((loaded, ()))
                })?;
                if let Some((target, record, ())) = reached {
                    live.push((target, record, Some(key.id.clone())));
                }
            }
            Loaded::Foreign => {
                ended.get_or_insert((Ended::OtherAddress, None));
            }
            Loaded::Ended(why, record) => ended = Some((why, record)),
        }
    }
    if live.len() > 1 || offered.ids.len() > MAX_CANDIDATES {
        live.clear();
        ended = Some((Ended::Ambiguous, None));
    }
    if let Some((key, record, forwarded)) = live.pop() {
        if logged_out(store, &key, &record, None)? {
            ended = Some((Ended::LoggedOut, None));
        } else {
            let session =
                Session::read_only(key, Some(record), now, idle, Origin::Returning, forwarded);
            return Ok((session, Origin::Returning));
        }
    }
    let (origin, expired) = replacement(ended, !offered.ids.is_empty());
    let key = SessionKey::new(config.service.clone(), SessionId::generate()?);
    let session = Session::read_only(key, None, now, idle, origin, None).replacing(origin, expired);
    Ok((session, origin))
}

/// Why a request gets a new session, and the expired record it may read once: the reason the
/// session it named ended, or, when it named ids that were all dropped as unknown before any
/// lock, `Unknown`; `New` when it named none.
fn replacement(
    ended: Option<(Ended, Option<Record>)>,
    offered_any: bool,
) -> (Origin, Option<Record>) {
    match ended {
        Some((why, record)) => (Origin::Replaced(why), record),
        None if offered_any => (Origin::Replaced(Ended::Unknown), None),
        None => (Origin::New, None),
    }
}

/// Follows the old ids of a regenerated session, from the forward at `from` to `target`, to
/// the live session at the end: a session regenerated twice within the grace (sign-in, then a
/// change of privilege) still serves the requests under way with its first id. `visit` locks
/// or reads one id and judges it. Nothing is reached when the chain is longer than
/// [`MAX_FORWARDS`], leads elsewhere than to a live session, or reaches an id a cookie names
/// itself (that cookie brings it).
fn follow<T>(
    from: &SessionKey,
    target: SessionId,
    named: &[SessionKey],
    mut visit: impl FnMut(&SessionKey) -> Result<(Loaded, T)>,
) -> Result<Option<(SessionKey, Record, T)>> {
    let mut target = SessionKey::new(from.service.clone(), target);
    for _ in 0..MAX_FORWARDS {
        if named.contains(&target) {
            return Ok(None);
        }
        match visit(&target)? {
            (Loaded::Live(record), handle) => return Ok(Some((target, record, handle))),
            (Loaded::Moved(next), _) => target = SessionKey::new(from.service.clone(), next),
            _ => return Ok(None),
        }
    }
    log::warn!("suspicious: the old id {from:?} leads through more than {MAX_FORWARDS} forwards");
    Ok(None)
}

/// Ends every session named, skipping any a request holds right now.
fn end_all(store: &dyn Store, keys: Vec<SessionKey>) {
    for key in keys {
        match store.lock(&key, LockOptions::new(Duration::ZERO)) {
            Ok(mut lock) => {
                if let Err(e) = lock.delete() {
                    log::warn!("ending session {key:?} failed: {}", ErrorChain(&e));
                }
            }
            Err(e) => log::warn!("cannot end session {key:?}: {}", ErrorChain(&e)),
        }
    }
}

/// What a locked session holds.
enum Loaded {
    /// A live session.
    Live(Record),
    /// An id given up by `regenerate_id()`, still in its grace period: the session is now
    /// under this id.
    Moved(SessionId),
    /// A live session of another client address (`PSOSessionCheckIP`): left alone.
    Foreign,
    /// A session that is no more, and why; the record of one that expired, for the handler to
    /// read once.
    Ended(Ended, Option<Record>),
}

/// Loads a session and judges it: alive, or ended (logged) because it expired, is unknown or
/// is unreadable.
fn load_live(
    lock: &mut dyn LockedSession,
    idle: Rules,
    client: Option<&str>,
    now: u64,
) -> Result<Loaded> {
    let key = lock.key().clone();
    judge(lock.load(), &key, idle, client, now)
}

/// Judges what the store gave for `key`: alive, or ended (logged) because it expired, is
/// unknown or is unreadable; a forward; another address's.
fn judge(
    loaded: Result<Option<Record>>,
    key: &SessionKey,
    idle: Rules,
    client: Option<&str>,
    now: u64,
) -> Result<Loaded> {
    match loaded {
        // A user's record is never anyone's session, whatever id a cookie names.
        Ok(Some(record)) if record.contains(USER_RECORD) => {
            log::warn!("suspicious: a cookie names the user record {key:?}");
            Ok(Loaded::Ended(Ended::Unknown, None))
        }
        Ok(Some(record)) if record.contains(MOVED_TO) => {
            let target = record
                .get::<String>(MOVED_TO)
                .ok()
                .flatten()
                .and_then(|id| id.parse::<SessionId>().ok());
            // Only for the address that signed in; a clock set back does not stretch it.
            if record.meta.client_addr.as_deref() != client {
                log::warn!(
                    "suspicious: the old id {key:?} of a regenerated session came from another address"
                );
                return Ok(Loaded::Foreign);
            }
            match (idle.ended(&record.meta, now), target) {
                (None, Some(target)) if now >= record.meta.created => Ok(Loaded::Moved(target)),
                // Past its grace the old id is dead, like one never issued.
                _ => Ok(Loaded::Ended(Ended::Unknown, None)),
            }
        }
        Ok(Some(record))
            if idle.check_ip
                && record.meta.client_addr.is_some()
                && record.meta.client_addr.as_deref() != client =>
        {
            // Another address's: judged by its own stored limits only (a script of the same
            // service with a shorter PSOSessionIdle must not let a stolen cookie end it). Dead
            // by those, it is dead for everyone, and its data goes to nobody.
            let own_rules = Rules {
                limit: None,
                ..idle
            };
            match own_rules.ended(&record.meta, now) {
                Some(why) => {
                    log::info!("session {key:?} of another address has expired ({why:?})");
                    Ok(Loaded::Ended(why, None))
                }
                None => {
                    log::warn!(
                        "suspicious: session {key:?} belongs to another client address; not adopted"
                    );
                    Ok(Loaded::Foreign)
                }
            }
        }
        Ok(Some(record)) => match idle.ended(&record.meta, now) {
            None => Ok(Loaded::Live(record)),
            Some(why) => {
                log::info!("session {key:?} has expired ({why:?}); starting a new one");
                Ok(Loaded::Ended(why, Some(record)))
            }
        },
        Ok(None) => {
            log::warn!(
                "suspicious: session {key:?} is unknown (forged, or long gone); starting a new one"
            );
            Ok(Loaded::Ended(Ended::Unknown, None))
        }
        Err(e) if e.kind() == ErrorKind::Corrupt => {
            log::warn!(
                "session {key:?} is unreadable ({}); starting a new one",
                ErrorChain(&e)
            );
            Ok(Loaded::Ended(Ended::Unreadable, None))
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::environment::Environment;
    use crate::record::Meta;
    use crate::store::{MemoryStore, Store};
    use std::time::{Duration, UNIX_EPOCH};

    const T0: u64 = 1_700_000_000;

    fn config() -> Config {
        Config::from_env(&Environment::from_pairs([("PSOServiceId", "app")]))
    }

    /// A live session in `store`, as the cookie a browser would send for it.
    fn live(store: &MemoryStore) -> String {
        let key = SessionKey::new("app".parse().unwrap(), SessionId::generate().unwrap());
        let mut record = Record::new(Meta::new(T0));
        record.set("owner", key.id.as_str()).unwrap();
        let options = LockOptions::new(Duration::from_secs(1));
        store.lock(&key, options).unwrap().save(&record).unwrap();
        format!("app={}", key.id)
    }

    fn dead() -> String {
        format!("app={}", SessionId::generate().unwrap())
    }

    fn adopted(store: &MemoryStore, header: &[u8]) -> (Option<String>, Origin) {
        let claim = Claim {
            cookie_header: header,
            client_addr: None,
            query: "",
        };
        let now = UNIX_EPOCH + Duration::from_secs(T0 + 1);
        let (session, reason) = adopt(store, &config(), &claim, now).unwrap();
        let owner = session.get::<String>("owner").unwrap();
        (owner.map(|id| format!("app={id}")), reason)
    }

    #[test]
    fn the_visitors_own_session_is_found_among_dead_ids_in_any_order() {
        let store = MemoryStore::new();
        let mine = live(&store);
        for dead_ids in 0..MAX_CANDIDATES {
            let mut cookies: Vec<String> = (0..dead_ids).map(|_| dead()).collect();
            for position in 0..=dead_ids {
                cookies.insert(position, mine.clone());
                let header = cookies.join("; ");
                let (owner, reason) = adopted(&store, header.as_bytes());
                assert_eq!(owner.as_deref(), Some(mine.as_str()), "{header}");
                assert_eq!(reason, Origin::Returning);
                cookies.remove(position);
            }
        }
    }

    #[test]
    fn dead_ids_cannot_hide_a_tossed_live_session_beside_the_visitors() {
        // Dead ids first, then the attacker's live one, then the visitor's; and every other
        // order: neither live session is adopted, and both end.
        for order in 0..3 {
            let store = MemoryStore::new();
            let (mine, theirs) = (live(&store), live(&store));
            let mut cookies: Vec<String> = (0..MAX_CANDIDATES - 2).map(|_| dead()).collect();
            match order {
                0 => cookies.extend([theirs.clone(), mine.clone()]),
                1 => cookies.extend([mine.clone(), theirs.clone()]),
                _ => {
                    cookies.insert(0, theirs.clone());
                    cookies.push(mine.clone());
                }
            }
            let (owner, reason) = adopted(&store, cookies.join("; ").as_bytes());
            assert_eq!(
                (owner, reason),
                (None, Origin::Replaced(Ended::Ambiguous)),
                "order {order}"
            );
            assert_eq!(adopted(&store, mine.as_bytes()).0, None, "ended");
            assert_eq!(adopted(&store, theirs.as_bytes()).0, None, "ended");
        }
    }

    #[test]
    fn made_up_ids_however_many_cannot_crowd_out_the_visitors_own() {
        let store = MemoryStore::new();
        let mine = live(&store);
        let made_up: Vec<String> = (0..100).map(|_| dead()).collect();
        for header in [
            format!("{}; {mine}", made_up.join("; ")),
            format!("{mine}; {}", made_up.join("; ")),
        ] {
            let (owner, reason) = adopted(&store, header.as_bytes());
            assert_eq!(owner.as_deref(), Some(mine.as_str()), "{header}");
            assert_eq!(reason, Origin::Returning);
        }
    }

    #[test]
    fn more_stored_sessions_than_checked_adopt_none_and_all_end() {
        for mine_first in [false, true] {
            let store = MemoryStore::new();
            let mine = live(&store);
            let theirs: Vec<String> = (0..MAX_CANDIDATES).map(|_| live(&store)).collect();
            let header = if mine_first {
                format!("{mine}; {}", theirs.join("; "))
            } else {
                format!("{}; {mine}", theirs.join("; "))
            };
            let (owner, reason) = adopted(&store, header.as_bytes());
            assert_eq!(
                (owner, reason),
                (None, Origin::Replaced(Ended::Ambiguous)),
                "{header}"
            );
            // All ended: the tossed cookies name nothing now, and cannot keep the visitor out.
            assert_eq!(store.keys().unwrap().count(), 0);
            assert_eq!(
                adopted(&store, header.as_bytes()).1,
                Origin::Replaced(Ended::Unknown)
            );
        }
        let store = MemoryStore::new();
        // More distinct ids than are even read: none adopted, nothing ended.
        let kept = live(&store);
        let flood: Vec<String> = (0..=MAX_OFFERED).map(|_| dead()).collect();
        let header = format!("{}; {kept}", flood.join("; "));
        assert_eq!(
            adopted(&store, header.as_bytes()),
            (None, Origin::Replaced(Ended::Ambiguous))
        );
        assert_eq!(adopted(&store, kept.as_bytes()).0, Some(kept));
    }

    #[test]
    fn unrelated_cookies_and_foreign_bytes_change_nothing() {
        let store = MemoryStore::new();
        let mine = live(&store);
        let noise: Vec<u8> = (0..300)
            .flat_map(|i| format!("c{i}=v; ").into_bytes())
            .chain(b"bad=\xff\xfe\x00; ".iter().copied())
            .collect();
        for header in [
            [noise.clone(), mine.clone().into_bytes()].concat(),
            [mine.clone().into_bytes(), b"; ".to_vec(), noise.clone()].concat(),
        ] {
            assert_eq!(adopted(&store, &header).0.as_deref(), Some(mine.as_str()));
        }
    }
}
