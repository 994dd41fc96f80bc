//! Every PSO variable as a program would read it: its effective value (evaluated: `15*60` is
//! `900 s`), where it came from, its default, and what is wrong with it.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use pso::cookies::SecureMode;
use pso::store::FileStore;
use pso::{Config, Expiry, GcProbability, VARIABLES, Variable};

use super::Level;
use super::sources::{Layered, same_variable};
use super::user::User;

/// One variable's line in the report.
pub struct Row {
    /// The documented name (or, for the forced session id, the service id).
    pub name: String,
    /// The name it was found under, when that is another spelling.
    pub found_as: Option<String>,
    /// The value as set, if set.
    pub value: Option<String>,
    /// The value pso uses.
    pub effective: String,
    /// `environment`, `FILE:LINE`, `command line` or `default`.
    pub source: String,
    pub default: String,
    pub findings: Vec<Finding>,
}

/// A warning or an error about one thing.
pub struct Finding {
    pub level: Level,
    pub message: String,
}

/// A finding about something other than a known variable: a likely typo, a line of the
/// `.htaccess` Apache would refuse, the script name.
pub struct Problem {
    /// What it is about: a variable's name, or the file.
    pub subject: String,
    /// Where the subject was set, if it is a variable.
    pub source: Option<String>,
    pub finding: Finding,
}

/// The configuration a program would read from `layered`.
pub struct Evaluation {
    pub rows: Vec<Row>,
    pub problems: Vec<Problem>,
    /// The session directory pso would use (for `user`, when it is the default).
    pub session_dir: PathBuf,
}

pub fn evaluate(layered: &Layered, user: &User, now: SystemTime) -> Evaluation {
    let env = layered.environment();
    let (config, config_problems) = Config::from_env_checked(&env);
    let source_of = |found: &str| {
        layered
            .source_of(found)
            .map_or_else(|| "environment".to_owned(), ToString::to_string)
    };
    let mut rows: Vec<Row> = VARIABLES
        .iter()
        .map(|variable| {
            let found = variable.names().find_map(|name| env.lookup(name));
            let mut findings = Vec::new();
            let value = found.map(|(_, value)| match value.to_str() {
                Some(text) => text.to_owned(),
                None => {
                    findings.push(error("the value is not valid UTF-8; ignored"));
                    value.to_string_lossy().into_owned()
                }
            });
            Row {
                name: variable.name.to_owned(),
                found_as: found
                    .map(|(name, _)| name.to_owned())
                    .filter(|name| name != variable.name),
                value,
                effective: String::new(),
                source: found.map_or_else(|| "default".to_owned(), |(name, _)| source_of(name)),
                default: variable.default.to_owned(),
                findings,
            }
        })
        .collect();

    let service = config.service.as_str().to_owned();
    let mut forced = env.lookup(&service).map(|(found, value)| Row {
        name: service.clone(),
        found_as: Some(found.to_owned()).filter(|found| *found != service),
        value: Some(value.to_string_lossy().into_owned()),
        effective: String::new(),
        source: source_of(found),
        default: "none (each visitor gets a random id)".to_owned(),
        findings: Vec::new(),
    });

    let mut problems = Vec::new();
    for problem in config_problems {
        let finding = error(problem.message);
        if let Some(row) = rows.iter_mut().find(|row| {
            Variable::find(&row.name).is_some_and(|v| {
                v.names()
                    .any(|name| same_variable(&problem.variable.clone().into(), name))
            })
        }) {
            row.findings.push(finding);
        } else if let Some(row) = forced
            .as_mut()
            .filter(|_| same_variable(&problem.variable.clone().into(), &service))
        {
            row.findings.push(finding);
        } else {
            problems.push(variable_problem(layered, &problem.variable, finding));
        }
    }
    flag_other_unknown_names(layered, &mut problems);
    for problem in &mut problems {
        if problem.finding.message.contains("a typo?")
            && let Some(near) = nearest_known(&problem.subject)
        {
            problem
                .finding
                .message
                .push_str(&format!(" (did you mean {near}?)"));
        }
    }

    let dir_is_default = row(&rows, "PSOSessionFileLoader_Path")
        .is_none_or(|row| row.value.is_none() || !row.findings.is_empty());
    let session_dir = if dir_is_default && !user.is_current() {
        default_dir(user)
    } else {
        config.session_dir.clone()
    };
    let service_explicit = row(&rows, "PSOServiceId")
        .is_some_and(|row| row.value.is_some() && row.findings.is_empty());
    for row in &mut rows {
        let (effective, finding) =
            effective(&row.name, row.value.as_deref(), &config, &session_dir, now);
        row.effective = effective;
        row.findings.extend(finding);
        if row.name == "PSOSessionFileLoader_Path" {
            row.default = format!("{} ({})", row.default, default_dir(user).display());
        }
    }
    if let Some(mut row) = forced {
        row.effective = match &config.forced_id {
            Some(id) => format!("forces the session id {id}: every visitor shares that session"),
            None if !service_explicit => {
                row.findings.push(Finding {
                    level: Level::Warning,
                    message: format!(
                        "ignored: a variable named like the service id forces the session id only when PSOServiceId is set explicitly (to {service})"
                    ),
                });
                "ignored".to_owned()
            }
            None => "ignored".to_owned(),
        };
        rows.insert(1, row);
    }
    Evaluation {
        rows,
        problems,
        session_dir,
    }
}

