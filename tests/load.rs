//! The FastCGI counter under load through nginx: 20,000 requests from 32 clients over 100
//! sessions. Every session's count comes out exact (each value handed out once), and the pso
//! process's resident memory stays flat after warm-up.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Barrier, Mutex};
use std::time::Instant;

use common::counter_client::Client;
use common::servers::*;

static RELOAD: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| common::example("reload"));
const CLIENTS: usize = 32;
const SESSIONS: usize = 100;
const REQUESTS: usize = 20_000;

fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn twenty_thousand_requests_over_a_hundred_sessions_through_nginx() {
    if require(&["nginx"]).is_none() {
        return;
    }
    let site = Site::new(&[Path::new(RELOAD.as_str())]);
    let app_port = free_port();
    let mut app = as_server_user(&site.path("cgi-bin/reload"));
    app.env_clear()
        .env("PSO_FCGI_BIND", format!("127.0.0.1:{app_port}"))
        .env("PSOSessionFileLoader_Path", site.sessions());
    let pso = Daemon::start("pso", app, &site, Ready::Port(app_port));
    let port = free_port();
    let location = format!(
        r#"location = /cgi-bin/reload {{
            include /etc/nginx/fastcgi_params;
            fastcgi_pass 127.0.0.1:{app_port};
        }}"#
    );
    let _nginx = start_nginx(&site, port, &location);

    // A hundred visitors, each with a session at 1.
    let mut first = Client::new(port);
    let cookies: Vec<String> = (0..SESSIONS)
        .map(|_| {
            let (count, cookie) = first.get(None);
            assert_eq!(count, 1);
            cookie.expect("a new session's cookie")
        })
        .collect();
    let cookies = Arc::new(cookies);
    let seen: Arc<Mutex<BTreeMap<usize, Vec<u64>>>> = Arc::default();
    let warm = Arc::new(Barrier::new(CLIENTS + 1));
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (cookies, seen, warm) = (cookies.clone(), seen.clone(), warm.clone());
            std::thread::spawn(move || {
                let mut http = Client::new(port);
                let mut mine: Vec<(usize, u64)> = Vec::new();
                for (n, i) in (client..REQUESTS).step_by(CLIENTS).enumerate() {
                    if n == REQUESTS / CLIENTS / 10 {
                        warm.wait();
                    }
                    let session = i % SESSIONS;
                    let (count, _) = http.get(Some(&cookies[session]));
                    mine.push((session, count));
                }
                let mut seen = seen.lock().unwrap();
                for (session, count) in mine {
                    seen.entry(session).or_default().push(count);
                }
            })
        })
        .collect();
    warm.wait();
    let warmed_up = resident_kib(pso.pid());
    for client in clients {
        client.join().unwrap();
    }
    let took = started.elapsed();
    let after = resident_kib(pso.pid());
    eprintln!(
        "{REQUESTS} requests from {CLIENTS} clients in {took:?} ({:.0}/s); pso resident: {warmed_up} KiB after warm-up, {after} KiB at the end",
        REQUESTS as f64 / took.as_secs_f64()
    );

    // Each session was raised by exactly its requests, and each count handed out once.
    let seen = seen.lock().unwrap();
    for session in 0..SESSIONS {
        let mut counts = seen[&session].clone();
        counts.sort_unstable();
        let expected: Vec<u64> = (2..2 + (REQUESTS / SESSIONS) as u64).collect();
        assert_eq!(counts, expected, "session {session}");
    }
    assert!(
        after <= warmed_up + warmed_up / 4 + 1024,
        "resident memory grew from {warmed_up} KiB to {after} KiB"
    );
    assert!(!site.logs().contains("panicked"), "{}", site.logs());
}
