//! `pso sessions`: see and clean a session store.
//!
//! The reading is [`crate::inventory`]'s; this module parses the command line and prints, as
//! text for people (times in UTC) or as JSON for programs (`--json`: JSON Lines for `list`, one
//! object otherwise, each with `"format": 1`, times as Unix seconds). Results go to stdout;
//! warnings, progress and errors to stderr.

use std::collections::{BTreeMap, BinaryHeap};
use std::fmt::Display;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::sync::Arc;

use pso::store::{Admin, GcOutcome, GcRemoval, SessionKey, StoreLocation};
use pso::{ErrorChain, ServiceId};
use serde_json::json;

use crate::inventory::{self, Detail, Shown, Skipped, Summary};

/// The version of the JSON output, in every object: a field added keeps it, a field changed
/// or removed raises it.
const FORMAT: u32 = 1;
/// Warnings printed one by one; past this many, only counted.
const WARNINGS_SHOWN: u64 = 20;
/// Characters of a string value shown in the text output of `show` (`--json` has it whole).
const TEXT_SHOWN: usize = 120;
/// Characters of an id `list` shows unless `--full-ids`: enough to tell sessions apart and to
/// name one to `show` or `rm`, too few to take one over from a screen or a log.
const ID_SHOWN: usize = 12;

/// What to do with the store.
#[derive(clap::Subcommand)]
pub enum Command {
    /// List the sessions, one line each, as the directory is read (or sorted)
    #[command(after_help = LIST_HELP)]
    List(ListArgs),
    /// Show one session: its metadata, and every key with its size and (where it reads as
    /// an integer or a string) its value
    Show(ShowArgs),
    /// Remove one session, under its lock
    Rm(RmArgs),
    /// Remove expired and unreadable sessions, never one that a request holds; safe from cron
    /// while the site is live. Damaged user records and forced-id sessions are kept and
    /// reported, for a person to look at
    Gc(GcArgs),
    /// Move every session of one store into another (files to Redis, say) while the site
    /// runs: each under its lock in both, saved into the new store and removed from the old;
    /// resumes when run again. The site's programs must first run with PSOSessionStore=<to>
    /// and PSOSessionStoreMovingFrom=<from> (or change no session meanwhile)
    Migrate(crate::migrate::Args),
    /// Count the sessions: how many, how big, how many expired, the oldest and newest
    Stats(StoreArgs),
    /// Make what the store needs before a first request (PostgreSQL: the sessions table and
    /// its index), as a role that may create it, so that the site's own role need not; safe
    /// to run again
    Init(StoreArgs),
}

const LIST_HELP: &str = "\
Memory: without --sort, rows are printed as they are read, whatever the size of the store.
With --sort every row is kept (about 220 bytes each, measured: 220 MB for a million) unless
--limit N is given too, which keeps only the N first (a bounded heap).";

/// Which store, which sessions, which output.
#[derive(clap::Args)]
pub struct StoreArgs {
    /// The session directory [default: $PSOSessionFileLoader_Path, else <temp dir>/pso-<uid>]
    #[arg(long, value_name = "DIR", conflicts_with = "store")]
    path: Option<PathBuf>,
    /// The store, as PSOSessionStore names it: files, redis://host:6379/0, redis+cluster://…
    /// [default: $PSOSessionStore, else files]. A password comes from the URL or from
    /// $PSOSessionStorePasswordFile.
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// Only the sessions of this service (PSOServiceId) [default: every service]
    #[arg(long, value_name = "SERVICE")]
    service: Option<ServiceId>,
    /// JSON output: JSON Lines for list, one object otherwise, each with "format": 1
    #[arg(long)]
    json: bool,
}

/// `pso sessions list`.
#[derive(clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Sort by this field (earliest, smallest or first first)
    #[arg(long, value_enum, value_name = "FIELD")]
    sort: Option<SortField>,
    /// Largest, latest or last first
    #[arg(long, requires = "sort")]
    reverse: bool,
    /// At most N rows (with --sort: the N first in that order)
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Whole session ids instead of their first 12 characters
    #[arg(long)]
    full_ids: bool,
}

