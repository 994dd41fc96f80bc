//! Which session a request gets, and why: the visitor's own, a forced one, or a fresh one.
//!
//! One decision procedure serves read-write and read-only requests alike. Each id the request
//! names is read ([`Sighting`]) and judged on its own by [`judge`], a pure function of what the
//! store holds, the rules and the time; forwards of regenerated ids are followed; then
//! [`decide`], pure too, chooses among the verdicts. Only a read-write request acts on the
//! decision ([`Adoption::act`]): it takes the lock of the session it adopts, removes dead
//! sessions and ends live ones it cannot tell apart. A read-only request acts on nothing, and
//! is never handed an expired session's data (only a request that removes it is).
//!
//! Strict mode lives here. An id from a cookie is adopted only if the store holds a live
//! session under it; an id that names nothing, an expired or unreadable session is never
//! adopted (and what it names is removed). A header is never resolved by order: when several
//! cookies name live sessions, none is adopted and they all end.
//!
//! Cost and waiting are bounded whatever a header holds. Ids that name nothing are dropped
//! after a cheap existence check (no lock, no read), so made-up ids cannot crowd out the
//! visitor's own; at most [`MAX_CANDIDATES`] stored sessions are read, without their locks,
//! and a request naming more (someone made that many sessions to toss them) adopts none and
//! ends them all. A request waits on one lock only: that of the session it adopts (the
//! visitor's own, as any request of that session would). Sessions that must end are ended
//! without waiting for their locks ([`Store::delete`]), so a session an attacker keeps busy
//! can neither hold the visitor up nor survive to be adopted alone later.

use std::time::Duration;

use crate::config::Config;
use crate::cookies::{MAX_CANDIDATES, MAX_OFFERED, offered_ids};
use crate::error::{ErrorChain, ErrorKind, Result};
use crate::expiry::{Clock, Expiry};
use crate::id::SessionId;
use crate::origin::{Ended, Origin};
use crate::record::Record;
use crate::reserved::MOVED_TO;
use crate::rules::Rules;
use crate::session::{Named, Session, Start};
use crate::store::{LockOptions, LockedSession, SessionKey, Store};
use crate::user_record::{self, Standing};

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
    /// The browser says the request comes from one of the site's own pages: only then is an
    /// id in its URL taken (a link or form elsewhere would fix the visitor into a session of
    /// its choosing, and a plain-HTTP site gets no `Sec-Fetch-Site` to tell them apart).
    pub from_the_site_itself: bool,
}

/// What the store holds under one id, as read with or without its lock.
pub(crate) enum Held {
    Nothing,
    Unreadable,
    Record(Record),
}

/// What one id holds, and where a session signed in stands with its user's record.
pub(crate) struct Sighting {
    pub held: Held,
    pub standing: Option<Standing>,
}

/// One id, judged.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// A live session.
    Live(Record),
    /// An id given up by `regenerate_id()`, still in its grace: the session is under this id.
    Forward(SessionId),
    /// A live session of another client address (`PSOSessionCheckIP`), or an old id used
    /// from another address: left alone.
    Foreign,
    /// A session that is no more, and why; the record of one that expired, which the request
    /// that removes it may hand to the handler once.
    Ended(Ended, Option<Record>),
    /// One of more stored sessions than a request judges: not read.
    Unjudged,
}

/// One id the request named, after its forwards: its verdict, where it was reached, and its
/// lock if it was read under it.
struct Candidate {
    named: SessionKey,
    at: SessionKey,
    verdict: Verdict,
    lock: Option<Box<dyn LockedSession>>,
    /// The user whose record could not be read: a request that may write rebuilds it.
    repair: Option<String>,
}

/// What to do with the candidates, as [`decide`] finds it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Decision {
    /// The candidate whose session the request gets.
    pub adopt: Option<usize>,
    /// Why a new session, when none is adopted.
    pub why: Origin,
    /// The candidate whose expired data the new session may hand over, if this request
    /// removes it.
    pub expired_from: Option<usize>,
    /// Candidates that end now, whoever holds them: live sessions the request cannot tell
    /// apart.
    pub end: Vec<usize>,
    /// Dead candidates, removed if nobody holds them.
    pub remove: Vec<usize>,
}

/// What [`decide`] weighs of one id: its verdict, and whether it was reached through an old id
/// (a session regenerated moments ago, from the address that moved it).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Weighed<'a> {
    pub verdict: &'a Verdict,
    pub through_old_id: bool,
}

