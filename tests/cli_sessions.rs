//! `pso sessions` as a real process on real stores: stores made by the library and by the
//! reload counter (`cgi-bin/reload.rs`) run as CGI, with damaged files and other programs'
//! files among them; a store of 100,000 sessions whose listing stays in the same memory as
//! one of 10,000; and `gc` run again and again while 8 processes at a time update sessions.

mod common;

use common::{stderr, stdout};

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pso::store::{FileStore, LockOptions, SessionKey, Store};
use pso::{Meta, Record, SessionId};

static PSO: std::sync::LazyLock<String> = std::sync::LazyLock::new(common::helper);
static RELOAD: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| common::example("reload"));
const SUBCOMMANDS: [&str; 5] = ["list", "show", "rm", "gc", "stats"];

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A session directory made by the library, in a temporary directory of its own.
struct Sessions {
    _root: tempfile::TempDir,
    store: FileStore,
}

impl Sessions {
    fn new() -> Sessions {
        Sessions::new_in(None)
    }

    /// In memory where there is a tmpfs, for the big stores.
    fn in_memory() -> Sessions {
        Sessions::new_in(Some("/dev/shm"))
    }

    fn new_in(base: Option<&str>) -> Sessions {
        let root = match base.filter(|b| Path::new(b).is_dir()) {
            Some(base) => tempfile::Builder::new().tempdir_in(base).unwrap(),
            None => tempfile::tempdir().unwrap(),
        };
        let store = FileStore::open(root.path().join("sessions")).unwrap();
        Sessions { _root: root, store }
    }

    fn dir(&self) -> &Path {
        self.store.dir()
    }

    /// Saves a session through the library's lock, as a request would.
    fn save(&self, service: &str, meta: Meta, values: &[(&str, u64)]) -> SessionKey {
        let key = SessionKey::new(service.parse().unwrap(), SessionId::generate().unwrap());
        let mut record = Record::new(meta);
        for (name, value) in values {
            record.set(name, value).unwrap();
        }
        self.store
            .lock(&key, LockOptions::new(Duration::from_secs(5)))
            .unwrap()
            .save(&record)
            .unwrap();
        key
    }

    /// `pso sessions ARGS --path DIR`, with no PSO.as_str() variable from the test's environment.
    fn run(&self, args: &[&str]) -> Output {
        run_pso(self.dir(), args)
    }
}

fn run_pso(dir: &Path, args: &[&str]) -> Output {
    // The path before the rest, which may end in `-- ID`.
    Command::new(PSO.as_str())
        .arg("sessions")
        .args(&args[..1])
        .arg("--path")
        .arg(dir)
        .args(&args[1..])
        .env_remove("PSOSessionFileLoader_Path")
        .env_remove("PSOServiceId")
        .output()
        .unwrap()
}

fn succeeded(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{:?}\nstdout: {}\nstderr: {}",
        output.status,
        stdout(output),
        stderr(output)
    );
    stdout(output)
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn json(text: &str) -> serde_json::Value {
    let lines = json_lines(text);
    assert_eq!(lines.len(), 1, "one object: {text}");
    lines.into_iter().next().unwrap()
}

fn live(now: u64) -> Meta {
    let mut meta = Meta::new(now);
    meta.max_idle = Some(86_400);
    meta
}

fn expired(now: u64) -> Meta {
    let mut meta = Meta::new(now - 100);
    meta.deadline = Some(now - 10);
    meta
}

/// One CGI request to the reload counter: the count it answered and its session cookie.
fn reload(dir: &Path, cookie: Option<&str>) -> (u64, Option<String>) {
    let mut command = Command::new(RELOAD.as_str());
    command
        .env_clear()
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("REQUEST_METHOD", "GET")
        .env("SCRIPT_NAME", "/cgi-bin/reload")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("PSOServiceId", "reload")
        .env("PSOSessionFileLoader_Path", dir)
        .env("PSOSessionGCProbability", "0");
    if let Some(id) = cookie {
        command.env("HTTP_COOKIE", format!("reload={id}"));
    }
    let output = command.output().unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "{text}");
    let count = text
        .split("You reloaded: ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not the counter: {text}"));
    let id = text
        .lines()
        .find_map(|line| line.strip_prefix("Set-Cookie: reload="))
        .map(|rest| rest.split(';').next().unwrap().to_owned());
    (count, id)
}