/// `pso sessions show`.
#[derive(clap::Args)]
pub struct ShowArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The session's id, or an unambiguous prefix of at least 6 characters
    id: String,
}

/// `pso sessions rm`.
#[derive(clap::Args)]
pub struct RmArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The session's id, or an unambiguous prefix of at least 6 characters
    id: String,
    /// Seconds to wait for a request that holds the session
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    timeout: u64,
}

/// `pso sessions gc`.
#[derive(clap::Args)]
pub struct GcArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// No summary (errors still go to stderr)
    #[arg(long, short)]
    quiet: bool,
}

/// A field to sort `list` by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum SortField {
    /// The service, then the id
    Id,
    /// Creation time
    Created,
    /// Last access
    Accessed,
    /// When it expires if unused: the earlier deadline (browser-close sessions without an idle
    /// limit last)
    Expires,
    /// The record's size
    Size,
}

/// Why a command stopped.
enum Failure {
    /// Writing the output failed (a closed pipe is a quiet exit).
    Output(io::Error),
    /// A message for `pso: ...`.
    Message(String),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        Failure::Output(e)
    }
}

impl From<pso::Error> for Failure {
    fn from(e: pso::Error) -> Failure {
        Failure::Message(ErrorChain(&e).to_string())
    }
}

fn failure(message: impl Display) -> Failure {
    Failure::Message(message.to_string())
}

pub fn run(command: Command) -> ExitCode {
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let done = match command {
        Command::List(args) => list(&args, &mut out),
        Command::Show(args) => show(&args, &mut out),
        Command::Rm(args) => rm(&args, &mut out),
        Command::Gc(args) => gc(&args, &mut out),
        Command::Stats(args) => stats(&args, &mut out),
        Command::Init(args) => init(&args, &mut out),
        Command::Migrate(args) => crate::migrate::run(&args, &mut out).map_err(Failure::Message),
    }
    .and_then(|()| out.flush().map_err(Failure::Output));
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(Failure::Output(e)) => crate::fail(format_args!("writing the output: {e}")),
        Err(Failure::Message(message)) => crate::fail(message),
    }
}

/// The session directory: `--path`, else what programs read from this environment
/// (`PSOSessionFileLoader_Path`, in any of the spellings the library accepts), else the
/// default.
fn store_path(args: &StoreArgs) -> Result<PathBuf, Failure> {
    if let Some(path) = &args.path {
        return Ok(path.clone());
    }
    let (config, problems) = pso::Config::from_env_checked(&pso::Environment::from_process());
    if let Some(problem) = problems
        .iter()
        .find(|problem| problem.variable == "PSOSessionFileLoader_Path")
    {
        // Programs fall back to the default: guessing either way misleads.
        return Err(failure(format_args!(
            "PSOSessionFileLoader_Path: {}; programs do not use it, so give --path",
            problem.message
        )));
    }
    Ok(config.session_dir)
}

/// The store: `--store`, else `--path`, else what programs read from this environment.
fn open(args: &StoreArgs) -> Result<Arc<dyn Admin>, Failure> {
    let (config, _) = pso::Config::from_env_checked(&pso::Environment::from_process());
    let location = match &args.store {
        Some(text) => StoreLocation::parse(text)?,
        None if args.path.is_some() => StoreLocation::Files,
        None => config.store.clone(),
    };
    match location {
        StoreLocation::Files => Ok(Arc::new(inventory::open(store_path(args)?)?)),
        StoreLocation::Server(url) => Ok(inventory::open_server(
            &url,
            config.store_password_file.as_deref(),
        )?),
        _ => Err(failure(
            "PSOSessionStore names no store pso knows; give --store or --path",
        )),
    }
}

