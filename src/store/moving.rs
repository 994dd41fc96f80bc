//! A site on its way from one store to another (`PSOSessionStoreMovingFrom`): sessions live in
//! the new store, and each one still in the old store moves over the first time anything
//! touches it, under its lock in both.
//!
//! A live move needs every session to be in exactly one place at any instant that a request
//! can see: copying a store while the site runs cannot tell a session changed in the old
//! store after its copy from one changed (or signed out) in the new store after the switch.
//! So a session is moved, not copied: under the new store's lock, then the old store's (always
//! in that order, so two movers never wait on each other), it is saved into the new store and
//! then removed from the old one. Once moved it is never read from the old store again: the
//! new store's record, or its absence after a sign-out, is the truth. `pso sessions migrate`
//! moves the sessions no request touches, through the same code, so a move ends.
//!
//! Every program serving the site must use the new store, with this variable, before the
//! first session moves: a program still reading only the old store would find moved
//! sessions gone.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::error::{ErrorKind, Result};
use crate::id::SessionId;
use crate::record::Record;
use crate::store::{
    GcReport, LockOptions, LockedSession, SessionKey, Store, lock_deadline, time_left,
};

/// Sessions kept in `to`, moved over from `from` as they are touched.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use pso::store::{LockOptions, MemoryStore, MovingStore, SessionKey, Store};
/// let (old, new) = (Arc::new(MemoryStore::new()), Arc::new(MemoryStore::new()));
/// let key = SessionKey::new("shop".parse()?, pso::SessionId::generate()?);
/// let options = LockOptions::new(Duration::from_secs(1));
/// old.lock(&key, options)?.save(&pso::Record::default())?;
///
/// let moving = MovingStore::new(new.clone(), old.clone());
/// assert!(moving.lock(&key, options)?.load()?.is_some());
/// // Moved: in the new store only.
/// assert!(new.exists(&key)? && !old.exists(&key)?);
/// # Ok::<(), pso::Error>(())
/// ```
pub struct MovingStore {
    to: Arc<dyn Store>,
    from: Arc<dyn Store>,
}

/// What [`MovingStore::move_one`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Moved {
    /// The old store's session is now in the new store only.
    Moved,
    /// The new store had the session already (a move interrupted after its save, or a copy
    /// made earlier): the new store's is kept, and the old store's copy is gone.
    AlreadyThere,
    /// Neither store has it (gone meanwhile).
    Gone,
    /// The old store's record cannot be read: left there, and the session starts afresh in
    /// the new store.
    Unreadable,
}

impl MovingStore {
    /// Sessions in `to`, moved over from `from` as they are touched.
    pub fn new(to: Arc<dyn Store>, from: Arc<dyn Store>) -> MovingStore {
        MovingStore { to, from }
    }

    /// Moves `key`'s session now, waiting at most `timeout` for a request that holds it in
    /// either store. A copy the old store keeps of a session the new store holds (a move
    /// cut short) goes; a damaged user record ("log out everywhere") is rebuilt in the new
    /// store, logging out every user it served, as a request would rebuild it: forgotten
    /// with the old store, it would sign its users' old sessions in again.
    pub fn move_one(&self, key: &SessionKey, timeout: Duration) -> Result<Moved> {
        let options = LockOptions::new(timeout);
        let mut session = self.moving(self.to.lock(key, options)?, options);
        let mut outcome = session.settle()?;
        match outcome {
            Moved::AlreadyThere => session.remove_stale_copy()?,
            Moved::Unreadable if key.id.is_user_record() => {
                let clock = crate::expiry::Clock::starting_at(SystemTime::now());
                crate::user_record::rebuild(&mut session, clock)?;
                outcome = Moved::Moved;
            }
            _ => {}
        }
        Box::new(session).release()?;
        Ok(outcome)
    }

    fn moving(&self, target: Box<dyn LockedSession>, options: LockOptions) -> MovingLock {
        MovingLock::new(target, self.from.clone(), options)
    }
}

impl Store for MovingStore {
    fn lock(&self, key: &SessionKey, options: LockOptions) -> Result<Box<dyn LockedSession>> {
        // The source is locked only when the session has to move: once settled, a request
        // costs what the new store alone costs.
        Ok(Box::new(self.moving(self.to.lock(key, options)?, options)))
    }

    fn exists(&self, key: &SessionKey) -> Result<bool> {
        Ok(self.to.exists(key)? || self.from.exists(key)?)
    }

    fn peek(&self, key: &SessionKey) -> Result<Option<Record>> {
        if let Some(record) = self.to.peek(key)? {
            return Ok(Some(record));
        }
        if let Some(record) = self.from.peek(key)? {
            return Ok(Some(record));
        }
        // Moved between the two reads: it is in the new store now.
        self.to.peek(key)
    }

