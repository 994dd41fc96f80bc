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
    /// Over TLS: the CA that signed its certificate.
    pub ca: Option<PathBuf>,
}

impl RedisServer {
    /// A running server, or `None` after a loud skip (a failure in CI) when redis-server is
    /// not installed.
    pub fn start() -> Option<RedisServer> {
        RedisServer::start_with(&[])
    }

    /// [`RedisServer::start`] with more of redis-server's options.
    pub fn start_with(options: &[&str]) -> Option<RedisServer> {
        RedisServer::start_on(free_port(), options)
    }

    /// [`RedisServer::start_with`] on `port`.
    pub fn start_on(port: u16, options: &[&str]) -> Option<RedisServer> {
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
            port,
            program,
            options: options.iter().map(|o| o.to_string()).collect(),
            dir,
            ca: None,
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

    /// A server that speaks TLS only, with a certificate for 127.0.0.1 signed by a CA of its
    /// own ([`RedisServer::ca`]).
    pub fn start_tls() -> Option<RedisServer> {
        let Some(program) = find_program(&["redis-server"]) else {
            super::skip_or_fail("redis-server is not installed");
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("pso-redis-tls-")
            .tempdir()
            .unwrap();
        let path = |name: &str| dir.path().join(name).display().to_string();
        let openssl = |args: &[&str]| {
            let status = Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("openssl");
            assert!(status.success(), "openssl {args:?}");
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=pso test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ]);
        std::fs::write(dir.path().join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.pem",
        ]);
        if running_as_root() {
            for entry in std::fs::read_dir(dir.path()).unwrap() {
                let entry = entry.unwrap().path();
                std::os::unix::fs::chown(&entry, Some(server_uid()), Some(server_uid())).unwrap();
            }
            std::os::unix::fs::chown(dir.path(), Some(server_uid()), Some(server_uid())).unwrap();
        }
        let port = free_port();
        let options = vec![
            "--port".to_owned(),
            "0".to_owned(),
            "--tls-port".to_owned(),
            port.to_string(),
            "--tls-cert-file".to_owned(),
            path("server.pem"),
            "--tls-key-file".to_owned(),
            path("server.key"),
            "--tls-ca-cert-file".to_owned(),
            path("ca.pem"),
            "--tls-auth-clients".to_owned(),
            "no".to_owned(),
        ];
        let ca = dir.path().join("ca.pem");
        let mut server = RedisServer {
            child: None,
            port,
            program,
            options,
            dir,
            ca: Some(ca),
        };
        server.restart();
        Some(server)
    }

    /// Whether it answers PING.
    pub fn answers(&self) -> bool {
        if self.ca.is_some() {
            return self.cli(&["PING"]) == "PONG";
        }
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
        let mut command = Command::new("redis-cli");
        if let Some(ca) = &self.ca {
            command.arg("--tls").arg("--cacert").arg(ca);
        }
        let output = command
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

/// A Redis Cluster of three primaries (no replicas), each a [`RedisServer`] with
/// `--cluster-enabled yes`, joined by `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> Option<RedisCluster> {
        RedisCluster::start_with_replicas(0)
    }

