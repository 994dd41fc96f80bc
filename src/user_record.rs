//! "Log out everywhere": one small record per user, kept in the store beside the sessions.
//!
//! A session signed in with `set_user` keeps its user's name and when it signed in (in
//! milliseconds). `log_out_everywhere` writes into that user's record the time before which
//! every session signed in under the name is logged out, and a session checks the record when
//! it loads: nothing is scanned, and nothing needs cleaning when sessions end.
//!
//! - The record's id is a 64-bit hash of the name (FNV-1a) in a form no generated or forced id
//!   takes (`user-`), and adoption never takes such a record for a session. Names whose hashes
//!   collide (someone choosing names can make that happen) share a record, which keeps a time
//!   per name, so they never undo each other's logout.
//! - A name's time only ever rises, and it is the time the record is written, not the time the
//!   request began: a "log out everywhere" that began earlier and finishes later (a slow
//!   request body) never undoes a newer one, and covers every sign-in before it was written.
//! - A record that cannot be read counts as a logout (a damaged file must not undo one), and
//!   the next request that may write rebuilds it, logging out every name that leads to it.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::error::{ErrorChain, ErrorKind, Result};
use crate::expiry::Clock;
use crate::id::{ServiceId, SessionId};
use crate::record::{Meta, Record};
use crate::reserved::{
    EARLIER_REVOKED_BEFORE, EVERY_USER_LOGGED_OUT_BEFORE, LOGGED_OUT_BEFORE, USER, USER_SINCE,
};
use crate::store::{LockOptions, LockedSession, SessionKey, Store};

/// The longest a request waits for a user record's lock: it is held only while one small
/// record is rewritten.
const LOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// The id of the record that keeps `user`'s "logged out before" time.
pub(crate) fn id_for(user: &str) -> SessionId {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in user.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    SessionId::user_record(hash)
}

/// The key of `user`'s record in `service`.
pub(crate) fn key_for(service: &ServiceId, user: &str) -> SessionKey {
    SessionKey::new(service.clone(), id_for(user))
}

/// Whether `record` is a user's record (never anyone's session, whatever id names it).
pub(crate) fn is_user_record(record: &Record) -> bool {
    record.contains(LOGGED_OUT_BEFORE)
}

/// Where a session stands with its user's record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Standing {
    /// Signed in since its user last logged out everywhere.
    SignedIn,
    /// Its user logged out everywhere since it signed in.
    LoggedOut,
    /// Its user's record cannot be read (damaged, or of a format this pso does not know):
    /// counted as a logout; a request that may write rebuilds the record.
    Unreadable,
}

/// Where `session`, a record of `service`, stands with the record of the user it is signed in
/// as; `None` when it is not signed in. The user record is read without its lock. One that
/// cannot be read now (an I/O error) is an error: the request fails and nothing ends.
pub(crate) fn standing(
    store: &dyn Store,
    service: &ServiceId,
    session: &Record,
) -> Result<Option<Standing>> {
    let Ok(Some(user)) = session.get::<String>(USER) else {
        return Ok(None);
    };
    let since: u64 = session.get(USER_SINCE).ok().flatten().unwrap_or(0);
    let key = key_for(service, &user);
    let revoked = match store.peek(&key) {
        Ok(Some(user_record)) => logged_out_before(&user_record, &user),
        Ok(None) => return Ok(Some(Standing::SignedIn)),
        Err(e) if e.kind() == ErrorKind::Corrupt => Err(e),
        Err(e) => return Err(e),
    };
    match revoked {
        Ok(Some(before)) if since <= before => Ok(Some(Standing::LoggedOut)),
        Ok(_) => Ok(Some(Standing::SignedIn)),
        Err(e) => {
            log::error!(
                "the user record {key:?} is unreadable ({}); its sessions end, to be safe",
                ErrorChain(&e)
            );
            Ok(Some(Standing::Unreadable))
        }
    }
}

/// The user `session` is signed in as, if any.
pub(crate) fn user_of(session: &Record) -> Option<String> {
    session.get(USER).ok().flatten()
}

/// Notes that `user` logged out everywhere, in the user record under `lock`, at `millis`
/// (when the record is written, read by the caller once it holds the lock). A name's time
/// only rises; every other name the record keeps stays as it was.
pub(crate) fn log_out(
    lock: &mut dyn LockedSession,
    user: &str,
    now_secs: u64,
    millis: u64,
) -> Result<()> {
    let (mut record, mut names, _) = for_update(lock, now_secs, millis)?;
    let time = names.entry(user.to_owned()).or_insert(millis);
    *time = (*time).max(millis);
    record.set(LOGGED_OUT_BEFORE, &names)?;
    lock.save(&record)
}