    fn delete(&self, key: &SessionKey) -> Result<()> {
        // Both: a copy left in the old store must not come back.
        self.to.delete(key)?;
        self.from.delete(key)
    }

    fn keys(&self) -> Result<Box<dyn Iterator<Item = Result<SessionKey>> + '_>> {
        let waiting = self.from.keys()?.filter(|key| match key {
            // Listed once: a session in both is the new store's.
            Ok(key) => !matches!(self.to.exists(key), Ok(true)),
            Err(_) => true,
        });
        Ok(Box::new(self.to.keys()?.chain(waiting)))
    }

    fn collect_garbage(&self, now: SystemTime, budget: Duration) -> Result<GcReport> {
        let started = std::time::Instant::now();
        let new = self.to.collect_garbage(now, budget)?;
        let old = self
            .from
            .collect_garbage(now, budget.saturating_sub(started.elapsed()))?;
        Ok(GcReport {
            listed: new.listed + old.listed,
            examined: new.examined + old.examined,
            removed: new.removed + old.removed,
            busy: new.busy + old.busy,
            incomplete: new.incomplete || old.incomplete,
        })
    }
}

/// A session's lock in the new store, which moves the session over from the old store
/// before anything reads or changes it.
struct MovingLock {
    target: Box<dyn LockedSession>,
    from: Arc<dyn Store>,
    /// When the wait for this lock, and for the old store's, ends.
    deadline: Option<Instant>,
    /// What the new store held once the session was settled, until the first load takes it
    /// (`None`: not settled yet).
    settled: Option<Settled>,
    /// The old store may hold a copy of a session the new store holds (a move cut short
    /// between its two steps), or a damaged one: it goes before anything is saved here, so
    /// that it can never come back once the new store lets go of the key (a sign-out's
    /// forward that expires, a shorter lifetime). Looked at only then: a request that
    /// saves nothing costs what the new store alone costs.
    stale_copy: bool,
}

enum Settled {
    /// What the first load returns: the new store's record (moved there if need be), or
    /// the old store's damage.
    Fresh(Result<Option<Record>>),
    /// Handed out: loads go to the new store.
    Done,
}

impl MovingLock {
    fn new(target: Box<dyn LockedSession>, from: Arc<dyn Store>, options: LockOptions) -> Self {
        MovingLock {
            target,
            from,
            deadline: lock_deadline(options.timeout),
            settled: None,
            stale_copy: false,
        }
    }

    /// Brings the session over from the old store if the new store has none: saved here,
    /// then removed there, under its lock in both.
    fn settle(&mut self) -> Result<Moved> {
        let here = self.target.load()?;
        let key = self.target.key().clone();
        let (outcome, first) = if here.is_some() {
            self.stale_copy = true;
            (Moved::AlreadyThere, Ok(here))
        } else if !self.from.exists(&key)? {
            (Moved::Gone, Ok(None))
        } else {
            let wait = time_left(self.deadline, &key)?.unwrap_or(Duration::MAX);
            let mut source = self.from.lock(&key, LockOptions::new(wait))?;
            match source.load() {
                Ok(Some(record)) => {
                    self.target.save(&record)?;
                    // Saved here before it goes there: if it cannot go (the old store
                    // failed, or a crash), the next save here removes the copy first.
                    self.stale_copy = true;
                    source.delete()?;
                    source.release()?;
                    self.stale_copy = false;
                    log::info!("session {key:?} moved to the new store");
                    (Moved::Moved, Ok(Some(record)))
                }
                Ok(None) => (Moved::Gone, Ok(None)),
                Err(e) if e.kind() == ErrorKind::Corrupt => {
                    // Read as a damaged record of one store would be (a fresh session; a
                    // user record rebuilt), and the damaged copy goes with the first save.
                    log::warn!("session {key:?} cannot be moved from the old store: {e}");
                    self.stale_copy = true;
                    (Moved::Unreadable, Err(e))
                }
                Err(e) => return Err(e),
            }
        };
        self.settled = Some(Settled::Fresh(first));
        Ok(outcome)
    }

    fn ensure_settled(&mut self) -> Result<()> {
        if self.settled.is_none() {
            self.settle()?;
        }
        Ok(())
    }

    /// Removes the old store's copy of this session, if it has one (see `stale_copy`).
    fn remove_stale_copy(&mut self) -> Result<()> {
        if self.stale_copy {
            let key = self.target.key().clone();
            if self.from.exists(&key)? {
                self.from.delete(&key)?;
            }
            self.stale_copy = false;
        }
        Ok(())
    }

