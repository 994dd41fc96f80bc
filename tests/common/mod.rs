//! A test harness: a CGI program run as a real process, with the environment a server sets.

#![allow(dead_code)] // each test file uses a part

pub mod counter_client;
pub mod fcgi;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod redis;
pub mod servers;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use pso::store::FileStore;

/// The server URL `text` names (a test's own, known to be one).
pub fn server_url(text: &str) -> pso::store::ServerUrl {
    match pso::store::StoreLocation::parse(text).unwrap() {
        pso::store::StoreLocation::Server(url) => url,
        other => panic!("not a server: {other:?}"),
    }
}

/// A fresh key of service `svc`.
pub fn a_key() -> pso::store::SessionKey {
    pso::store::SessionKey::new("svc".parse().unwrap(), pso::SessionId::generate().unwrap())
}

/// Where cargo put what the tests run: `target/<profile>/`, above the test's own executable
/// (`target/<profile>/deps/`).
fn built_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    exe.parent()
        .and_then(std::path::Path::parent)
        .expect("a test runs from target/<profile>/deps/")
        .to_path_buf()
}

/// A program of `cgi-bin/` or `examples/`, built as an example (`reload`, `login`, ...).
pub fn example(name: &str) -> String {
    let path = built_dir().join("examples").join(name);
    assert!(
        path.exists(),
        "{} is not built: `cargo test` at the repository's root builds the examples (or run `cargo build --examples`)",
        path.display()
    );
    path.display().to_string()
}

/// The `pso` helper, built with its package (cli/) when `cargo test` runs at the root.
pub fn helper() -> String {
    let path = built_dir().join("pso");
    assert!(
        path.exists(),
        "{} is not built: run `cargo test` at the repository's root, which builds the helper's package too",
        path.display()
    );
    path.display().to_string()
}

/// A private site: a directory for sessions, and the CGI environment the server would set.
pub struct Site {
    pub root: tempfile::TempDir,
    program: PathBuf,
    env: Vec<(OsString, OsString)>,
}

/// What one CGI run printed.
#[derive(Debug)]
pub struct Reply {
    pub head: String,
    pub body: String,
    pub stderr: String,
}

impl Reply {
    pub fn from_output(output: Output) -> Reply {
        assert!(
            output.status.success(),
            "the CGI program failed: {:?}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let text = String::from_utf8(output.stdout).expect("UTF-8 output");
        let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(!stderr.contains("panicked"), "{stderr}");
        Reply {
            head: head.to_owned(),
            body: body.to_owned(),
            stderr,
        }
    }

    pub fn status(&self) -> &str {
        self.head.lines().next().unwrap_or("")
    }

    pub fn count(&self) -> u64 {
        let rest = self
            .body
            .strip_prefix("Hello World! ~ You reloaded: ")
            .unwrap_or_else(|| panic!("not the counter page: {self:?}"));
        rest.split(' ').next().unwrap().parse().unwrap()
    }

    /// The whole `Set-Cookie` value.
    pub fn set_cookie(&self) -> Option<&str> {
        self.head
            .lines()
            .find_map(|l| l.strip_prefix("Set-Cookie: "))
    }

    /// `name=value` of the `Set-Cookie`, as a browser would send it back.
    pub fn cookie(&self) -> String {
        let set = self
            .set_cookie()
            .unwrap_or_else(|| panic!("no Set-Cookie: {self:?}"));
        set.split(';').next().unwrap().to_owned()
    }
}

impl Site {
    /// A site whose CGI program is `program`.
    pub fn new(program: impl Into<PathBuf>) -> Site {
        let root = tempfile::tempdir().unwrap();
        let sessions = root.path().join("sessions");
        let env = [
            ("GATEWAY_INTERFACE", "CGI/1.1"),
            ("REQUEST_METHOD", "GET"),
            ("SCRIPT_NAME", "/cgi-bin/reload"),
            ("SERVER_PROTOCOL", "HTTP/1.1"),
            ("REMOTE_ADDR", "192.0.2.7"),
        ]
        .iter()
        .map(|(k, v)| (OsString::from(k), OsString::from(v)))
        .chain([(
            OsString::from("PSOSessionFileLoader_Path"),
            sessions.into_os_string(),
        )])
        .collect();
        Site {
            root,
            program: program.into(),
            env,
        }
    }

    pub fn sessions(&self) -> PathBuf {
        self.root.path().join("sessions")
    }

    pub fn set(&mut self, name: &str, value: impl Into<OsString>) -> &mut Site {
        self.env.retain(|(k, _)| k != name);
        self.env.push((name.into(), value.into()));
        self
    }

    pub fn unset(&mut self, name: &str) -> &mut Site {
        self.env.retain(|(k, _)| k != name);
        self
    }

    pub fn command(&self, cookie: Option<&str>) -> Command {
        let mut command = Command::new(&self.program);
        command
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(cookie) = cookie {
            command.env("HTTP_COOKIE", cookie);
        }
        command.stdin(Stdio::null());
        command
    }

    pub fn get(&self, cookie: Option<&str>) -> Reply {
        Reply::from_output(self.command(cookie).output().unwrap())
    }

    /// The names of the session files.
    pub fn files(&self) -> BTreeSet<String> {
        match fs::read_dir(self.sessions()) {
            Ok(entries) => entries
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect(),
            Err(_) => BTreeSet::new(),
        }
    }

    pub fn store(&self) -> FileStore {
        FileStore::open(self.sessions()).unwrap()
    }
}

/// Sends `signal` to the process `pid` (a child of the test's); a process already gone is fine.
pub fn signal(pid: u32, signal: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

pub fn have(program: &str) -> bool {
    Command::new(program)
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Locally a missing tool skips the test loudly; in CI (`CI=true`) it fails it.
pub fn skip_or_fail(why: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{why}: CI must install it");
    }
    eprintln!("\n*** SKIPPED: {why} ***\n");
}

/// A command's standard output, as text.
pub fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// A command's standard error, as text.
pub fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}