/// Rebuilds `user`'s record in `service` if it cannot be read, logging out every name that
/// leads to it before this millisecond (when it is rebuilt; a sign-in made later in this very
/// request stays): the sessions it served stay ended, and new sign-ins work again. Failures
/// are logged: the sessions end anyway, and the next request tries again.
pub(crate) fn repair(store: &dyn Store, service: &ServiceId, user: &str, clock: Clock) {
    let key = key_for(service, user);
    let repaired = store
        .lock(&key, LockOptions::new(LOCK_TIMEOUT))
        .and_then(|mut lock| rebuild(&mut *lock, clock).map(drop));
    if let Err(e) = repaired {
        log::warn!("cannot rebuild the user record {key:?}: {}", ErrorChain(&e));
    }
}

/// Rebuilds the user record under `lock` if it cannot be read, as [`repair`] does: for a
/// record a store move finds damaged. Whether it was.
pub(crate) fn rebuild(lock: &mut dyn LockedSession, clock: Clock) -> Result<bool> {
    let before = clock.millis_now().saturating_sub(1);
    let (record, _, rebuilt) = for_update(lock, clock.secs(), before)?;
    if rebuilt {
        lock.save(&record)?;
    }
    Ok(rebuilt)
}

/// The longest a request waits for a user record's lock.
pub(crate) fn lock_options() -> LockOptions {
    LockOptions::new(LOCK_TIMEOUT).with_create(true)
}

/// When `user` last logged out everywhere, as the user record says (milliseconds); an error
/// when the record holds what cannot be read, which counts as a logout.
pub(crate) fn logged_out_before(user_record: &Record, user: &str) -> Result<Option<u64>> {
    let (names, every) = times(user_record)?;
    Ok(names.get(user).copied().max(every))
}

/// A user record's times: per name, and for every name that leads to it. The format written
/// before names were kept apart (one user, `pso.revoked_before`) counts for every name.
fn times(user_record: &Record) -> Result<(BTreeMap<String, u64>, Option<u64>)> {
    let names: BTreeMap<String, u64> = user_record.get(LOGGED_OUT_BEFORE)?.unwrap_or_default();
    let every: Option<u64> = user_record.get(EVERY_USER_LOGGED_OUT_BEFORE)?;
    let earlier: Option<u64> = user_record.get(EARLIER_REVOKED_BEFORE)?;
    Ok((names, every.max(earlier)))
}

