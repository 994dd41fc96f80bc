//! The rules a session lives by, from the configuration: its idle limits, how long an old id
//! leads on, laziness, the address check; and the one place that picks the stricter of two
//! idle limits.

use crate::config::Config;
use crate::origin::Ended;
use crate::record::Meta;

/// The configuration a session lives by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Rules {
    /// `PSOSessionIdle`, in seconds.
    pub idle_limit: Option<u64>,
    /// `PSOSessionGCMaxLifetime`, in seconds: the idle limit of a browser-close session.
    pub browser_close_idle: u64,
    /// `PSOSessionLazy`: a session without values is not stored, and one emptied is deleted.
    pub lazy: bool,
    /// `PSOSessionRegenerateGrace`, in seconds.
    pub grace: u64,
    /// `PSOSessionCheckIP`.
    pub check_ip: bool,
}

/// The stricter of two idle limits in seconds, `None` being no limit.
///
/// Every place that weighs two limits (the configured one and the one stored with a session,
/// a session's own and the configured one, the limit as loaded and as changed) asks this.
pub(crate) fn stricter(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl Rules {
    /// The rules of a configuration.
    pub fn of(config: &Config) -> Rules {
        Rules {
            idle_limit: config.idle.map(|idle| idle.as_secs()),
            browser_close_idle: config.gc_max_lifetime.as_secs(),
            lazy: config.lazy,
            grace: config.regenerate_grace.as_secs(),
            check_ip: config.check_ip,
        }
    }

    /// The idle limit stored with a session of this `deadline` and of its own limit, if it
    /// has one (never longer than the configured one). A browser-close session always has one:
    /// nothing else would ever end it on the server.
    pub fn stored_idle(self, deadline: Option<u64>, own: Option<u64>) -> Option<u64> {
        let limit = stricter(self.idle_limit, own);
        match deadline {
            None => stricter(limit, Some(self.browser_close_idle)),
            Some(_) => limit,
        }
    }

    /// The idle limit a load applies to a session stored with `stored`: that one, or the
    /// configured one if it was lowered since.
    pub fn applied_idle(self, stored: Option<u64>) -> Option<u64> {
        stricter(stored, self.idle_limit)
    }

    /// Why `meta` is no longer alive at `now`, if it is not: past its deadline, or unused for
    /// longer than the idle limit a load applies. A last access in the future (a clock that
    /// went back) counts as a use just now.
    pub fn ended(self, meta: &Meta, now: u64) -> Option<Ended> {
        if meta.deadline.is_some_and(|deadline| now >= deadline) {
            return Some(Ended::Lifetime);
        }
        let unused = now.saturating_sub(meta.last_access);
        self.applied_idle(meta.max_idle)
            .filter(|&limit| unused > limit)
            .map(|_| Ended::Idle)
    }

    /// Like [`Rules::ended`], by the limits stored with the session only: for a session that
    /// another client address holds, which a script of the same service with a shorter
    /// `PSOSessionIdle` must not end for a stolen cookie.
    pub fn ended_by_its_own_limits(self, meta: &Meta, now: u64) -> Option<Ended> {
        Rules {
            idle_limit: None,
            ..self
        }
        .ended(meta, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stricter_limit_is_the_shorter_and_none_is_no_limit() {
        let cases = [
            (None, None, None),
            (Some(60), None, Some(60)),
            (None, Some(60), Some(60)),
            (Some(60), Some(30), Some(30)),
            (Some(0), Some(30), Some(0)),
        ];
        for (a, b, expected) in cases {
            assert_eq!(stricter(a, b), expected, "{a:?} {b:?}");
            assert_eq!(stricter(b, a), expected, "{b:?} {a:?}");
        }
    }

    #[test]
    fn a_browser_close_session_always_carries_an_idle_limit() {
        let rules = Rules {
            idle_limit: None,
            browser_close_idle: 86_400,
            lazy: true,
            grace: 5,
            check_ip: false,
        };
        assert_eq!(rules.stored_idle(None, None), Some(86_400));
        assert_eq!(rules.stored_idle(Some(1), None), None);
        assert_eq!(rules.stored_idle(None, Some(60)), Some(60));
        let configured = Rules {
            idle_limit: Some(900),
            ..rules
        };
        assert_eq!(configured.stored_idle(Some(1), Some(60)), Some(60));
        assert_eq!(configured.stored_idle(Some(1), None), Some(900));
        assert_eq!(
            configured.applied_idle(Some(3600)),
            Some(900),
            "lowered since"
        );
    }
}