fn init(args: &StoreArgs, out: &mut impl Write) -> Result<(), Failure> {
    let store = open(args)?;
    let line = match store.prepare()? {
        Some(made) => format!("{}: {made} are ready", store.place()),
        None => format!(
            "{}: nothing to make, the store is ready as it is",
            store.place()
        ),
    };
    writeln!(out, "{line}").map_err(Failure::Output)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Warnings about entries that are not readable sessions: the first few printed, all counted.
#[derive(Default)]
struct Warnings {
    not_sessions: u64,
    unreadable: u64,
    other_versions: u64,
    reservations: u64,
    temporary: u64,
    printed: u64,
}

impl Warnings {
    fn add(&mut self, skipped: &Skipped) {
        let line = match skipped {
            Skipped::NotASession { name } => {
                self.not_sessions += 1;
                format!("{:?} is not a session file", name)
            }
            Skipped::Unreadable { key, error } => {
                self.unreadable += 1;
                format!(
                    "session {} is unreadable: {}",
                    shown_key(key),
                    ErrorChain(error)
                )
            }
            Skipped::OtherVersion { key } => {
                self.other_versions += 1;
                format!(
                    "session {} is of a format another version of pso wrote",
                    shown_key(key)
                )
            }
            // Normal while programs run: counted, not warned about.
            Skipped::Reservation => {
                self.reservations += 1;
                return;
            }
            Skipped::Temporary => {
                self.temporary += 1;
                return;
            }
        };
        self.printed += 1;
        if self.printed <= WARNINGS_SHOWN {
            eprintln!("pso: warning: {line}");
        }
    }

    fn warned(&self) -> u64 {
        self.not_sessions + self.unreadable + self.other_versions
    }

    /// The closing line: how many were skipped, by kind.
    fn finish(&self) {
        if self.warned() == 0 {
            return;
        }
        let more = self.warned().saturating_sub(WARNINGS_SHOWN);
        let more = if more > 0 {
            format!(" ({more} not shown)")
        } else {
            String::new()
        };
        eprintln!(
            "pso: warning: skipped {} files{more}: {} not sessions, {} unreadable, {} of another pso version",
            self.warned(),
            self.not_sessions,
            self.unreadable,
            self.other_versions
        );
    }
}

/// A key for messages: the service and a prefix of the id (ids are secrets).
fn shown_key(key: &SessionKey) -> String {
    format!("{}.{}", key.service, id_prefix(key.id.as_str()))
}

fn id_prefix(id: &str) -> &str {
    id.get(..ID_SHOWN).unwrap_or(id)
}

/// A `list` row, kept compact because `--sort` keeps every one: the file's name
/// (`service.id`) in one allocation, and numbers.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Row {
    name: Box<str>,
    service_len: u8,
    created: u64,
    last_access: u64,
    deadline: Option<u64>,
    idle_deadline: Option<u64>,
    bytes: u64,
    disk_bytes: Option<u64>,
    expired: bool,
}

impl Row {
    fn new(summary: &Summary) -> Row {
        let service = summary.key.service.as_str();
        Row {
            name: format!("{service}.{}", summary.key.id).into_boxed_str(),
            // Service ids are at most 64 characters.
            service_len: u8::try_from(service.len()).unwrap_or(u8::MAX),
            created: summary.created,
            last_access: summary.last_access,
            deadline: summary.deadline,
            idle_deadline: summary.idle_deadline,
            bytes: summary.bytes,
            disk_bytes: summary.disk_bytes,
            expired: summary.expired,
        }
    }

    fn service(&self) -> &str {
        self.name.get(..usize::from(self.service_len)).unwrap_or("")
    }

    fn id(&self) -> &str {
        self.name
            .get(usize::from(self.service_len) + 1..)
            .unwrap_or("")
    }

