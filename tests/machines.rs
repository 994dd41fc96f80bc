//! Two "machines" sharing sessions in Redis: two FastCGI processes of the reload counter
//! behind one nginx upstream, 2,000 requests from 16 clients over 20 sessions, every count
//! exact (each value handed out once), with one Redis, a Redis Cluster and PostgreSQL; and a
//! site moving from files to Redis under that load.

#![cfg(any(feature = "redis", feature = "postgres"))]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use common::counter_client::Client;
use common::servers::*;

static RELOAD: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| common::example("reload"));
const CLIENTS: usize = 16;
const SESSIONS: usize = 20;
const REQUESTS: usize = 2_000;

/// Two FastCGI processes with the store `env` names, behind nginx's round robin: the port to
/// send to, and what must live as long as the test.
fn two_machines(site: &Site, env: &[(&str, &str)]) -> (u16, Vec<Daemon>) {
    let mut daemons = Vec::new();
    let mut servers = String::new();
    for machine in ["a", "b"] {
        let port = free_port();
        let mut app = as_server_user(&site.path("cgi-bin/reload"));
        app.env_clear()
            .env("PSO_FCGI_BIND", format!("127.0.0.1:{port}"))
            .envs(env.iter().copied());
        daemons.push(Daemon::start(
            &format!("pso-{machine}"),
            app,
            site,
            Ready::Port(port),
        ));
        servers.push_str(&format!("server 127.0.0.1:{port};\n"));
    }
    let port = free_port();
    // nginx_conf puts `location` inside `server`: the upstream goes in through `include`.
    site.write(
        "upstream.conf",
        &format!("upstream machines {{ {servers} }}"),
    );
    let location = r#"location = /cgi-bin/reload {
            include /etc/nginx/fastcgi_params;
            fastcgi_pass machines;
        }"#;
    let conf = nginx_conf(site, port, location).display().to_string();
    let text = std::fs::read_to_string(&conf).unwrap().replace(
        "http {",
        &format!(
            "http {{\n    include {};",
            site.path("upstream.conf").display()
        ),
    );
    std::fs::write(&conf, text).unwrap();
    let nginx = find_program(&["nginx"]).expect("nginx");
    let mut command = as_server_user(&nginx);
    command
        .arg("-p")
        .arg(site.root())
        .arg("-c")
        .arg(&conf)
        .arg("-e")
        .arg(site.path("nginx-error.log"));
    daemons.push(Daemon::start("nginx", command, site, Ready::Port(port)));
    (port, daemons)
}

/// 2,000 requests from 16 clients over 20 sessions through both machines: each session's
/// counts must be exactly 2..=101, each handed out once.
fn every_count_exact(store: &str, while_up: impl FnOnce()) {
    if require(&["nginx"]).is_none() {
        return;
    }
    let site = Site::new(&[Path::new(RELOAD.as_str())]);
    let (port, _daemons) = two_machines(&site, &[("PSOSessionStore", store)]);
    let cookies = new_sessions(port);
    counts_go_on(port, &cookies, 1, || ());
    let logs = site.logs();
    assert!(!logs.contains("panicked"), "{logs}");
    while_up();
}

/// 20 new sessions, each counted once.
fn new_sessions(port: u16) -> Vec<String> {
    let mut first = Client::new(port);
    (0..SESSIONS)
        .map(|_| {
            let (count, cookie) = first.get(None);
            assert_eq!(count, 1);
            cookie.expect("a new session's cookie")
        })
        .collect()
}

/// 2,000 requests from 16 clients over the sessions of `cookies`, which have counted `done`
/// each, while `meanwhile` runs: each session's counts must then be exactly the next 100,
/// each handed out once.
fn counts_go_on(port: u16, cookies: &[String], done: u64, meanwhile: impl FnOnce()) {
    let cookies = Arc::new(cookies.to_vec());
    let seen: Arc<Mutex<BTreeMap<usize, Vec<u64>>>> = Arc::default();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (cookies, seen) = (cookies.clone(), seen.clone());
            std::thread::spawn(move || {
                // A connection per request: nginx then spreads them over both machines.
                let mut mine = Vec::new();
                for i in (client..REQUESTS).step_by(CLIENTS) {
                    let session = i % SESSIONS;
                    let (count, _) = Client::new(port).get(Some(&cookies[session]));
                    mine.push((session, count));
                }
                let mut seen = seen.lock().unwrap();
                for (session, count) in mine {
                    seen.entry(session).or_default().push(count);
                }
            })
        })
        .collect();
    meanwhile();
    for client in clients {
        client.join().unwrap();
    }
    let seen = seen.lock().unwrap();
    for session in 0..SESSIONS {
        let mut counts = seen[&session].clone();
        counts.sort_unstable();
        let expected: Vec<u64> = (done + 1..done + 1 + (REQUESTS / SESSIONS) as u64).collect();
        assert_eq!(counts, expected, "session {session}");
    }
}

