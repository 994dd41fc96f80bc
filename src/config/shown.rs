//! Values in effect as people write them, for [`Variable::show`](super::Variable::show):
//! `900 s (15m)`, `1048576 bytes (1 MiB)`, `1/100 (1%)`, an HTTP date with the time left. The
//! shows too long to sit in the table live here too.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cookie::SameSite;

use super::{Settings, Shown};
use crate::cookies::SecureMode;
use crate::expiry::{Expiry, MAX_UNIX_SECS};

pub(super) fn on_off(on: bool) -> Shown {
    Shown::new(if on { "on" } else { "off" })
}

/// `900 s (15m)`; under a minute, `30 s`.
pub(super) fn seconds(duration: Duration) -> String {
    let secs = duration.as_secs();
    if secs < 60 {
        return format!("{secs} s");
    }
    let mut parts = Vec::new();
    let mut rest = secs;
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if rest >= size {
            parts.push(format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    format!("{secs} s ({})", parts.join(" "))
}

/// `1048576 bytes (1 MiB)`; `1500 bytes`.
pub(super) fn bytes(n: u64) -> String {
    let unit = [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)]
        .into_iter()
        .find(|(_, size)| n >= *size && n.is_multiple_of(*size));
    match unit {
        Some((unit, size)) => format!("{n} bytes ({} {unit})", n / size),
        None => format!("{n} bytes"),
    }
}

/// `1/100 (1%)`.
pub(super) fn probability(p: super::GcProbability) -> String {
    if p == super::GcProbability::NEVER {
        return "0 (off: no request collects; clean up from cron)".to_owned();
    }
    let percent = 100.0 * f64::from(p.numerator()) / f64::from(p.denominator());
    let percent = format!("{percent:.4}");
    let percent = percent.trim_end_matches('0').trim_end_matches('.');
    format!("{p} ({percent}%)")
}

/// A lifetime; a date with the time left, or a warning once it has passed.
pub(super) fn expiry(lifetime: Expiry, now: SystemTime) -> Shown {
    match lifetime {
        Expiry::BrowserClose => Shown::new("browser close"),
        Expiry::Now => Shown::new("now"),
        Expiry::In(duration) => Shown::new(seconds(duration)),
        Expiry::At(at) => {
            let date = http_date(at);
            match at.duration_since(now) {
                Ok(left) => Shown::new(format!("{date}, in {}", seconds(left))),
                Err(past) => Shown::new(format!("{date}, {} ago", seconds(past.duration())))
                    .warning("the date has passed: every new session ends at once"),
            }
        }
    }
}

/// Dates pso parses fall within HTTP dates' range, but a [`Config`](super::Config) built by
/// hand may hold any, and the formatter panics outside it.
fn http_date(at: SystemTime) -> String {
    match at.duration_since(UNIX_EPOCH) {
        Err(_) => "before 1970".to_owned(),
        Ok(since) if since.as_secs() > MAX_UNIX_SECS => "after the year 9999".to_owned(),
        Ok(_) => httpdate::fmt_http_date(at),
    }
}

/// `PSOCookieSession_Max-Age` and `PSOCookieSession_expires`.
pub(super) fn cookie_lifetime(lifetime: Option<Expiry>, now: SystemTime) -> Shown {
    match lifetime {
        None => Shown::new("none (follows PSOSessionExpire)"),
        Some(lifetime) => expiry(lifetime, now),
    }
}

/// The prefix browsers read off the cookie's name, whatever put it there.
fn prefix(settings: &Settings) -> &str {
    let config = &settings.config;
    config
        .cookie
        .name
        .strip_suffix(config.service.as_str())
        .unwrap_or("")
}

pub(super) fn cookie_prefix(settings: &Settings, _: Option<&str>, _: SystemTime) -> Shown {
    match prefix(settings) {
        "" => Shown::new("none"),
        prefix => Shown::new(format!(
            "{prefix} (the cookie's name: {})",
            settings.config.cookie.name
        )),
    }
}

pub(super) fn cookie_domain(settings: &Settings, _: Option<&str>, _: SystemTime) -> Shown {
    let cookie = &settings.config.cookie;
    match (&cookie.domain, cookie.host_prefix) {
        (Some(domain), true) => {
            Shown::new(format!("none ({domain} dropped by the __Host- prefix)"))
                .warning("ignored: the __Host- prefix forbids a Domain")
        }
        (Some(domain), false) => Shown::new(domain.clone()),
        (None, _) => Shown::new("none (this host only)"),
    }
}

pub(super) fn cookie_path(settings: &Settings, _: Option<&str>, _: SystemTime) -> Shown {
    let cookie = &settings.config.cookie;
    if cookie.host_prefix && cookie.path != "/" {
        Shown::new("/ (forced by the __Host- prefix)").warning(format!(
            "{} is ignored: the __Host- prefix forces Path=/",
            cookie.path
        ))
    } else {
        Shown::new(cookie.path.clone())
    }
}

pub(super) fn cookie_secure(settings: &Settings, _: Option<&str>, _: SystemTime) -> Shown {
    let cookie = &settings.config.cookie;
    let forced_by = if cookie.host_prefix {
        Some("the __Host- prefix")
    } else if prefix(settings) == "__Secure-" {
        Some("the __Secure- prefix")
    } else if cookie.same_site == SameSite::None {
        Some("SameSite=None")
    } else {
        None
    };
    match (forced_by, cookie.secure) {
        (Some(by), _) => Shown::new(format!("on (forced by {by})")),
        (None, SecureMode::Auto) => Shown::new("auto (on when the request came over HTTPS)"),
        (None, SecureMode::Always) => Shown::new("on"),
        (None, SecureMode::Never) => {
            Shown::new("off").warning("the session cookie goes out over plain HTTP too")
        }
    }
}

/// `PSOCookieSession_Comment` and `PSOCookieSession_Version`: set, they are still ignored.
pub(super) fn obsolete(_: &Settings, value: Option<&str>, _: SystemTime) -> Shown {
    match value {
        None => Shown::new("none"),
        Some(_) => Shown::new("ignored").warning("obsolete since RFC 6265: ignored"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GcProbability;

    #[test]
    fn values_read_as_people_write_them() {
        assert_eq!(seconds(Duration::from_secs(900)), "900 s (15m)");
        assert_eq!(seconds(Duration::from_secs(30)), "30 s");
        assert_eq!(
            seconds(Duration::from_secs(90_061)),
            "90061 s (1d 1h 1m 1s)"
        );
        assert_eq!(bytes(1 << 20), "1048576 bytes (1 MiB)");
        assert_eq!(bytes(1500), "1500 bytes");
        let p = |text| probability(GcProbability::parse(text).unwrap());
        assert_eq!(p("1/100"), "1/100 (1%)");
        assert_eq!(p("1/3"), "1/3 (33.3333%)");
        assert_eq!(p("1"), "1/1 (100%)");
        assert!(p("0").starts_with("0 (off"));
        let at = |secs| {
            expiry(
                Expiry::At(UNIX_EPOCH + Duration::from_secs(secs)),
                UNIX_EPOCH,
            )
        };
        assert_eq!(
            at(MAX_UNIX_SECS).value,
            format!(
                "Fri, 31 Dec 9999 23:59:59 GMT, in {}",
                seconds(Duration::from_secs(MAX_UNIX_SECS))
            )
        );
        assert!(at(1 << 40).value.starts_with("after the year 9999"));
        let before = expiry(Expiry::At(UNIX_EPOCH - Duration::from_secs(1)), UNIX_EPOCH);
        assert!(before.value.starts_with("before 1970") && before.warning.is_some());
    }
}
