//! A private PostgreSQL for tests: a fresh cluster (`initdb`) in a temporary directory, its
//! postmaster run directly as a child of the test (as nobody when the tests run as root:
//! `initdb` refuses root), listening on a free loopback port and on a socket in a directory of
//! its own, stopped when dropped.
//!
//! Each test starts its own (`initdb` takes about a second here), so that no server outlives
//! its test: a server shared through a `static` would never be dropped, and would stay up
//! after the tests. Trust authentication for the superuser `pso` (over the socket and TCP);
//! the role `app` (password `s3cret-pw`, owner of the database `app`) signs in with SCRAM.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::servers::{find_program, free_port, running_as_root, server_uid};

/// The password of the role `app`.
pub const APP_PASSWORD: &str = "s3cret-pw";

pub struct PostgresServer {
    child: Option<Child>,
    pub port: u16,
    bin: PathBuf,
    dir: tempfile::TempDir,
}

/// The directory of PostgreSQL's server programs: where `initdb` is found in `PATH` (a link
/// followed), or Debian's `/usr/lib/postgresql/<version>/bin`, the newest.
fn server_programs() -> Option<PathBuf> {
    if let Some(initdb) = find_program(&["initdb"]) {
        let real = std::fs::canonicalize(&initdb).ok()?;
        return real.parent().map(Path::to_owned);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

impl PostgresServer {
    /// A running server, or `None` after a loud skip (a failure in CI) when PostgreSQL's
    /// server programs are not installed.
    pub fn start() -> Option<PostgresServer> {
        let Some(bin) = server_programs() else {
            super::skip_or_fail("PostgreSQL is not installed (apt install postgresql)");
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("pso-postgres-")
            .tempdir()
            .unwrap();
        std::fs::create_dir(dir.path().join("socket")).unwrap();
        if running_as_root() {
            for path in [dir.path().to_owned(), dir.path().join("socket")] {
                std::os::unix::fs::chown(path, Some(server_uid()), Some(server_uid())).unwrap();
            }
        }
        let data = dir.path().join("data");
        let output = as_server_user(&bin.join("initdb"))
            .current_dir(dir.path())
            .arg("-D")
            .arg(&data)
            .args(["-U", "pso", "--auth=trust", "--no-sync", "-E", "UTF8"])
            .args(["--locale=C", "--no-instructions"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        // The superuser on trust; everyone else over TCP with a SCRAM password.
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\n\
             host all pso 127.0.0.1/32 trust\n\
             host all all 127.0.0.1/32 scram-sha-256\n",
        )
        .unwrap();
        let mut server = PostgresServer {
            child: None,
            port: free_port(),
            bin,
            dir,
        };
        server.restart();
        let mut admin = server.admin();
        // Two statements: CREATE DATABASE cannot be part of a transaction.
        admin
            .batch_execute(&format!("CREATE ROLE app LOGIN PASSWORD '{APP_PASSWORD}'"))
            .unwrap();
        admin
            .batch_execute("CREATE DATABASE app OWNER app")
            .unwrap();
        Some(server)
    }

    /// `postgres://pso@127.0.0.1:<port>/postgres`: the superuser over TCP.
    pub fn url(&self) -> String {
        format!("postgres://pso@127.0.0.1:{}/postgres", self.port)
    }

    /// The server's socket directory.
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("socket")
    }

    /// The superuser over the unix socket (`host=` a directory).
    pub fn socket_url(&self) -> String {
        format!(
            "postgres://pso@/postgres?host={}&port={}",
            self.socket_dir().display(),
            self.port
        )
    }

    /// Starts the server (again, after [`PostgresServer::stop`]) on the same port, and waits
    /// until it takes connections.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("postgres.log"))
            .unwrap();
        if running_as_root() {
            let path = self.dir.path().join("postgres.log");
            std::os::unix::fs::chown(path, Some(server_uid()), Some(server_uid())).unwrap();
        }
        let mut command = as_server_user(&self.bin.join("postgres"));
        command
            .current_dir(self.dir.path())
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(self.socket_dir())
            .args(["-c", "listen_addresses=127.0.0.1"])
            // A test's server: no fsync (a stop by SIGQUIT still loses nothing committed:
            // the WAL is in the kernel's cache), small memory.
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .args(["-c", "shared_buffers=16MB", "-c", "max_connections=120"])
            .args(["-c", "log_min_messages=warning"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0);
        self.child = Some(command.spawn().unwrap());
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("postgres exited with {status}: {}", self.log());
            }
            if self.try_admin().is_some() {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "postgres did not start: {}",
                self.log()
            );
            sleep(Duration::from_millis(20));
        }
    }

    /// Stops every process of the server (`SIGSTOP`), as a hung disk, a debugger or a paused
    /// machine would: its connections stay open and its kernel still takes what clients
    /// send, but nothing answers, and its timeouts do not run.
    pub fn freeze(&self) {
        self.signal_all(rustix::process::Signal::STOP);
    }

    /// Lets a frozen server go on (`SIGCONT`).
    pub fn thaw(&self) {
        self.signal_all(rustix::process::Signal::CONT);
    }

    /// Signals the postmaster, then its children (each backend makes a process group of
    /// its own: they are found by their parent in /proc).
    fn signal_all(&self, signal: rustix::process::Signal) {
        let Some(child) = self.child.as_ref() else {
            return;
        };
        let postmaster = child.id();
        super::signal(postmaster, signal);
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            // pid (comm) state ppid …: the comm may hold spaces and parentheses.
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let parent = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|ppid| ppid.parse::<u32>().ok());
            if parent == Some(postmaster) {
                super::signal(pid, signal);
            }
        }
    }

    /// Stops the server at once, as a crash would (`SIGQUIT`, PostgreSQL's immediate
    /// shutdown: no checkpoint, the next start replays the WAL), and waits until it is gone;
    /// `SIGKILL` to the whole process group if it lingers.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            let pid = child.id();
            // A server a failed test left frozen.
            self.child = Some(child);
            self.thaw();
            let mut child = self.child.take().unwrap();
            super::signal(pid, rustix::process::Signal::QUIT);
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                sleep(Duration::from_millis(10));
            }
            if let Some(group) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
            }
            let _ = child.wait();
        }
    }

    /// A superuser connection, for looking at what the store wrote.
    pub fn admin(&self) -> AdminClient {
        self.try_admin()
            .unwrap_or_else(|| panic!("cannot connect to postgres: {}", self.log()))
    }

    fn try_admin(&self) -> Option<AdminClient> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .unwrap();
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(self.port)
            .user("pso")
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(1));
        let connecting = config.connect(tokio_postgres::NoTls);
        let (client, connection) = runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(5), connecting).await })
            .ok()?
            .ok()?;
        // Driven whenever the test waits for an answer.
        runtime.spawn(connection);
        Some(AdminClient { client, runtime })
    }

    /// The first column of the first row of `query`, as text (run by the superuser).
    pub fn sql(&self, query: &str) -> String {
        let rows = self.admin().simple_query(query).unwrap();
        rows.iter()
            .find_map(|message| match message {
                tokio_postgres::SimpleQueryMessage::Row(row) => {
                    Some(row.get(0).unwrap_or("").to_owned())
                }
                _ => None,
            })
            .unwrap_or_default()
    }

    /// What the server logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }
}

/// A blocking superuser connection (what the `postgres` crate gives, in a few lines over
/// tokio-postgres, which the store links anyway).
pub struct AdminClient {
    client: tokio_postgres::Client,
    runtime: tokio::runtime::Runtime,
}

impl AdminClient {
    pub fn batch_execute(&mut self, sql: &str) -> Result<(), tokio_postgres::Error> {
        self.runtime.block_on(self.client.batch_execute(sql))
    }

    pub fn execute(
        &mut self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error> {
        self.runtime.block_on(self.client.execute(sql, params))
    }

    pub fn simple_query(
        &mut self,
        sql: &str,
    ) -> Result<Vec<tokio_postgres::SimpleQueryMessage>, tokio_postgres::Error> {
        self.runtime.block_on(self.client.simple_query(sql))
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `program` run as the server user: nobody under root (`initdb` and `postgres` refuse root).
fn as_server_user(program: &Path) -> Command {
    let mut command = Command::new(program);
    if running_as_root() {
        command.uid(server_uid()).gid(server_uid());
    }
    command
}
