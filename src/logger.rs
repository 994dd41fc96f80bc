//! Log lines to standard error, which the web server writes to its error log, or, for a
//! request served over FastCGI, to that request's own error stream.

use std::cell::RefCell;
use std::io::Write;

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::config::{ConfigProblem, LOG_LEVEL};
use crate::environment::Environment;

struct StderrLogger;

/// The most log bytes one request keeps for its own error stream; later lines are dropped.
const MAX_CAPTURED: usize = 64 * 1024;

thread_local! {
    /// The log lines of the request this thread is serving, when they travel with its
    /// response (FastCGI's STDERR stream) rather than to the process's standard error.
    static CAPTURE: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's log lines kept aside, and returns them with its result.
pub(crate) fn capture<T>(f: impl FnOnce() -> T) -> (T, Vec<u8>) {
    let previous = CAPTURE.with(|capture| capture.borrow_mut().replace(Vec::new()));
    let result = f();
    let lines = CAPTURE.with(|capture| std::mem::replace(&mut *capture.borrow_mut(), previous));
    (result, lines.unwrap_or_default())
}

static LOGGER: StderrLogger = StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            let level = match record.level() {
                Level::Error => "error",
                Level::Warn => "warning",
                Level::Info => "info",
                Level::Debug => "debug",
                Level::Trace => "trace",
            };
            let line = format!("pso: {level}: {}\n", ascii(&record.args().to_string()));
            let captured = CAPTURE.with(|capture| match capture.borrow_mut().as_mut() {
                Some(lines) => {
                    if lines.len() + line.len() <= MAX_CAPTURED {
                        lines.extend_from_slice(line.as_bytes());
                    }
                    true
                }
                None => false,
            });
            if !captured {
                // One write per line, so lines of concurrent processes do not interleave.
                let _ = std::io::stderr().write_all(line.as_bytes());
            }
        }
    }

    fn flush(&self) {}
}

/// `text` as one line of printable ASCII: anything else escaped as Rust does (`\n`, `\u{e9}`).
/// Apache escapes every other byte of a CGI program's standard error into its log anyway
/// (`\xe2\x80\xa6` for `…`), and a newline from outside (a cookie, a path) must not start
/// a log line of its own.
fn ascii(text: &str) -> std::borrow::Cow<'_, str> {
    if text.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        return text.into();
    }
    text.chars()
        .map(|c| {
            if (' '..='~').contains(&c) {
                c.to_string()
            } else {
                c.escape_default().to_string()
            }
        })
        .collect::<String>()
        .into()
}

/// The level `PSOLogLevel` names in `env` (`warn` by default), and the problem with a value
/// that names none.
pub(crate) fn level(env: &Environment) -> (LevelFilter, Option<ConfigProblem>) {
    let Some((name, text)) = env.lookup_str(LOG_LEVEL.name) else {
        return (LevelFilter::Warn, None);
    };
    let level = match text.to_ascii_lowercase().as_str() {
        "off" => LevelFilter::Off,
        "error" => LevelFilter::Error,
        "warn" | "warning" => LevelFilter::Warn,
        "info" => LevelFilter::Info,
        "debug" => LevelFilter::Debug,
        "trace" => LevelFilter::Trace,
        _ => {
            let problem = ConfigProblem {
                variable: name.to_owned(),
                message: format!("{text:?} is not {}; using warn", LOG_LEVEL.expected),
            };
            return (LevelFilter::Warn, Some(problem));
        }
    };
    (level, None)
}

/// Installs the stderr logger at the level `PSOLogLevel` names (`warn` by default), unless the
/// program installed a logger of its own.
pub(crate) fn install(env: &Environment) {
    let (level, problem) = level(env);
    if let Some(problem) = problem {
        // Not logged: the logger is not installed yet.
        let _ = writeln!(
            std::io::stderr(),
            "pso: warning: {}: {}",
            problem.variable,
            problem.message
        );
    }
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}

#[cfg(test)]
mod tests {
    use super::ascii;

    #[test]
    fn log_lines_are_one_line_of_ascii() {
        assert_eq!(
            ascii("session svc/012345... is unknown"),
            "session svc/012345... is unknown"
        );
        assert_eq!(ascii("café…"), "caf\\u{e9}\\u{2026}");
        // A value from outside cannot start a line of its own.
        assert_eq!(ascii("x\npso: error: forged"), "x\\npso: error: forged");
        assert_eq!(ascii("tab\there\r"), "tab\\there\\r");
    }
}