    /// Before a save: settled, the old copy gone.
    fn before_saving(&mut self) -> Result<()> {
        self.ensure_settled()?;
        self.settled = Some(Settled::Done);
        self.remove_stale_copy()
    }
}

impl LockedSession for MovingLock {
    fn key(&self) -> &SessionKey {
        self.target.key()
    }

    fn load(&mut self) -> Result<Option<Record>> {
        self.ensure_settled()?;
        match self.settled.replace(Settled::Done) {
            Some(Settled::Fresh(first)) => first,
            _ => self.target.load(),
        }
    }

    fn save(&mut self, record: &Record) -> Result<()> {
        self.before_saving()?;
        self.target.save(record)
    }

    fn save_and_release(&mut self, record: &Record) -> Result<()> {
        self.before_saving()?;
        self.target.save_and_release(record)
    }

    fn delete(&mut self) -> Result<()> {
        self.settled = Some(Settled::Done);
        self.target.delete()?;
        let key = self.target.key().clone();
        self.from.delete(&key)
    }

    fn lock_sibling(&self, id: SessionId, options: LockOptions) -> Result<Box<dyn LockedSession>> {
        let target = self.target.lock_sibling(id, options)?;
        Ok(Box::new(MovingLock::new(
            target,
            self.from.clone(),
            options,
        )))
    }

    fn renew(&mut self) -> Result<()> {
        self.target.renew()
    }

