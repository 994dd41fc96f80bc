//! The cost of a CGI request: each program executed as a CGI process, as a web server would,
//! in alternating rounds (the machine is shared and noisy: every program sees the same noise),
//! and the median time of each. Run by `bench/run`; alone:
//!
//! ```sh
//! cargo bench --bench cgi -- --dir /tmp/sessions --baseline c-counter name=path ...
//! ```
//!
//! `--env NAME=VALUE` after a program sets a variable for it (e.g. `PSOSessionStore`).
//!
//! A program named `php…` is `php-cgi` running `bench/php/counter.php`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Program {
    name: String,
    path: PathBuf,
    /// The cookie of a returning visitor, learnt from a first visit.
    cookie: Option<String>,
    /// Variables of its own (`--env`).
    env: Vec<(String, String)>,
}

fn command(program: &Program, dir: &Path, cookie: Option<&str>) -> Command {
    let mut command = Command::new(&program.path);
    command
        .env_clear()
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("REQUEST_METHOD", "GET")
        .env("SCRIPT_NAME", format!("/cgi-bin/{}", program.name))
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("PSOSessionFileLoader_Path", dir.join(&program.name))
        .stdin(Stdio::null())
        .stderr(Stdio::null());
    if program.name.starts_with("php") {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/php/counter.php");
        command
            .env("SCRIPT_FILENAME", script)
            .env("REDIRECT_STATUS", "200");
    }
    if let Some(cookie) = cookie {
        command.env("HTTP_COOKIE", cookie);
    }
    command.envs(program.env.iter().map(|(name, value)| (name, value)));
    command
}

/// Runs once; how long it took, and what it printed when asked.
fn run(program: &Program, dir: &Path, cookie: Option<&str>, capture: bool) -> (Duration, String) {
    let mut command = command(program, dir, cookie);
    command.stdout(if capture {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let started = Instant::now();
    let mut child = command.spawn().expect("start the program");
    let mut output = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        std::io::Read::read_to_string(&mut stdout, &mut output).unwrap();
    }
    let status = child.wait().unwrap();
    let time = started.elapsed();
    assert!(status.success(), "{} failed: {status}", program.name);
    (time, output)
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort_unstable();
    times[times.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let mut dir = std::env::temp_dir().join("pso-bench-cgi");
    let (mut rounds, mut runs, mut baseline, mut label) = (5, 200, String::new(), String::new());
    let mut programs = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--dir" => dir = PathBuf::from(args.next().expect("--dir DIR")),
            "--rounds" => {
                rounds = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--rounds N")
            }
            "--runs" => runs = args.next().and_then(|n| n.parse().ok()).expect("--runs N"),
            "--baseline" => baseline = args.next().expect("--baseline NAME"),
            "--label" => label = args.next().expect("--label TEXT"),
            "--env" => {
                let pair = args.next().expect("--env NAME=VALUE");
                let (name, value) = pair.split_once('=').expect("--env NAME=VALUE");
                programs
                    .last_mut()
                    .map(|program: &mut Program| program.env.push((name.into(), value.into())))
                    .expect("--env after a program");
            }
            _ => {
                let (name, path) = arg.split_once('=').expect("NAME=PATH");
                programs.push(Program {
                    name: name.to_owned(),
                    path: PathBuf::from(path),
                    cookie: None,
                    env: Vec::new(),
                });
            }
        }
    }
    assert!(!programs.is_empty(), "no programs: NAME=PATH ...");
    std::fs::create_dir_all(&dir).unwrap();
    for program in &mut programs {
        let _ = std::fs::remove_dir_all(dir.join(&program.name));
        if program.name.starts_with("php") || program.name.starts_with("c-") {
            std::fs::create_dir_all(dir.join(&program.name)).unwrap();
        }
        let (_, output) = run(program, &dir, None, true);
        program.cookie = output
            .lines()
            .find_map(|l| l.strip_prefix("Set-Cookie: "))
            .map(|c| c.split(';').next().unwrap_or("").to_owned());
    }

    // Alternating rounds: first visits (a new session each time), then returning ones.
    let mut first: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
    let mut returning: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
    for _ in 0..rounds {
        for program in &programs {
            for _ in 0..runs / 4 {
                let (time, _) = run(program, &dir, None, false);
                first.entry(program.name.clone()).or_default().push(time);
            }
            for _ in 0..runs {
                let (time, _) = run(program, &dir, program.cookie.as_deref(), false);
                returning
                    .entry(program.name.clone())
                    .or_default()
                    .push(time);
            }
        }
    }
    let medians = |samples: &mut BTreeMap<String, Vec<Duration>>| -> BTreeMap<String, Duration> {
        samples
            .iter_mut()
            .map(|(name, times)| (name.clone(), median(times)))
            .collect()
    };
    let first = medians(&mut first);
    let returning = medians(&mut returning);
    let base_first = first.get(&baseline).copied();
    let base_returning = returning.get(&baseline).copied();
    let ratio = |t: Duration, base: Option<Duration>| {
        base.map_or("".to_owned(), |b| {
            format!("{:.2}", t.as_secs_f64() / b.as_secs_f64())
        })
    };
    println!(
        "\nCGI, {label}: medians of {rounds} alternating rounds ({runs} returning and {} first visits per program per round)\n",
        runs / 4
    );
    println!("| program | returning visit | × {baseline} | first visit | × {baseline} |");
    println!("| --- | --- | --- | --- | --- |");
    for program in &programs {
        let (r, f) = (returning[&program.name], first[&program.name]);
        println!(
            "| {} | {:.0} µs | {} | {:.0} µs | {} |",
            program.name,
            r.as_secs_f64() * 1e6,
            ratio(r, base_returning),
            f.as_secs_f64() * 1e6,
            ratio(f, base_first),
        );
    }
}
