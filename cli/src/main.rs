//! `pso`: the helper for people who write and run pso programs.
//!
//! One module per command: `serve` (the development server), `sessions` (see and clean a
//! store), `config_check` (`pso config`), and `htaccess` (the `SetEnv` lines that `serve` and
//! `config` read from an Apache `.htaccess`).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod config_check;
mod htaccess;
mod inventory;
mod migrate;
mod serve;
mod sessions;

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  the command failed, or `pso config` found an invalid setting
  2  the command line is wrong";

/// Sessions for CGI programs: the helper for development and administration.
#[derive(Parser)]
#[command(name = "pso", version, about, after_help = EXIT_CODES, arg_required_else_help = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve cgi-bin/ over HTTP for development, each program run as CGI (or FastCGI)
    Serve(serve::Args),
    /// See and clean a session store
    #[command(subcommand)]
    Sessions(sessions::Command),
    /// Check a deployment: the effective value of every PSO variable and the session directory
    Config(config_check::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Sessions(command) => sessions::run(command),
        Command::Config(args) => config_check::run(args),
    }
}

/// Reports a failed command the one way every command does: one line on stderr, exit code 1.
fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("pso: {message}");
    ExitCode::FAILURE
}

/// A time as an HTTP date, for people. `httpdate` panics past the year 9999, and times come
/// from session files and configuration: those are shown as such instead.
fn http_date(at: std::time::SystemTime) -> String {
    /// 9999-12-31 23:59:59 UTC, the last second an HTTP date can name.
    const LAST: u64 = 253_402_300_799;
    let secs = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if secs > LAST {
        "after the year 9999".to_owned()
    } else {
        httpdate::fmt_http_date(at)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn http_dates_past_the_year_9999_do_not_panic() {
        assert_eq!(
            super::http_date(UNIX_EPOCH + Duration::from_secs(253_402_300_799)),
            "Fri, 31 Dec 9999 23:59:59 GMT"
        );
        assert_eq!(
            super::http_date(UNIX_EPOCH + Duration::from_secs(253_402_300_800)),
            "after the year 9999"
        );
        assert_eq!(
            super::http_date(UNIX_EPOCH + Duration::from_secs(1 << 40)),
            "after the year 9999"
        );
    }
}
