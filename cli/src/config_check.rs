//! `pso config`: the effective configuration of a deployment, checked, so that a deploy
//! script can refuse a broken one before a visitor meets it.
//!
//! It reads what a program would read (the environment, and an `.htaccess` whose `SetEnv`
//! lines win over it), prints every variable's effective value with its source and default,
//! and checks the session directory for the user the programs run as. It creates and changes
//! nothing.

mod directory;
mod render;
mod sources;
mod user;
mod variables;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use directory::Check;
use sources::Layered;
use user::User;
use variables::Evaluation;

const AFTER_HELP: &str = "\
Sources, later ones winning: the process environment (unless --no-env), then the SetEnv and
UnsetEnv lines of --htaccess FILE (as Apache applies them for a CGI program), then
--script-name. Apache gives a CGI program none of its own environment, so to see what a
program under Apache sees, use --htaccess FILE --no-env.

Checks: every value parses (else pso uses the default: an error here); no PSO* name is a
likely typo; the .htaccess has no line Apache would refuse; the session directory exists (or
its parent does, and pso would create it), is a directory and not a symbolic link, belongs to
the user (--user), has mode 0700 exactly, is writable by the user, and is not on NFS, SMB or
CIFS. Warnings (a directory still to be created, an HTTP date in the past, an obsolete
variable) are printed but do not fail.

Exit codes:
  0  the configuration is valid (warnings allowed)
  1  an invalid setting or a failed directory check (or the file cannot be read)
  2  the command line is wrong

Example, in a deploy script:
  pso config --htaccess cgi-bin/.htaccess --no-env --user www-data || exit 1";

/// What to check.
#[derive(clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// An Apache .htaccess whose SetEnv and UnsetEnv lines apply over the environment
    #[arg(long, value_name = "FILE")]
    htaccess: Option<PathBuf>,
    /// Ignore the process environment: only --htaccess (and --script-name) configure
    #[arg(long, requires = "htaccess")]
    no_env: bool,
    /// The SCRIPT_NAME of a request (e.g. /cgi-bin/reload), from which the service id defaults
    #[arg(long, value_name = "PATH")]
    script_name: Option<String>,
    /// Check the session directory for this user (the one the web server runs CGI programs
    /// as, e.g. www-data) rather than the current one
    #[arg(long, value_name = "NAME_OR_UID", value_parser = user::parse)]
    user: Option<User>,
    /// Print one JSON object ("format": 1) instead of text
    #[arg(long)]
    json: bool,
}

/// Whether a line is fine, worth a look, or wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Ok,
    Warning,
    Error,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warning => "warning",
            Level::Error => "error",
        }
    }
}

/// Everything `pso config` found.
pub struct Report {
    /// The sources read, in order.
    sources: Vec<String>,
    evaluation: Evaluation,
    user: User,
    /// What the checks are about: the session directory, or a server store.
    place: String,
    /// Whether the checks are a server store's (else the session directory's).
    store_checked: bool,
    checks: Vec<Check>,
}

impl Report {
    /// Errors and warnings, over variables, other problems and directory checks.
    fn counts(&self) -> (usize, usize) {
        let levels = self
            .evaluation
            .rows
            .iter()
            .flat_map(|row| row.findings.iter().map(|f| f.level))
            .chain(self.evaluation.problems.iter().map(|p| p.finding.level))
            .chain(self.checks.iter().map(|c| c.level));
        levels.fold((0, 0), |(errors, warnings), level| match level {
            Level::Error => (errors + 1, warnings),
            Level::Warning => (errors, warnings + 1),
            Level::Ok => (errors, warnings),
        })
    }
}