    fn expires(&self) -> Option<u64> {
        match (self.deadline, self.idle_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn order(&self, other: &Row, field: SortField) -> std::cmp::Ordering {
        let by_field = match field {
            SortField::Id => std::cmp::Ordering::Equal,
            SortField::Created => self.created.cmp(&other.created),
            SortField::Accessed => self.last_access.cmp(&other.last_access),
            // No deadline at all sorts last: such a session never expires on its own.
            SortField::Expires => self
                .expires()
                .unwrap_or(u64::MAX)
                .cmp(&other.expires().unwrap_or(u64::MAX)),
            SortField::Size => self.bytes.cmp(&other.bytes),
        };
        by_field.then_with(|| (self.service(), self.id()).cmp(&(other.service(), other.id())))
    }
}

/// A row in a sort order, for the bounded heap of `--sort --limit`.
struct Ranked {
    row: Row,
    field: SortField,
    reverse: bool,
}

impl Ord for Ranked {
    fn cmp(&self, other: &Ranked) -> std::cmp::Ordering {
        let order = self.row.order(&other.row, self.field);
        if self.reverse { order.reverse() } else { order }
    }
}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Ranked) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Ranked {
    fn eq(&self, other: &Ranked) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Ranked {}

/// Prints rows as text or JSON Lines.
struct RowPrinter {
    json: bool,
    full_ids: bool,
}

impl RowPrinter {
    fn header(&self, out: &mut impl Write) -> io::Result<()> {
        if self.json {
            return Ok(());
        }
        let id_width = if self.full_ids { 48 } else { ID_SHOWN };
        writeln!(
            out,
            "{:<id_width$}  {:<19}  {:<19}  {:<19}  {:<19}  {:>9}  {:<7}  SERVICE",
            "ID", "CREATED (UTC)", "LAST ACCESS", "DEADLINE", "IDLE UNTIL", "BYTES", "STATE"
        )
    }

    fn row(&self, out: &mut impl Write, row: &Row) -> io::Result<()> {
        let id = if self.full_ids {
            row.id()
        } else {
            id_prefix(row.id())
        };
        if self.json {
            let mut object = json!({
                "format": FORMAT,
                "service": row.service(),
                "id_prefix": id_prefix(row.id()),
                "created": row.created,
                "last_access": row.last_access,
                "deadline": row.deadline,
                "idle_deadline": row.idle_deadline,
                "bytes": row.bytes,
                "disk_bytes": row.disk_bytes,
                "expired": row.expired,
            });
            if self.full_ids {
                object["id"] = json!(row.id());
            }
            return write_json(out, &object);
        }
        let id_width = if self.full_ids { 48 } else { ID_SHOWN };
        writeln!(
            out,
            "{id:<id_width$}  {:<19}  {:<19}  {:<19}  {:<19}  {:>9}  {:<7}  {}",
            utc(row.created),
            utc(row.last_access),
            row.deadline.map_or("-".into(), utc),
            row.idle_deadline.map_or("-".into(), utc),
            row.bytes,
            if row.expired { "expired" } else { "live" },
            row.service(),
        )
    }
}

fn list(args: &ListArgs, out: &mut impl Write) -> Result<(), Failure> {
    let store = open(&args.store)?;
    let printer = RowPrinter {
        json: args.store.json,
        full_ids: args.full_ids,
    };
    let mut warnings = Warnings::default();
    let mut written: Result<(), io::Error> = printer.header(out);
    let limit = args.limit.unwrap_or(usize::MAX);
    let mut printed = 0usize;
    // Only with --sort are rows kept: all of them, or with --limit the N first in a heap
    // whose top is the last of those N.
    let mut all: Vec<Row> = Vec::new();
    let mut heap: BinaryHeap<Ranked> = BinaryHeap::new();
    let sort = args.sort;
    inventory::for_each(&*store, args.store.service.as_ref(), now(), |found| {
        let summary = match found {
            Ok(summary) => summary,
            Err(skipped) => {
                warnings.add(&skipped);
                return ControlFlow::Continue(());
            }
        };
        let row = Row::new(&summary);
        match sort {
            None => {
                if printed >= limit {
                    return ControlFlow::Break(());
                }
                // A failed write stops the walk, so `written` is Ok whenever it gets here.
                printed += 1;
                written = printer.row(out, &row);
                if written.is_err() {
                    return ControlFlow::Break(());
                }
            }
            Some(field) if args.limit.is_some() => {
                heap.push(Ranked {
                    row,
                    field,
                    reverse: args.reverse,
                });
                if heap.len() > limit {
                    heap.pop();
                }
            }
            Some(_) => all.push(row),
        }
        ControlFlow::Continue(())
    })?;
    written?;
    if let Some(field) = sort {
        let rows: Vec<Row> = if args.limit.is_some() {
            heap.into_sorted_vec().into_iter().map(|r| r.row).collect()
        } else {
            all.sort_by(|a, b| {
                let order = a.order(b, field);
                if args.reverse { order.reverse() } else { order }
            });
            all
        };
        for row in &rows {
            printer.row(out, row)?;
        }
    }
    out.flush()?;
    warnings.finish();
    Ok(())
}

/// One JSON object and a newline.
fn write_json(out: &mut impl Write, value: &serde_json::Value) -> io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    writeln!(out)
}

/// The key a command-line id names.
fn resolve(store: &dyn Admin, args: &StoreArgs, text: &str) -> Result<SessionKey, Failure> {
    inventory::resolve(store, args.service.as_ref(), text)
        .map_err(|e| failure(format_args!("{}: {e}", printable_id(text))))
}

/// The id as typed, for a message: escaped if it is not of the id alphabet.
fn printable_id(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain {
        text.to_owned()
    } else {
        format!("{text:?}")
    }
}

fn show(args: &ShowArgs, out: &mut impl Write) -> Result<(), Failure> {
    let store = open(&args.store)?;
    let key = resolve(&*store, &args.store, &args.id)?;
    let Some(detail) = inventory::detail(&*store, &key, now())? else {
        return Err(failure(format_args!(
            "{}: no such session",
            printable_id(&args.id)
        )));
    };
    if args.store.json {
        write_json(out, &detail_json(&detail))?;
    } else {
        write_detail(out, &detail)?;
    }
    Ok(())
}

fn detail_json(detail: &Detail) -> serde_json::Value {
    let s = &detail.summary;
    let keys: Vec<serde_json::Value> = detail
        .keys
        .iter()
        .map(|k| {
            let mut key = json!({ "name": k.name, "bytes": k.bytes });
            match &k.shown {
                Some(Shown::Integer(n)) => key["integer"] = json!(n),
                Some(Shown::Text(text)) => key["text"] = json!(text),
                None => {}
            }
            key
        })
        .collect();
    json!({
        "format": FORMAT,
        "service": s.key.service.as_str(),
        "id": s.key.id.as_str(),
        "created": s.created,
        "last_access": s.last_access,
        "deadline": s.deadline,
        "max_idle": detail.max_idle,
        "idle_deadline": s.idle_deadline,
        "expired": s.expired,
        "client_addr": detail.client_addr,
        "bytes": s.bytes,
        "disk_bytes": s.disk_bytes,
        "keys": keys,
    })
}

fn write_detail(out: &mut impl Write, detail: &Detail) -> io::Result<()> {
    let s = &detail.summary;
    let time =
        |t: Option<u64>, none: &str| t.map_or(none.to_owned(), |t| format!("{} ({t})", utc(t)));
    writeln!(out, "service      {}", s.key.service)?;
    writeln!(out, "id           {}", s.key.id)?;
    writeln!(out, "created      {}", time(Some(s.created), ""))?;
    writeln!(out, "last access  {}", time(Some(s.last_access), ""))?;
    writeln!(
        out,
        "deadline     {}",
        time(s.deadline, "none (until the browser closes)")
    )?;
    match detail.max_idle {
        Some(idle) => writeln!(
            out,
            "max idle     {idle} s (unused past {})",
            time(s.idle_deadline, "-")
        )?,
        None => writeln!(out, "max idle     none")?,
    }
    writeln!(out, "expired      {}", if s.expired { "yes" } else { "no" })?;
    if let Some(addr) = &detail.client_addr {
        writeln!(out, "client       {}", escaped(addr, TEXT_SHOWN))?;
    }
    match s.disk_bytes {
        Some(disk) => writeln!(out, "size         {} bytes ({disk} on disk)", s.bytes)?,
        None => writeln!(out, "size         {} bytes", s.bytes)?,
    }
    writeln!(out, "keys         {}", detail.keys.len())?;
    let width = detail
        .keys
        .iter()
        .map(|k| escaped(&k.name, TEXT_SHOWN).chars().count())
        .max()
        .unwrap_or(0);
    for key in &detail.keys {
        let value = match &key.shown {
            Some(Shown::Text(text)) => escaped_quoted(text),
            Some(shown) => shown.to_string(),
            None => String::from("-"),
        };
        writeln!(
            out,
            "  {:<width$}  {:>9} bytes  {value}",
            escaped(&key.name, TEXT_SHOWN),
            key.bytes
        )?;
    }
    Ok(())
}

/// `text` as it may reach a terminal: control characters escaped, cut after `max` characters.
fn escaped(text: &str, max: usize) -> String {
    let needs_escape = text.chars().any(|c| c.is_control() || c == '"');
    let shown: String = if needs_escape {
        let quoted = format!("{text:?}");
        quoted[1..quoted.len() - 1].to_owned()
    } else {
        text.to_owned()
    };
    cut(&shown, max)
}

/// A string value quoted and escaped, cut to [`TEXT_SHOWN`] characters.
fn escaped_quoted(text: &str) -> String {
    let quoted = format!("{text:?}");
    let total = quoted.chars().count();
    if total <= TEXT_SHOWN {
        quoted
    } else {
        format!("{} ({} bytes)", cut(&quoted, TEXT_SHOWN), text.len())
    }
}

fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

fn rm(args: &RmArgs, out: &mut impl Write) -> Result<(), Failure> {
    let store = open(&args.store)?;
    let key = resolve(&*store, &args.store, &args.id)?;
    let removed =
        inventory::remove(&*store, &key, Duration::from_secs(args.timeout)).map_err(|e| {
            if inventory::is_lock_timeout(&e) {
                failure(format_args!(
                    "session {} is held by a request past --timeout ({} s); nothing removed",
                    shown_key(&key),
                    args.timeout
                ))
            } else {
                Failure::from(e)
            }
        })?;
    if !removed {
        return Err(failure(format_args!(
            "{}: no such session",
            printable_id(&args.id)
        )));
    }
    if args.store.json {
        let object = json!({
            "format": FORMAT,
            "removed": true,
            "service": key.service.as_str(),
            "id": key.id.as_str(),
        });
        write_json(out, &object)?;
    } else {
        writeln!(out, "removed session {} of {}", key.id, key.service)?;
    }
    Ok(())
}

/// What a `gc` pass did, entry by entry.
#[derive(Default)]
struct GcTally {
    expired: u64,
    unreadable: u64,
    abandoned: u64,
    kept: u64,
    kept_damaged: u64,
    held: u64,
    skipped: u64,
    bytes_freed: u64,
}

impl GcTally {
    fn add(&mut self, outcome: GcOutcome) {
        match outcome {
            GcOutcome::Removed { reason, bytes } => {
                self.bytes_freed = self.bytes_freed.saturating_add(bytes);
                match reason {
                    GcRemoval::Expired => self.expired += 1,
                    GcRemoval::Unreadable => self.unreadable += 1,
                    _ => self.abandoned += 1,
                }
            }
            GcOutcome::Kept => self.kept += 1,
            GcOutcome::KeptDamaged => {
                self.kept += 1;
                self.kept_damaged += 1;
            }
            GcOutcome::Busy => self.held += 1,
            GcOutcome::Skipped => self.skipped += 1,
            _ => {}
        }
    }

