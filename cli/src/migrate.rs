//! `pso sessions migrate`: moves a site's sessions from one store to another (from files to
//! Redis, say) while the site runs, without logging anyone out.
//!
//! The site's programs run with `PSOSessionStore` set to the new store and
//! `PSOSessionStoreMovingFrom` to the old one: each session moves over the first time a request
//! touches it. This command moves the rest, through the same code ([`MovingStore`]): each
//! session under its lock in the new store and then the old, saved into the new store and
//! removed from the old. A session is in one store at any instant a request can see, so
//! nothing a request changes meanwhile is lost, and a session signed out in the new store
//! cannot come back from the old. It can be stopped and run again (it resumes: what moved is
//! no longer in the old store), and once it reports nothing left the variable can go.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use pso::ErrorChain;
use pso::store::{Admin, LockOptions, Moved, MovingStore, SessionKey, StoreLocation};
use serde_json::json;

use crate::inventory;

/// `pso sessions migrate`.
#[derive(clap::Args)]
pub struct Args {
    /// The store to move from: files (with --from-path DIR) or a URL as PSOSessionStore takes
    #[arg(long, value_name = "STORE")]
    from: String,
    /// The session directory, when --from is files [default: $PSOSessionFileLoader_Path]
    #[arg(long, value_name = "DIR")]
    from_path: Option<std::path::PathBuf>,
    /// The store to move into: a URL as PSOSessionStore takes, or files with --to-path DIR
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
    moved: u64,
    /// The target had one already: kept, and the source's copy removed.
    there: u64,
    /// Unreadable in the source: left there.
    unreadable: u64,
    /// Held past the timeout, or failed: run again.
    failed: u64,
}

/// The store `text` names; `password_file`: whether `PSOSessionStorePasswordFile` is its
/// password (the new store's only: the old one's password is in its URL, as requests read
/// it, and must not go to another server).
fn open(
    text: &str,
    path: Option<&std::path::Path>,
    password_file: bool,
) -> Result<Arc<dyn Admin>, String> {
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
            let password_file = config
                .store_password_file
                .as_deref()
                .filter(|_| password_file);
            inventory::open_server(&url, password_file).map_err(|e| ErrorChain(&e).to_string())
        }
        _ => Err(format!("{text:?} names no store")),
    }
}

pub fn run(args: &Args, out: &mut impl Write) -> Result<(), String> {
    let from = open(&args.from, args.from_path.as_deref(), false)?;
    let to = open(&args.to, args.to_path.as_deref(), true)?;
    if from.place() == to.place() || one_store(&*from, &*to)? {
        return Err(format!(
            "--from and --to are the same store: {} and {}",
            from.place(),
            to.place()
        ));
    }
    let timeout = Duration::from_secs(args.timeout);
    let moving = MovingStore::new(to.clone(), from.clone());
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
        match moving.move_one(&key, timeout) {
            Ok(Moved::Moved) => tally.moved += 1,
            Ok(Moved::AlreadyThere) => tally.there += 1,
            Ok(Moved::Unreadable) => {
                tally.unreadable += 1;
                eprintln!("pso: {key:?} is unreadable: left in {}", from.place());
            }
            Ok(_) => {}
            Err(e) => {
                tally.failed += 1;
                eprintln!("pso: {key:?} not moved: {}", ErrorChain(&e));
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
                "moved": tally.moved,
                "already_there": tally.there,
                "unreadable": tally.unreadable,
                "failed": tally.failed,
            })
        )
    } else {
        writeln!(
            out,
            "moved {} session(s) from {} to {}; {} already there (kept, the old copy removed), {} unreadable left, {} failed (run again)",
            tally.moved,
            from.place(),
            to.place(),
            tally.there,
            tally.unreadable,
            tally.failed
        )
    };
    written.map_err(|e| e.to_string())?;
    if tally.failed > 0 {
        return Err(format!("{} session(s) not moved: run again", tally.failed));
    }
    Ok(())
}

/// Whether `from` and `to` are one store named two ways (`localhost` and `127.0.0.1`, a
/// directory through a link): a probe saved into `from` under a service of its own shows in
/// `to`. Moving a store onto itself would wait out every session's lock against itself.
fn one_store(from: &dyn Admin, to: &dyn Admin) -> Result<bool, String> {
    let failed = |e: pso::Error| format!("probing the stores: {}", ErrorChain(&e));
    let service = "pso-migrate-probe".parse().map_err(failed)?;
    let key = SessionKey::new(service, pso::SessionId::generate().map_err(failed)?);
    let mut probe = from
        .lock(&key, LockOptions::new(Duration::from_secs(5)))
        .map_err(failed)?;
    probe
        .save_and_release(&pso::Record::default())
        .map_err(failed)?;
    drop(probe);
    let seen = to.exists(&key);
    from.delete(&key).map_err(failed)?;
    seen.map_err(failed)
}
