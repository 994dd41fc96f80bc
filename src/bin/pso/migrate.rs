//! `pso sessions migrate`: copies one store into another, session by session under each
//! session's lock in both, so that a site moves (from files to Redis, say) without logging
//! anyone out.
//!
//! A session is copied only when the target has none: the command can be stopped and run
//! again (it resumes), and never overwrites what the target holds. It is for a site whose
//! programs do not change sessions while it runs (stopped, or behind a maintenance page):
//! copying a live store cannot tell a session changed in the source after its copy from one
//! changed (or ended: signed out) in the target after the switch, and a second attack showed
//! both ways lose updates or bring back signed-out sessions.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use pso::store::{Admin, LockOptions, SessionKey, StoreLocation};
use pso::{ErrorChain, ErrorKind};
use serde_json::json;

use crate::inventory;

/// `pso sessions migrate`.
#[derive(clap::Args)]
pub struct Args {
    /// The store to copy from: files (with --from-path DIR) or a URL as PSOSessionStore takes
    #[arg(long, value_name = "STORE")]
    from: String,
    /// The session directory, when --from is files [default: $PSOSessionFileLoader_Path]
    #[arg(long, value_name = "DIR")]
    from_path: Option<std::path::PathBuf>,
    /// The store to copy into: a URL as PSOSessionStore takes, or files with --to-path DIR
    #[arg(long, value_name = "STORE")]
    to: String,
    /// The session directory, when --to is files
    #[arg(long, value_name = "DIR")]
    to_path: Option<std::path::PathBuf>,
    /// Seconds to wait for a request that holds a session, in either store
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    timeout: u64,
    /// One JSON object at the end instead of a summary
    #[arg(long)]
    json: bool,
}

/// What a run did.
#[derive(Default, Debug)]
struct Tally {
    copied: u64,
    /// The target had one already: left as it is.
    kept: u64,
    /// Unreadable in the source: left there.
    unreadable: u64,
    /// Held past the timeout, or failed: run again.
    failed: u64,
}

fn open(text: &str, path: Option<&std::path::Path>) -> Result<Arc<dyn Admin>, String> {
    let location = StoreLocation::parse(text).map_err(|e| e.to_string())?;
    let (config, _) = pso::Config::from_env_checked(&pso::Environment::from_process());
    match location {
        StoreLocation::Files => {
            let dir = path.map_or(config.session_dir, std::path::Path::to_path_buf);
            Ok(Arc::new(
                inventory::open(dir).map_err(|e| ErrorChain(&e).to_string())?,
            ))
        }
        StoreLocation::Server(url) => {
            inventory::open_server(&url, config.store_password_file.as_deref())
                .map_err(|e| ErrorChain(&e).to_string())
        }
        _ => Err(format!("{text:?} names no store")),
    }
}

pub fn run(args: &Args, out: &mut impl Write) -> Result<(), String> {
    let from = open(&args.from, args.from_path.as_deref())?;
    let to = open(&args.to, args.to_path.as_deref())?;
    if from.place() == to.place() {
        return Err(format!(
            "--from and --to are the same store: {}",
            from.place()
        ));
    }
    let timeout = Duration::from_secs(args.timeout);
    let mut tally = Tally::default();
    for key in from.keys().map_err(|e| ErrorChain(&e).to_string())? {
        let key = match key {
            Ok(key) => key,
            Err(e) => {
                eprintln!("pso: listing {}: {}", from.place(), ErrorChain(&e));
                tally.failed += 1;
                continue;
            }
        };
        match copy(&*from, &*to, &key, timeout) {
            Ok(Copied::Yes) => tally.copied += 1,
            Ok(Copied::Kept) => tally.kept += 1,
            Ok(Copied::Gone) => {}
            Err(e) if e.kind() == ErrorKind::Corrupt => {
                tally.unreadable += 1;
                eprintln!("pso: {key:?} left in {}: {}", from.place(), ErrorChain(&e));
            }
            Err(e) => {
                tally.failed += 1;
                eprintln!("pso: {key:?} not copied: {}", ErrorChain(&e));
            }
        }
    }
    let written = if args.json {
        writeln!(
            out,
            "{}",
            json!({
                "format": 1,
                "from": from.place(),
                "to": to.place(),
                "copied": tally.copied,
                "kept": tally.kept,
                "unreadable": tally.unreadable,
                "failed": tally.failed,
            })
        )
    } else {
        writeln!(
            out,
            "copied {} session(s) from {} to {}; {} already there (left as they are), {} unreadable left, {} failed (run again)",
            tally.copied,
            from.place(),
            to.place(),
            tally.kept,
            tally.unreadable,
            tally.failed
        )
    };
    written.map_err(|e| e.to_string())?;
    if tally.failed > 0 {
        return Err(format!("{} session(s) not copied: run again", tally.failed));
    }
    Ok(())
}

enum Copied {
    Yes,
    /// The target had one: left as it is.
    Kept,
    /// Gone from the source meanwhile.
    Gone,
}

/// Copies one session, holding its lock in the source (so no request changes it meanwhile)
/// and in the target (so no request there races the copy).
fn copy(
    from: &dyn Admin,
    to: &dyn Admin,
    key: &SessionKey,
    timeout: Duration,
) -> pso::Result<Copied> {
    let mut source = from.lock(key, LockOptions::new(timeout))?;
    let Some(record) = source.load()? else {
        return Ok(Copied::Gone);
    };
    let mut target = to.lock(key, LockOptions::new(timeout))?;
    let copied = match target.load() {
        // Whatever the target holds is the target's: never overwritten.
        Ok(Some(_)) | Err(_) => Copied::Kept,
        Ok(None) => {
            target.save_and_release(&record)?;
            Copied::Yes
        }
    };
    drop(target);
    source.release()?;
    Ok(copied)
}