/// The user record under `lock` and the names it keeps. One that cannot be read comes back
/// rebuilt (and `true`): it logs out at `millis` every name that leads to it, since the names
/// it kept are unknown and forgetting one would revive its sessions.
fn for_update(
    lock: &mut dyn LockedSession,
    now_secs: u64,
    millis: u64,
) -> Result<(Record, BTreeMap<String, u64>, bool)> {
    let damaged = match lock.load() {
        Ok(Some(record)) => match times(&record) {
            Ok((names, _)) => return Ok((record, names, false)),
            Err(e) => e,
        },
        Ok(None) => return Ok((Record::new(Meta::new(now_secs)), BTreeMap::new(), false)),
        Err(e) if e.kind() == ErrorKind::Corrupt => e,
        Err(e) => return Err(e),
    };
    log::error!(
        "the user record {:?} is unreadable ({}); rebuilt, logging out every user it served",
        lock.key(),
        ErrorChain(&damaged)
    );
    let mut record = Record::new(Meta::new(now_secs));
    record.set(EVERY_USER_LOGGED_OUT_BEFORE, &millis)?;
    record.set(LOGGED_OUT_BEFORE, &BTreeMap::<String, u64>::new())?;
    Ok((record, BTreeMap::new(), true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BoxError;
    use crate::runner::Context;
    use crate::store::{GcReport, MemoryStore, suite};
    use crate::testing::{Site, T0, eggs, say_who};
    use std::sync::Arc;
    use std::time::{SystemTime, UNIX_EPOCH};

    fn eggs_record() -> SessionKey {
        key_for(&"svc".parse().unwrap(), "eggs")
    }

    #[test]
    fn names_that_share_a_user_record_keep_their_own_logout() {
        // Two names whose hashes collide lead to one record; a logout of the second must not
        // undo the first's (a user name chosen to collide with a victim's would otherwise
        // revive the victim's stolen sessions).
        let store = MemoryStore::new();
        let key = eggs_record();
        let mut lock = store.lock(&key, suite::options()).unwrap();
        log_out(&mut *lock, "eggs", T0, 1_000).unwrap();
        log_out(&mut *lock, "mallory", T0, 2_000).unwrap();
        log_out(&mut *lock, "mallory", T0, 3_000).unwrap();
        let record = lock.load().unwrap().unwrap();
        assert_eq!(logged_out_before(&record, "eggs").unwrap(), Some(1_000));
        assert_eq!(logged_out_before(&record, "mallory").unwrap(), Some(3_000));
        assert_eq!(logged_out_before(&record, "ham").unwrap(), None);

        // A damaged record rebuilt by one name's logout logs out every name that led to it.
        drop(lock);
        store.plant(&key, b"damaged");
        let mut lock = store.lock(&key, suite::options()).unwrap();
        log_out(&mut *lock, "mallory", T0, 4_000).unwrap();
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
    fn a_logout_time_only_ever_rises() {
        let store = MemoryStore::new();
        let key = eggs_record();
        let mut lock = store.lock(&key, suite::options()).unwrap();
        log_out(&mut *lock, "eggs", T0, 5_000).unwrap();
        log_out(&mut *lock, "eggs", T0, 2_000).unwrap();
        let record = lock.load().unwrap().unwrap();
        assert_eq!(logged_out_before(&record, "eggs").unwrap(), Some(5_000));
    }

    #[test]
    fn a_user_record_this_pso_cannot_read_counts_as_a_logout() {
        // A field of the wrong type (another version, a damaged value): an error, which
        // counts as "logged out".
        let mut odd = Record::new(Meta::new(T0));
        odd.set(LOGGED_OUT_BEFORE, "eggs").unwrap();
        assert!(logged_out_before(&odd, "eggs").is_err());
        // The first format (one user, `pso.revoked_before`) counts for every name.
        let mut first = Record::new(Meta::new(T0));
        first.set("pso.user_record", "eggs").unwrap();
        first.set(EARLIER_REVOKED_BEFORE, &5_000u64).unwrap();
        assert_eq!(logged_out_before(&first, "eggs").unwrap(), Some(5_000));
        assert_eq!(logged_out_before(&first, "ham").unwrap(), Some(5_000));
        // Rewriting such a record keeps its time.
        let store = MemoryStore::new();
        let key = eggs_record();
        let mut lock = store.lock(&key, suite::options()).unwrap();
        lock.save(&first).unwrap();
        log_out(&mut *lock, "ham", T0, 6_000).unwrap();
        let record = lock.load().unwrap().unwrap();
        assert_eq!(logged_out_before(&record, "eggs").unwrap(), Some(5_000));
        assert_eq!(logged_out_before(&record, "ham").unwrap(), Some(6_000));
        // And a wrongly typed one is rebuilt logging out every name.
        lock.save(&odd).unwrap();
        log_out(&mut *lock, "ham", T0, 7_000).unwrap();
        let record = lock.load().unwrap().unwrap();
        assert_eq!(logged_out_before(&record, "eggs").unwrap(), Some(7_000));
    }

    #[test]
    fn log_out_everywhere_ends_every_session_of_that_user_and_no_other() {
        let app = |cx: &mut Context<'_>| -> Result<(), BoxError> {
            if let Some(user) = cx.request.query("login") {
                cx.session.regenerate_id()?;
                cx.session.set_user(&user)?;
            }
            if cx.request.query("everywhere").is_some() {
                cx.session.log_out_everywhere()?;
            }
            say_who(cx)
        };
        let site = Site::new();
        let visit = |query: &str, cookie: &str, t: u64| {
            let reply = site.visit().query(query).cookie(cookie).at(t).send(&app);
            (reply.body().to_owned(), reply.cookie_or(cookie))
        };
        let eggs: Vec<String> = (0..50).map(|_| visit("login=eggs", "", 0).1).collect();
        let ham: Vec<String> = (0..5).map(|_| visit("login=ham", "", 0).1).collect();
        let (body, _) = visit("everywhere", &eggs[0], 10);
        assert_eq!(body, "Returning Some(\"eggs\")");
        // The session that asked ended at once; the 49 others at their next request.
        assert_eq!(visit("", &eggs[0], 20).0, "Replaced(Unknown) None");
        // Each of them is told to forget its dead cookie: a browser that does comes back as a
        // new visitor, not as a dead id logged as suspicious at every request.
        let revoked = |reply: &crate::testing::Answer| {
            reply
                .set_cookies()
                .iter()
                .any(|c| c.starts_with("app=;") && c.contains("Max-Age=0"))
        };
        for cookie in &eggs[1..] {
            let reply = site.visit().cookie(cookie).at(20).send(&app);
            assert_eq!(reply.body(), "Replaced(LoggedOut) None", "{cookie}");
            assert!(revoked(&reply), "{}", reply.text);
        }
        let gone = site.visit().cookie(&eggs[1]).at(21).send(&app);
        assert_eq!(gone.body(), "Replaced(Unknown) None");
        assert!(revoked(&gone), "{}", gone.text);
        for cookie in &ham {
            assert_eq!(visit("", cookie, 20).0, "Returning Some(\"ham\")");
        }
        // Signing in again afterwards works; and a cookie naming the user record is not even
        // read as a session id (cookies carry generated ids only).
        let (_, again) = visit("login=eggs", "", 30);
        assert_eq!(visit("", &again, 31).0, "Returning Some(\"eggs\")");
        let record = id_for("eggs");
        let (body, _) = visit("", &format!("app={}", record.as_str()), 32);
        assert_eq!(body, "New None");
        // A user record that cannot be read ends the user's sessions: a damaged file must not
        // undo a logout.
        let key = SessionKey::new("app".parse().unwrap(), record);
        site.memory.plant(&key, b"not a record");
        assert_eq!(visit("", &again, 33).0, "Replaced(LoggedOut) None");
        assert_eq!(visit("", &ham[0], 33).0, "Returning Some(\"ham\")");
    }

    /// A "log out everywhere" that began before a sign-in and finishes after a newer "log out
    /// everywhere" (its body came slowly, or its page was slow) never undoes that newer one:
    /// what it writes is when it writes, and times only rise.
    #[test]
    fn an_older_log_out_everywhere_that_finishes_later_undoes_nothing() {
        use std::sync::mpsc;
        let site = Site::new();
        let (go, gone) = mpsc::channel::<()>();
        let gone = std::sync::Mutex::new(gone);
        let slow_logout = |cx: &mut Context<'_>| -> Result<(), BoxError> {
            gone.lock().unwrap().recv_timeout(Duration::from_secs(10))?;
            cx.session.log_out_everywhere()?;
            Ok(())
        };
        let sign_in = |t: u64| {
            let reply = site.visit().query("login").at(t).send(&eggs);
            reply.cookie().unwrap().to_owned()
        };
        let first = sign_in(0);
        let owners = sign_in(0);
        std::thread::scope(|scope| {
            // The attacker's slow "log out everywhere" from their first session, begun at +1.
            let slow = scope.spawn(|| site.visit().cookie(&first).at(1).send(&slow_logout));
            std::thread::sleep(Duration::from_millis(50));
            // They sign in again at +2; the owner logs out everywhere at +3.
            let second = sign_in(2);
            site.visit()
                .cookie(&owners)
                .query("everywhere")
                .at(3)
                .send(&eggs);
            go.send(()).unwrap();
            assert_eq!(slow.join().unwrap().status(), "200 OK");
            let later = site.visit().cookie(&second).at(4).send(&eggs);
            assert_eq!(
                later.body(),
                "Replaced(LoggedOut) None",
                "the owner's logout stands"
            );
        });
    }

    #[test]
    fn log_out_everywhere_ends_a_session_whose_id_the_server_forces_too() {
        let site = Site::new();
        let forced_env = [("PSOServiceId", "app"), ("app", "shared-007")];
        let forced = |query: &str, t: u64| {
            site.visit()
                .envs(&forced_env)
                .query(query)
                .at(t)
                .answer(&eggs)
        };
        assert_eq!(forced("login", 0), "Forced Some(\"eggs\")");
        let cookie = site.visit().query("login").at(1).issued(&eggs);
        site.visit()
            .cookie(&cookie)
            .query("everywhere")
            .at(2)
            .send(&eggs);
        assert_eq!(forced("", 3), "Replaced(LoggedOut) None");
        assert_eq!(forced("", 4), "Forced None", "the forced id starts afresh");
        assert_eq!(forced("login", 5), "Forced Some(\"eggs\")");
        // Logged out everywhere again; the first request after it may sign in at once.
        let again = site
            .visit()
            .cookie(&cookie)
            .query("login")
            .at(6)
            .send(&eggs);
        assert_eq!(again.body(), "Replaced(Unknown) Some(\"eggs\")");
        let cookie = again.cookie().unwrap().to_owned();
        site.visit()
            .cookie(&cookie)
            .query("everywhere")
            .at(7)
            .send(&eggs);
        assert_eq!(forced("login", 8), "Replaced(LoggedOut) Some(\"eggs\")");
        // A read-only request reads the forced session, not a cookie's.
        let read = site
            .visit()
            .envs(&forced_env)
            .cookie(&cookie)
            .at(9)
            .read_only()
            .send(&eggs);
        assert_eq!(read.body(), "Forced Some(\"eggs\")");
    }

    #[test]
    fn a_damaged_user_record_is_kept_by_collection_ends_its_sessions_and_is_rebuilt() {
        let site = Site::new();
        let sessions: Vec<String> = (0..3)
            .map(|_| site.visit().query("login").issued(&eggs))
            .collect();
        let user = key_for(&"app".parse().unwrap(), "eggs");
        site.memory.plant(&user, b"damaged");
        let later = UNIX_EPOCH + Duration::from_secs(T0 + 1);
        site.store
            .collect_garbage(later, Duration::from_secs(5))
            .unwrap();
        assert!(
            site.store.peek(&user).is_err(),
            "a damaged user record is never collected"
        );
        let visit = |query: &str, cookie: &str, t: u64| {
            site.visit().cookie(cookie).query(query).at(t).send(&eggs)
        };
        // Its sessions end; the record is rebuilt saying "everyone before now"...
        assert_eq!(
            visit("", &sessions[0], 2).body(),
            "Replaced(LoggedOut) None"
        );
        assert!(site.store.peek(&user).unwrap().is_some(), "rebuilt");
        assert_eq!(
            visit("", &sessions[1], 3).body(),
            "Replaced(LoggedOut) None"
        );
        // ... so a new sign-in lasts, even one made by the request that rebuilt it.
        site.memory.plant(&user, b"damaged");
        let same = visit("login", &sessions[2], 4);
        assert_eq!(same.body(), "Replaced(LoggedOut) Some(\"eggs\")");
        let cookie = same.cookie().unwrap().to_owned();
        assert_eq!(visit("", &cookie, 5).body(), "Returning Some(\"eggs\")");
        let again = visit("login", "", 4);
        let cookie = again.cookie().unwrap().to_owned();
        assert_eq!(visit("", &cookie, 5).body(), "Returning Some(\"eggs\")");
    }

    /// A store whose user records cannot be read right now (a failing disk).
    struct FailingUserRecords(MemoryStore);

    impl Store for FailingUserRecords {
        fn lock(&self, key: &SessionKey, options: LockOptions) -> Result<Box<dyn LockedSession>> {
            self.0.lock(key, options)
        }
        fn exists(&self, key: &SessionKey) -> Result<bool> {
            self.0.exists(key)
        }
        fn peek(&self, key: &SessionKey) -> Result<Option<Record>> {
            if key.id.as_str().starts_with("user-") {
                return Err(crate::Error::new(ErrorKind::Io, "input/output error"));
            }
            self.0.peek(key)
        }
        fn delete(&self, key: &SessionKey) -> Result<()> {
            self.0.delete(key)
        }
        fn keys(&self) -> Result<Box<dyn Iterator<Item = Result<SessionKey>> + '_>> {
            self.0.keys()
        }
        fn collect_garbage(&self, now: SystemTime, budget: Duration) -> Result<GcReport> {
            self.0.collect_garbage(now, budget)
        }
    }

    #[test]
    fn a_user_record_that_cannot_be_read_now_fails_the_request_and_ends_nothing() {
        let site = Site::new();
        let cookie = site.visit().query("login").issued(&eggs);
        let failing = Site::over(
            Arc::new(FailingUserRecords(site.memory.clone())),
            site.memory.clone(),
        );
        let refused = failing.visit().cookie(&cookie).at(1).send(&eggs);
        assert_eq!(refused.status(), "500 Internal Server Error");
        let back = site.visit().cookie(&cookie).at(2).send(&eggs);
        assert_eq!(
            back.body(),
            "Returning Some(\"eggs\")",
            "the session was kept"
        );
    }

    /// "Sign out everywhere else": log out everywhere, then stay signed in here, in one
    /// request.
    #[test]
    fn a_sign_in_after_a_log_out_everywhere_in_the_same_request_stays() {
        let elsewhere = |cx: &mut Context<'_>| -> Result<(), BoxError> {
            cx.session.log_out_everywhere()?;
            cx.session.expire(crate::Expiry::BrowserClose)?;
            cx.session.set_user("eggs")?;
            Ok(())
        };
        let site = Site::new();
        let other = site.visit().query("login").issued(&eggs);
        let here = site.visit().query("login").issued(&eggs);
        site.visit().cookie(&here).at(1).send(&elsewhere);
        let stays = site.visit().cookie(&here).at(2).send(&eggs);
        assert_eq!(stays.body(), "Returning Some(\"eggs\")");
        let gone = site.visit().cookie(&other).at(2).send(&eggs);
        assert_eq!(gone.body(), "Replaced(LoggedOut) None");
    }
}
