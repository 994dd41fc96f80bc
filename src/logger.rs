//! Log lines to standard error, which the web server writes to its error log.

use std::io::Write;

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::environment::Environment;

struct StderrLogger;

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
            // One write per line, so lines of concurrent processes do not interleave.
            let line = format!("pso: {level}: {}\n", record.args());
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }

    fn flush(&self) {}
}

/// Installs the stderr logger at the level `PSOLogLevel` names (`warn` by default), unless the
/// program installed a logger of its own.
pub(crate) fn install(env: &Environment) {
    let level = match env
        .get("PSOLogLevel")
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("off") => LevelFilter::Off,
        Some("error") => LevelFilter::Error,
        None | Some("warn" | "warning") => LevelFilter::Warn,
        Some("info") => LevelFilter::Info,
        Some("debug") => LevelFilter::Debug,
        Some("trace") => LevelFilter::Trace,
        Some(other) => {
            let _ = writeln!(
                std::io::stderr(),
                "pso: warning: PSOLogLevel {other:?} is not off, error, warn, info, debug or trace"
            );
            LevelFilter::Warn
        }
    };
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}
