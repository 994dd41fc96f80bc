//! The leases this process holds, renewed by one thread while their requests run.
//!
//! A server store's lock is a lease (Redis: a key's expiry; PostgreSQL: the connection's
//! `idle_session_timeout`) so that a holder that dies or hangs blocks its session for a
//! bounded time; a holder that lives on keeps its lease by renewing it. Every such lock the
//! process takes registers here (a push under a mutex), and unregisters when it is saved and
//! released, released or dropped (a removal under the same mutex). One thread, started when
//! the process first holds a lock, renews each registered lease every third of its term
//! through the store's [`Lease::renew`], which must extend the lock only while its holder
//! holds it (Redis: a script that checks the token; PostgreSQL: a statement on the very
//! connection that holds the lock): a renewal can never bring back a lock that was let go or
//! taken by another, whatever the order in which the renewal and the release arrive.
//!
//! Nothing outlives its holder: a process that is killed renews nothing (its sessions are
//! blocked at most one lease), and the thread never keeps the process alive (it is not
//! joined; the process exits under it).

use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once, PoisonError};
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::store::SessionKey;

/// A held lock as the renewing thread sees it.
pub(crate) trait Lease: Send + Sync {
    /// The session it locks, for the log (its `Debug` shows only the start of the id).
    fn session(&self) -> &SessionKey;

    /// Extends the lock by its term from now: `Ok(false)` if its holder no longer holds it
    /// (the lease ran out, or the holder's connection went), and then it is not asked again;
    /// an error if the store could not be asked now (it is asked again later).
    fn renew(&self) -> Result<bool>;
}

/// The leases held in this process.
static HELD: Held = Held {
    state: Mutex::new(State {
        leases: Vec::new(),
        next_id: 0,
        wakes_at: None,
    }),
    changed: Condvar::new(),
    started: Once::new(),
};

/// The shortest time between two renewals of one lease.
const SHORTEST_INTERVAL: Duration = Duration::from_millis(100);

struct Held {
    state: Mutex<State>,
    /// Signalled when a lease is due sooner than the renewing thread means to wake.
    changed: Condvar,
    started: Once,
}

struct State {
    leases: Vec<Registered>,
    next_id: u64,
    /// When the renewing thread wakes next; `None` when it waits for a lease to be held.
    wakes_at: Option<Instant>,
}

/// One held lock, as the renewing thread needs it.
struct Registered {
    id: u64,
    lease: Arc<dyn Lease>,
    term: Duration,
    due: Instant,
    /// A renewal failed for want of the store, and was logged: the next failures are not.
    warned: bool,
}

/// A lock's registration: while it lives, the lock's lease is renewed. Dropping it stops
/// the renewals (a renewal already sent finds the token gone, or extends a lock that is
/// still held and about to be released).
pub(crate) struct Renewal {
    id: u64,
}

impl Renewal {
    /// Renews `lease`, whose term is `term`, every third of it until dropped.
    pub(crate) fn start(lease: Arc<dyn Lease>, term: Duration) -> Renewal {
        HELD.started.call_once(|| {
            // The default stack: the renewals may connect (name resolution, a TLS
            // handshake), and an unused stack costs address space, not memory or time.
            let spawned = std::thread::Builder::new()
                .name("pso-lease-renewal".to_owned())
                .spawn(renew_forever);
            if let Err(e) = spawned {
                log::error!(
                    "cannot start the thread that renews session locks ({e}): a request that runs longer than PSOSessionLockLease loses its lock"
                );
            }
        });
        let due = Instant::now() + interval(term);
        let mut state = HELD.lock();
        let id = state.next_id;
        state.next_id += 1;
        state.leases.push(Registered {
            id,
            lease,
            term,
            due,
            warned: false,
        });
        // Wake the thread only if it would sleep past this lease's renewal: with leases of
        // one term, that is only when it holds none.
        if state.wakes_at.is_none_or(|wakes| wakes > due) {
            state.wakes_at = Some(due);
            HELD.changed.notify_one();
        }
        Renewal { id }
    }
}

impl Drop for Renewal {
    fn drop(&mut self) {
        let mut state = HELD.lock();
        if let Some(at) = state.leases.iter().position(|lease| lease.id == self.id) {
            state.leases.swap_remove(at);
        }
    }
}

impl Held {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// How often a lease of `term` is renewed: a third of it, so that a renewal that takes a
/// command's full timeout, or fails once, still comes in time.
fn interval(term: Duration) -> Duration {
    (term / 3).max(SHORTEST_INTERVAL)
}

/// What one renewal found.
enum Outcome {
    Renewed,
    /// The holder no longer holds the lock: the lease ran out (the process stalled, or the
    /// store was away for a whole lease) and the holder's next save decides.
    Lost,
    Failed(crate::Error),
}

/// The renewing thread: sleeps until the next lease is due, renews every lease that is, and
/// again.
fn renew_forever() {
    let mut state = HELD.lock();
    loop {
        let now = Instant::now();
        let mut due = Vec::new();
        for lease in state.leases.iter_mut().filter(|lease| lease.due <= now) {
            lease.due = now + interval(lease.term);
            due.push((lease.id, lease.lease.clone()));
        }
        if due.is_empty() {
            let next = state.leases.iter().map(|lease| lease.due).min();
            state.wakes_at = next;
            state = match next {
                None => HELD
                    .changed
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(next) => {
                    HELD.changed
                        .wait_timeout(state, next.saturating_duration_since(now))
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
            continue;
        }
        // The store is asked without the registry locked: requests register and let go
        // meanwhile.
        drop(state);
        let outcomes: Vec<(u64, Outcome)> = due
            .into_iter()
            .map(|(id, lease)| {
                let outcome = match lease.renew() {
                    Ok(true) => Outcome::Renewed,
                    Ok(false) => Outcome::Lost,
                    Err(e) => Outcome::Failed(e),
                };
                (id, outcome)
            })
            .collect();
        state = HELD.lock();
        for (id, outcome) in outcomes {
            // A lock let go meanwhile is no concern of this thread's any more.
            let Some(at) = state.leases.iter().position(|lease| lease.id == id) else {
                continue;
            };
            match outcome {
                Outcome::Renewed => {}
                Outcome::Lost => {
                    let lease = state.leases.swap_remove(at);
                    log::warn!(
                        "session {:?}: its lock lapsed before it could be renewed (its lease is {:?}): the request's next save decides whether it goes on",
                        lease.lease.session(),
                        lease.term
                    );
                }
                Outcome::Failed(e) => {
                    let lease = &mut state.leases[at];
                    if !lease.warned {
                        lease.warned = true;
                        log::warn!(
                            "session {:?}: cannot renew its lock, trying again: {}",
                            lease.lease.session(),
                            crate::error::ErrorChain(&e)
                        );
                    }
                }
            }
        }
    }
}