#[test]
fn every_subcommand_has_help_with_the_common_options() {
    for command in SUBCOMMANDS {
        let output = Command::new(PSO.as_str())
            .args(["sessions", command, "--help"])
            .output()
            .unwrap();
        let help = succeeded(&output);
        for option in ["--path", "--service", "--json"] {
            assert!(help.contains(option), "{command}: {help}");
        }
        assert!(!help.contains('\u{1b}'), "no colour off a terminal: {help}");
    }
    let output = Command::new(PSO.as_str())
        .args(["sessions", "--help"])
        .output()
        .unwrap();
    let help = succeeded(&output);
    for command in SUBCOMMANDS {
        assert!(help.contains(command), "{help}");
    }
    let output = Command::new(PSO.as_str())
        .args(["sessions", "list", "--sort", "colour"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "a usage error");
}

#[test]
fn a_missing_directory_is_one_line_and_exit_1_and_is_not_created() {
    let root = tempfile::tempdir().unwrap();
    let missing = root.path().join("sessions");
    for args in [
        &["list"][..],
        &["stats"],
        &["gc"],
        &["show", "007"],
        &["rm", "007"],
    ] {
        let output = run_pso(&missing, args);
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        let message = stderr(&output);
        assert_eq!(message.lines().count(), 1, "{message}");
        assert!(
            message.starts_with("pso: no session directory at "),
            "{message}"
        );
        assert!(!missing.exists(), "{args:?} created the directory");
    }
    // Nor its parent.
    let output = run_pso(&root.path().join("a/b"), &["list"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("no session directory"));
}

#[test]
fn the_reload_counters_sessions_are_listed_shown_and_removed() {
    let sessions = Sessions::new();
    let dir = sessions.dir();
    let (count, id) = reload(dir, None);
    assert_eq!(count, 1);
    let id = id.expect("a new session's cookie");
    let (count, cookie) = reload(dir, Some(&id));
    assert_eq!(count, 2);
    assert!(cookie.is_none_or(|c| c == id), "the same session");
    let (_, other) = reload(dir, None);
    let other = other.unwrap();

    let rows = json_lines(&succeeded(&sessions.run(&["list", "--json"])));
    assert_eq!(rows.len(), 2, "{rows:?}");
    for row in &rows {
        assert_eq!(row["format"], 1);
        assert_eq!(row["service"], "reload");
        assert_eq!(row["expired"], false);
        assert!(row.get("id").is_none(), "whole ids only with --full-ids");
        let created = row["created"].as_u64().unwrap();
        assert!(created.abs_diff(now()) < 3600, "{row}");
    }
    let mut prefixes: Vec<&str> = rows
        .iter()
        .map(|r| r["id_prefix"].as_str().unwrap())
        .collect();
    prefixes.sort();
    let mut expected = vec![&id[..12], &other[..12]];
    expected.sort();
    assert_eq!(prefixes, expected);
    let text = succeeded(&sessions.run(&["list"]));
    assert!(text.lines().next().unwrap().starts_with("ID "), "{text}");
    assert!(text.contains(&id[..12]) && !text.contains(&id), "{text}");
    let text = succeeded(&sessions.run(&["list", "--full-ids"]));
    assert!(text.contains(&id), "{text}");

    // By a prefix: the value the counter stored is shown.
    let shown = json(&succeeded(&sessions.run(&["show", "--json", &id[..10]])));
    assert_eq!(shown["format"], 1);
    assert_eq!(shown["id"], id.as_str());
    assert_eq!(
        shown["keys"],
        serde_json::json!([{ "name": "reloads", "bytes": 1, "integer": 2 }])
    );
    let text = succeeded(&sessions.run(&["show", &id]));
    assert!(
        text.lines()
            .any(|l| l.contains("reloads") && l.trim_end().ends_with(" 2")),
        "{text}"
    );

    let removed = json(&succeeded(&sessions.run(&["rm", "--json", &id])));
    assert_eq!(removed["removed"], true);
    assert!(!sessions.store.path_of(&key_of("reload", &id)).exists());
    let again = sessions.run(&["rm", &id]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("no such session"),
        "{}",
        stderr(&again)
    );
    let again = sessions.run(&["show", &id]);
    assert_eq!(again.status.code(), Some(1));
    // The visitor of the removed session gets a new one; the other keeps counting.
    let (count, new_id) = reload(dir, Some(&id));
    assert_eq!(count, 1);
    assert_ne!(new_id.as_deref(), Some(id.as_str()));
    assert_eq!(reload(dir, Some(&other)).0, 2);
}

fn key_of(service: &str, id: &str) -> SessionKey {
    SessionKey::new(service.parse().unwrap(), SessionId::named(id).unwrap())
}

#[test]
fn ids_are_checked_before_they_name_anything() {
    let sessions = Sessions::new();
    let a = sessions.save("svc", live(now()), &[]);
    for hostile in ["../../etc/passwd", "a/b", "", ".", "x y", "svc.abc"] {
        for command in ["show", "rm"] {
            let output = sessions.run(&[command, "--", hostile]);
            assert_eq!(output.status.code(), Some(1), "{command} {hostile:?}");
            assert!(
                stderr(&output).contains("not a session id"),
                "{}",
                stderr(&output)
            );
        }
    }
    // Too short a prefix is refused even when it would be unambiguous.
    let output = sessions.run(&["rm", &a.id.as_str()[..3]]);
    assert_eq!(output.status.code(), Some(1));
    assert!(sessions.store.exists(&a).unwrap());
}

/// A store with what a shared directory holds besides good sessions.
struct Mixed {
    sessions: Sessions,
    good: Vec<SessionKey>,
    corrupt: SessionKey,
    truncated: SessionKey,
    newer: SessionKey,
    link: SessionKey,
    target: PathBuf,
}

fn mixed() -> Mixed {
    let sessions = Sessions::new();
    let now = now();
    let good = vec![
        sessions.save("shop", live(now), &[("n", 1)]),
        sessions.save("blog", live(now), &[("n", 2)]),
        sessions.save("shop", expired(now), &[("n", 3)]),
    ];
    // A session whose only slot fails its checksum.
    let corrupt = sessions.save("shop", live(now), &[("n", 4)]);
    let path = sessions.store.path_of(&corrupt);
    let mut bytes = fs::read(&path).unwrap();
    bytes[40] ^= 0xff;
    fs::write(&path, &bytes).unwrap();
    // Cut short: no layout at all.
    let truncated = SessionKey::new("shop".parse().unwrap(), SessionId::generate().unwrap());
    fs::write(sessions.store.path_of(&truncated), &bytes[..100]).unwrap();
    // A record of a format version this pso does not know.
    let newer = SessionKey::new("shop".parse().unwrap(), SessionId::generate().unwrap());
    let mut record = Record::new(live(now)).encode().unwrap();
    record[4] = 9;
    fs::write(sessions.store.path_of(&newer), &record).unwrap();
    // Other programs' files, and a symlink named like a session.
    fs::write(sessions.dir().join("sess_0123abcd"), b"php|a:0:{}").unwrap();
    fs::write(sessions.dir().join("README"), b"keep me").unwrap();
    let target = sessions.dir().parent().unwrap().join("precious");
    fs::write(&target, b"precious").unwrap();
    let link = SessionKey::new("shop".parse().unwrap(), SessionId::generate().unwrap());
    symlink(&target, sessions.store.path_of(&link)).unwrap();
    Mixed {
        sessions,
        good,
        corrupt,
        truncated,
        newer,
        link,
        target,
    }
}

#[test]
fn damaged_and_foreign_files_are_counted_warnings_and_list_exits_0() {
    let m = mixed();
    let output = m.sessions.run(&["list", "--json", "--full-ids"]);
    let rows = json_lines(&succeeded(&output));
    let mut ids: Vec<String> = rows
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    let mut expected: Vec<String> = m.good.iter().map(|k| k.id.to_string()).collect();
    expected.sort();
    assert_eq!(ids, expected);
    assert_eq!(rows.iter().filter(|r| r["expired"] == true).count(), 1);
    let warnings = stderr(&output);
    for (what, key) in [
        ("unreadable", &m.corrupt),
        ("unreadable", &m.truncated),
        ("unreadable", &m.link),
        ("another version", &m.newer),
    ] {
        let prefix = &key.id.as_str()[..12];
        assert!(
            warnings
                .lines()
                .any(|l| l.starts_with("pso: warning:") && l.contains(prefix) && l.contains(what)),
            "{what} {prefix}: {warnings}"
        );
        assert!(
            !warnings.contains(key.id.as_str()),
            "whole ids stay off stderr"
        );
    }
    assert!(
        warnings.contains("\"README\" is not a session file"),
        "{warnings}"
    );
    assert!(
        warnings
            .contains("skipped 6 files: 2 not sessions, 3 unreadable, 1 of another pso version"),
        "{warnings}"
    );

    let stats = json(&succeeded(&m.sessions.run(&["stats", "--json"])));
    assert_eq!(stats["format"], 1);
    assert_eq!(stats["sessions"], 3);
    assert_eq!(stats["expired"], 1);
    assert_eq!(stats["unreadable"], 3);
    assert_eq!(stats["not_sessions"], 2);
    assert_eq!(stats["other_versions"], 1);
    assert_eq!(stats["services"]["shop"]["sessions"], 2);
    assert_eq!(stats["services"]["blog"]["sessions"], 1);

    // One service only: the others' files, and files that are not sessions, are not read.
    let output = m.sessions.run(&["list", "--json", "--service", "blog"]);
    let rows = json_lines(&succeeded(&output));
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["service"], "blog");
    assert_eq!(stderr(&output), "");

    // show on a damaged one: one line, exit 1.
    let output = m.sessions.run(&["show", m.corrupt.id.as_str()]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stderr(&output).lines().count(), 1, "{}", stderr(&output));
}

#[test]
fn the_directory_comes_from_the_environment_as_programs_read_it() {
    let sessions = Sessions::new();
    sessions.save("shop", live(now()), &[("n", 1)]);
    let stats = |name: &str, value: &Path| {
        Command::new(PSO.as_str())
            .args(["sessions", "stats", "--json"])
            .env_remove("PSOSessionFileLoader_Path")
            .env(name, value)
            .output()
            .unwrap()
    };
    // A server may pass the name on upper-cased and with `_` for `-`: programs read it so.
    for name in ["PSOSessionFileLoader_Path", "PSOSESSIONFILELOADER_PATH"] {
        let output = stats(name, sessions.dir());
        assert_eq!(json(&succeeded(&output))["sessions"], 1, "{name}");
    }
    // A relative path is one programs do not use: refused, not guessed.
    let output = stats("PSOSessionFileLoader_Path", Path::new("sessions"));
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("give --path"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn gc_removes_expired_and_damaged_sessions_only() {
    let m = mixed();
    let output = m.sessions.run(&["gc", "--json"]);
    let summary = json(&succeeded(&output));
    assert_eq!(summary["format"], 1);
    assert_eq!(summary["expired"], 1, "{summary}");
    assert_eq!(summary["unreadable"], 2, "{summary}");
    assert_eq!(summary["held"], 0);
    assert!(summary["bytes_freed"].as_u64().unwrap() > 0);
    assert_eq!(stderr(&output), "", "no progress bar off a terminal");
    let store = &m.sessions.store;
    assert!(store.exists(&m.good[0]).unwrap() && store.exists(&m.good[1]).unwrap());
    assert!(!store.exists(&m.good[2]).unwrap(), "the expired one went");
    assert!(!store.exists(&m.corrupt).unwrap() && !store.exists(&m.truncated).unwrap());
    assert!(
        store.exists(&m.newer).unwrap(),
        "another pso's record is not judged"
    );
    assert!(
        store.exists(&m.link).unwrap(),
        "a link is not ours to remove"
    );
    assert_eq!(fs::read(&m.target).unwrap(), b"precious");
    assert_eq!(
        fs::read(m.sessions.dir().join("README")).unwrap(),
        b"keep me"
    );
    assert!(m.sessions.dir().join("sess_0123abcd").exists());

    let text = succeeded(&m.sessions.run(&["gc"]));
    assert!(text.starts_with("removed 0 "), "{text}");
    assert_eq!(succeeded(&m.sessions.run(&["gc", "--quiet"])), "");
}

#[test]
fn gc_keeps_a_damaged_user_record_and_says_so_even_quietly() {
    let sessions = Sessions::new();
    let damaged_session = SessionKey::new("shop".parse().unwrap(), SessionId::generate().unwrap());
    fs::write(sessions.store.path_of(&damaged_session), b"junk").unwrap();
    let user_record = SessionKey::new(
        "shop".parse().unwrap(),
        SessionId::named("user-539195603a6bed0f").unwrap(),
    );
    fs::write(sessions.store.path_of(&user_record), b"junk").unwrap();
    let output = sessions.run(&["gc", "--json"]);
    let summary = json(&succeeded(&output));
    assert_eq!(summary["unreadable"], 1, "{summary}");
    assert_eq!(summary["kept_damaged"], 1, "{summary}");
    assert!(!sessions.store.exists(&damaged_session).unwrap());
    assert!(
        sessions.store.exists(&user_record).unwrap(),
        "kept for a person to look at"
    );
    let warned = |output: &Output| stderr(output).contains("kept 1 unreadable record(s)");
    assert!(warned(&output), "{}", stderr(&output));
    let quiet = sessions.run(&["gc", "--quiet"]);
    assert_eq!(succeeded(&quiet), "");
    assert!(warned(&quiet), "{}", stderr(&quiet));
    let text = succeeded(&sessions.run(&["gc"]));
    assert!(text.contains("kept 1 (1 damaged)"), "{text}");
}

#[test]
fn gc_skips_a_session_a_request_holds() {
    let sessions = Sessions::new();
    let now = now();
    let held = sessions.save("svc", expired(now), &[]);
    let free = sessions.save("svc", expired(now), &[]);
    let other = sessions.save("other", expired(now), &[]);
    let lock = sessions
        .store
        .lock(&held, LockOptions::new(Duration::from_secs(5)))
        .unwrap();
    let summary = json(&succeeded(&sessions.run(&[
        "gc",
        "--json",
        "--service",
        "svc",
    ])));
    assert_eq!(
        (summary["expired"].as_u64(), summary["held"].as_u64()),
        (Some(1), Some(1))
    );
    assert!(sessions.store.exists(&held).unwrap(), "held: kept");
    assert!(!sessions.store.exists(&free).unwrap());
    assert!(
        sessions.store.exists(&other).unwrap(),
        "another service: not looked at"
    );

    // rm waits for the lock, and gives up at its timeout.
    let output = sessions.run(&["rm", "--timeout", "0", held.id.as_str()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("held by a request"),
        "{}",
        stderr(&output)
    );
    assert!(sessions.store.exists(&held).unwrap());
    drop(lock);
    succeeded(&sessions.run(&["rm", held.id.as_str()]));
    assert!(!sessions.store.exists(&held).unwrap());
}

#[test]
fn a_record_over_the_default_cap_is_read_not_reported_as_corrupt() {
    let sessions = Sessions::new();
    let big = sessions.store.clone().with_max_bytes(8 << 20);
    let key = SessionKey::new("big".parse().unwrap(), SessionId::generate().unwrap());
    let mut record = Record::new(live(now()));
    record.set("blob", &vec![0xffu8; 3 << 20]).unwrap();
    record.set("name", "eggs").unwrap();
    big.lock(&key, LockOptions::new(Duration::from_secs(5)))
        .unwrap()
        .save(&record)
        .unwrap();
    let output = sessions.run(&["list", "--json"]);
    let rows = json_lines(&succeeded(&output));
    assert_eq!(rows.len(), 1);
    assert!(rows[0]["bytes"].as_u64().unwrap() > 3 << 20);
    assert_eq!(stderr(&output), "");
    let shown = json(&succeeded(&sessions.run(&[
        "show",
        "--json",
        key.id.as_str(),
    ])));
    assert_eq!(
        shown["keys"][1],
        serde_json::json!({ "name": "name", "bytes": 5, "text": "eggs" })
    );
    assert!(shown["keys"][0].get("text").is_none());
}

#[test]
fn list_sorts_and_limits() {
    let sessions = Sessions::new();
    let mut by_created = BTreeMap::new();
    for created in [50u64, 10, 40, 20, 30] {
        let mut meta = Meta::new(1_000_000 + created);
        meta.deadline = Some(4_000_000_000);
        let key = sessions.save("svc", meta, &[]);
        by_created.insert(created, key.id.to_string());
    }
    let created = |args: &[&str]| -> Vec<u64> {
        json_lines(&succeeded(&sessions.run(args)))
            .iter()
            .map(|r| r["created"].as_u64().unwrap() - 1_000_000)
            .collect()
    };
    assert_eq!(
        created(&["list", "--json", "--sort", "created"]),
        [10, 20, 30, 40, 50]
    );
    assert_eq!(
        created(&["list", "--json", "--sort", "created", "--reverse"]),
        [50, 40, 30, 20, 10]
    );
    assert_eq!(
        created(&["list", "--json", "--sort", "created", "--limit", "2"]),
        [10, 20]
    );
    assert_eq!(
        created(&[
            "list",
            "--json",
            "--sort",
            "created",
            "--reverse",
            "--limit",
            "2"
        ]),
        [50, 40]
    );
    assert_eq!(created(&["list", "--json", "--limit", "3"]).len(), 3);
    let ids: Vec<String> = json_lines(&succeeded(&sessions.run(&[
        "list",
        "--json",
        "--full-ids",
        "--sort",
        "id",
    ])))
    .iter()
    .map(|r| r["id"].as_str().unwrap().to_owned())
    .collect();
    let mut sorted: Vec<String> = by_created.values().cloned().collect();
    sorted.sort();
    assert_eq!(ids, sorted);
}

/// Adds `n` sessions (every other one expired): records encoded by the library, written as
/// files directly (as tests/gc.rs does) because saving 100,000 through locks takes too long;
/// one in a hundred goes through the lock, so both file layouts are there.
fn fill(sessions: &Sessions, n: usize) {
    let now = now();
    let records = [
        Record::new(live(now)).encode().unwrap(),
        Record::new(expired(now)).encode().unwrap(),
    ];
    for i in 0..n {
        if i % 100 == 0 {
            sessions.save("svc", live(now), &[("n", i as u64)]);
            continue;
        }
        let name = format!("svc.{}.pso", SessionId::generate().unwrap());
        fs::write(sessions.dir().join(name), &records[i % 2]).unwrap();
    }
}

/// The peak resident memory of `pso sessions ARGS` in KiB, from `/usr/bin/time`.
fn peak_kib(dir: &Path, args: &[&str]) -> u64 {
    let report = tempfile::NamedTempFile::new().unwrap();
    let output = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(report.path())
        .arg(PSO.as_str())
        .arg("sessions")
        .args(args)
        .arg("--path")
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(output.status.success(), "{args:?}: {}", stderr(&output));
    fs::read_to_string(report.path())
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn memory_stays_bounded_from_10_000_to_100_000_sessions() {
    if !Path::new("/usr/bin/time").exists() {
        common::skip_or_fail("/usr/bin/time is not installed (Debian package time)");
        return;
    }
    let sessions = Sessions::in_memory();
    let commands: [&[&str]; 4] = [
        &["list"],
        &["list", "--json", "--sort", "expires", "--limit", "10"],
        &["stats"],
        &["list", "--sort", "created"],
    ];
    let measure = |sessions: &Sessions| -> Vec<u64> {
        commands
            .iter()
            .map(|args| peak_kib(sessions.dir(), args))
            .collect()
    };
    fill(&sessions, 10_000);
    let small = measure(&sessions);
    fill(&sessions, 90_000);
    let started = std::time::Instant::now();
    let big = measure(&sessions);
    eprintln!(
        "peak KiB at 10,000 sessions: {small:?}; at 100,000: {big:?} ({:?})",
        started.elapsed()
    );
    // Streaming commands: the same memory for ten times the sessions (4 MiB of slack for the
    // allocator and the directory buffer), and small.
    for i in 0..3 {
        assert!(
            big[i] <= small[i] + 4096,
            "{:?}: {} KiB then {} KiB",
            commands[i],
            small[i],
            big[i]
        );
        assert!(big[i] < 32 * 1024, "{:?}: {} KiB", commands[i], big[i]);
    }
    // The one that keeps every row does grow: the measure can tell.
    assert!(
        big[3] > small[3] + 5 * 1024,
        "sorting everything: {} then {} KiB",
        small[3],
        big[3]
    );

    let summary = json(&succeeded(&sessions.run(&["gc", "--json"])));
    assert_eq!(summary["expired"], 50_000, "{summary}");
    assert_eq!(summary["kept"], 50_000, "{summary}");
    let stats = json(&succeeded(&sessions.run(&["stats", "--json"])));
    assert_eq!(
        (stats["sessions"].as_u64(), stats["expired"].as_u64()),
        (Some(50_000), Some(0))
    );
}

#[test]
fn gc_while_8_processes_update_sessions_loses_no_update_and_removes_no_live_session() {
    const WORKERS: usize = 8;
    const REQUESTS: usize = 40;
    let sessions = Arc::new(Sessions::new());
    let now = now();
    // Few sessions, so requests often hold the one gc looks at.
    let live: Vec<SessionKey> = (0..4)
        .map(|_| sessions.save("reload", live(now), &[("reloads", 0)]))
        .collect();
    let dead: Vec<SessionKey> = (0..300)
        .map(|i| {
            sessions.save(
                if i % 2 == 0 { "reload" } else { "other" },
                expired(now),
                &[],
            )
        })
        .collect();
    let live = Arc::new(live);
    let done = Arc::new(AtomicBool::new(false));

    let collector = {
        let (sessions, done) = (sessions.clone(), done.clone());
        std::thread::spawn(move || {
            let (mut passes, mut held) = (0u64, 0u64);
            while !done.load(Ordering::SeqCst) || passes == 0 {
                let summary = json(&succeeded(&sessions.run(&["gc", "--json"])));
                held += summary["held"].as_u64().unwrap();
                passes += 1;
            }
            (passes, held)
        })
    };
    let workers: Vec<_> = (0..WORKERS)
        .map(|worker| {
            let (sessions, live) = (sessions.clone(), live.clone());
            std::thread::spawn(move || {
                let mut seen: Vec<(usize, u64)> = Vec::new();
                for request in 0..REQUESTS {
                    let which = (worker + request) % live.len();
                    let id = live[which].id.as_str();
                    let (count, cookie) = reload(sessions.dir(), Some(id));
                    assert!(
                        cookie.is_none_or(|c| c == id),
                        "a live session was lost: a new one was issued"
                    );
                    seen.push((which, count));
                }
                seen
            })
        })
        .collect();
    let mut counts: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    for worker in workers {
        for (which, count) in worker.join().unwrap() {
            counts.entry(which).or_default().push(count);
        }
    }
    done.store(true, Ordering::SeqCst);
    let (passes, held) = collector.join().unwrap();
    eprintln!("{passes} gc passes while the workers ran; {held} sessions found held");

    // Every request's count handed out exactly once: no update lost, none repeated.
    for (which, mut seen) in counts {
        seen.sort_unstable();
        let expected: Vec<u64> = (1..=seen.len() as u64).collect();
        assert_eq!(seen, expected, "session {which}");
        let record = sessions.store.peek(&live[which]).unwrap().unwrap();
        assert_eq!(
            record.get::<u64>("reloads").unwrap(),
            Some(seen.len() as u64)
        );
    }
    succeeded(&sessions.run(&["gc"]));
    for key in dead.iter() {
        assert!(
            !sessions.store.exists(key).unwrap(),
            "expired sessions are gone"
        );
    }
}