    fn removed(&self) -> u64 {
        self.expired + self.unreadable + self.abandoned
    }
}

fn gc(args: &GcArgs, out: &mut impl Write) -> Result<(), Failure> {
    let store = open(&args.store)?;
    if store.expires_by_itself() {
        if !args.quiet {
            writeln!(
                out,
                "{} removes expired sessions by itself (TTLs): nothing to collect",
                store.place()
            )
            .map_err(Failure::Output)?;
        }
        return Ok(());
    }
    let bar = if io::stderr().is_terminal() {
        // Counting the sessions first is a listing only (no record read): cheap beside the
        // pass, and it gives the bar its length.
        let total = store.keys()?.count() as u64;
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(total),
            indicatif::ProgressDrawTarget::stderr(),
        );
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} entries, {msg} [{elapsed}, {eta} left]",
        ) {
            bar.set_style(style);
        }
        bar.set_message("0 removed");
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut tally = GcTally::default();
    let collected = store.collect(
        SystemTime::now(),
        args.store.service.as_ref(),
        &mut |outcome| {
            tally.add(outcome);
            bar.inc(1);
            if bar.position() % 256 == 0 {
                bar.set_message(format!("{} removed", tally.removed()));
            }
        },
    );
    bar.finish_and_clear();
    let report = collected?;
    if report.examined > 0 && tally.expired + tally.kept + tally.held + tally.unreadable == 0 {
        // A store that collects in bulk (PostgreSQL's DELETE per batch) reports counts only.
        tally.expired = report.removed;
        tally.held = report.busy;
        tally.kept = report.examined.saturating_sub(report.removed + report.busy);
    }
    if tally.kept_damaged > 0 {
        // Said even with --quiet: a person must look (`pso sessions show`, then `rm`).
        eprintln!(
            "warning: kept {} unreadable record(s) that are not visitors' sessions (user records of \"log out everywhere\", forced ids): pso reads a damaged user record as \"logged out\"; look at them with `pso sessions list`",
            tally.kept_damaged
        );
    }
    if args.quiet {
        return Ok(());
    }
    if args.store.json {
        let object = json!({
            "format": FORMAT,
            "removed": tally.removed(),
            "expired": tally.expired,
            "unreadable": tally.unreadable,
            "abandoned": tally.abandoned,
            "kept": tally.kept,
            "kept_damaged": tally.kept_damaged,
            "held": tally.held,
            "skipped": tally.skipped,
            "bytes_freed": tally.bytes_freed,
        });
        write_json(out, &object)?;
    } else {
        writeln!(
            out,
            "removed {} ({} expired, {} unreadable, {} abandoned), kept {} ({} damaged), held by requests {}, skipped {}, freed {} bytes",
            tally.removed(),
            tally.expired,
            tally.unreadable,
            tally.abandoned,
            tally.kept,
            tally.kept_damaged,
            tally.held,
            tally.skipped,
            tally.bytes_freed
        )?;
    }
    Ok(())
}