    /// Three primaries with `replicas` replicas each.
    pub fn start_with_replicas(replicas: usize) -> Option<RedisCluster> {
        let mut nodes = Vec::new();
        for port in cluster_ports(3 * (1 + replicas)) {
            nodes.push(RedisServer::start_on(
                port,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    "2000",
                    "--cluster-config-file",
                    "nodes.conf",
                    // A replica syncs at once, and may take over however long it was cut off.
                    "--repl-diskless-sync-delay",
                    "0",
                    "--cluster-replica-validity-factor",
                    "0",
                ],
            )?);
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let mut creating = create
            .arg("--cluster-replicas")
            .arg(replicas.to_string())
            .arg("--cluster-yes")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        let status = loop {
            if let Some(status) = creating.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > Duration::from_secs(30) {
                let _ = creating.kill();
                panic!("redis-cli --cluster create did not finish");
            }
            sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "redis-cli --cluster create failed");
        let started = Instant::now();
        while !nodes
            .iter()
            .all(|node| node.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the cluster did not form"
            );
            sleep(Duration::from_millis(50));
        }
        let cluster = RedisCluster { nodes };
        for node in 0..cluster.nodes.len() {
            if cluster.nodes[node].cli(&["ROLE"]).starts_with("master") {
                cluster.wait_replicated(node);
            }
        }
        Some(cluster)
    }

    /// Waits until every replica of primary `node` has all it wrote.
    pub fn wait_replicated(&self, node: usize) {
        let started = Instant::now();
        loop {
            let info = self.nodes[node].cli(&["INFO", "replication"]);
            let field = |name: &str| -> Option<u64> {
                info.lines()
                    .find_map(|line| line.strip_prefix(name))
                    .and_then(|v| v.trim().parse().ok())
            };
            let wanted = field("master_repl_offset:").unwrap_or(0);
            let replicas = field("connected_slaves:").unwrap_or(0);
            let behind = info
                .lines()
                .filter(|line| line.starts_with("slave") && line.contains("offset="))
                .filter(|line| {
                    let state_online = line.contains("state=online");
                    let offset: u64 = line
                        .split(',')
                        .find_map(|f| f.strip_prefix("offset="))
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    !state_online || offset < wanted
                })
                .count();
            let expected = self.replicas_of(node);
            if replicas as usize >= expected && behind == 0 {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "replicas never caught up: {info}"
            );
            sleep(Duration::from_millis(20));
        }
    }

    /// How many replicas the cluster says `node` has.
    fn replicas_of(&self, node: usize) -> usize {
        let nodes = self.nodes[node].cli(&["CLUSTER", "NODES"]);
        let id = nodes
            .lines()
            .find(|line| line.contains("myself"))
            .and_then(|line| line.split(' ').next())
            .unwrap_or("")
            .to_owned();
        nodes
            .lines()
            .filter(|line| line.split(' ').nth(3) == Some(id.as_str()))
            .count()
    }

    /// `redis+cluster://127.0.0.1:<port>,…`
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    /// The node that serves `key` now, as the cluster says (asked of any live node).
    pub fn primary_of(&self, key: &str) -> usize {
        let live = self
            .nodes
            .iter()
            .find(|node| node.answers())
            .expect("a live node");
        let slot: u16 = live.cli(&["CLUSTER", "KEYSLOT", key]).parse().unwrap();
        let nodes = live.cli(&["CLUSTER", "NODES"]);
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            if !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let port: u16 = fields[1].split(['@', ':']).nth(1).unwrap().parse().unwrap();
            for range in &fields[8..] {
                let (low, high) = range.split_once('-').unwrap_or((range, range));
                if let (Ok(low), Ok(high)) = (low.parse::<u16>(), high.parse::<u16>())
                    && (low..=high).contains(&slot)
                {
                    return self.nodes.iter().position(|n| n.port == port).unwrap();
                }
            }
        }
        panic!("no primary serves slot {slot}: {nodes}");
    }

    /// How many keys the whole cluster holds.
    pub fn dbsize(&self) -> u64 {
        self.nodes
            .iter()
            .filter(|node| node.cli(&["ROLE"]).starts_with("master"))
            .map(|node| node.cli(&["DBSIZE"]).parse::<u64>().unwrap())
            .sum()
    }
}

/// Ports below 55536 that are free, each with its cluster bus port (+ 10000): the
/// kernel's free ports are too high for that.
/// Tests of one binary run at once: each takes the next ports, never another's.
fn cluster_ports(count: usize) -> Vec<u16> {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let free = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
    let base = 20_000 + (std::process::id() % 1_000) as u16 * 20;
    let mut ports = Vec::new();
    while ports.len() < count {
        let port = base + NEXT.fetch_add(1, Ordering::Relaxed) % 20_000;
        if free(port) && free(port + 10_000) {
            ports.push(port);
        }
    }
    ports
}
