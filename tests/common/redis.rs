//! A private `redis-server` for tests: no persistence, on a free loopback port, as an
//! unprivileged user when the tests run as root, stopped when dropped.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::servers::{find_program, free_port, running_as_root, server_uid};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    program: PathBuf,
    options: Vec<String>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// A running server, or `None` after a loud skip (a failure in CI) when redis-server is
    /// not installed.
    pub fn start() -> Option<RedisServer> {
        RedisServer::start_with(&[])
    }

    /// [`RedisServer::start`] with more of redis-server's options.
    pub fn start_with(options: &[&str]) -> Option<RedisServer> {
        let Some(program) = find_program(&["redis-server"]) else {
            super::skip_or_fail("redis-server is not installed");
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("pso-redis-")
            .tempdir()
            .unwrap();
        if running_as_root() {
            std::os::unix::fs::chown(dir.path(), Some(server_uid()), Some(server_uid())).unwrap();
        }
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            program,
            options: options.iter().map(|o| o.to_string()).collect(),
            dir,
        };
        server.restart();
        Some(server)
    }

    /// `redis://127.0.0.1:<port>/0`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts the server (again, after [`RedisServer::stop`]) on the same port, and waits
    /// until it answers.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = self.dir.path().join("redis.log");
        let mut command = Command::new(&self.program);
        command
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .args(&self.options)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if running_as_root() {
            command.uid(server_uid()).gid(server_uid());
        }
        self.child = Some(command.spawn().unwrap());
        let started = Instant::now();
        while !self.answers() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            sleep(Duration::from_millis(10));
        }
    }

    /// Stops the server (SIGKILL: nothing is saved anyway).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether it answers PING.
    pub fn answers(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        let mut reply = [0u8; 7];
        // A server with a password answers NOAUTH: up all the same.
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && (&reply == b"+PONG\r\n" || reply.starts_with(b"-NOAUTH"))
    }

    /// Runs one command with redis-cli and returns what it printed.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