/// Totals for `stats`.
#[derive(Default)]
struct Totals {
    sessions: u64,
    expired: u64,
    bytes: u64,
    /// `None` until a session says what it takes (a server store does not).
    disk_bytes: Option<u64>,
    oldest: Option<u64>,
    newest: Option<u64>,
}

impl Totals {
    fn add(&mut self, summary: &Summary) {
        self.sessions += 1;
        self.expired += u64::from(summary.expired);
        self.bytes = self.bytes.saturating_add(summary.bytes);
        if let Some(disk) = summary.disk_bytes {
            self.disk_bytes = Some(self.disk_bytes.unwrap_or(0).saturating_add(disk));
        }
        self.oldest = Some(
            self.oldest
                .map_or(summary.created, |t| t.min(summary.created)),
        );
        self.newest = Some(
            self.newest
                .map_or(summary.created, |t| t.max(summary.created)),
        );
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "sessions": self.sessions,
            "expired": self.expired,
            "bytes": self.bytes,
            "disk_bytes": self.disk_bytes,
            "oldest_created": self.oldest,
            "newest_created": self.newest,
        })
    }
}

fn stats(args: &StoreArgs, out: &mut impl Write) -> Result<(), Failure> {
    let store = open(args)?;
    let mut all = Totals::default();
    // One entry per service: services are few (one per program), unlike sessions.
    let mut services: BTreeMap<ServiceId, Totals> = BTreeMap::new();
    let mut warnings = Warnings::default();
    inventory::for_each(&*store, args.service.as_ref(), now(), |found| {
        match found {
            Ok(summary) => {
                all.add(&summary);
                services
                    .entry(summary.key.service.clone())
                    .or_default()
                    .add(&summary);
            }
            Err(skipped) => warnings.add(&skipped),
        }
        ControlFlow::Continue(())
    })?;
    if args.json {
        let mut object = all.json();
        object["format"] = json!(FORMAT);
        object["reservations"] = json!(warnings.reservations);
        object["temporary"] = json!(warnings.temporary);
        object["not_sessions"] = json!(warnings.not_sessions);
        object["unreadable"] = json!(warnings.unreadable);
        object["other_versions"] = json!(warnings.other_versions);
        let by_service: serde_json::Map<String, serde_json::Value> = services
            .iter()
            .map(|(service, totals)| (service.to_string(), totals.json()))
            .collect();
        object["services"] = serde_json::Value::Object(by_service);
        write_json(out, &object)?;
    } else {
        let time = |t: Option<u64>| t.map_or("-".to_owned(), utc);
        writeln!(
            out,
            "sessions     {} ({} expired)",
            all.sessions, all.expired
        )?;
        match all.disk_bytes {
            Some(disk) => writeln!(out, "bytes        {} in records, {disk} on disk", all.bytes)?,
            None => writeln!(out, "bytes        {} in records", all.bytes)?,
        }
        writeln!(out, "oldest       {} (created, UTC)", time(all.oldest))?;
        writeln!(out, "newest       {} (created, UTC)", time(all.newest))?;
        for (service, totals) in &services {
            writeln!(
                out,
                "service      {service}: {} sessions ({} expired), {} bytes",
                totals.sessions, totals.expired, totals.bytes
            )?;
        }
        writeln!(
            out,
            "other files  {} reservations, {} temporary, {} not sessions, {} unreadable, {} of another pso version",
            warnings.reservations,
            warnings.temporary,
            warnings.not_sessions,
            warnings.unreadable,
            warnings.other_versions
        )?;
    }
    out.flush()?;
    warnings.finish();
    Ok(())
}