fn row<'a>(rows: &'a [Row], name: &str) -> Option<&'a Row> {
    rows.iter().find(|row| row.name == name)
}

fn default_dir(user: &User) -> PathBuf {
    FileStore::default_dir().with_file_name(format!("pso-{}", user.uid))
}

fn error(message: impl Into<String>) -> Finding {
    Finding {
        level: Level::Error,
        message: message.into(),
    }
}

fn variable_problem(layered: &Layered, name: &str, finding: Finding) -> Problem {
    Problem {
        subject: name.to_owned(),
        source: layered.source_of(name).map(ToString::to_string),
        finding,
    }
}

/// Names that start like pso's but that the library does not look at (it flags only the
/// `PSOSession*`, `PSOCookieSession*` and `PSOService*` families): `PSOLogLevl`,
/// `PSOMaxBodyByte`. Names of the `PSO_` family are the FastCGI server's.
fn flag_other_unknown_names(layered: &Layered, problems: &mut Vec<Problem>) {
    let mut seen: Vec<String> = Vec::new();
    for name in layered.names() {
        let Some(text) = name.to_str() else { continue };
        let upper = text.to_ascii_uppercase();
        let ours = upper.starts_with("PSO") && !upper.starts_with("PSO_");
        let library_family = ["PSOSESSION", "PSOCOOKIESESSION", "PSOSERVICE"]
            .iter()
            .any(|prefix| upper.starts_with(prefix));
        let known = VARIABLES
            .iter()
            .flat_map(Variable::names)
            .any(|known| same_variable(name, known));
        if ours && !library_family && !known && !seen.contains(&upper) {
            seen.push(upper);
            problems.push(variable_problem(
                layered,
                text,
                error("is not a pso variable (a typo?); ignored"),
            ));
        }
    }
}

/// The known name closest to `name`, if it is close enough to be what was meant.
fn nearest_known(name: &str) -> Option<&'static str> {
    let name = name.to_ascii_lowercase();
    VARIABLES
        .iter()
        .flat_map(Variable::names)
        .map(|known| (edit_distance(&name, &known.to_ascii_lowercase()), known))
        .filter(|(distance, _)| *distance <= 3)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, known)| known)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// The value pso uses for variable `name`, as text, and a warning when it is valid but
