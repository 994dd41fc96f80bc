//! The choice among the verdicts on the ids a request names, as a pure function
//! (`pso::fuzzing::adoption::decide`, behind the `fuzzing` feature).
//!
//! Input: whether the request named any id, then one verdict per byte. Checked against the
//! rules as the module documents them: exactly one live session and nothing unjudged is
//! adopted; several live ones, or any unjudged, adopt none and end all of them but those
//! reached through an old id; every dead one is removed; a new session says the weightiest
//! reason of the dead, and hands over the data of the one it names only when it is the one
//! id read.

use pso::fuzzing::adoption::{Verdict, decide};
use pso::{Ended, Origin};

use crate::input::Input;

const ENDED: [Ended; 7] = [
    Ended::Idle,
    Ended::Lifetime,
    Ended::Unknown,
    Ended::Unreadable,
    Ended::LoggedOut,
    Ended::OtherAddress,
    Ended::Ambiguous,
];

/// How much a reason matters for the visitor, as `Ended::weight`'s comment orders them: an
/// ambiguous header, a logout everywhere, an expiry, an unreadable file, another address,
/// down to an id pso never knew.
fn weight(why: Ended) -> u8 {
    match why {
        Ended::Ambiguous => 7,
        Ended::LoggedOut => 6,
        Ended::Idle | Ended::Lifetime => 5,
        Ended::Unreadable => 4,
        Ended::OtherAddress => 3,
        _ => 2,
    }
}

fn verdict(byte: u8) -> Verdict {
    match byte % 5 {
        0 if byte & 0x40 != 0 => Verdict::LiveThroughOldId,
        0 => Verdict::Live,
        1 => Verdict::Forward,
        2 => Verdict::Foreign,
        3 => Verdict::Ended(ENDED[usize::from(byte / 5) % ENDED.len()], byte & 0x80 != 0),
        _ => Verdict::Unjudged,
    }
}

pub fn check(data: &[u8]) {
    let mut input = Input::new(data);
    let offered_any = input.bool();
    let verdicts: Vec<Verdict> = input.bytes(64).iter().map(|&b| verdict(b)).collect();
    let decision = decide(&verdicts, offered_any);
    let of = |wanted: fn(&Verdict) -> bool| -> Vec<usize> {
        (0..verdicts.len())
            .filter(|&i| wanted(&verdicts[i]))
            .collect()
    };
    let live = of(|v| matches!(v, Verdict::Live | Verdict::LiveThroughOldId));
    let live_directly = of(|v| *v == Verdict::Live);
    let unjudged = of(|v| *v == Verdict::Unjudged);
    let dead = of(|v| matches!(v, Verdict::Ended(..)));
    let context = format!("{verdicts:?} {offered_any}: {decision:?}");

    assert_eq!(decision.remove, dead, "{context}");
    if live.len() > 1 || !unjudged.is_empty() {
        assert_eq!(decision.adopt, None, "{context}");
        assert_eq!(
            decision.why,
            Origin::Replaced(Ended::Ambiguous),
            "{context}"
        );
        assert_eq!(decision.expired_from, None, "{context}");
        let mut end = decision.end.clone();
        end.sort_unstable();
        let mut expected = [live_directly, unjudged].concat();
        expected.sort_unstable();
        assert_eq!(end, expected, "{context}");
        return;
    }
    assert!(decision.end.is_empty(), "{context}");
    if let [one] = live[..] {
        assert_eq!(decision.adopt, Some(one), "{context}");
        assert_eq!(decision.why, Origin::Returning, "{context}");
        assert_eq!(decision.expired_from, None, "{context}");
        return;
    }
    assert_eq!(decision.adopt, None, "{context}");
    let reasons: Vec<(usize, Ended)> = verdicts
        .iter()
        .enumerate()
        .filter_map(|(i, v)| match v {
            Verdict::Ended(why, _) => Some((i, *why)),
            Verdict::Foreign => Some((i, Ended::OtherAddress)),
            _ => None,
        })
        .collect();
    match reasons.iter().map(|(_, why)| weight(*why)).max() {
        Some(top) => {
            let Origin::Replaced(why) = decision.why else {
                panic!("no reason given: {context}");
            };
            assert_eq!(weight(why), top, "{context}");
            assert!(reasons.iter().any(|(_, r)| *r == why), "{context}");
            match decision.expired_from {
                Some(i) => {
                    assert_eq!(verdicts.len(), 1, "{context}");
                    assert_eq!(verdicts[i], Verdict::Ended(why, true), "{context}");
                }
                // Data is handed over only from the one id read, when it has some.
                None => assert!(
                    verdicts.len() > 1
                        || reasons.iter().any(|(i, r)| weight(*r) == top
                            && !matches!(verdicts[*i], Verdict::Ended(_, true))),
                    "{context}"
                ),
            }
        }
        None if offered_any => {
            assert_eq!(decision.why, Origin::Replaced(Ended::Unknown), "{context}");
            assert_eq!(decision.expired_from, None, "{context}");
        }
        None => {
            assert_eq!(decision.why, Origin::New, "{context}");
            assert_eq!(decision.expired_from, None, "{context}");
        }
    }
}