/// Unix seconds as `YYYY-MM-DD hh:mm:ss`, in UTC.
fn utc(secs: u64) -> String {
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_in_utc() {
        for (secs, text) in [
            (0, "1970-01-01 00:00:00"),
            (951_782_400, "2000-02-29 00:00:00"),
            (1_700_000_000, "2023-11-14 22:13:20"),
            (4_102_444_799, "2099-12-31 23:59:59"),
            (u64::MAX, "584554051223-11-09 07:00:15"),
        ] {
            assert_eq!(utc(secs), text, "{secs}");
        }
    }

    #[test]
    fn text_for_a_terminal_is_escaped_and_cut() {
        assert_eq!(escaped("plain", 10), "plain");
        assert_eq!(escaped("a\u{1b}[2Jb", 20), r"a\u{1b}[2Jb");
        assert_eq!(escaped("abcdef", 3), "abc…");
        assert_eq!(escaped_quoted("x\ny"), r#""x\ny""#);
        assert_eq!(printable_id("ab/../c"), r#""ab/../c""#);
    }

    #[test]
    fn rows_sort_by_field_then_name() {
        let row = |name: &str, created: u64| Row {
            name: name.into(),
            service_len: 1,
            created,
            last_access: 0,
            deadline: None,
            idle_deadline: None,
            bytes: 0,
            disk_bytes: None,
            expired: false,
        };
        let (a, b, c) = (row("s.b", 1), row("s.a", 2), row("s.c", 1));
        assert_eq!(a.id(), "b");
        assert_eq!(a.service(), "s");
        assert!(a.order(&b, SortField::Created).is_lt());
        assert!(a.order(&c, SortField::Created).is_lt());
        assert!(b.order(&a, SortField::Id).is_lt());
    }
}