    fn release(self: Box<Self>) -> Result<()> {
        self.target.release()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Meta;
    use crate::store::MemoryStore;
    use crate::store::suite::{key, options};

    crate::store_suite!(|| {
        let moving = MovingStore::new(Arc::new(MemoryStore::new()), Arc::new(MemoryStore::new()));
        ((), Arc::new(moving))
    });

    fn counted(n: u64) -> Record {
        let mut record = Record::new(Meta::new(1_000));
        record.set("n", &n).unwrap();
        record
    }

    fn count(record: &Option<Record>) -> u64 {
        record.as_ref().unwrap().get("n").unwrap().unwrap()
    }

    struct Move {
        old: Arc<MemoryStore>,
        new: Arc<MemoryStore>,
        moving: Arc<MovingStore>,
    }

    fn moving() -> Move {
        let (old, new) = (Arc::new(MemoryStore::new()), Arc::new(MemoryStore::new()));
        let moving = Arc::new(MovingStore::new(new.clone(), old.clone()));
        Move { old, new, moving }
    }

    fn move_now(m: &Move, key: &SessionKey) -> Moved {
        m.moving.move_one(key, Duration::from_secs(1)).unwrap()
    }

    fn put(store: &dyn Store, key: &SessionKey, n: u64) {
        store
            .lock(key, options())
            .unwrap()
            .save_and_release(&counted(n))
            .unwrap();
    }

    #[test]
    fn a_session_moves_when_touched_and_only_then() {
        let m = moving();
        let k = key("svc");
        put(&*m.old, &k, 7);
        assert!(m.moving.exists(&k).unwrap());
        // A read without the lock finds it where it is, and moves nothing.
        assert_eq!(count(&m.moving.peek(&k).unwrap()), 7);
        assert!(m.old.exists(&k).unwrap() && !m.new.exists(&k).unwrap());
        let mut lock = m.moving.lock(&k, options()).unwrap();
        assert_eq!(count(&lock.load().unwrap()), 7);
        lock.save_and_release(&counted(8)).unwrap();
        drop(lock);
        assert!(!m.old.exists(&k).unwrap());
        assert_eq!(count(&m.new.peek(&k).unwrap()), 8);
        assert_eq!(move_now(&m, &k), Moved::AlreadyThere);
    }

    #[test]
    fn a_session_signed_out_in_the_new_store_does_not_come_back_from_the_old() {
        let m = moving();
        let k = key("svc");
        // A copy in both, as a move interrupted after its save leaves it.
        put(&*m.old, &k, 3);
        put(&*m.new, &k, 3);
        let mut lock = m.moving.lock(&k, options()).unwrap();
        assert_eq!(count(&lock.load().unwrap()), 3);
        lock.delete().unwrap();
        drop(lock);
        assert!(!m.old.exists(&k).unwrap() && !m.new.exists(&k).unwrap());
        assert_eq!(m.moving.lock(&k, options()).unwrap().load().unwrap(), None);
        // Ended without its lock (a tossed cookie): gone from both as well.
        put(&*m.old, &k, 4);
        put(&*m.new, &k, 4);
        m.moving.delete(&k).unwrap();
        assert_eq!(m.moving.peek(&k).unwrap(), None);
    }

    #[test]
    fn the_new_stores_copy_wins_and_the_command_removes_the_old() {
        let m = moving();
        let k = key("svc");
        put(&*m.old, &k, 1);
        put(&*m.new, &k, 5);
        assert_eq!(
            count(&m.moving.lock(&k, options()).unwrap().load().unwrap()),
            5
        );
        // A request leaves the old copy (it never reads it again); the command removes it.
        assert!(m.old.exists(&k).unwrap());
        assert_eq!(move_now(&m, &k), Moved::AlreadyThere);
        assert!(!m.old.exists(&k).unwrap());
        assert_eq!(move_now(&m, &k), Moved::AlreadyThere);
        m.moving.delete(&k).unwrap();
        assert_eq!(move_now(&m, &k), Moved::Gone);
    }

    #[test]
    fn a_request_on_the_old_store_alone_holds_the_move_up_until_it_lets_go() {
        let m = moving();
        let k = key("svc");
        put(&*m.old, &k, 1);
        let mut old_request = m.old.lock(&k, options()).unwrap();
        let short = LockOptions::new(Duration::from_millis(50));
        let mut waiting = m.moving.lock(&k, short).unwrap();
        assert_eq!(waiting.load().unwrap_err().kind(), ErrorKind::LockTimeout);
        drop(waiting);
        old_request.save_and_release(&counted(2)).unwrap();
        drop(old_request);
        assert_eq!(move_now(&m, &k), Moved::Moved);
        assert_eq!(count(&m.new.peek(&k).unwrap()), 2);
    }

    #[test]
    fn requests_and_the_command_moving_at_once_lose_no_update() {
        let m = moving();
        let keys: Vec<SessionKey> = (0..8).map(|_| key("svc")).collect();
        for k in &keys {
            put(&*m.old, k, 0);
        }
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let (moving, keys) = (m.moving.clone(), keys.clone());
                std::thread::spawn(move || {
                    for round in 0..50 {
                        let k = &keys[round % keys.len()];
                        let mut lock = moving.lock(k, options()).unwrap();
                        let n = count(&lock.load().unwrap());
                        lock.save_and_release(&counted(n + 1)).unwrap();
                    }
                })
            })
            .collect();
        for _ in 0..20 {
            for k in &keys {
                m.moving.move_one(k, Duration::from_secs(10)).unwrap();
            }
        }
        for worker in workers {
            worker.join().unwrap();
        }
        let total: u64 = keys.iter().map(|k| count(&m.new.peek(k).unwrap())).sum();
        assert_eq!(total, 4 * 50);
        assert!(keys.iter().all(|k| !m.old.exists(k).unwrap()));
    }

    #[test]
    fn a_damaged_session_in_the_old_store_starts_afresh_in_the_new() {
        let dir = tempfile::tempdir().unwrap();
        let old = Arc::new(crate::store::FileStore::open(dir.path().join("s")).unwrap());
        let new = Arc::new(MemoryStore::new());
        let moving = MovingStore::new(new.clone(), old.clone());
        let k = key("svc");
        put(&*old, &k, 1);
        let file = std::fs::read_dir(dir.path().join("s"))
            .unwrap()
            .flatten()
            .find(|entry| entry.file_name().to_string_lossy().contains(k.id.as_str()))
            .unwrap()
            .path();
        std::fs::write(&file, b"not a record").unwrap();
        let mut lock = moving.lock(&k, options()).unwrap();
        // Damaged, as it would be in one store: the runner starts afresh, and a user record
        // is rebuilt.
        assert_eq!(lock.load().unwrap_err().kind(), ErrorKind::Corrupt);
        lock.save_and_release(&counted(1)).unwrap();
        drop(lock);
        // The damaged copy went with the save.
        assert!(!old.exists(&k).unwrap());
        assert_eq!(
            moving.move_one(&k, Duration::from_secs(1)).unwrap(),
            Moved::AlreadyThere
        );
    }

    /// A move cut short between its two steps leaves the session in both stores: the first
    /// save in the new store removes the old copy, so that a sign-out there (a forward that
    /// expires) cannot bring the old copy back.
    #[test]
    fn a_copy_left_in_the_old_store_goes_with_the_first_save() {
        let m = moving();
        let k = key("svc");
        put(&*m.old, &k, 1);
        put(&*m.new, &k, 1);
        let mut lock = m.moving.lock(&k, options()).unwrap();
        assert_eq!(count(&lock.load().unwrap()), 1);
        assert!(
            m.old.exists(&k).unwrap(),
            "a read alone costs the old store nothing"
        );
        lock.save_and_release(&counted(2)).unwrap();
        drop(lock);
        assert!(!m.old.exists(&k).unwrap());
        // The new store lets go of the key: nothing comes back.
        m.new.delete(&k).unwrap();
        assert_eq!(m.moving.lock(&k, options()).unwrap().load().unwrap(), None);
    }
}