/// Chooses from the verdicts on the ids a request named (`offered_any`: it named some, even if
/// every one was dropped as unknown before it was read). Pure: what the store holds, the rules
/// and the time are all in the verdicts.
pub(crate) fn decide(weighed: &[Weighed<'_>], offered_any: bool) -> Decision {
    let verdicts: Vec<&Verdict> = weighed.iter().map(|w| w.verdict).collect();
    let live: Vec<usize> = (0..verdicts.len())
        .filter(|&i| matches!(verdicts[i], Verdict::Live(_)))
        .collect();
    let unjudged: Vec<usize> = (0..verdicts.len())
        .filter(|&i| matches!(verdicts[i], Verdict::Unjudged))
        .collect();
    let remove: Vec<usize> = (0..verdicts.len())
        .filter(|&i| matches!(verdicts[i], Verdict::Ended(..)))
        .collect();
    if !unjudged.is_empty() || live.len() > 1 {
        // Which one is the visitor's own cannot be told: a cookie tossed from a sibling domain
        // can name a live session of the attacker's, kept fresh on purpose. Adopting either
        // could fix the visitor into the attacker's session, so they all end; all but one
        // reached through an old id, which whoever holds that id could otherwise end (its
        // owner's new session) by naming a session of their own beside it, and which can
        // only be read through it anyway.
        let end = live
            .into_iter()
            .filter(|&i| !weighed[i].through_old_id)
            .chain(unjudged)
            .collect();
        return Decision {
            adopt: None,
            why: Origin::Replaced(Ended::Ambiguous),
            expired_from: None,
            end,
            remove,
        };
    }
    if let [one] = live[..] {
        return Decision {
            adopt: Some(one),
            why: Origin::Returning,
            expired_from: None,
            end: Vec::new(),
            remove,
        };
    }
    // Why a new session: the reason that says most about the visitor's own.
    let reason = |i: usize| match verdicts[i] {
        Verdict::Ended(why, _) => Some(*why),
        Verdict::Foreign => Some(Ended::OtherAddress),
        _ => None,
    };
    let weightiest = (0..verdicts.len())
        .filter_map(|i| reason(i).map(|why| (i, why)))
        .max_by_key(|(_, why)| why.weight());
    let (why, expired_from) = match weightiest {
        Some((i, why)) => {
            // Its data only if it is the one id read: among several, the visitor's own cannot
            // be told from a tossed one, whose data the handler would take for the visitor's.
            let has_data = matches!(verdicts[i], Verdict::Ended(_, Some(_)));
            (
                Origin::Replaced(why),
                (has_data && verdicts.len() == 1).then_some(i),
            )
        }
        None if offered_any => (Origin::Replaced(Ended::Unknown), None),
        None => (Origin::New, None),
    };
    Decision {
        adopt: None,
        why,
        expired_from,
        end: Vec::new(),
        remove,
    }
}

/// What a forced id's verdict means for a request.
#[derive(Debug)]
pub(crate) enum ForcedDecision {
    /// A live session: this one.
    Adopt(Record),
    /// A new session, and why (`Origin::Forced` when there was nothing to speak of); the data
    /// of one that expired; whether the store holds a record the new session takes over.
    Replace {
        origin: Origin,
        expired: Option<Record>,
        replaces: bool,
    },
    /// Another address's live session (`PSOSessionCheckIP`): left alone; the request gets an
    /// empty session it cannot store.
    LeaveAlone(Origin),
}

/// Chooses for a forced id, the same for read-write and read-only requests; `held_something`:
/// the store holds some record under the id.
pub(crate) fn decide_forced(verdict: Verdict, held_something: bool) -> ForcedDecision {
    match verdict {
        Verdict::Live(record) => ForcedDecision::Adopt(record),
        Verdict::Foreign => ForcedDecision::LeaveAlone(Origin::Replaced(Ended::OtherAddress)),
        Verdict::Ended(
            why @ (Ended::Idle | Ended::Lifetime | Ended::Unreadable | Ended::LoggedOut),
            expired,
        ) => ForcedDecision::Replace {
            origin: Origin::Replaced(why),
            expired,
            replaces: true,
        },
        // Nothing there, or what no forced id should hold (a forward, a user record).
        Verdict::Ended(..) | Verdict::Forward(_) | Verdict::Unjudged => ForcedDecision::Replace {
            origin: Origin::Forced,
            expired: None,
            replaces: held_something,
        },
    }
}

/// Judges what the store holds under `key`, on its own: pure but for the log lines it writes.
/// A logged-out session is judged so before anything else (its data goes to no one);
/// another address's session by its own stored limits only.
pub(crate) fn judge(
    key: &SessionKey,
    sighting: Sighting,
    rules: Rules,
    client: Option<&str>,
    now: u64,
) -> Verdict {
    let record = match sighting.held {
        Held::Nothing => {
            log::warn!(
                "suspicious: session {key:?} is unknown (forged, or long gone); starting a new one"
            );
            return Verdict::Ended(Ended::Unknown, None);
        }
        Held::Unreadable => return Verdict::Ended(Ended::Unreadable, None),
        Held::Record(record) => record,
    };
    if user_record::is_user_record(&record) {
        // A user's record is never anyone's session, whatever id a cookie names.
        log::warn!("suspicious: a cookie names the user record {key:?}");
        return Verdict::Ended(Ended::Unknown, None);
    }
    if matches!(
        sighting.standing,
        Some(Standing::LoggedOut | Standing::Unreadable)
    ) {
        log::info!("session {key:?}: its user logged out everywhere");
        return Verdict::Ended(Ended::LoggedOut, None);
    }
    if record.contains(MOVED_TO) {
        let target = record
            .get::<String>(MOVED_TO)
            .ok()
            .flatten()
            .and_then(|id| id.parse::<SessionId>().ok());
        // Only for the address that moved it; a clock set back does not stretch it (the
        // forward is dated from when its request began, so requests already waiting then
        // are served).
        if record.meta.client_addr.as_deref() != client {
            log::warn!(
                "suspicious: the old id {key:?} of a regenerated session came from another address"
            );
            return Verdict::Foreign;
        }
        // Judged by its own deadline (the grace), not by an idle limit meant for sessions.
        return match (rules.ended_by_its_own_limits(&record.meta, now), target) {
            (None, Some(target)) if now >= record.meta.created => Verdict::Forward(target),
            // Past its grace the old id is dead, like one never issued.
            _ => Verdict::Ended(Ended::Unknown, None),
        };
    }
    let elsewhere = rules.check_ip
        && record.meta.client_addr.is_some()
        && record.meta.client_addr.as_deref() != client;
    if elsewhere {
        // Dead by its own limits, it is dead for everyone, and its data goes to nobody.
        return match rules.ended_by_its_own_limits(&record.meta, now) {
            Some(why) => {
                log::info!("session {key:?} of another address has expired ({why:?})");
                Verdict::Ended(why, None)
            }
            None => {
                log::warn!(
                    "suspicious: session {key:?} belongs to another client address; not adopted"
                );
                Verdict::Foreign
            }
        };
    }
    match rules.ended(&record.meta, now) {
        None => Verdict::Live(record),
        Some(why) => {
            log::info!("session {key:?} has expired ({why:?}); starting a new one");
            Verdict::Ended(why, Some(record))
        }
    }
}

/// Reads what `loaded` gave for `key` into a sighting: for a session signed in, its user's
/// record is read too (without its lock). One that cannot be read now fails the request.
fn sight(store: &dyn Store, key: &SessionKey, loaded: Result<Option<Record>>) -> Result<Sighting> {
    let held = match loaded {
        Ok(None) => Held::Nothing,
        Ok(Some(record)) => Held::Record(record),
        Err(e) if e.kind() == ErrorKind::Corrupt => {
            log::warn!(
                "session {key:?} is unreadable ({}); starting a new one",
                ErrorChain(&e)
            );
            Held::Unreadable
        }
        Err(e) => return Err(e),
    };
    let standing = match &held {
        Held::Record(record) if !user_record::is_user_record(record) => {
            user_record::standing(store, &key.service, record)?
        }
        _ => None,
    };
    Ok(Sighting { held, standing })
}

/// The user whose record a sighting found unreadable, to be rebuilt.
fn to_repair(sighting: &Sighting) -> Option<String> {
    match (&sighting.held, sighting.standing) {
        (Held::Record(record), Some(Standing::Unreadable)) => user_record::user_of(record),
        _ => None,
    }
}

/// The ids a request offers: its cookies', or with `PSOSessionUrl=on` and no cookie, the
/// query string's (checked like a cookie's), unless the request comes from another site.
struct Offered {
    ids: Vec<SessionId>,
    too_many: bool,
    from_url: bool,
}

fn offered(config: &Config, claim: &Claim<'_>) -> Offered {
    let from_cookies = offered_ids(claim.cookie_header, &config.cookie.name);
    if from_cookies.malformed > 0 {
        log::warn!(
            "ignoring {} malformed value(s) of the session cookie {}",
            from_cookies.malformed,
            config.cookie.name
        );
    }
    if from_cookies.too_many {
        log::warn!(
            "more than {MAX_OFFERED} distinct session cookies named {} (cookie tossing?); adopting none",
            config.cookie.name
        );
    }
    let cookies = Offered {
        ids: from_cookies.ids,
        too_many: from_cookies.too_many,
        from_url: false,
    };
    if !config.url_ids || !cookies.ids.is_empty() || cookies.too_many {
        return cookies;
    }
    let in_url = form_urlencoded::parse(claim.query.as_bytes())
        .filter(|(name, _)| *name == config.cookie.name.as_str())
        .map(|(_, value)| format!("{}={value}", config.cookie.name))
        .collect::<Vec<_>>()
        .join("; ");
    let from_url = offered_ids(in_url.as_bytes(), &config.cookie.name);
    if from_url.ids.is_empty() && !from_url.too_many {
        return cookies;
    }
    if !claim.from_the_site_itself {
        log::warn!(
            "a session id in the URL of a request that does not come from the site's own pages (a link or form elsewhere, a bookmark); not taken"
        );
        return cookies;
    }
    Offered {
        ids: from_url.ids,
        too_many: from_url.too_many,
        from_url: true,
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
    mut visit: impl FnMut(&SessionKey) -> Result<(Verdict, T)>,
) -> Result<Option<(SessionKey, Verdict, T)>> {
    let mut target = SessionKey::new(from.service.clone(), target);
    for _ in 0..MAX_FORWARDS {
        if named.contains(&target) {
            return Ok(None);
        }
        match visit(&target)? {
            (verdict @ Verdict::Live(_), handle) => return Ok(Some((target, verdict, handle))),
            (Verdict::Forward(next), _) => target = SessionKey::new(from.service.clone(), next),
            _ => return Ok(None),
        }
    }
    log::warn!("suspicious: the old id {from:?} leads through more than {MAX_FORWARDS} forwards");
    Ok(None)
}

/// Finds the request's session, or starts a new one, and says why (read-write requests).
pub(crate) fn adopt(
    store: &dyn Store,
    config: &Config,
    claim: &Claim<'_>,
    clock: Clock,
) -> Result<Session> {
    Adoption::new(store, config, claim, clock).adopt()
}

/// The session of a read-only request (`run_read_only`): read without its lock (the store
/// gives a whole record, never part of a save), so it runs even while another request writes
/// that session; chosen as a read-write request would choose it, and nothing is deleted,
/// renewed, saved or handed over.
pub(crate) fn adopt_read_only(
    store: &dyn Store,
    config: &Config,
    claim: &Claim<'_>,
    clock: Clock,
) -> Result<Session> {
    Adoption::new(store, config, claim, clock).adopt_read_only()
}

/// One request's adoption: what it needs from the store, the configuration and the request.
struct Adoption<'a> {
    store: &'a dyn Store,
    config: &'a Config,
    client: Option<&'a str>,
    claim: &'a Claim<'a>,
    rules: Rules,
    clock: Clock,
}

impl<'a> Adoption<'a> {
    fn new(
        store: &'a dyn Store,
        config: &'a Config,
        claim: &'a Claim<'a>,
        clock: Clock,
    ) -> Adoption<'a> {
        Adoption {
            store,
            config,
            client: claim.client_addr,
            claim,
            rules: Rules::of(config),
            clock,
        }
    }

    fn key(&self, id: SessionId) -> SessionKey {
        SessionKey::new(self.config.service.clone(), id)
    }

    fn start(&self, origin: Origin, named: Named) -> Start {
        Start {
            clock: self.clock,
            rules: self.rules,
            origin,
            named,
            from_url: false,
            client_addr: self.client.map(str::to_owned),
            expired: None,
        }
    }

    fn lock_options(&self) -> LockOptions {
        LockOptions::new(self.config.lock_timeout).with_lease(self.config.lock_lease)
    }

    /// Reads and judges what `loaded` gave for `key`; the user to repair, if any.
    fn judged(
        &self,
        key: &SessionKey,
        loaded: Result<Option<Record>>,
    ) -> Result<(Verdict, Option<String>)> {
        let sighting = sight(self.store, key, loaded)?;
        let repair = to_repair(&sighting);
        let verdict = judge(key, sighting, self.rules, self.client, self.clock.secs());
        Ok((verdict, repair))
    }

    /// [`Adoption::judged`] for a forced id, whose first request finds nothing (no cause for
    /// suspicion there).
    fn judged_forced(
        &self,
        key: &SessionKey,
        loaded: Result<Option<Record>>,
    ) -> Result<(Verdict, Option<String>)> {
        match loaded {
            Ok(None) => Ok((Verdict::Ended(Ended::Unknown, None), None)),
            loaded => self.judged(key, loaded),
        }
    }

    /// Locks `key` (waiting: it is the visitor's own) and judges what it holds, following a
    /// forward to the session it leads to, under that session's lock.
    fn sight_locked(&self, key: SessionKey, named: &[SessionKey]) -> Result<Option<Candidate>> {
        let mut lock = self.store.lock(&key, self.lock_options())?;
        let (verdict, repair) = self.judged(&key, lock.load())?;
        let Verdict::Forward(target) = verdict else {
            return Ok(Some(Candidate {
                named: key.clone(),
                at: key,
                verdict,
                lock: Some(lock),
                repair,
            }));
        };
        // The old lock goes first, as `regenerate_id` takes them old, then new.
        drop(lock);
        let reached = follow(&key, target, named, |target| {
            let mut lock = self.store.lock(target, self.lock_options())?;
            let (verdict, _) = self.judged(target, lock.load())?;
            Ok((verdict, lock))
        })?;
        Ok(reached.map(|(at, verdict, lock)| Candidate {
            named: key,
            at,
            verdict,
            lock: Some(lock),
            repair: None,
        }))
    }

    /// Reads and judges `keys` without their locks, following forwards the same way.
    fn sight_unlocked(&self, keys: &[SessionKey]) -> Result<Vec<Candidate>> {
        let mut candidates = Vec::with_capacity(keys.len());
        for key in keys {
            let (verdict, repair) = self.judged(key, self.store.peek(key))?;
            let candidate = match verdict {
                Verdict::Forward(target) => {
                    let reached = follow(key, target, keys, |target| {
                        let (verdict, _) = self.judged(target, self.store.peek(target))?;
                        Ok((verdict, ()))
                    })?;
                    let Some((at, verdict, ())) = reached else {
                        continue;
                    };
                    Candidate {
                        named: key.clone(),
                        at,
                        verdict,
                        lock: None,
                        repair: None,
                    }
                }
                verdict => Candidate {
                    named: key.clone(),
                    at: key.clone(),
                    verdict,
                    lock: None,
                    repair,
                },
            };
            candidates.push(candidate);
            keep_one_record(&mut candidates);
        }
        Ok(candidates)
    }

    /// The candidates of the ids offered, read without their locks: ids that name nothing
    /// are dropped first by a cheap existence check when there are several; more stored
    /// sessions than [`MAX_CANDIDATES`] are not read at all.
    fn gather_unlocked(&self, offered: &Offered) -> Result<Vec<Candidate>> {
        let mut keys: Vec<SessionKey> = Vec::with_capacity(offered.ids.len());
        let several = offered.ids.len() > 1;
        for id in &offered.ids {
            let key = self.key(id.clone());
            if !several {
                keys.push(key);
                continue;
            }
            match self.store.exists(&key) {
                Ok(true) => keys.push(key),
                Ok(false) => {
                    log::warn!("suspicious: session {key:?} is unknown (forged, or long gone)")
                }
                Err(e) => log::warn!("cannot look for session {key:?}: {}", ErrorChain(&e)),
            }
        }
        // With PSOSessionCheckIP, other addresses' sessions are left alone, which needs them
        // read: as many as a header can name (at most MAX_OFFERED).
        if keys.len() > MAX_CANDIDATES && !self.rules.check_ip {
            log::warn!(
                "{} session cookies name stored sessions, more than {MAX_CANDIDATES} (cookie tossing?); ending them all",
                keys.len()
            );
            return Ok(keys
                .into_iter()
                .map(|key| Candidate {
                    named: key.clone(),
                    at: key,
                    verdict: Verdict::Unjudged,
                    lock: None,
                    repair: None,
                })
                .collect());
        }
        self.sight_unlocked(&keys)
    }

    fn adopt(self) -> Result<Session> {
        if let Some(id) = &self.config.forced_id {
            return self.adopt_forced(id.clone());
        }
        let offered = offered(self.config, self.claim);
        if offered.too_many {
            // More distinct ids than are even read: none adopted, nothing ended.
            return self.fresh(Origin::Replaced(Ended::Ambiguous), None);
        }
        let candidates = match &offered.ids[..] {
            // The usual visitor: one id, locked and loaded at once. Waiting on its lock is
            // what any request of that session does.
            [one] => {
                let key = self.key(one.clone());
                let named = [key.clone()];
                self.sight_locked(key, &named)?.into_iter().collect()
            }
            _ => self.gather_unlocked(&offered)?,
        };
        let decision = decide(&weighed(&candidates), !offered.ids.is_empty());
        self.act(candidates, decision, offered.from_url)
    }

    /// Carries out `decision` on the candidates: the read-write path's effects.
    fn act(
        &self,
        mut candidates: Vec<Candidate>,
        decision: Decision,
        from_url: bool,
    ) -> Result<Session> {
        if !decision.end.is_empty() {
            log::warn!(
                "{} session cookies name live sessions (cookie tossing?); ending them all",
                decision.end.len()
            );
        }
        for &i in &decision.end {
            self.end_now(&mut candidates[i]);
        }
        let mut expired = None;
        for &i in &decision.remove {
            let data = self.remove_dead(&mut candidates[i]);
            if decision.expired_from == Some(i) {
                expired = data;
            }
        }
        for user in candidates.iter().filter_map(|c| c.repair.as_deref()) {
            user_record::repair(self.store, &self.config.service, user, self.clock);
        }
        if let Some(i) = decision.adopt {
            let candidate = candidates.swap_remove(i);
            return self.take(candidate, &candidates, from_url);
        }
        self.fresh(decision.why, expired)
    }

    /// Ends a candidate now, whoever holds it: under its lock if this request holds it, else
    /// without it (a request holding it can save nothing more).
    fn end_now(&self, candidate: &mut Candidate) {
        let ended = match &mut candidate.lock {
            Some(lock) => lock.delete(),
            None => self.store.delete(&candidate.at),
        };
        if let Err(e) = ended {
            log::warn!(
                "ending session {:?} failed: {}",
                candidate.at,
                ErrorChain(&e)
            );
        }
    }

    /// Removes a dead candidate if nobody holds it, judged again under its lock; the data of
    /// an expired one, now this request's to hand over.
    fn remove_dead(&self, candidate: &mut Candidate) -> Option<Record> {
        let key = &candidate.at;
        if candidate.lock.is_none() {
            match self.store.lock(key, LockOptions::new(Duration::ZERO)) {
                Ok(lock) => candidate.lock = Some(lock),
                Err(e) if e.kind() == ErrorKind::LockTimeout => return None,
                Err(e) => {
                    log::warn!("cannot lock dead session {key:?}: {}", ErrorChain(&e));
                    return None;
                }
            }
            let lock = candidate.lock.as_mut()?;
            match self.judged(key, lock.load()) {
                Ok((verdict @ Verdict::Ended(..), _)) => candidate.verdict = verdict,
                // Alive after all, or cannot be read now: left as it is.
                _ => return None,
            }
        }
        let lock = candidate.lock.as_mut()?;
        if let Err(e) = lock.delete() {
            log::warn!("removing dead session {key:?} failed: {}", ErrorChain(&e));
            return None;
        }
        match std::mem::replace(&mut candidate.verdict, Verdict::Unjudged) {
            Verdict::Ended(_, data) => data,
            _ => None,
        }
    }

    /// Takes the session of the candidate chosen: under the lock it was read with, or locked
    /// now (waiting: it is the visitor's own) and judged again, since it may have changed
    /// since it was read.
    fn take(&self, candidate: Candidate, others: &[Candidate], from_url: bool) -> Result<Session> {
        let candidate = match candidate.lock {
            Some(_) => candidate,
            None => {
                let named: Vec<SessionKey> = others.iter().map(|c| c.named.clone()).collect();
                let Some(mut again) = self.sight_locked(candidate.at.clone(), &named)? else {
                    return self.fresh(Origin::Replaced(Ended::Unknown), None);
                };
                again.named = candidate.named;
                again
            }
        };
        let Candidate {
            named,
            at,
            verdict,
            lock,
            ..
        } = candidate;
        let Some(mut lock) = lock else {
            return self.fresh(Origin::Replaced(Ended::Unknown), None);
        };
        match verdict {
            Verdict::Live(record) if named != at => {
                // Through an old id: served to read, nothing more.
                drop(lock);
                let start = Start {
                    from_url,
                    ..self.start(Origin::Moved, Named::OldId(named.id))
                };
                Ok(Session::read_only(at, Some(record), start))
            }
            Verdict::Live(record) => {
                let start = Start {
                    from_url,
                    ..self.start(Origin::Returning, Named::Current)
                };
                Ok(Session::held(lock, record, start))
            }
            Verdict::Ended(why, data) => {
                // Ended between the first look and the lock.
                if let Err(e) = lock.delete() {
                    log::warn!("removing dead session {at:?} failed: {}", ErrorChain(&e));
                }
                self.fresh(Origin::Replaced(why), data)
            }
            Verdict::Foreign => self.fresh(Origin::Replaced(Ended::OtherAddress), None),
            Verdict::Forward(_) | Verdict::Unjudged => {
                self.fresh(Origin::Replaced(Ended::Unknown), None)
            }
        }
    }

    /// A new session under a new id, and why.
    fn fresh(&self, origin: Origin, expired: Option<Record>) -> Result<Session> {
        warn_past_lifetime(self.config, self.clock);
        let key = self.key(SessionId::generate()?);
        let lock = self.store.lock(&key, self.lock_options())?;
        let start = Start {
            expired,
            ..self.start(origin, Named::Nothing)
        };
        Ok(Session::fresh(lock, self.config.lifetime, false, start))
    }

    fn adopt_forced(self, id: SessionId) -> Result<Session> {
        // The server chose the id: adopt or (re)create it, never replace it.
        let key = self.key(id);
        let mut lock = self
            .store
            .lock(&key, self.lock_options().with_create(true))?;
        let loaded = lock.load();
        let held_something = !matches!(loaded, Ok(None));
        let (verdict, repair) = self.judged_forced(&key, loaded)?;
        if let Some(user) = repair {
            user_record::repair(self.store, &key.service, &user, self.clock);
        }
        Ok(match decide_forced(verdict, held_something) {
            ForcedDecision::Adopt(record) => {
                Session::held(lock, record, self.start(Origin::Forced, Named::Forced))
            }
            ForcedDecision::Replace {
                origin,
                expired,
                replaces,
            } => {
                let start = Start {
                    expired,
                    ..self.start(origin, Named::Forced)
                };
                Session::fresh(lock, self.config.lifetime, replaces, start)
            }
            ForcedDecision::LeaveAlone(origin) => {
                Session::read_only(key, None, self.start(origin, Named::Forced))
            }
        })
    }

    fn adopt_read_only(self) -> Result<Session> {
        if let Some(id) = &self.config.forced_id {
            // The server chose the id: read it, whatever the cookies say.
            let key = self.key(id.clone());
            let loaded = self.store.peek(&key);
            let held_something = !matches!(loaded, Ok(None));
            let (verdict, _) = self.judged_forced(&key, loaded)?;
            // A reader deletes nothing, so an expired session's data is handed to no one.
            let (record, origin) = match decide_forced(verdict, held_something) {
                ForcedDecision::Adopt(record) => (Some(record), Origin::Forced),
                ForcedDecision::Replace { origin, .. } | ForcedDecision::LeaveAlone(origin) => {
                    (None, origin)
                }
            };
            return Ok(Session::read_only(
                key,
                record,
                self.start(origin, Named::Forced),
            ));
        }
        let offered = offered(self.config, self.claim);
        let candidates = if offered.too_many {
            Vec::new()
        } else {
            self.gather_unlocked(&offered)?
        };
        let mut decision = decide(&weighed(&candidates), !offered.ids.is_empty());
        if offered.too_many {
            decision.why = Origin::Replaced(Ended::Ambiguous);
        }
        if let Some(i) = decision.adopt
            && let Some(Candidate {
                named,
                at,
                verdict: Verdict::Live(record),
                ..
            }) = candidates.into_iter().nth(i)
        {
            let (origin, named) = if named == at {
                (Origin::Returning, Named::Current)
            } else {
                (Origin::Moved, Named::OldId(named.id))
            };
            let start = Start {
                from_url: offered.from_url,
                ..self.start(origin, named)
            };
            return Ok(Session::read_only(at, Some(record), start));
        }
        let key = self.key(SessionId::generate()?);
        Ok(Session::read_only(
            key,
            None,
            self.start(decision.why, Named::Nothing),
        ))
    }
}