/// probably not what was meant.
fn effective(
    name: &str,
    value: Option<&str>,
    config: &Config,
    session_dir: &std::path::Path,
    now: SystemTime,
) -> (String, Option<Finding>) {
    let cookie = &config.cookie;
    let prefix = cookie
        .name
        .strip_suffix(config.service.as_str())
        .unwrap_or("");
    let warning = |message: String| {
        Some(Finding {
            level: Level::Warning,
            message,
        })
    };
    let on_off = |on: bool| if on { "on" } else { "off" }.to_owned();
    match name {
        "PSOServiceId" => (
            format!("{} (the cookie's name: {})", config.service, cookie.name),
            None,
        ),
        "PSOSessionExpire" => expiry(config.lifetime, now),
        "PSOSessionFileLoader_Path" => (session_dir.display().to_string(), None),
        "PSOSessionLockTimeout" => (seconds(config.lock_timeout), None),
        "PSOSessionSync" => (on_off(config.sync), None),
        "PSOSessionLazy" => (on_off(config.lazy), None),
        "PSOSessionRegenerateGrace" => (seconds(config.regenerate_grace), None),
        "PSOSessionCheckIP" => (on_off(config.check_ip), None),
        "PSOSessionUrl" => (on_off(config.url_ids), None),
        "PSOSessionMaxBytes" => (bytes(config.max_bytes), None),
        "PSOSessionGCProbability" => (probability(config.gc_probability), None),
        "PSOSessionGCMaxLifetime" => (seconds(config.gc_max_lifetime), None),
        "PSOSessionIdle" => (
            config
                .idle
                .map_or_else(|| "none (only the lifetime)".to_owned(), seconds),
            None,
        ),
        "PSOMaxBodyBytes" => (bytes(config.max_body), None),
        "PSOCookieSession_Domain" => match (&cookie.domain, cookie.host_prefix) {
            (Some(domain), true) => (
                format!("none ({domain} dropped by the __Host- prefix)"),
                warning("ignored: the __Host- prefix forbids a Domain".to_owned()),
            ),
            (Some(domain), false) => (domain.clone(), None),
            (None, _) => ("none (this host only)".to_owned(), None),
        },
        "PSOCookieSession_Path" => {
            if cookie.host_prefix && cookie.path != "/" {
                (
                    "/ (forced by the __Host- prefix)".to_owned(),
                    warning(format!(
                        "{} is ignored: the __Host- prefix forces Path=/",
                        cookie.path
                    )),
                )
            } else {
                (cookie.path.clone(), None)
            }
        }
        "PSOCookieSession_Secure" => {
            let forced_by = if cookie.host_prefix {
                Some("the __Host- prefix")
            } else if prefix == "__Secure-" {
                Some("the __Secure- prefix")
            } else if cookie.same_site == cookie::SameSite::None {
                Some("SameSite=None")
            } else {
                None
            };
            match (forced_by, cookie.secure) {
                (Some(by), _) => (format!("on (forced by {by})"), None),
                (None, SecureMode::Auto) => (
                    "auto (on when the request came over HTTPS)".to_owned(),
                    None,
                ),
                (None, SecureMode::Always) => ("on".to_owned(), None),
                (None, SecureMode::Never) => (
                    "off".to_owned(),
                    warning("the session cookie goes out over plain HTTP too".to_owned()),
                ),
            }
        }
        "PSOCookieSession_HttpOnly" => {
            let finding = (!cookie.http_only).then(|| {
                "page scripts (and cross-site scripting) can read the session id".to_owned()
            });
            (on_off(cookie.http_only), finding.and_then(warning))
        }
        "PSOCookieSession_SameSite" => (cookie.same_site.to_string(), None),
        "PSOCookieSession_Max-Age" => match cookie.max_age {
            None => ("none (follows PSOSessionExpire)".to_owned(), None),
            Some(lifetime) => expiry(lifetime, now),
        },
        "PSOCookieSession_expires" => match cookie.expires {
            None => ("none (follows PSOSessionExpire)".to_owned(), None),
            Some(lifetime) => expiry(lifetime, now),
        },
        "PSOCookieSession_Prefix" => match prefix {
            "" => ("none".to_owned(), None),
            prefix => (
                format!("{prefix} (the cookie's name: {})", cookie.name),
                None,
            ),
        },
        "PSOCookieSession_Comment" | "PSOCookieSession_Version" => match value {
            None => ("none".to_owned(), None),
            Some(_) => (
                "ignored".to_owned(),
                warning("obsolete since RFC 6265: ignored".to_owned()),
            ),
        },
        "PSOLogLevel" => log_level(value),
        _ => (String::new(), None),
    }
}

/// `PSOLogLevel` as the library's logger reads it.
fn log_level(value: Option<&str>) -> (String, Option<Finding>) {
    let Some(value) = value else {
        return ("warn".to_owned(), None);
    };
    match value.to_ascii_lowercase().as_str() {
        level @ ("off" | "error" | "warn" | "info" | "debug" | "trace") => (level.to_owned(), None),
        "warning" => ("warn".to_owned(), None),
        _ => (
            "warn".to_owned(),
            Some(error(format!(
                "{value:?} is not {}; using warn",
                Variable::find("PSOLogLevel").map_or("", |v| v.expected)
            ))),
        ),
    }
}

fn expiry(lifetime: Expiry, now: SystemTime) -> (String, Option<Finding>) {
    match lifetime {
        Expiry::BrowserClose => ("browser close".to_owned(), None),
        Expiry::Now => ("now".to_owned(), None),
        Expiry::In(duration) => (seconds(duration), None),
        Expiry::At(at) => {
            let date = crate::http_date(at);
            match at.duration_since(now) {
                Ok(left) => (format!("{date}, in {}", seconds(left)), None),
                Err(past) => (
                    format!("{date}, {} ago", seconds(past.duration())),
                    Some(Finding {
                        level: Level::Warning,
                        message: "the date has passed: every new session ends at once".to_owned(),
                    }),
                ),
            }
        }
    }
}

/// `900 s (15m)`.
fn seconds(duration: Duration) -> String {
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

/// `1048576 bytes (1 MiB)`.
fn bytes(n: u64) -> String {
    let unit = [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)]
        .into_iter()
        .find(|(_, size)| n >= *size && n.is_multiple_of(*size));
    match unit {
        Some((unit, size)) => format!("{n} bytes ({} {unit})", n / size),
        None => format!("{n} bytes"),
    }
}

/// `1/100 (1%)`.
fn probability(p: GcProbability) -> String {
    if p == GcProbability::NEVER {
        return "0 (off: no request collects; clean up from cron)".to_owned();
    }
    let percent = 100.0 * f64::from(p.numerator()) / f64::from(p.denominator());
    let percent = format!("{percent:.4}");
    let percent = percent.trim_end_matches('0').trim_end_matches('.');
    format!("{p} ({percent}%)")
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(nearest_known("PSOSessionExpiry"), Some("PSOSessionExpire"));
        assert_eq!(nearest_known("PSOLogLvl"), Some("PSOLogLevel"));
        assert_eq!(nearest_known("PSOSomethingElse"), None);
    }
}
