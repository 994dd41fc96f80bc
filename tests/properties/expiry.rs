//! Expiry expressions (`15*60`, `+30m`), HTTP dates, dates in a strftime format, and
//! collection probabilities (`1/100`, `0.01`, `1%`).
//!
//! Input: which parser, then its text (for a formatted date, a format from a list or one of
//! the input's own). Checked: nothing panics; white space around an expression changes
//! nothing; what parses prints and parses again to itself (a duration as seconds, an instant
//! as an HTTP date, read back by `parse` and by `parse_with_format`, a probability by its
//! `Display`); a formatted date reads the same in capitals; deadlines stay in year 9999.

use std::time::{Duration, UNIX_EPOCH};

use pso::{Expiry, GcProbability};

use crate::input::Input;

/// The last instant pso represents: 9999-12-31 23:59:59 UTC.
const MAX_UNIX_SECS: u64 = 253_402_300_799;
const HTTP_FORMAT: &str = "%a, %d %b %Y %H:%M:%S GMT";
const FORMATS: [&str; 8] = [
    "%a, %d %b %Y %H:%M:%S",
    HTTP_FORMAT,
    "%A, %d %B %Y %T",
    "%Y-%m-%d %H:%M:%S %z",
    "%Y-%m-%dT%H:%M:%S%z",
    "%d/%m/%y %I:%M:%S %p",
    "%Y %j %T %Z",
    "%e %h %Y %%",
];

pub fn check(data: &[u8]) {
    let mut input = Input::new(data);
    match input.byte() % 3 {
        0 => expression(&String::from_utf8_lossy(input.rest())),
        1 => {
            let choice = input.byte();
            let own;
            let format = match FORMATS.get(usize::from(choice)) {
                Some(format) => format,
                None => {
                    own = String::from_utf8_lossy(input.chunk()).into_owned();
                    own.as_str()
                }
            };
            formatted(&String::from_utf8_lossy(input.rest()), format);
        }
        _ => probability(&String::from_utf8_lossy(input.rest())),
    }
}

/// An instant as an HTTP date, read back both ways.
fn instant_round_trips(expiry: Expiry) {
    let Expiry::At(when) = expiry else {
        panic!("not an instant: {expiry:?}")
    };
    let secs = when
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    assert!(secs <= MAX_UNIX_SECS, "{expiry:?}");
    assert_eq!(
        when,
        UNIX_EPOCH + Duration::from_secs(secs),
        "whole seconds"
    );
    let printed = httpdate::fmt_http_date(when);
    assert_eq!(Expiry::parse(&printed).ok(), Some(expiry), "{printed}");
    assert_eq!(
        Expiry::parse_with_format(&printed, HTTP_FORMAT).ok(),
        Some(expiry),
        "{printed}"
    );
    assert_eq!(expiry.deadline(UNIX_EPOCH), Some(when));
}

pub fn expression(text: &str) {
    let parsed = Expiry::parse(text);
    let padded = Expiry::parse(&format!(" \t{text}\n "));
    assert_eq!(padded.as_ref().ok(), parsed.as_ref().ok(), "{text:?}");
    match parsed {
        Ok(Expiry::In(duration)) => {
            let secs = duration.as_secs();
            assert_eq!(duration, Duration::from_secs(secs), "whole seconds");
            for printed in [secs.to_string(), format!("{secs}s"), format!("+{secs}")] {
                assert_eq!(
                    Expiry::parse(&printed).ok(),
                    Some(Expiry::In(duration)),
                    "{printed}"
                );
            }
            let now = UNIX_EPOCH + Duration::from_secs(1_000);
            let deadline = Expiry::In(duration).deadline(now).expect("a deadline");
            let expected = 1_000u64.saturating_add(secs).min(MAX_UNIX_SECS);
            assert_eq!(
                deadline,
                UNIX_EPOCH + Duration::from_secs(expected),
                "{text:?}"
            );
        }
        Ok(at @ Expiry::At(_)) => instant_round_trips(at),
        Ok(other) => panic!("{text:?} parsed as {other:?}"),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

pub fn formatted(date: &str, format: &str) {
    let parsed = Expiry::parse_with_format(date, format);
    if let Ok(expiry) = parsed {
        instant_round_trips(expiry);
        // Names, literals, AM/PM and zones are read in any case.
        assert_eq!(
            Expiry::parse_with_format(&date.to_ascii_uppercase(), format).ok(),
            Some(expiry),
            "{date:?} / {format:?}"
        );
    }
}

pub fn probability(text: &str) {
    let Some(p) = GcProbability::parse(text) else {
        return;
    };
    assert!(
        p.denominator() > 0 && p.numerator() <= p.denominator(),
        "{text:?}: {p:?}"
    );
    assert_eq!(p == GcProbability::NEVER, p.numerator() == 0, "{text:?}");
    assert_eq!(
        GcProbability::parse(&p.to_string()),
        Some(p),
        "{text:?} printed {p}"
    );
    for roll in [0, 1, p.denominator() - 1, p.denominator(), u32::MAX] {
        if p.hits(roll) {
            assert!(p.numerator() > 0, "{text:?}");
        }
    }
    assert_eq!(p.hits(0), p.numerator() > 0, "{text:?}");
}