#[cfg(feature = "redis")]
#[test]
fn two_machines_share_sessions_in_redis_and_lose_no_update() {
    let Some(redis) = common::redis::RedisServer::start() else {
        return;
    };
    every_count_exact(&redis.url(), || {
        // Both machines served: each keeps its connections (redis-cli is one more client).
        let clients = redis.cli(&["CLIENT", "LIST"]).lines().count();
        assert!(clients >= 3, "{clients} clients");
    });
}

#[cfg(feature = "redis-cluster")]
#[test]
fn two_machines_share_sessions_in_a_redis_cluster_and_lose_no_update() {
    let Some(cluster) = common::redis::RedisCluster::start() else {
        return;
    };
    every_count_exact(&cluster.url(), || ());
}

#[cfg(feature = "postgres")]
#[test]
fn two_machines_share_sessions_in_postgresql_and_lose_no_update() {
    let Some(database) = common::postgres::PostgresServer::start() else {
        return;
    };
    every_count_exact(&database.url(), || ());
}

/// A site moves from files to Redis while it serves: the machines switch to Redis with
/// `PSOSessionStoreMovingFrom=files`, and `pso sessions migrate` runs during 2,000 requests.
/// Every count goes on exactly from where the files left it, and the files end empty.
#[cfg(feature = "redis")]
#[test]
fn a_site_moves_from_files_to_redis_under_load_and_every_count_is_exact() {
    if require(&["nginx"]).is_none() {
        return;
    }
    let Some(redis) = common::redis::RedisServer::start() else {
        return;
    };
    let site = Site::new(&[Path::new(RELOAD.as_str())]);
    let sessions = site.sessions();
    let dir = sessions.to_str().unwrap();
    // Sessions the load visits, and sessions nobody visits during the move: only the
    // command can move those.
    let (cookies, idle) = {
        let (port, _on_files) = two_machines(&site, &[("PSOSessionFileLoader_Path", dir)]);
        let cookies = new_sessions(port);
        counts_go_on(port, &cookies, 1, || ());
        (cookies, new_sessions(port))
    };
    let pso_sessions = |args: &[&str]| {
        let output = as_server_user(Path::new(&common::helper()))
            .arg("sessions")
            .args(args)
            .env_clear()
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stdout}{stderr}");
        stdout
    };
    let url = redis.url();
    let migrate = [
        "migrate",
        "--from",
        "files",
        "--from-path",
        dir,
        "--to",
        &url,
    ];
    let (port, _moving) = two_machines(
        &site,
        &[
            ("PSOSessionStore", &url),
            ("PSOSessionStoreMovingFrom", "files"),
            ("PSOSessionFileLoader_Path", dir),
        ],
    );
    let moved = Arc::new(Mutex::new(Vec::new()));
    counts_go_on(port, &cookies, 1 + 100, || {
        // Runs while the requests do, over and over: sessions move under it both ways, by a
        // request and by the command.
        for _ in 0..5 {
            moved.lock().unwrap().push(pso_sessions(&migrate));
        }
    });
    let moved = moved.lock().unwrap().join("");
    let files = pso_sessions(&["stats", "--path", dir]);
    assert!(files.contains("sessions     0 "), "{files}\n{moved}");
    let stored = pso_sessions(&["stats", "--store", &url]);
    assert!(
        stored.contains(&format!("sessions     {} ", 2 * SESSIONS)),
        "{stored}\n{moved}"
    );
    // The move is over: the variable goes, and the counts go on in Redis alone.
    drop(_moving);
    let (port, _on_redis) = two_machines(&site, &[("PSOSessionStore", &url)]);
    counts_go_on(port, &cookies, 1 + 200, || ());
    let mut client = Client::new(port);
    for cookie in &idle {
        assert_eq!(client.get(Some(cookie)).0, 2, "{moved}");
    }
    let logs = site.logs();
    assert!(!logs.contains("panicked"), "{logs}");
}