pub fn run(args: Args) -> ExitCode {
    let mut layered = if args.no_env {
        Layered::default()
    } else {
        Layered::from_process()
    };
    let mut sources = Vec::new();
    if !args.no_env {
        sources.push("environment".to_owned());
    }
    let mut file_problems = Vec::new();
    let mut file_warnings = Vec::new();
    if let Some(path) = &args.htaccess {
        let file = match crate::htaccess::Htaccess::read(path) {
            Ok(file) => file,
            Err(e) => return crate::fail(format!("cannot read {}: {e}", path.display())),
        };
        layered.apply(&file, path);
        sources.push(path.display().to_string());
        file_warnings = cgi_warnings(&file, path);
        file_problems = file.problems;
    }
    if let Some(script) = &args.script_name {
        layered.set("SCRIPT_NAME", script);
        sources.push("--script-name".to_owned());
    }
    let user = args.user.unwrap_or_else(User::current);
    let mut evaluation = variables::evaluate(&layered, &user, SystemTime::now());
    let subject = args
        .htaccess
        .as_ref()
        .map_or_else(String::new, |path| path.display().to_string());
    let refused = file_problems.into_iter().map(|problem| variables::Finding {
        level: Level::Error,
        message: format!("{problem} (Apache refuses the whole file)"),
    });
    let warned = file_warnings.into_iter().map(|message| variables::Finding {
        level: Level::Warning,
        message,
    });
    for finding in refused.chain(warned) {
        evaluation.problems.push(variables::Problem {
            subject: subject.clone(),
            source: None,
            finding,
        });
    }
    let (config, _) = pso::Config::from_env_checked(&layered.environment());
    let (place, checks) = match &config.store {
        pso::store::StoreLocation::Server(url) => (
            format!("Session store {url}, from this machine"),
            store_checks(url, config.store_password_file.as_deref()),
        ),
        _ => (
            format!(
                "Session directory {}, for {}",
                evaluation.session_dir.display(),
                user
            ),
            directory::check(&evaluation.session_dir, &user),
        ),
    };
    let store_checked = matches!(config.store, pso::store::StoreLocation::Server(_));
    let report = Report {
        sources,
        evaluation,
        user,
        place,
        store_checked,
        checks,
    };

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let written = if args.json {
        render::json(&report, &mut out)
    } else {
        let colour = stdout.is_terminal() && std::env::var_os("NO_COLOR").is_none();
        render::text(&report, render::Style { colour }, &mut out)
    }
    .and_then(|()| out.flush());
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(e) => return crate::fail(format!("writing the report: {e}")),
        Ok(()) => {}
    }
    match report.counts() {
        (0, _) => ExitCode::SUCCESS,
        (errors, _) => crate::fail(format!(
            "the configuration is invalid: {}",
            render::count(errors, "error")
        )),
    }
}

/// What keeps Apache from running the programs beside an `.htaccess` as CGI: no
/// `Options +ExecCGI`, or a program that no `cgi-script` handler of the file covers (Apache
/// sends such a program as a download). Programs are the executable files of its directory.
/// The server's own configuration can still do either (a `ScriptAlias` directory runs every
/// file): the messages say so.
fn cgi_warnings(file: &crate::htaccess::Htaccess, path: &std::path::Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut warnings = Vec::new();
    if file.exec_cgi != Some(true) {
        warnings.push(
            "no `Options +ExecCGI`: Apache refuses to run programs here (403) unless the server's configuration allows it for this directory"
                .to_owned(),
        );
    }
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let Ok(entries) = std::fs::read_dir(dir) else {
        return warnings;
    };
    let mut uncovered: Vec<String> = entries
        .flatten()
        .filter(|entry| {
            entry
                .metadata()
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with('.') && !file.runs_as_cgi(name))
        .collect();
    uncovered.sort();
    for name in uncovered {
        warnings.push(format!(
            "no `SetHandler cgi-script` or `AddHandler cgi-script` here covers the program {name}: Apache would send it as a download instead of running it, unless the server's configuration makes this directory a ScriptAlias (htaccess.sample's <FilesMatch \"^[^.]+$\"> covers every name without a dot)"
        ));
    }
    warnings
}

/// A server store's checks: reachable, its version, settings that can lose sessions.
fn store_checks(
    url: &pso::store::ServerUrl,
    password_file: Option<&std::path::Path>,
) -> Vec<Check> {
    let store = match crate::inventory::open_server(url, password_file) {
        Ok(store) => store,
        Err(e) => {
            return vec![Check {
                name: "store",
                level: Level::Error,
                message: pso::ErrorChain(&e).to_string(),
            }];
        }
    };
    store
        .check()
        .into_iter()
        .map(|finding| Check {
            name: "store",
            level: match finding.severity {
                pso::store::Severity::Note => Level::Ok,
                pso::store::Severity::Warning => Level::Warning,
                _ => Level::Error,
            },
            message: finding.message,
        })
        .collect()
}
