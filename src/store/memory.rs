//! An in-memory store: for tests, and for one long-lived process that may forget its sessions.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use crate::error::Result;
use crate::expiry::unix_secs;
use crate::id::ServiceId;
use crate::record::Record;
use crate::store::admin::{Admin, Finding, Listed, Severity, listed_record};
use crate::store::{
    GcOutcome, GcReport, LockOptions, LockedSession, SessionKey, Store, deleted_error,
    lock_deadline, time_left,
};

/// Sessions in memory, kept in the same encoded format as files. Clones share the sessions.
///
/// ```
/// use pso::store::{LockOptions, MemoryStore, SessionKey, Store};
/// let store = MemoryStore::new();
/// let key = SessionKey::new("shop".parse()?, pso::SessionId::generate()?);
/// let options = LockOptions::new(std::time::Duration::from_secs(1));
/// store.lock(&key, options)?.save(&pso::Record::default())?;
/// assert!(store.peek(&key)?.is_some());
/// # Ok::<(), pso::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    slots: Mutex<HashMap<SessionKey, Slot>>,
    released: Condvar,
}

#[derive(Debug, Default)]
struct Slot {
    bytes: Option<Vec<u8>>,
    locked: bool,
    /// Raised by [`Store::delete`]: a lock taken before it can no longer save.
    generation: u64,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Puts `bytes` under `key` as they are, as a damaged file would hold them.
    #[cfg(test)]
    pub(crate) fn plant(&self, key: &SessionKey, bytes: &[u8]) {
        self.shared.slots().entry(key.clone()).or_default().bytes = Some(bytes.to_vec());
    }
}

impl Shared {
    fn slots(&self) -> MutexGuard<'_, HashMap<SessionKey, Slot>> {
        // A panic elsewhere cannot leave a slot half-written: every update is one assignment.
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn decode(bytes: &[u8]) -> Result<Record> {
    Record::decode(bytes, u64::MAX)
}

impl Store for MemoryStore {
    fn lock(&self, key: &SessionKey, options: LockOptions) -> Result<Box<dyn LockedSession>> {
        let deadline = lock_deadline(options.timeout);
        let mut slots = self.shared.slots();
        loop {
            let slot = slots.entry(key.clone()).or_default();
            if !slot.locked {
                slot.locked = true;
                return Ok(Box::new(MemoryLock {
                    shared: self.shared.clone(),
                    key: key.clone(),
                    deleted: false,
                    generation: slot.generation,
                }));
            }
            slots = match time_left(deadline, key)? {
                Some(left) => {
                    self.shared
                        .released
                        .wait_timeout(slots, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                None => self
                    .shared
                    .released
                    .wait(slots)
                    .unwrap_or_else(PoisonError::into_inner),
            };
        }
    }

    fn exists(&self, key: &SessionKey) -> Result<bool> {
        Ok(self
            .shared
            .slots()
            .get(key)
            .is_some_and(|slot| slot.bytes.is_some()))
    }

    fn peek(&self, key: &SessionKey) -> Result<Option<Record>> {
        let slots = self.shared.slots();
        slots
            .get(key)
            .and_then(|slot| slot.bytes.as_deref())
            .map(decode)
            .transpose()
    }

    fn delete(&self, key: &SessionKey) -> Result<()> {
        let mut slots = self.shared.slots();
        if let Some(slot) = slots.get_mut(key) {
            slot.bytes = None;
            slot.generation += 1;
            if !slot.locked {
                slots.remove(key);
            }
        }
        Ok(())
    }

    fn keys(&self) -> Result<Box<dyn Iterator<Item = Result<SessionKey>> + '_>> {
        let keys: Vec<SessionKey> = self
            .shared
            .slots()
            .iter()
            .filter(|(_, slot)| slot.bytes.is_some())
            .map(|(key, _)| key.clone())
            .collect();
        Ok(Box::new(keys.into_iter().map(Ok)))
    }

    fn collect_garbage(&self, now: SystemTime, budget: Duration) -> Result<GcReport> {
        let started = Instant::now();
        let now = unix_secs(now);
        let mut report = GcReport::default();
        let mut slots = self.shared.slots();
        for (key, slot) in slots.iter_mut() {
            if started.elapsed() >= budget {
                report.incomplete = true;
                break;
            }
            let Some(bytes) = &slot.bytes else { continue };
            report.examined += 1;
            if slot.locked {
                report.busy += 1;
            // Like the file store: a damaged record goes only if it is a visitor's session.
            } else if decode(bytes).map_or(key.id.is_generated(), |record| record.is_expired(now)) {
                slot.bytes = None;
                report.removed += 1;
            }
        }
        slots.retain(|_, slot| slot.locked || slot.bytes.is_some());
        Ok(report)
    }
}

struct MemoryLock {
    shared: Arc<Shared>,
    key: SessionKey,
    deleted: bool,
    /// The slot's generation when locked: another, and the session was deleted meanwhile.
    generation: u64,
}

impl MemoryLock {
    fn with_slot<T>(&self, f: impl FnOnce(&mut Slot) -> T) -> T {
        let mut slots = self.shared.slots();
        f(slots.entry(self.key.clone()).or_default())
    }
}

impl LockedSession for MemoryLock {
    fn key(&self) -> &SessionKey {
        &self.key
    }