/// What [`decide`] weighs of each candidate.
fn weighed(candidates: &[Candidate]) -> Vec<Weighed<'_>> {
    candidates
        .iter()
        .map(|c| Weighed {
            verdict: &c.verdict,
            through_old_id: c.named != c.at,
        })
        .collect()
}

/// Keeps at most one record among candidates read without their locks: only one can be of
/// use (the session adopted, or an expired one's data when it is the one id read), so that a
/// request naming many large sessions costs the memory of one. What is dropped is judged
/// already; only its record goes.
fn keep_one_record(candidates: &mut [Candidate]) {
    if candidates.len() < 2 {
        return;
    }
    let mut kept_live = false;
    for candidate in candidates.iter_mut() {
        match &mut candidate.verdict {
            Verdict::Live(record) if kept_live => *record = Record::default(),
            Verdict::Live(_) => kept_live = true,
            Verdict::Ended(_, data) => *data = None,
            _ => {}
        }
    }
}

/// Logs a configured lifetime that ends before it begins.
fn warn_past_lifetime(config: &Config, clock: Clock) {
    if let Expiry::At(at) = config.lifetime
        && at <= clock.now()
    {
        log::warn!("PSOSessionExpire names a date in the past: every new session ends at once");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::Context;
    use crate::testing::{Site, T0, counter, counter_with_origin, eggs, login, reader};
    use crate::{BoxError, Meta};
    use std::io::Write;

    /// Keeps a value; prints why it holds its session and the session's id.
    fn whose(cx: &mut Context<'_>) -> Result<(), BoxError> {
        cx.session.set("v", &1u8)?;
        write!(cx.response, "{:?} {}", cx.session.origin(), cx.session.id())?;
        Ok(())
    }

    /// A live session of the site, as the cookie a browser would send for it.
    fn live(site: &Site) -> String {
        site.visit().issued(&whose)
    }

    fn dead() -> String {
        format!("app={}", SessionId::generate().unwrap())
    }

    /// Which session a request with `header` gets: its cookie (`None`: a new one), and why.
    fn adopted(site: &Site, header: &str) -> (Option<String>, Origin) {
        let reply = site.visit().cookie(header).at(1).send(&whose);
        let (origin, id) = reply.body().split_once(' ').unwrap();
        let origin = match origin {
            "Returning" => Origin::Returning,
            "New" => Origin::New,
            "Replaced(Ambiguous)" => Origin::Replaced(Ended::Ambiguous),
            "Replaced(Unknown)" => Origin::Replaced(Ended::Unknown),
            other => panic!("{other}"),
        };
        let mine = (origin == Origin::Returning).then(|| format!("app={id}"));
        (mine, origin)
    }

    #[test]
    fn the_visitors_own_session_is_found_among_dead_ids_in_any_order() {
        let site = Site::new();
        let mine = live(&site);
        for dead_ids in 0..MAX_CANDIDATES {
            let mut cookies: Vec<String> = (0..dead_ids).map(|_| dead()).collect();
            for position in 0..=dead_ids {
                cookies.insert(position, mine.clone());
                let header = cookies.join("; ");
                let (owner, reason) = adopted(&site, &header);
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
            let site = Site::new();
            let (mine, theirs) = (live(&site), live(&site));
            let mut cookies: Vec<String> = (0..MAX_CANDIDATES - 2).map(|_| dead()).collect();
            match order {
                0 => cookies.extend([theirs.clone(), mine.clone()]),
                1 => cookies.extend([mine.clone(), theirs.clone()]),
                _ => {
                    cookies.insert(0, theirs.clone());
                    cookies.push(mine.clone());
                }
            }
            let (owner, reason) = adopted(&site, &cookies.join("; "));
            assert_eq!(
                (owner, reason),
                (None, Origin::Replaced(Ended::Ambiguous)),
                "order {order}"
            );
            assert_eq!(adopted(&site, &mine).0, None, "ended");
            assert_eq!(adopted(&site, &theirs).0, None, "ended");
        }
    }

    #[test]
    fn made_up_ids_however_many_cannot_crowd_out_the_visitors_own() {
        let site = Site::new();
        let mine = live(&site);
        let made_up: Vec<String> = (0..100).map(|_| dead()).collect();
        for header in [
            format!("{}; {mine}", made_up.join("; ")),
            format!("{mine}; {}", made_up.join("; ")),
        ] {
            let (owner, reason) = adopted(&site, &header);
            assert_eq!(owner.as_deref(), Some(mine.as_str()), "{header}");
            assert_eq!(reason, Origin::Returning);
        }
    }

    #[test]
    fn more_stored_sessions_than_checked_adopt_none_and_all_end() {
        for mine_first in [false, true] {
            let site = Site::new();
            let mine = live(&site);
            let theirs: Vec<String> = (0..MAX_CANDIDATES).map(|_| live(&site)).collect();
            let header = if mine_first {
                format!("{mine}; {}", theirs.join("; "))
            } else {
                format!("{}; {mine}", theirs.join("; "))
            };
            let (owner, reason) = adopted(&site, &header);
            assert_eq!(
                (owner, reason),
                (None, Origin::Replaced(Ended::Ambiguous)),
                "{header}"
            );
            // All ended, and the new session of that request with them gone too: the tossed
            // cookies name nothing now, and cannot keep the visitor out.
            assert_eq!(site.records(), 1, "only the new session of that request");
            assert_eq!(adopted(&site, &header).1, Origin::Replaced(Ended::Unknown));
        }
        let site = Site::new();
        // More distinct ids than are even read: none adopted, nothing ended.
        let kept = live(&site);
        let flood: Vec<String> = (0..=MAX_OFFERED).map(|_| dead()).collect();
        let header = format!("{}; {kept}", flood.join("; "));
        assert_eq!(
            adopted(&site, &header),
            (None, Origin::Replaced(Ended::Ambiguous))
        );
        assert_eq!(adopted(&site, &kept).0, Some(kept));
    }

    #[test]
    fn unrelated_cookies_and_foreign_bytes_change_nothing() {
        let site = Site::new();
        let mine = live(&site);
        let noise: String = (0..300).map(|i| format!("c{i}=v; ")).collect();
        for header in [format!("{noise}{mine}"), format!("{mine}; {noise}")] {
            assert_eq!(adopted(&site, &header).0.as_deref(), Some(mine.as_str()));
        }
        // Bytes that are not UTF-8 in another cookie, through the request path itself.
        let env = crate::Environment::from_pairs([
            (
                std::ffi::OsString::from("HTTP_COOKIE"),
                <std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(
                    [b"bad=\xff\xfe\x00; ".to_vec(), mine.clone().into_bytes()].concat(),
                ),
            ),
            ("SCRIPT_NAME".into(), "/cgi-bin/app".into()),
        ]);
        let service =
            crate::Service::new(crate::Environment::default()).with_store(site.store.clone());
        let mut output = Vec::new();
        let now = std::time::UNIX_EPOCH + Duration::from_secs(T0 + 1);
        service
            .serve(&env, &mut std::io::empty(), &mut output, &whose, now)
            .unwrap();
        let text = String::from_utf8(output).unwrap();
        assert!(
            text.ends_with(&format!("Returning {}", &mine[4..])),
            "{text}"
        );
    }

    /// Cookie tossing with a session the attacker keeps busy (a slow request holds its lock):
    /// the visitor's request waits on no lock, is answered at once, and ends both sessions;
    /// the busy one cannot save again, so it never survives to be adopted alone later.
    #[test]
    fn a_session_an_attacker_keeps_busy_neither_holds_up_the_visitor_nor_survives() {
        let site = Site::new();
        let (mine, theirs) = (live(&site), live(&site));
        let key =
            |cookie: &str| SessionKey::new("app".parse().unwrap(), cookie[4..].parse().unwrap());
        let mut held = site
            .store
            .lock(&key(&theirs), LockOptions::new(Duration::ZERO))
            .unwrap();
        let loaded = held.load().unwrap().unwrap();
        let started = std::time::Instant::now();
        let reply = site
            .visit()
            .cookie(&format!("{mine}; {theirs}"))
            .env("PSOSessionLockTimeout", "30")
            .send(&whose);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the visitor waited on the attacker's lock"
        );
        assert!(
            reply.body().starts_with("Replaced(Ambiguous) "),
            "{}",
            reply.text
        );
        assert_eq!(held.save(&loaded).unwrap_err().kind(), ErrorKind::LockLost);
        drop(held);
        for cookie in [&mine, &theirs] {
            assert_eq!(adopted(&site, cookie).1, Origin::Replaced(Ended::Unknown));
        }
        // The attacker's cookie alone, later, names nothing: no fixation.
        let after = site
            .visit()
            .cookie(&theirs)
            .at(2)
            .send(&counter_with_origin);
        assert_eq!(after.body(), "Replaced(Unknown) 1");
    }

    /// Keeps a count and names the user eggs; says why it holds its session, and what expired
    /// data it was handed (the user, and when it was last used), once.
    fn auditor(cx: &mut Context<'_>) -> Result<(), BoxError> {
        let n: u64 = cx.session.get("n")?.unwrap_or(0) + 1;
        if cx.session.set("n", &n).is_ok() {
            cx.session.set("user", "eggs")?;
        }
        let old = cx.session.take_expired().map(|old| {
            let user: Option<String> = old.get("user").ok().flatten();
            (user, old.meta.last_access - T0)
        });
        let twice = cx.session.take_expired().is_some();
        write!(
            cx.response,
            "{:?} n={n} old={old:?} twice={twice}",
            cx.session.origin()
        )?;
        Ok(())
    }

    /// The auditor at `T0 + t` with `cookie` and `pairs`: the body, and the cookie the
    /// browser has afterwards.
    fn audit(site: &Site, cookie: &str, pairs: &[(&str, &str)], t: u64) -> (String, String) {
        let reply = site.visit().cookie(cookie).envs(pairs).at(t).send(&auditor);
        (reply.body().to_owned(), reply.cookie_or(cookie))
    }

    #[test]
    fn an_idle_session_ends_and_says_so_once() {
        let site = Site::new();
        let idle = [("PSOSessionIdle", "5*60")];
        let (body, cookie) = audit(&site, "", &idle, 0);
        assert_eq!(body, "New n=1 old=None twice=false");
        let (body, same) = audit(&site, &cookie, &idle, 200);
        assert_eq!(
            (body.as_str(), &same),
            ("Returning n=2 old=None twice=false", &cookie)
        );
        // Used 200 s ago: at +500 it has been unused exactly 300 s, the limit: still alive.
        let (body, _) = audit(&site, &cookie, &idle, 500);
        assert_eq!(body, "Returning n=3 old=None twice=false");
        // Read-only requests are told why, but handed nothing, and remove nothing.
        for _ in 0..3 {
            let read = site
                .visit()
                .cookie(&cookie)
                .envs(&idle)
                .at(801)
                .read_only()
                .send(&auditor);
            assert_eq!(read.body(), "Replaced(Idle) n=1 old=None twice=false");
        }
        // Unused 301 s: dead, replaced, and its data offered once (the user, the last use)
        // to the request that removes it.
        let (body, fresh) = audit(&site, &cookie, &idle, 801);
        assert_eq!(
            body,
            "Replaced(Idle) n=1 old=Some((Some(\"eggs\"), 500)) twice=false"
        );
        assert_ne!(fresh, cookie);
        // Gone from the store: the old cookie now names nothing.
        let (body, _) = audit(&site, &cookie, &idle, 802);
        assert_eq!(body, "Replaced(Unknown) n=1 old=None twice=false");
    }

    #[test]
    fn a_lifetime_ends_however_active_the_session() {
        let site = Site::new();
        let both = [("PSOSessionExpire", "100"), ("PSOSessionIdle", "60")];
        let (_, cookie) = audit(&site, "", &both, 0);
        for t in [50, 99] {
            let (body, _) = audit(&site, &cookie, &both, t);
            assert!(body.starts_with("Returning"), "{t}: {body}");
        }
        let (body, _) = audit(&site, &cookie, &both, 100);
        assert_eq!(
            body,
            "Replaced(Lifetime) n=1 old=Some((Some(\"eggs\"), 99)) twice=false"
        );
    }

    #[test]
    fn a_lowered_idle_limit_applies_to_sessions_saved_under_the_old_one() {
        let site = Site::new();
        let (_, cookie) = audit(&site, "", &[("PSOSessionIdle", "1h")], 0);
        let (body, _) = audit(&site, &cookie, &[("PSOSessionIdle", "1m")], 61);
        assert!(body.starts_with("Replaced(Idle)"), "{body}");
    }

    #[test]
    fn clocks_that_jump_and_extreme_limits_give_sane_outcomes() {
        let site = Site::new();
        let idle = [("PSOSessionIdle", "60")];
        let (_, cookie) = audit(&site, "", &idle, 1_000);
        // The clock went back 15 minutes: the last access is in the future, a use just now.
        let (body, _) = audit(&site, &cookie, &idle, 100);
        assert!(body.starts_with("Returning"), "{body}");
        // The largest limits pso accepts, and a time far ahead: no overflow, no panic.
        let huge = [("PSOSessionIdle", "100y"), ("PSOSessionExpire", "100y")];
        let (_, cookie) = audit(&site, "", &huge, 0);
        let (body, _) = audit(&site, &cookie, &huge, 99 * 365 * 86_400);
        assert!(body.starts_with("Returning"), "{body}");
        let (body, _) = audit(&site, &cookie, &huge, u64::MAX / 4);
        assert!(body.starts_with("Replaced("), "{body}");
        // An idle limit of 0 means none.
        let none = [("PSOSessionIdle", "0"), ("PSOSessionExpire", "1y")];
        let (_, cookie) = audit(&site, "", &none, 0);
        let (body, _) = audit(&site, &cookie, &none, 300 * 86_400);
        assert!(body.starts_with("Returning"), "{body}");
    }

    #[test]
    fn forged_and_several_cookies_say_why_they_were_not_adopted() {
        let site = Site::new();
        let forged = "app=0123456789abcdef0123456789abcdef0123456789abcdef";
        let (body, _) = audit(&site, forged, &[], 0);
        assert_eq!(body, "Replaced(Unknown) n=1 old=None twice=false");
        let (_, mine) = audit(&site, "", &[], 0);
        let (_, theirs) = audit(&site, "", &[], 0);
        let (body, _) = audit(&site, &format!("{mine}; {theirs}"), &[], 1);
        assert_eq!(body, "Replaced(Ambiguous) n=1 old=None twice=false");
        // Both ended.
        assert_eq!(
            audit(&site, &mine, &[], 2).0,
            "Replaced(Unknown) n=1 old=None twice=false"
        );
        assert_eq!(
            audit(&site, &theirs, &[], 2).0,
            "Replaced(Unknown) n=1 old=None twice=false"
        );
    }

    /// A session signed in whose user logged out everywhere is logged out before anything
    /// else is said of it: expired since too, it still says LoggedOut, and hands over nothing.
    #[test]
    fn a_logged_out_session_is_logged_out_whatever_else_holds_and_hands_over_nothing() {
        let site = Site::new();
        let idle = [("PSOSessionIdle", "60")];
        let visit = |cookie: &str, query: &str, t: u64| {
            site.visit().cookie(cookie).query(query).envs(&idle).at(t)
        };
        let stolen = visit("", "login", 0).issued(&eggs);
        let mine = visit("", "login", 1).issued(&eggs);
        visit(&mine, "everywhere", 2).send(&eggs);
        // Idle for an hour as well: logged out still, no data, to readers and writers alike.
        let read = visit(&stolen, "", 3600).read_only().send(&auditor);
        assert!(
            read.body().starts_with("Replaced(LoggedOut) n=1 old=None"),
            "{}",
            read.text
        );
        let (body, _) = audit(&site, &stolen, &idle, 3600);
        assert!(
            body.starts_with("Replaced(LoggedOut) n=1 old=None"),
            "{body}"
        );
    }

    #[test]
    fn with_check_ip_a_session_answers_only_its_own_address() {
        let site = Site::new();
        let from = |addr: &str, cookie: &str, check: &str| {
            let reply = site
                .visit()
                .from(addr)
                .cookie(cookie)
                .env("PSOSessionCheckIP", check)
                .send(&auditor);
            (reply.body().to_owned(), reply.cookie_or(cookie))
        };
        let (_, cookie) = from("192.0.2.1", "", "on");
        let (body, _) = from("198.51.100.7", &cookie, "on");
        assert!(body.starts_with("Replaced(OtherAddress) n=1"), "{body}");
        let (body, _) = from("192.0.2.1", &cookie, "on");
        assert!(
            body.starts_with("Returning n=2"),
            "left alone for its owner: {body}"
        );
        let (body, _) = from("198.51.100.7", &cookie, "off");
        assert!(body.starts_with("Returning n=3"), "off by default: {body}");
    }

    #[test]
    fn a_stolen_cookie_from_another_address_ends_nothing_through_a_stricter_script() {
        let site = Site::new();
        let visit = |cookie: &str, addr: &str, idle: &str, t: u64| {
            site.visit()
                .cookie(cookie)
                .from(addr)
                .env("PSOSessionCheckIP", "on")
                .env("PSOSessionIdle", idle)
                .at(t)
                .send(&counter_with_origin)
        };
        let cookie = visit("", "192.0.2.1", "3600", 0)
            .cookie()
            .unwrap()
            .to_owned();
        assert_eq!(
            visit(&cookie, "198.51.100.7", "60", 120).body(),
            "Replaced(OtherAddress) 1"
        );
        assert_eq!(
            visit(&cookie, "192.0.2.1", "3600", 121).body(),
            "Returning 2"
        );
    }

    /// Counts, and prints a link built with `cx.url`.
    fn linker(cx: &mut Context<'_>) -> Result<(), BoxError> {
        let n: u64 = cx.session.get("n")?.unwrap_or(0) + 1;
        cx.session.set("n", &n)?;
        write!(cx.response, "{n} {}", cx.url("/cgi-bin/app?page=2#top"))?;
        // Links to other sites never carry the id.
        assert_eq!(
            cx.url("https://other.example/?a=1"),
            "https://other.example/?a=1"
        );
        assert_eq!(cx.url("//other.example/x"), "//other.example/x");
        Ok(())
    }

    #[test]
    fn without_cookies_the_id_may_travel_in_links_when_allowed() {
        let site = Site::new();
        // A link followed from one of the site's own pages (an old browser, plain HTTP: no
        // Sec-Fetch-Site, a Referer).
        let visit = |query: &str, cookie: &str, on: &str| {
            site.visit()
                .query(query)
                .cookie(cookie)
                .env("PSOSessionUrl", on)
                .env("HTTP_HOST", "shop.example")
                .env("HTTP_REFERER", "http://shop.example/cgi-bin/app?page=1")
                .send(&linker)
        };
        let first = visit("", "", "on");
        let (count, link) = first.body().split_once(' ').unwrap();
        assert_eq!(count, "1");
        let id = first
            .cookie()
            .unwrap()
            .split_once('=')
            .unwrap()
            .1
            .to_owned();
        assert_eq!(link, format!("/cgi-bin/app?page=2&app={id}#top"));
        let query = link.split_once('?').unwrap().1.split('#').next().unwrap();
        let from_link = visit(query, "", "on");
        assert!(from_link.body().starts_with("2 "), "adopted from the link");
        assert_eq!(
            from_link.set_cookies(),
            Vec::<&str>::new(),
            "no cookie for it"
        );
        // A link that does not come from the site's pages (bookmarked, pasted): a new session.
        let bare = site
            .visit()
            .query(query)
            .env("PSOSessionUrl", "on")
            .env("HTTP_HOST", "shop.example")
            .send(&linker);
        assert!(bare.body().starts_with("1 "), "{}", bare.text);
        let forged = "page=2&app=0123456789abcdef0123456789abcdef0123456789abcdef";
        assert!(
            visit(forged, "", "on").body().starts_with("1 "),
            "strict mode still"
        );
        assert_eq!(
            visit(query, "", "off").body(),
            "1 /cgi-bin/app?page=2#top",
            "off by default"
        );
        let with_cookie = visit("", &format!("app={id}"), "on");
        assert_eq!(
            with_cookie.body(),
            "3 /cgi-bin/app?page=2#top",
            "a cookie needs no link"
        );
    }

    /// An attacker's signed-in session, its id in a link or a form on another site: a visitor
    /// who follows it (a signed-in one whose SameSite cookie stays behind, or one with no
    /// session) does not end up in it, and no cookie is ever set for an id from a URL.
    #[test]
    fn a_url_id_from_another_site_is_not_taken_and_never_becomes_a_cookie() {
        let site = Site::new();
        let on = [("PSOSessionUrl", "on")];
        let attackers = site.visit().envs(&on).from("203.0.113.66").send(&linker);
        let id = attackers
            .cookie()
            .unwrap()
            .split_once('=')
            .unwrap()
            .1
            .to_owned();
        let link = format!("app={id}");
        for from_elsewhere in [
            &[("HTTP_SEC_FETCH_SITE", "cross-site")][..],
            &[("HTTP_SEC_FETCH_SITE", "same-site")],
            &[("HTTP_SEC_FETCH_SITE", "none")],
            &[
                ("HTTP_ORIGIN", "https://evil.example"),
                ("HTTP_HOST", "shop.example"),
            ],
            // A plain-HTTP site: browsers send it no Sec-Fetch-Site, and a navigation no
            // Origin; a link elsewhere says where it was, or nothing at all.
            &[
                ("HTTP_HOST", "shop.example"),
                ("HTTP_REFERER", "http://evil.example/"),
            ],
            &[("HTTP_HOST", "shop.example")],
        ] {
            let followed = site
                .visit()
                .envs(&on)
                .envs(from_elsewhere)
                .query(&link)
                .send(&linker);
            assert!(followed.body().starts_with("1 "), "{}", followed.text);
            assert!(!followed.text.contains(&id), "{}", followed.text);
            let posted = site
                .visit()
                .envs(&on)
                .envs(from_elsewhere)
                .query(&link)
                .post("x=1")
                .send(&linker);
            assert!(posted.body().starts_with("1 "), "{}", posted.text);
        }
        // From the site itself it is taken (that is what the setting is for), and still no
        // cookie is set for it.
        let same = [("HTTP_SEC_FETCH_SITE", "same-origin")];
        let inside = site
            .visit()
            .envs(&on)
            .envs(&same)
            .query(&link)
            .send(&linker);
        assert!(inside.body().starts_with("2 "), "{}", inside.text);
        assert_eq!(inside.set_cookies(), Vec::<&str>::new());
        // A sign-in through it gets a new id, which may become a cookie.
        let signed_in = site
            .visit()
            .envs(&on)
            .envs(&same)
            .query(&format!("{link}&login"))
            .at(1)
            .send(&login);
        let new = signed_in.cookie().expect("a cookie for the new id");
        assert!(!new.contains(&id));
    }

    #[test]
    fn forwards_are_followed_a_bounded_number_of_times() {
        let site = Site::new();
        let grace = [("PSOSessionRegenerateGrace", "60")];
        let first = site.visit().envs(&grace).issued(&login);
        let mut id = first.clone();
        for t in 1..=u64::try_from(MAX_FORWARDS).unwrap() + 1 {
            let reply = site
                .visit()
                .envs(&grace)
                .cookie(&id)
                .query("login")
                .at(t)
                .send(&login);
            id = reply.cookie().unwrap().to_owned();
        }
        let reply = site.visit().envs(&grace).cookie(&first).at(20).send(&login);
        assert_eq!(
            reply.body(),
            "Replaced(Unknown) n=1 user=None",
            "too long a chain"
        );
    }

    #[test]
    fn forced_ids_are_shared() {
        let site = Site::new();
        let forced = [("PSOServiceId", "MyService"), ("MyService", "007")];
        let first = site.visit().envs(&forced).send(&counter);
        assert_eq!(first.cookie(), Some("MyService=007"));
        let second = site.visit().envs(&forced).send(&counter);
        assert_eq!(second.body(), "2", "no cookie needed");
        assert_eq!(second.cookie(), None);
    }

    /// Saves a count, and with `?big` a value that needs a larger record.
    fn padded(cx: &mut Context<'_>) -> Result<(), BoxError> {
        let n: u64 = cx.session.get("n")?.unwrap_or(0) + 1;
        cx.session.set("n", &n)?;
        if cx.request.query("big").is_some() {
            cx.session.set("pad", &vec![1u8; 1500])?;
        } else {
            cx.session.remove("pad")?;
        }
        write!(cx.response, "{n}")?;
        Ok(())
    }

    /// A forced session whose newest save a lowered `PSOSessionMaxBytes` cannot read is
    /// replaced, and the replacement is what later requests load (it used to land beside the
    /// unreadable slot, which won every load again).
    #[test]
    fn a_forced_session_replaced_after_a_failed_load_persists() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::FileStore::open(dir.path().join("s")).unwrap();
        let site = Site::over(
            std::sync::Arc::new(store.clone()),
            crate::store::MemoryStore::new(),
        );
        let forced = [("PSOServiceId", "app"), ("app", "shared-007")];
        assert_eq!(site.visit().envs(&forced).send(&padded).body(), "1");
        assert_eq!(
            site.visit().envs(&forced).query("big").send(&padded).body(),
            "2"
        );
        let small = crate::store::FileStore::open(dir.path().join("s"))
            .unwrap()
            .with_max_bytes(1024);
        let site = Site::over(std::sync::Arc::new(small), crate::store::MemoryStore::new());
        let counts: Vec<String> = (0..4)
            .map(|_| site.visit().envs(&forced).answer(&padded))
            .collect();
        assert_eq!(counts, ["1", "2", "3", "4"]);
    }

    #[test]
    fn a_forced_id_under_check_ip_is_left_alone_for_another_address() {
        let cart = |cx: &mut Context<'_>| -> Result<(), BoxError> {
            if let Some(item) = cx.request.query("add") {
                cx.session.set("cart", &item)?;
            }
            let item: Option<String> = cx.session.get("cart")?;
            write!(cx.response, "{:?} {item:?}", cx.session.origin())?;
            Ok(())
        };
        let site = Site::new();
        let visit = |addr: &str, query: &str, t: u64| {
            site.visit()
                .envs(&[
                    ("PSOServiceId", "app"),
                    ("app", "shared-007"),
                    ("PSOSessionCheckIP", "on"),
                ])
                .from(addr)
                .query(query)
                .at(t)
                .send(&cart)
        };
        assert_eq!(
            visit("192.0.2.1", "add=spam", 0).body(),
            "Forced Some(\"spam\")"
        );
        assert_eq!(
            visit("198.51.100.7", "", 1).body(),
            "Replaced(OtherAddress) None"
        );
        let refused = visit("198.51.100.7", "add=ham", 2);
        assert!(refused.text.starts_with("Status: 500"), "{}", refused.text);
        assert_eq!(
            visit("192.0.2.1", "", 3).body(),
            "Forced Some(\"spam\")",
            "left alone"
        );
    }

    #[test]
    fn an_expired_forced_session_of_another_address_gives_way_without_its_data() {
        let cart = |cx: &mut Context<'_>| -> Result<(), BoxError> {
            let old: Option<String> = match cx.session.take_expired() {
                Some(record) => record.get("cart")?,
                None => None,
            };
            if let Some(item) = cx.request.query("add") {
                cx.session.set("cart", &item)?;
            }
            let item: Option<String> = cx.session.get("cart")?;
            write!(cx.response, "{:?} {item:?} {old:?}", cx.session.origin())?;
            Ok(())
        };
        let site = Site::new();
        let forced = [
            ("PSOServiceId", "app"),
            ("app", "shared-007"),
            ("PSOSessionCheckIP", "on"),
            ("PSOSessionIdle", "60"),
        ];
        let visit = |addr: &str, query: &str, t: u64| {
            let reply = site
                .visit()
                .envs(&forced)
                .from(addr)
                .query(query)
                .at(t)
                .send(&cart);
            reply.body().to_owned()
        };
        assert_eq!(
            visit("192.0.2.1", "add=spam", 0),
            "Forced Some(\"spam\") None"
        );
        // Expired: another address takes the id over, without A's data.
        assert_eq!(
            visit("198.51.100.7", "add=ham", 200),
            "Replaced(Idle) Some(\"ham\") None"
        );
        assert_eq!(visit("198.51.100.7", "", 201), "Forced Some(\"ham\") None");
        // A read-only request says the same as a read-write one would.
        let read = site.visit().envs(&forced).at(202).read_only().send(&reader);
        assert!(
            read.body().starts_with("Replaced(OtherAddress)"),
            "{}",
            read.text
        );
    }

    #[test]
    fn a_forced_session_that_expired_says_why_and_hands_over_its_data() {
        let audit = |cx: &mut Context<'_>| -> Result<(), BoxError> {
            let old: Option<u64> = match cx.session.take_expired() {
                Some(record) => record.get("n")?,
                None => None,
            };
            let n: u64 = cx.session.get("n")?.unwrap_or(0) + 1;
            if cx.session.set("n", &n).is_err() {
                write!(cx.response, "{:?} {}", cx.session.origin(), old.is_some())?;
                return Ok(());
            }
            write!(cx.response, "{:?} {n} {old:?}", cx.session.origin())?;
            Ok(())
        };
        let site = Site::new();
        let forced = [
            ("PSOServiceId", "app"),
            ("app", "shared-007"),
            ("PSOSessionIdle", "60"),
        ];
        let visit = |t: u64| site.visit().envs(&forced).at(t).answer(&audit);
        assert_eq!(visit(0), "Forced 1 None");
        assert_eq!(visit(10), "Forced 2 None");
        // A reader is told why, but gets no data: it deletes nothing, so every reader would.
        let read = site.visit().envs(&forced).at(200).read_only().send(&audit);
        assert_eq!(read.body(), "Replaced(Idle) false");
        assert_eq!(visit(200), "Replaced(Idle) 1 Some(2)");
        assert_eq!(visit(210), "Forced 2 None");
    }

    #[test]
    fn a_busy_session_gets_503() {
        let site = Site::new();
        let cookie = site.visit().issued(&counter);
        let key = SessionKey::new("app".parse().unwrap(), cookie[4..].parse().unwrap());
        let _held = site
            .store
            .lock(&key, LockOptions::new(Duration::ZERO))
            .unwrap();
        let reply = site
            .visit()
            .cookie(&cookie)
            .env("PSOSessionLockTimeout", "0")
            .send(&counter);
        assert!(
            reply
                .text
                .starts_with("Status: 503 Service Unavailable\r\n"),
            "{}",
            reply.text
        );
        assert!(reply.text.contains("Retry-After: 5\r\n"));
    }

    #[test]
    fn a_read_only_request_runs_while_a_writer_holds_the_lock() {
        use std::sync::mpsc;
        let site = Site::new();
        let cookie = site.visit().issued(&counter);
        let (done, finished) = mpsc::channel::<String>();
        let finished = std::sync::Mutex::new(finished);
        // The writer holds the session's lock until the reader has answered (or 10 s pass).
        let slow_writer = |cx: &mut Context<'_>| -> Result<(), BoxError> {
            let n: u64 = cx.session.get("n")?.unwrap_or(0) + 1;
            cx.session.set("n", &n)?;
            let seen = finished
                .lock()
                .unwrap()
                .recv_timeout(Duration::from_secs(10))?;
            write!(cx.response, "wrote {n} while a reader saw {seen}")?;
            Ok(())
        };
        std::thread::scope(|scope| {
            let writer = scope.spawn(|| site.visit().cookie(&cookie).send(&slow_writer));
            std::thread::sleep(Duration::from_millis(50));
            let read = site.visit().cookie(&cookie).read_only().send(&reader);
            assert_eq!(
                read.set_cookies(),
                Vec::<&str>::new(),
                "no cookie from a reader"
            );
            assert!(
                read.text.contains("Cache-Control: no-store"),
                "{}",
                read.text
            );
            done.send(read.body().to_owned()).unwrap();
            let written = writer.join().unwrap();
            assert!(
                written
                    .body()
                    .ends_with("wrote 2 while a reader saw Returning 1 None"),
                "{}",
                written.text
            );
        });
        // A read-only request cannot change the session, and a new visitor gets nothing stored.
        let writes = |cx: &mut Context<'_>| -> Result<(), BoxError> {
            cx.session.set("n", &100u64)?;
            Ok(())
        };
        let refused = site.visit().cookie(&cookie).read_only().send(&writes);
        assert!(refused.text.starts_with("Status: 500"), "{}", refused.text);
        let records = site.records();
        let fresh = site.visit().read_only().send(&reader);
        assert_eq!((fresh.body(), fresh.cookie()), ("New 0 None", None));
        assert_eq!(site.records(), records);
        assert_eq!(site.visit().cookie(&cookie).send(&counter).body(), "3");
    }

    #[test]
    fn unknown_ids_are_replaced_not_adopted() {
        let site = Site::new();
        let forged = "app=0123456789abcdef0123456789abcdef0123456789abcdef";
        let reply = site.visit().cookie(forged).send(&counter);
        assert_eq!(reply.body(), "1");
        assert_ne!(reply.cookie(), Some(forged));
    }

    #[test]
    fn a_live_session_wins_over_a_tossed_cookie_in_any_order() {
        let site = Site::new();
        let real = site.visit().issued(&counter);
        let fake = "app=ffffffffffffffffffffffffffffffffffffffffffffffff";
        for header in [format!("{fake}; {real}"), format!("{real}; {fake}")] {
            let reply = site.visit().cookie(&header).send(&counter);
            assert_eq!(reply.cookie(), None, "the browser has it");
        }
        assert_eq!(site.visit().cookie(&real).send(&counter).body(), "4");
    }

    fn live_record() -> Record {
        Record::new(Meta::new(T0))
    }

    /// The decision alone, on verdicts: a table.
    #[test]
    fn decisions_from_verdicts() {
        let live = || Verdict::Live(live_record());
        let idle = || Verdict::Ended(Ended::Idle, Some(live_record()));
        let unknown = || Verdict::Ended(Ended::Unknown, None);
        let logged_out = || Verdict::Ended(Ended::LoggedOut, None);
        let cases: Vec<(Vec<Verdict>, bool, Decision)> = vec![
            (
                vec![],
                false,
                Decision {
                    adopt: None,
                    why: Origin::New,
                    expired_from: None,
                    end: vec![],
                    remove: vec![],
                },
            ),
            (
                vec![],
                true,
                Decision {
                    adopt: None,
                    why: Origin::Replaced(Ended::Unknown),
                    expired_from: None,
                    end: vec![],
                    remove: vec![],
                },
            ),
            (
                vec![unknown(), live()],
                true,
                Decision {
                    adopt: Some(1),
                    why: Origin::Returning,
                    expired_from: None,
                    end: vec![],
                    remove: vec![0],
                },
            ),
            (
                vec![live(), unknown(), live()],
                true,
                Decision {
                    adopt: None,
                    why: Origin::Replaced(Ended::Ambiguous),
                    expired_from: None,
                    end: vec![0, 2],
                    remove: vec![1],
                },
            ),
            (
                vec![unknown(), idle(), logged_out()],
                true,
                Decision {
                    adopt: None,
                    why: Origin::Replaced(Ended::LoggedOut),
                    expired_from: None,
                    end: vec![],
                    remove: vec![0, 1, 2],
                },
            ),
            (
                vec![unknown(), idle()],
                true,
                Decision {
                    adopt: None,
                    why: Origin::Replaced(Ended::Idle),
                    expired_from: None,
                    end: vec![],
                    remove: vec![0, 1],
                },
            ),
            (
                vec![idle()],
                true,
                Decision {
                    adopt: None,
                    why: Origin::Replaced(Ended::Idle),
                    expired_from: Some(0),
                    end: vec![],
                    remove: vec![0],
                },
            ),
            (
                vec![Verdict::Foreign, unknown()],
                true,
                Decision {
                    adopt: None,
                    why: Origin::Replaced(Ended::OtherAddress),
                    expired_from: None,
                    end: vec![],
                    remove: vec![1],
                },
            ),
            (
                vec![Verdict::Unjudged, Verdict::Unjudged],
                true,
                Decision {
                    adopt: None,
                    why: Origin::Replaced(Ended::Ambiguous),
                    expired_from: None,
                    end: vec![0, 1],
                    remove: vec![],
                },
            ),
        ];
        for (verdicts, offered_any, expected) in cases {
            let weighed: Vec<Weighed<'_>> = verdicts
                .iter()
                .map(|verdict| Weighed {
                    verdict,
                    through_old_id: false,
                })
                .collect();
            assert_eq!(decide(&weighed, offered_any), expected, "{verdicts:?}");
        }
    }

    /// With PSOSessionCheckIP, another address's session is left alone for its owner even
    /// among more sessions than a request usually reads (a thief sending a stolen id beside
    /// their own).
    #[test]
    fn with_check_ip_a_stolen_id_among_many_is_left_alone() {
        let site = Site::new();
        let check = [("PSOSessionCheckIP", "on")];
        let owners = site.visit().envs(&check).issued(&counter);
        let thief = "198.51.100.7";
        let theirs: Vec<String> = (0..MAX_CANDIDATES)
            .map(|_| site.visit().envs(&check).from(thief).issued(&counter))
            .collect();
        let header = format!("{}; {owners}", theirs.join("; "));
        let tried = site
            .visit()
            .envs(&check)
            .from(thief)
            .cookie(&header)
            .send(&counter_with_origin);
        assert_eq!(tried.body(), "Replaced(Ambiguous) 1");
        let owner = site
            .visit()
            .envs(&check)
            .cookie(&owners)
            .send(&counter_with_origin);
        assert_eq!(owner.body(), "Returning 2", "left alone for its owner");
    }

    /// Among several dead sessions, the visitor's own cannot be told from a tossed one: the
    /// handler is told why, and handed no one's data.
    #[test]
    fn among_several_expired_sessions_no_data_is_handed_over() {
        let site = Site::new();
        let idle = [("PSOSessionIdle", "60")];
        let (_, mine) = audit(&site, "", &idle, 0);
        let (_, tossed) = audit(&site, "", &idle, 30);
        let (body, _) = audit(&site, &format!("{mine}; {tossed}"), &idle, 200);
        assert_eq!(body, "Replaced(Idle) n=1 old=None twice=false");
    }

    /// Many sessions read without their locks keep at most one record in memory.
    #[test]
    fn candidates_keep_one_record() {
        let key = |_| SessionKey::new("app".parse().unwrap(), SessionId::generate().unwrap());
        let big = || {
            let mut record = Record::new(Meta::new(T0));
            record.set("pad", &vec![1u8; 1000]).unwrap();
            record
        };
        let mut candidates: Vec<Candidate> = (0..4)
            .map(|i| {
                let at = key(i);
                Candidate {
                    named: at.clone(),
                    at,
                    verdict: if i % 2 == 0 {
                        Verdict::Live(big())
                    } else {
                        Verdict::Ended(Ended::Idle, Some(big()))
                    },
                    lock: None,
                    repair: None,
                }
            })
            .collect();
        keep_one_record(&mut candidates);
        let sizes: Vec<usize> = candidates
            .iter()
            .map(|c| match &c.verdict {
                Verdict::Live(record) => record.len(),
                Verdict::Ended(_, data) => data.as_ref().map_or(0, Record::len),
                _ => 0,
            })
            .collect();
        assert_eq!(sizes, [1, 0, 0, 0]);
    }
}
