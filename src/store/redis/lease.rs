//! The leases this process holds, renewed by one thread while their requests run.
//!
//! A Redis lock is a lease so that a holder that dies blocks its session for a bounded time;
//! a holder that lives on keeps its lease by renewing it. Every lock the process takes
//! registers here (a push under a mutex), and unregisters when it is saved and released,
//! released or dropped (a removal under the same mutex). One thread, started when the
//! process first holds a lock, renews each registered lease every third of its term with the
//! renew script, which extends the lock only while it holds the holder's token: a renewal
//! can never bring back a lock that was let go or taken by another, whatever the order in
//! which the renewal and the release reach Redis.
//!
//! Nothing outlives its holder: a process that is killed renews nothing (its sessions are
//! blocked at most one lease), and the thread never keeps the process alive (it is not
//! joined; the process exits under it).

use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once, PoisonError};
use std::time::{Duration, Instant};

use super::Server;
use crate::store::SessionKey;

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
    leases: Vec<Lease>,
    next_id: u64,
    /// When the renewing thread wakes next; `None` when it waits for a lease to be held.
    wakes_at: Option<Instant>,
}

/// One held lock, as the renewing thread needs it.
struct Lease {
    id: u64,
    server: Arc<Server>,
    /// For the log: its `Debug` shows only the start of the id.
    session: SessionKey,
    lock: String,
    token: String,
    term: Duration,
    due: Instant,
    /// A renewal failed for want of Redis, and was logged: the next failures are not.
    warned: bool,
}

/// A lock's registration: while it lives, the lock's lease is renewed. Dropping it stops
/// the renewals (a renewal already sent finds the token gone, or extends a lock that is
/// still held and about to be released).
pub(super) struct Renewal {
    id: u64,
}

impl Renewal {
    /// Renews the lock `lock` of `session`, held with `token`, every third of `term` until
    /// dropped.
    pub(super) fn start(
        server: &Arc<Server>,
        session: &SessionKey,
        lock: &str,
        token: &str,
        term: Duration,
    ) -> Renewal {
        HELD.started.call_once(|| {
            // The default stack: the renewals may connect (name resolution, a TLS
            // handshake), and an unused stack costs address space, not memory or time.
            let spawned = std::thread::Builder::new()
                .name("pso-lease-renewal".to_owned())
                .spawn(renew_forever);
            if let Err(e) = spawned {
                log::error!(
                    "cannot start the thread that renews Redis leases ({e}): a request that runs longer than PSOSessionLockLease loses its lock"
                );
            }
        });
        let due = Instant::now() + interval(term);
        let mut state = HELD.lock();
        let id = state.next_id;
        state.next_id += 1;
        state.leases.push(Lease {
            id,
            server: server.clone(),
            session: session.clone(),
            lock: lock.to_owned(),
            token: token.to_owned(),
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
    /// The token no longer holds the lock: the lease ran out (the process stalled, or Redis
    /// was away for a whole lease) and the holder's next save decides.
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
            due.push((
                lease.id,
                lease.server.clone(),
                lease.lock.clone(),
                lease.token.clone(),
                lease.term,
            ));
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
        // Redis is asked without the registry locked: requests register and let go meanwhile.
        drop(state);
        let outcomes: Vec<(u64, Outcome)> = due
            .into_iter()
            .map(|(id, server, lock, token, term)| {
                let outcome = match server.renew(&lock, &token, term) {
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
                        "session {:?}: its lock in Redis lapsed before it could be renewed (its lease is {:?}): the request's next save goes on only if nobody took or changed the session meanwhile",
                        lease.session,
                        lease.term
                    );
                }
                Outcome::Failed(e) => {
                    let lease = &mut state.leases[at];
                    if !lease.warned {
                        lease.warned = true;
                        log::warn!(
                            "session {:?}: cannot renew its lock, trying again: {}",
                            lease.session,
                            crate::error::ErrorChain(&e)
                        );
                    }
                }
            }
        }
    }
}