    fn lock_sibling(
        &self,
        id: crate::SessionId,
        options: LockOptions,
    ) -> Result<Box<dyn LockedSession>> {
        let store = MemoryStore {
            shared: Arc::clone(&self.shared),
        };
        store.lock(&SessionKey::new(self.key.service.clone(), id), options)
    }

    fn load(&mut self) -> Result<Option<Record>> {
        self.with_slot(|slot| slot.bytes.as_deref().map(decode).transpose())
    }

    fn save(&mut self, record: &Record) -> Result<()> {
        if self.deleted {
            return Err(deleted_error(&self.key));
        }
        let bytes = record.encode()?;
        let generation = self.generation;
        self.with_slot(|slot| {
            if slot.generation != generation {
                return Err(crate::Error::new(
                    crate::ErrorKind::LockLost,
                    "the session was ended by another request while this one held it",
                ));
            }
            slot.bytes = Some(bytes);
            Ok(())
        })
    }

    fn delete(&mut self) -> Result<()> {
        self.with_slot(|slot| slot.bytes = None);
        self.deleted = true;
        Ok(())
    }
}

impl Drop for MemoryLock {
    fn drop(&mut self) {
        let mut slots = self.shared.slots();
        if let Some(slot) = slots.get_mut(&self.key) {
            slot.locked = false;
            if slot.bytes.is_none() {
                slots.remove(&self.key);
            }
        }
        self.shared.released.notify_all();
    }
}

impl Admin for MemoryStore {
    fn place(&self) -> String {
        "memory".to_owned()
    }

    fn inspect(&self, key: &SessionKey) -> Result<Option<Listed>> {
        let slots = self.shared.slots();
        let Some(bytes) = slots.get(key).and_then(|slot| slot.bytes.as_deref()) else {
            return Ok(None);
        };
        Ok(Some(listed_record(key, bytes)))
    }

    fn collect(
        &self,
        now: SystemTime,
        service: Option<&ServiceId>,
        _observe: &mut dyn FnMut(GcOutcome),
    ) -> Result<GcReport> {
        if service.is_some() {
            return Err(crate::Error::new(
                crate::ErrorKind::Invalid,
                "the memory store collects every service's expired sessions at once",
            ));
        }
        self.collect_garbage(now, Duration::MAX)
    }

    fn check(&self) -> Vec<Finding> {
        vec![Finding::new(
            Severity::Note,
            "sessions in memory are lost when the process ends",
        )]
    }
}

#[cfg(test)]
mod tests {
    crate::store_suite!(|| ((), std::sync::Arc::new(super::MemoryStore::new())));
}
