//! Every PSO variable as a program would read it: its effective value (evaluated: `15*60` is
//! `900 s`), where it came from, its default, and what is wrong with it.
//!
//! One row per entry of [`VARIABLES`], in its order, each shown by the entry's own
//! [`Variable::show`]: a variable added to the table gets its row, its value and its problems
//! here without a line of this file changing.

use std::path::PathBuf;
use std::time::SystemTime;

use pso::store::FileStore;
use pso::{Settings, VARIABLES, Variable};

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
    let (mut settings, config_problems) = Settings::from_env_checked(&env);
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

    let service = settings.config.service.as_str().to_owned();
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
    if dir_is_default && !user.is_current() {
        settings.config.session_dir = default_dir(user);
    }
    let session_dir = settings.config.session_dir.clone();
    let service_explicit = row(&rows, "PSOServiceId")
        .is_some_and(|row| row.value.is_some() && row.findings.is_empty());
    // The rows are the table's, in its order (the forced id's row goes in below).
    for (row, variable) in rows.iter_mut().zip(VARIABLES) {
        let shown = (variable.show)(&settings, row.value.as_deref(), now);
        if variable.secret {
            // Not even in the value as set: a store's URL may hold its password.
            row.value = row.value.as_ref().map(|_| shown.value.clone());
        }
        row.effective = shown.value;
        row.findings.extend(shown.warning.map(|message| Finding {
            level: Level::Warning,
            message,
        }));
        if row.name == "PSOSessionFileLoader_Path" {
            row.default = format!("{} ({})", row.default, default_dir(user).display());
        }
    }
    if let Some(mut row) = forced {
        row.effective = match &settings.config.forced_id {
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

/// Names that start like pso's that no variable has and that the library has not reported
/// already (it reports only its own families: `PSOSession*`, `PSOCookieSession*`,
/// `PSOService*`, `PSO_FCGI_*`): `PSOLogLevl`, `PSOMaxBodyByte`.
fn flag_other_unknown_names(layered: &Layered, problems: &mut Vec<Problem>) {
    let mut seen: Vec<String> = Vec::new();
    for name in layered.names() {
        let Some(text) = name.to_str() else { continue };
        let upper = text.to_ascii_uppercase();
        let ours = upper.starts_with("PSO");
        let known = VARIABLES
            .iter()
            .flat_map(Variable::names)
            .any(|known| same_variable(name, known));
        let reported = problems.iter().any(|problem| problem.subject == text);
        if ours && !known && !reported && !seen.contains(&upper) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_are_near_a_known_name() {
        assert_eq!(nearest_known("PSOSessionExpiry"), Some("PSOSessionExpire"));
        assert_eq!(nearest_known("PSO_FCGI_WORKER"), Some("PSO_FCGI_WORKERS"));
        assert_eq!(nearest_known("PSOLogLvl"), Some("PSOLogLevel"));
        assert_eq!(nearest_known("PSOSomethingElse"), None);
    }
}
