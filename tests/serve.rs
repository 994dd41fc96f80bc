//! `pso serve`, the development server, driven as its users drive it: curl with a cookie jar,
//! raw sockets sending what a gateway must refuse, and headless Chromium.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

static PSO: std::sync::LazyLock<String> = std::sync::LazyLock::new(common::helper);
static RELOAD: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| common::example("reload"));
static LOGIN: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| common::example("login"));

fn inspect() -> PathBuf {
    PathBuf::from(common::example("inspect"))
}

/// A served directory: copies of the counter and the inspect example, small shell programs,
/// and a `.htaccess` that puts sessions in a private directory.
struct Fixture {
    root: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("cgi-bin");
        std::fs::create_dir(&dir).unwrap();
        std::fs::copy(RELOAD.as_str(), dir.join("reload")).unwrap();
        std::fs::copy(LOGIN.as_str(), dir.join("login")).unwrap();
        std::fs::copy(inspect(), dir.join("inspect")).unwrap();
        let scripts: &[(&str, &str)] = &[
            ("env", "printf 'Content-Type: text/plain\\n\\n'; env | sort"),
            ("echo", "printf 'Content-Type: text/plain\\n\\n'; cat"),
            (
                "teapot",
                "printf 'Status: 418 Short and stout\\nContent-Type: text/plain\\n\\ntea'",
            ),
            (
                "inside",
                "printf 'Location: /cgi-bin/env/after?from=redirect\\n\\n'",
            ),
            ("away", "printf 'Location: https://example.org/\\n\\n'"),
            ("loop", "printf 'Location: /cgi-bin/loop\\n\\n'"),
            (
                "noisy",
                "echo 'something went wrong' >&2; printf 'Content-Type: text/plain\\n\\nok'",
            ),
            ("garbage", "printf 'this is not a header\\n\\nbody'"),
            // Answers that parse as a head but that a program must not give; each body holds
            // a word the client must never see.
            (
                "interim",
                "printf 'Status: 100 Continue\\n\\nHTTP/1.1 200 OK\\r\\nX-Injected: yes\\r\\nContent-Type: text/plain\\r\\n\\r\\nleaked'",
            ),
            (
                "twostatus",
                "printf 'Status: 200 OK\\nStatus: 404 Not Found\\nContent-Type: text/plain\\n\\nleaked'",
            ),
            (
                "nocontent",
                "printf 'Status: 204 No Content\\n\\nHTTP/1.1 200 OK\\r\\nX-Injected: yes\\r\\n\\r\\nleaked'",
            ),
            (
                "notmodified",
                "printf 'Status: 304 Not Modified\\n\\n'; sleep 0.2; printf leaked",
            ),
            (
                "bodiless",
                "printf 'Status: 204 No Content\\nX-Fine: yes\\n\\n'",
            ),
            // A response of its own past the Content-Length: in the same write as the head,
            // then (`smugglelate`) only once the client has had the head and its 5 bytes (the
            // test creates `go` beside cgi-bin/, the program's working directory).
            (
                "smuggle",
                "printf 'Content-Type: text/plain\\nContent-Length: 5\\n\\nhelloHTTP/1.1 200 OK\\r\\nX-Injected: yes\\r\\nContent-Type: text/plain\\r\\n\\r\\nleaked'",
            ),
            (
                "smugglelate",
                "printf 'Content-Type: text/plain\\nContent-Length: 5\\n\\nhello'; while [ ! -e ../go ]; do sleep 0.02; done; printf 'HTTP/1.1 200 OK\\r\\nX-Injected: yes\\r\\n\\r\\nleaked'",
            ),
            // Not `exec`: the shell's own child must go too.
            ("hang", "sleep 60 & echo $! > \"$PIDFILE\"; wait"),
            (
                "errflood",
                "head -c 50000000 /dev/zero | tr '\\0' a >&2; printf 'Content-Type: text/plain\\n\\nok'",
            ),
        ];
        for (name, body) in scripts {
            let path = dir.join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::write(dir.join("plain.txt"), "not a program").unwrap();
        std::fs::write(root.path().join("secret"), "#!/bin/sh\necho secret\n").unwrap();
        std::fs::set_permissions(
            root.path().join("secret"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::os::unix::fs::symlink(root.path().join("secret"), dir.join("escape")).unwrap();
        let sessions = root.path().join("sessions");
        std::fs::write(
            dir.join(".htaccess"),
            format!(
                "Options +ExecCGI\nSetEnv PSOSessionFileLoader_Path {}\nSetEnv PSOSessionExpire \"60*60\"\nSetEnv PIDFILE {}\n\
                 SetEnv LoginIdle 1\nSetEnv LoginAuditLog {}\n",
                sessions.display(),
                root.path().join("hang.pid").display(),
                root.path().join("audit.log").display()
            ),
        )
        .unwrap();
        Fixture { root }
    }

    fn dir(&self) -> PathBuf {
        self.root.path().join("cgi-bin")
    }

    fn sessions(&self) -> Vec<String> {
        match std::fs::read_dir(self.root.path().join("sessions")) {
            Ok(entries) => entries
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| !n.starts_with('.'))
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// The id of the one session stored (files are named `service.id.pso`).
    fn only_session_id(&self) -> String {
        let [file] = self.sessions().try_into().unwrap();
        file.split('.').nth(1).unwrap().to_string()
    }

    fn serve(&self, extra: &[&str]) -> Server {
        Server::start(
            Command::new(PSO.as_str())
                .arg("serve")
                .arg("--dir")
                .arg(self.dir())
                .args(["--bind", "127.0.0.1:0", "--no-build", "--timeout", "2"])
                .args(extra),
        )
    }
}

/// A running `pso serve`, stopped when dropped; its log collected.
struct Server {
    child: Child,
    base: String,
    urls: Vec<String>,
    log: Arc<Mutex<String>>,
}

impl Server {
    fn start(command: &mut Command) -> Server {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut urls = Vec::new();
        loop {
            let mut line = String::new();
            if stdout.read_line(&mut line).unwrap() == 0 {
                panic!("pso serve printed no URL: {}", log.lock().unwrap());
            }
            let url = line.trim().to_string();
            let done = url.contains("/_pso/?key=");
            urls.push(url);
            if done {
                break;
            }
        }
        let base = urls
            .last()
            .unwrap()
            .split("/_pso/")
            .next()
            .unwrap()
            .to_string();
        Server {
            child,
            base,
            urls,
            log,
        }
    }

    fn addr(&self) -> String {
        self.base.trim_start_matches("http://").to_string()
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The log once it holds `text` (within 10 s).
    fn wait_for_log(&self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            if log.contains(text) || Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends raw bytes; returns the whole response.
    fn raw(&self, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(self.addr()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream.write_all(request).unwrap();
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        String::from_utf8_lossy(&response).into_owned()
    }

    /// Posts a form, with `headers` (whole lines, each ending in CRLF) beside the usual ones.
    fn post_form(&self, path: &str, headers: &str, form: &str) -> String {
        self.raw(
            format!(
                "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
                form.len()
            )
            .as_bytes(),
        )
    }

    fn get(&self, path: &str) -> String {
        self.get_with(path, "")
    }

    fn get_with(&self, path: &str, headers: &str) -> String {
        self.raw(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n").as_bytes())
    }

    /// The sessions page's key, from the URL printed at start-up.
    fn key(&self) -> String {
        self.urls
            .last()
            .unwrap()
            .split("key=")
            .nth(1)
            .unwrap()
            .to_string()
    }
}

impl Drop for Server {
    /// SIGTERM, as a user's Ctrl-C or a service manager stops it, so that it stops its
    /// FastCGI responders too; SIGKILL if it does not go.
    fn drop(&mut self) {
        common::signal(self.child.id(), rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn status(response: &str) -> &str {
    response.get(9..12).unwrap_or("")
}

fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// curl with a cookie jar, as a browser keeps cookies.
fn curl(jar: &Path, url: &str, extra: &[&str]) -> Option<String> {
    let output = match Command::new("curl")
        .args(["-s", "-i", "--max-time", "20", "-c"])
        .arg(jar)
        .arg("-b")
        .arg(jar)
        .args(extra)
        .arg(url)
        .output()
    {
        Ok(output) => output,
        Err(_) => {
            common::skip_or_fail("curl is not installed");
            return None;
        }
    };
    assert!(output.status.success(), "curl {url} failed");
    Some(String::from_utf8(output.stdout).unwrap())
}

fn counts_with_a_cookie_jar(server: &Server, fixture: &Fixture) {
    let jar = fixture.root.path().join("jar");
    for n in 1..=3 {
        let Some(response) = curl(&jar, &format!("{}/cgi-bin/reload", server.base), &[]) else {
            return;
        };
        assert!(
            response.contains(&format!("You reloaded: {n} times")),
            "{response}\n{}",
            server.log()
        );
        if n == 1 {
            let cookie = response
                .lines()
                .find(|l| l.starts_with("Set-Cookie: reload="))
                .unwrap_or_else(|| panic!("{response}"));
            assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"));
        }
    }
    assert_eq!(fixture.sessions().len(), 1, "{:?}", fixture.sessions());
}

#[test]
fn serves_the_counter_as_cgi_to_a_client_with_a_cookie_jar() {
    let fixture = Fixture::new();
    let server = fixture.serve(&[]);
    assert!(
        server
            .urls
            .contains(&format!("{}/cgi-bin/reload", server.base)),
        "{:?}",
        server.urls
    );
    counts_with_a_cookie_jar(&server, &fixture);
    let log = server.log();
    assert!(
        log.contains("\"GET /cgi-bin/reload HTTP/1.1\" 200"),
        "{log}"
    );
}

#[test]
fn serves_the_counter_as_fastcgi_from_one_long_lived_responder() {
    let fixture = Fixture::new();
    let server = fixture.serve(&["--fastcgi"]);
    counts_with_a_cookie_jar(&server, &fixture);
    let response = server.raw(
        b"POST /cgi-bin/inspect?echo=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 11\r\n\r\nhello world",
    );
    assert_eq!(body(&response), "hello world", "{response}");
    let log = server.log();
    assert_eq!(
        log.matches("started reload as a FastCGI responder").count(),
        1,
        "{log}"
    );
}

#[test]
fn a_fastcgi_responder_that_hangs_is_a_504_and_is_replaced() {
    let fixture = Fixture::new();
    let server = fixture.serve(&["--fastcgi"]);
    let response = server.get("/cgi-bin/inspect?sleep=5000");
    assert_eq!(status(&response), "504", "{response}");
    let response = server.get("/cgi-bin/inspect?count=1");
    assert_eq!(status(&response), "200", "{response}");
    let log = server.log();
    assert_eq!(
        log.matches("started inspect as a FastCGI responder")
            .count(),
        2,
        "{log}"
    );
}

#[test]
fn gives_programs_the_meta_variables_of_rfc_3875_and_no_more() {
    let fixture = Fixture::new();
    let server = fixture.serve(&[]);
    let response = server.raw(
        b"GET /cgi-bin/env/some/path?x=1&y=2 HTTP/1.1\r\nHost: localhost:1234\r\nProxy: http://evil:666\r\n\
          X_Forwarded_For: 6.6.6.6\r\nX-Forwarded-For: 1.2.3.4\r\nCookie: a=1\r\nCookie: b=2\r\n\r\n",
    );
    assert_eq!(status(&response), "200", "{response}");
    let env = body(&response);
    for line in [
        "GATEWAY_INTERFACE=CGI/1.1",
        "REQUEST_METHOD=GET",
        "SCRIPT_NAME=/cgi-bin/env",
        "PATH_INFO=/some/path",
        "QUERY_STRING=x=1&y=2",
        "REQUEST_URI=/cgi-bin/env/some/path?x=1&y=2",
        "SERVER_NAME=localhost",
        "SERVER_PROTOCOL=HTTP/1.1",
        "REMOTE_ADDR=127.0.0.1",
        "HTTP_X_FORWARDED_FOR=1.2.3.4",
        "HTTP_COOKIE=a=1; b=2",
        "PSOSessionExpire=60*60",
    ] {
        assert!(env.lines().any(|l| l == line), "{line} missing:\n{env}");
    }
    assert!(!env.contains("HTTP_PROXY"), "{env}");
    assert!(!env.contains("6.6.6.6"), "{env}");
    assert!(!env.contains("CONTENT_LENGTH"), "{env}");
}

#[test]
fn passes_the_body_on_standard_input() {
    let fixture = Fixture::new();
    let server = fixture.serve(&[]);
    let body_sent = "a".repeat(200_000);
    let response = server.raw(
        format!(
            "POST /cgi-bin/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body_sent}",
            body_sent.len()
        )
        .as_bytes(),
    );
    assert_eq!(body(&response), body_sent);
    let response = server
        .raw(b"POST /cgi-bin/inspect?echo=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n\r\nhello");
    assert_eq!(body(&response), "hello", "{response}");
}

#[test]
fn follows_status_and_location_as_rfc_3875_says() {
    let fixture = Fixture::new();
    let server = fixture.serve(&[]);
    let teapot = server.get("/cgi-bin/teapot");
    assert!(
        teapot.starts_with("HTTP/1.1 418 Short and stout\r\n"),
        "{teapot}"
    );
    assert_eq!(body(&teapot), "tea");

    let inside = server
        .raw(b"POST /cgi-bin/inside HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 3\r\n\r\nabc");
    assert_eq!(status(&inside), "200", "{inside}");
    let env = body(&inside);
    for line in [
        "QUERY_STRING=from=redirect",
        "REQUEST_METHOD=GET",
        "PATH_INFO=/after",
        "SCRIPT_NAME=/cgi-bin/env",
    ] {
        assert!(env.lines().any(|l| l == line), "{line} missing:\n{env}");
    }

    let away = server.get("/cgi-bin/away");
    assert_eq!(status(&away), "302", "{away}");
    assert!(
        away.contains("Location: https://example.org/\r\n"),
        "{away}"
    );

    let endless = server.get("/cgi-bin/loop");
    assert_eq!(status(&endless), "500", "{endless}");
    let garbage = server.get("/cgi-bin/garbage");
    assert_eq!(status(&garbage), "502", "{garbage}");
}

/// A 1xx status, a second `Status:`, a body on a 204 or 304: the program is wrong, the client
/// gets a 502 with none of the program's bytes, and the log says which program and why.
#[test]
fn refuses_answers_a_program_must_not_give() {
    let fixture = Fixture::new();
    let server = fixture.serve(&[]);
    let cases = [
        ("interim", "a 1xx status"),
        ("twostatus", "more than one Status"),
        ("nocontent", "a body after Status 204"),
        ("notmodified", "a body after Status 304"),
    ];
    for (name, why) in cases {
        for method in ["GET", "HEAD"] {
            let response = server.raw(
                format!("{method} /cgi-bin/{name} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes(),
            );
            assert_eq!(status(&response), "502", "{method} {name}\n{response}");
            assert_eq!(
                response.matches("HTTP/1.1 ").count(),
                1,
                "{method} {name}\n{response}"
            );
            for leak in [
                "leaked",
                "X-Injected",
                "Continue",
                "Not Found",
                "Not Modified",
            ] {
                assert!(
                    !response.contains(leak),
                    "{method} {name}: {leak}\n{response}"
                );
            }
        }
        let logged = format!("{name}: the program's answer is malformed: {why}");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !server.log().contains(&logged) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(server.log().contains(&logged), "{logged}\n{}", server.log());
    }
    let bodiless = server.get("/cgi-bin/bodiless");
    assert!(
        bodiless.starts_with("HTTP/1.1 204 No Content\r\n"),
        "{bodiless}"
    );
    assert!(bodiless.contains("X-Fine: yes\r\n"), "{bodiless}");
    assert!(bodiless.ends_with("\r\n\r\n"), "{bodiless}");
    assert_eq!(body(&server.get("/cgi-bin/teapot")), "tea");
}

/// A program that writes a response of its own past its `Content-Length`: the client gets
/// exactly the length the head gives, or, when the excess came with the head, a 502; the log
/// names the program.
#[test]
fn relays_no_more_than_a_program_s_content_length() {
    let fixture = Fixture::new();
    let server = fixture.serve(&[]);
    let wait_for_log = |logged: &str| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !server.log().contains(logged) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(server.log().contains(logged), "{logged}\n{}", server.log());
    };
    for method in ["GET", "HEAD"] {
        let response = server.raw(
            format!("{method} /cgi-bin/smuggle HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes(),
        );
        assert_eq!(status(&response), "502", "{method}\n{response}");
        assert_eq!(response.matches("HTTP/1.1 ").count(), 1, "{response}");
        for leak in ["hello", "leaked", "X-Injected"] {
            assert!(!response.contains(leak), "{method}: {leak}\n{response}");
        }
    }
    wait_for_log("smuggle: the program's answer is malformed: past its Content-Length of 5, ");

    let mut stream = TcpStream::connect(server.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
        .write_all(b"GET /cgi-bin/smugglelate HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let mut response = Vec::new();
    let has_body = |r: &[u8]| {
        r.windows(4)
            .position(|w| w == b"\r\n\r\n")
            .is_some_and(|end| r.len() >= end + 4 + 5)
    };
    let mut chunk = [0u8; 4096];
    while !has_body(&response) {
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&response));
        response.extend_from_slice(&chunk[..n]);
    }
    // Only now, with the head gone out, does the program write past its length.
    std::fs::write(fixture.root.path().join("go"), "").unwrap();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response);
    assert_eq!(status(&response), "200", "{response}");
    assert_eq!(body(&response), "hello", "{response}");
    assert!(response.contains("Content-Length: 5\r\n"), "{response}");
    wait_for_log("smugglelate: the program wrote past its Content-Length of 5 ");
}

#[test]
fn logs_what_programs_write_on_standard_error() {
    let fixture = Fixture::new();
    let server = fixture.serve(&[]);
    assert_eq!(body(&server.get("/cgi-bin/noisy")), "ok");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !server.log().contains("noisy: something went wrong") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        server.log().contains("noisy: something went wrong"),
        "{}",
        server.log()
    );
}

#[test]
fn kills_a_program_that_hangs_and_answers_504() {
    let fixture = Fixture::new();
    let server = fixture.serve(&[]);
    let started = Instant::now();
    let response = server.get("/cgi-bin/hang");
    assert_eq!(status(&response), "504", "{response}");
    assert!(started.elapsed() < Duration::from_secs(15));
    let pid = std::fs::read_to_string(fixture.root.path().join("hang.pid")).unwrap();
    let proc = PathBuf::from(format!("/proc/{}", pid.trim()));
    let deadline = Instant::now() + Duration::from_secs(5);
    while proc.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!proc.exists(), "what the hung program started still runs");
}

#[test]
fn a_flood_on_standard_error_costs_the_server_no_memory() {
    let fixture = Fixture::new();
    let server = fixture.serve(&[]);
    assert_eq!(body(&server.get("/cgi-bin/errflood")), "ok");
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap();
    // 50 MB of standard error without a newline: one line, cut at 4 KiB.
    assert!(peak_kib < 32 * 1024, "peak {peak_kib} KiB");
}

#[test]
fn clients_that_send_their_head_slowly_do_not_hold_the_workers() {
    let fixture = Fixture::new();
    let server = fixture.serve(&[]);
    // As many slow clients as workers, each sending a byte a second, forever.
    let slow: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut stream = TcpStream::connect(server.addr()).unwrap();
            stream.write_all(b"G").unwrap();
            stream
        })
        .collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let dripping = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for mut stream in &slow {
                    let _ = stream.write_all(b"E");
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let response = server.get("/cgi-bin/teapot");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    dripping.join().unwrap();
    assert_eq!(status(&response), "418", "{response}");
    // The head's deadline (10 s) frees the workers, not the 30 s between reads.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn refuses_what_a_gateway_must_not_pass_on() {
    let fixture = Fixture::new();
    let server = fixture.serve(&[]);
    let mut big_header = b"GET /cgi-bin/env HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ".to_vec();
    big_header.extend(std::iter::repeat_n(b'a', 20_000));
    big_header.extend_from_slice(b"\r\n\r\n");
    // Each with a Host, so that it is refused for its own fault (the reason says which), not
    // for a missing Host.
    let host = |head: &str| format!("{head}\r\nHost: 127.0.0.1").into_bytes();
    let with_host = |head: &str, rest: &[u8]| [host(head), rest.to_vec()].concat();
    let cases: Vec<(Vec<u8>, &str, &str)> = vec![
        (
            with_host(
                "POST /cgi-bin/echo HTTP/1.1",
                b"\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            ),
            "411",
            "",
        ),
        (
            with_host(
                "POST /cgi-bin/echo HTTP/1.1",
                b"\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc",
            ),
            "400",
            "both Transfer-Encoding and Content-Length",
        ),
        (
            with_host(
                "POST /cgi-bin/echo HTTP/1.1",
                b"\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
            ),
            "400",
            "more than one Content-Length",
        ),
        (
            with_host(
                "POST /cgi-bin/echo HTTP/1.1",
                b"\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            ),
            "400",
            "more than one Content-Length",
        ),
        // httparse refuses these bytes itself; pso's own check stands behind it.
        (
            with_host("GET /cgi-bin/env HTTP/1.1", b"\r\nX: a\0b\r\n\r\n"),
            "400",
            "does not parse",
        ),
        (
            with_host("GET /cgi-bin/env HTTP/1.1", b"\r\nX: a\rb\r\n\r\n"),
            "400",
            "does not parse",
        ),
        (big_header, "431", "too large"),
        (
            with_host("GET /cgi-bin/../../etc/passwd HTTP/1.1", b"\r\n\r\n"),
            "400",
            "climbs above the root",
        ),
        (
            with_host("GET /cgi-bin/%2e%2e/secret HTTP/1.1", b"\r\n\r\n"),
            "404",
            "",
        ),
        (
            with_host("GET /cgi-bin/%+f HTTP/1.1", b"\r\n\r\n"),
            "400",
            "bad % escape",
        ),
        (
            with_host("GET /cgi-bin/escape HTTP/1.1", b"\r\n\r\n"),
            "404",
            "",
        ),
        (
            with_host("GET /cgi-bin/.htaccess HTTP/1.1", b"\r\n\r\n"),
            "404",
            "",
        ),
        (
            with_host("GET /cgi-bin/plain.txt HTTP/1.1", b"\r\n\r\n"),
            "404",
            "",
        ),
        (with_host("GET /secret HTTP/1.1", b"\r\n\r\n"), "404", ""),
        (
            b"GET /cgi-bin/env HTTP/1.1\r\n\r\n".to_vec(),
            "400",
            "without Host",
        ),
        // DNS rebinding: a name of another site's that resolves to 127.0.0.1.
        (
            b"GET /cgi-bin/env HTTP/1.1\r\nHost: evil.example:8080\r\n\r\n".to_vec(),
            "403",
            "answers only to",
        ),
    ];
    for (request, want, why) in cases {
        let response = server.raw(&request);
        let shown = String::from_utf8_lossy(&request[..request.len().min(200)]).into_owned();
        assert_eq!(status(&response), want, "{shown}\n{response}");
        assert!(response.contains(why), "{shown}: want {why:?}\n{response}");
        if !why.contains("Host") {
            assert!(!response.contains("without Host"), "{shown}\n{response}");
        }
    }
}

#[test]
fn shows_the_sessions_and_ends_one_for_this_machine_only() {
    let fixture = Fixture::new();
    let server = fixture.serve(&[]);
    let jar = fixture.root.path().join("jar");
    let Some(response) = curl(&jar, &format!("{}/cgi-bin/reload", server.base), &[]) else {
        return;
    };
    assert!(response.contains("You reloaded: 1 times"));
    let id = fixture.only_session_id();
    let prefix = &id[..12];

    // Without the key (another local user): nothing.
    let keyless = server.get("/_pso/");
    assert_eq!(status(&keyless), "403", "{keyless}");
    let wrong = server.get("/_pso/?key=0123456789abcdef0123456789abcdef0123456789abcdef");
    assert_eq!(status(&wrong), "403", "{wrong}");
    // The printed URL trades its key for a cookie for /_pso/ only.
    let key = server.key();
    let traded = server.get(&format!("/_pso/?key={key}"));
    assert_eq!(status(&traded), "303", "{traded}");
    assert!(
        traded.contains(&format!(
            "Set-Cookie: pso-serve-key={key}; Path=/_pso/; HttpOnly; SameSite=Strict\r\n"
        )),
        "{traded}"
    );
    let cookie = format!("Cookie: pso-serve-key={key}\r\n");
    let page = server.get_with("/_pso/", &cookie);
    assert_eq!(status(&page), "200", "{page}");
    assert!(page.contains("X-Frame-Options: DENY\r\n"), "{page}");
    assert!(page.contains("frame-ancestors 'none'"), "{page}");
    assert!(page.contains(prefix), "{prefix} not in\n{page}");
    assert!(page.contains("<code>reloads</code>"), "{page}");
    assert!(!page.contains(&id[..20]), "the page gives whole ids away");
    // Another local program's cookies (localhost cookies ignore ports), not UTF-8, in a
    // header of their own before the key's: the key still counts.
    let mut crowded =
        b"GET /_pso/ HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: theme=\xff\xfe\r\n".to_vec();
    crowded.extend_from_slice(cookie.as_bytes());
    crowded.extend_from_slice(b"\r\n");
    let page = server.raw(&crowded);
    assert_eq!(status(&page), "200", "{page}");

    let foreign = server
        .raw(format!("GET /_pso/ HTTP/1.1\r\nHost: evil.example:8080\r\n{cookie}\r\n").as_bytes());
    assert_eq!(status(&foreign), "403", "{foreign}");

    let forged = format!("token=wrong&service=reload&id={prefix}");
    let response = server.post_form("/_pso/end", &cookie, &forged);
    assert_eq!(status(&response), "403", "{response}");
    assert_eq!(fixture.sessions().len(), 1);

    let token = page
        .split("name=\"token\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap();
    let form = format!("token={token}&service=reload&id={prefix}");
    let response = server.post_form("/_pso/end", "", &form);
    assert_eq!(
        status(&response),
        "403",
        "a form without the key cookie: {response}"
    );
    assert_eq!(fixture.sessions().len(), 1);
    let response = server.post_form("/_pso/end", &cookie, &form);
    assert_eq!(status(&response), "303", "{response}");
    assert_eq!(fixture.sessions(), Vec::<String>::new());
    let Some(response) = curl(&jar, &format!("{}/cgi-bin/reload", server.base), &[]) else {
        return;
    };
    assert!(response.contains("You reloaded: 1 times"), "{response}");
}

/// The Chromium on this machine, if any.
fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|name| {
            Command::new(name)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

/// Headless Chromium, one profile: three loads of the counter, then the sessions page.
#[test]
fn a_real_browser_counts_three_reloads_and_sees_its_session() {
    let Some(chromium) = chromium() else {
        common::skip_or_fail("chromium is not installed");
        return;
    };
    let fixture = Fixture::new();
    let server = fixture.serve(&[]);
    let profile = fixture.root.path().join("profile");
    let load = |url: &str| {
        let output = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-dev-shm-usage",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("--dump-dom")
            .arg(url)
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    let counter = format!("{}/cgi-bin/reload", server.base);
    let mut last = String::new();
    for _ in 0..3 {
        last = load(&counter);
    }
    assert!(last.contains("You reloaded: 3 times"), "{last}");
    let id = fixture.only_session_id();
    let page = load(server.urls.last().unwrap());
    assert!(page.contains(&id[..12]), "{}\n{page}", &id[..12]);
    assert!(page.contains("reloads"), "{page}");
}

/// Headless Chromium signs in to the login program and out again, by filling and submitting
/// its forms (driven over the DevTools protocol by tests/browser/login.py), and a page of
/// another site that posts a sign-in is refused: the form cookie and the browser's
/// `Sec-Fetch-Site` work as a real browser sends them.
#[test]
fn a_real_browser_signs_in_and_out_and_another_site_cannot_post() {
    let Some(chromium) = chromium() else {
        common::skip_or_fail("chromium is not installed");
        return;
    };
    let fixture = Fixture::new();
    let server = fixture.serve(&[]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/login.py");
    let output = Command::new("python3")
        .arg(script)
        .arg(chromium)
        .arg(format!("{}/cgi-bin/login", server.base))
        .arg(fixture.root.path().join("profile"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{said}\n{}\n{}",
        String::from_utf8_lossy(&output.stderr),
        server.log()
    );
    assert_eq!(said.matches("ok: ").count(), 5, "{said}");
}

/// The README's first command, as a newcomer runs it: `cargo run -- serve` in the repository
/// builds the counter and serves it. Built in a target directory of its own, since the
/// outer `cargo test` holds the usual one.
#[test]
fn the_readme_command_builds_the_counter_and_serves_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let server = Server::start(
        Command::new(cargo)
            .current_dir(root)
            .env("CARGO_TARGET_DIR", root.join("target").join("serve-tests"))
            .args(["run", "-q", "--", "serve", "--bind", "127.0.0.1:0"]),
    );
    assert_eq!(
        server.urls,
        vec![
            format!("{}/cgi-bin/login", server.base),
            format!("{}/cgi-bin/reload", server.base),
            format!("{}/_pso/?key={}", server.base, server.key())
        ]
    );
    let jar = tempfile::tempdir().unwrap();
    let jar = jar.path().join("jar");
    for n in 1..=2 {
        let Some(response) = curl(&jar, &server.urls[1], &[]) else {
            return;
        };
        assert!(
            response.contains(&format!("You reloaded: {n} times")),
            "{response}\n{}",
            server.log()
        );
    }
}

/// The login program, end to end through a cookie jar: a token on every form (tied to the
/// form cookie while nothing is stored), a new id at sign-in, the old id leading to the new
/// session for its grace, a forced sign-in after inactivity with one audit line, and a
/// sign-out that ends the session everywhere.
fn signs_in_times_out_and_signs_out(extra: &[&str]) {
    let fixture = Fixture::new();
    let server = fixture.serve(extra);
    let url = format!("{}/cgi-bin/login", server.base);
    let jar = fixture.root.path().join("jar");
    let token_of = |page: &str| {
        page.split("name=\"token\" value=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| panic!("no token in {page}"))
            .to_owned()
    };
    let sign_in = |jar: &Path, token: &str| {
        let form = format!("token={token}&action=login&user=eggs&password=spam");
        curl(jar, &url, &["-d", &form]).unwrap()
    };
    // The session cookie a response sets, as `login=<id>`.
    let cookie_of = |response: &str| {
        response
            .lines()
            .filter_map(|l| l.strip_prefix("Set-Cookie: "))
            .find(|c| c.starts_with("login="))
            .map(|c| c.split(';').next().unwrap().to_owned())
    };
    let form_cookies = |response: &str| {
        response
            .lines()
            .filter(|l| l.starts_with("Set-Cookie: login.form="))
            .count()
    };
    let Some(page) = curl(&jar, &url, &[]) else {
        return;
    };
    // Seeing the form stores nothing: its token is tied to the form cookie.
    assert_eq!(cookie_of(&page), None, "{page}");
    assert_eq!(form_cookies(&page), 1, "{page}");
    assert!(fixture.sessions().is_empty(), "{:?}", fixture.sessions());
    let token = token_of(&page);

    let forged = curl(
        &jar,
        &url,
        &["-d", "token=forged&action=login&user=eggs&password=spam"],
    )
    .unwrap();
    assert_eq!(status(&forged), "403", "{forged}");
    let token2 = token_of(&forged);
    let wrong = curl(
        &jar,
        &url,
        &[
            "-d",
            &format!("token={token2}&action=login&user=eggs&password=ham"),
        ],
    )
    .unwrap();
    assert!(wrong.contains("Wrong user name or password"), "{wrong}");
    // A mistyped password spends nothing: the first page's form (another tab) still posts.
    let signed = sign_in(&jar, &token);
    assert_eq!(status(&signed), "302", "{signed}");
    let before = cookie_of(&signed).expect("a session at sign-in");
    assert!(
        signed.contains("Set-Cookie: login.form=; "),
        "the sign-in voids the form secret: {signed}"
    );
    let replay = sign_in(&jar, &token);
    assert_eq!(status(&replay), "403", "void after sign-in: {replay}");

    let home = curl(&jar, &url, &[]).unwrap();
    assert!(
        home.contains("Signed in as <strong>eggs</strong>"),
        "{home}"
    );
    // Signing in again (a change of privilege) moves the session to a new id.
    let again = sign_in(&jar, &token_of(&home));
    assert_eq!(status(&again), "302", "{again}");
    let after = cookie_of(&again).expect("a new id");
    assert_ne!(after, before, "a new id at sign-in");
    // A request still carrying the old id, within the grace: the same signed-in session.
    let late = curl(
        &fixture.root.path().join("other-jar"),
        &url,
        &["-b", &before],
    )
    .unwrap();
    assert!(
        late.contains("Signed in as <strong>eggs</strong>"),
        "{late}"
    );
    // A sign-in posted through the old id (twice, or by whoever planted it) changes nothing
    // and hands out no id: the program sends it back to the page.
    let form = format!(
        "token={}&action=login&user=eggs&password=spam",
        token_of(&late)
    );
    let twice = curl(
        &fixture.root.path().join("other-jar"),
        &url,
        &["-b", &before, "-d", &form],
    )
    .unwrap();
    assert_eq!(status(&twice), "302", "{twice}");
    assert_eq!(cookie_of(&twice), None, "{twice}");
    let log = std::fs::read_to_string(fixture.root.path().join("audit.log")).unwrap();
    assert_eq!(
        log.matches("eggs signed in").count(),
        2,
        "not a third sign-in: {log}"
    );

    // Idle past LoginIdle (1 s): signed out, told why, the dead cookie revoked (no new
    // session for the form), one form cookie, one audit line.
    std::thread::sleep(Duration::from_millis(2_200));
    let away = curl(&jar, &url, &[]).unwrap();
    assert!(away.contains("You were away too long"), "{away}");
    assert_eq!(
        cookie_of(&away).as_deref(),
        Some("login="),
        "no new session for the form: {away}"
    );
    assert!(
        away.contains("Max-Age=0"),
        "the dead cookie is revoked: {away}"
    );
    assert_eq!(form_cookies(&away), 1, "{away}");
    let log = std::fs::read_to_string(fixture.root.path().join("audit.log")).unwrap();
    assert_eq!(log.matches("session of eggs timed out").count(), 1, "{log}");
    assert_eq!(log.matches("failed sign-in").count(), 1, "{log}");

    // Sign in again, then out: the file is gone and the cookie revoked.
    let token = token_of(&away);
    let signed = sign_in(&jar, &token);
    assert_eq!(status(&signed), "302", "{signed}");
    let current = cookie_of(&signed).expect("a new id at the second sign-in");
    let file = format!("login.{}.pso", current.split_once('=').unwrap().1);
    assert!(fixture.sessions().contains(&file));
    let home = curl(&jar, &url, &[]).unwrap();
    let token = token_of(&home);
    let out = curl(&jar, &url, &["-d", &format!("token={token}&action=logout")]).unwrap();
    assert_eq!(status(&out), "302", "{out}");
    assert!(out.contains("Location: /cgi-bin/login?bye=1\r\n"), "{out}");
    assert!(
        out.contains("Set-Cookie: login=; ") && out.contains("Max-Age=0"),
        "{out}"
    );
    assert!(
        !fixture.sessions().contains(&file),
        "the session file is gone"
    );

    // Signed in from two browsers; "sign out everywhere" in one ends the other too.
    let jars = [fixture.root.path().join("a"), fixture.root.path().join("b")];
    for jar in &jars {
        let token = token_of(&curl(jar, &url, &[]).unwrap());
        let form = format!("token={token}&action=login&user=eggs&password=spam");
        let signed = curl(jar, &url, &["-d", &form]).unwrap();
        assert_eq!(status(&signed), "302", "{signed}");
    }
    let home = curl(&jars[0], &url, &[]).unwrap();
    let form = format!("token={}&action=logout_everywhere", token_of(&home));
    let out = curl(&jars[0], &url, &["-d", &form]).unwrap();
    assert!(
        out.contains("Location: /cgi-bin/login?bye=everywhere\r\n"),
        "{out}"
    );
    let bye = curl(&jars[0], &format!("{url}?bye=everywhere"), &[]).unwrap();
    assert!(bye.contains("You have signed out everywhere"), "{bye}");
    // The sign-in form on that page works.
    let form = format!(
        "token={}&action=login&user=eggs&password=spam",
        token_of(&bye)
    );
    assert_eq!(
        status(&curl(&jars[0], &url, &["-d", &form]).unwrap()),
        "302"
    );
    let other = curl(&jars[1], &url, &[]).unwrap();
    assert!(
        other.contains("Sign in</button>"),
        "the other browser is signed out: {other}"
    );
}

#[test]
fn the_login_program_as_cgi() {
    signs_in_times_out_and_signs_out(&[]);
}

#[test]
fn the_login_program_as_fastcgi() {
    signs_in_times_out_and_signs_out(&["--fastcgi"]);
}

#[cfg(feature = "redis")]
#[test]
fn the_dashboard_shows_and_ends_sessions_kept_in_redis() {
    let Some(redis) = common::redis::RedisServer::start() else {
        return;
    };
    let fixture = Fixture::new();
    let htaccess = fixture.dir().join(".htaccess");
    let mut text = std::fs::read_to_string(&htaccess).unwrap();
    text.push_str(&format!("SetEnv PSOSessionStore {}\n", redis.url()));
    std::fs::write(&htaccess, text).unwrap();
    let server = fixture.serve(&[]);
    let jar = fixture.root.path().join("jar");
    let Some(response) = curl(&jar, &format!("{}/cgi-bin/reload", server.base), &[]) else {
        return;
    };
    assert!(response.contains("You reloaded: 1 times"), "{response}");
    assert!(fixture.sessions().is_empty(), "nothing on disk");
    assert_eq!(redis.cli(&["DBSIZE"]), "1");
    let key = server.key();
    let cookie = format!("Cookie: pso-serve-key={key}\r\n");
    let page = server.get_with("/_pso/", &cookie);
    assert_eq!(status(&page), "200", "{page}");
    assert!(
        page.contains(&format!("redis://127.0.0.1:{}/0", redis.port)),
        "{page}"
    );
    assert!(page.contains("<code>reloads</code>"), "{page}");
    let token = page
        .split("name=\"token\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap();
    let prefix = page
        .split("name=\"id\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap();
    let form = format!("token={token}&service=reload&id={prefix}");
    let response = server.post_form("/_pso/end", &cookie, &form);
    assert_eq!(status(&response), "303", "{response}");
    assert_eq!(redis.cli(&["DBSIZE"]), "0");
}

/// In a new crate, before its first program: `pso serve` says where a program's source goes
/// and the `[[bin]]` entry it needs, whether `cgi-bin/` is missing, empty, or holds a source
/// that Cargo.toml does not build.
#[test]
fn in_a_new_crate_it_says_where_a_programs_source_goes() {
    let root = tempfile::tempdir().unwrap();
    let missing = Command::new(PSO.as_str())
        .arg("serve")
        .current_dir(root.path())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success());
    assert!(
        said.contains("cgi-bin/NAME.rs") && said.contains("[[bin]]"),
        "{said}"
    );
    std::fs::write(
        root.path().join("Cargo.toml"),
        "[package]\nname = \"site\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
    )
    .unwrap();
    std::fs::create_dir(root.path().join("src")).unwrap();
    std::fs::write(root.path().join("src/main.rs"), "fn main() {}\n").unwrap();
    std::fs::create_dir(root.path().join("cgi-bin")).unwrap();
    let empty = Server::start(
        Command::new(PSO.as_str())
            .args(["serve", "--bind", "127.0.0.1:0"])
            .current_dir(root.path()),
    );
    let log = empty.wait_for_log("no programs in");
    assert!(log.contains("[[bin]]"), "{log}");
    drop(empty);
    std::fs::write(root.path().join("cgi-bin/guestbook.rs"), "fn main() {}\n").unwrap();
    let unlisted = Server::start(
        Command::new(PSO.as_str())
            .args(["serve", "--bind", "127.0.0.1:0"])
            .current_dir(root.path()),
    );
    let log = unlisted.wait_for_log("is not a program of");
    assert!(
        log.contains("name = \"guestbook\"") && log.contains("path = \"cgi-bin/guestbook.rs\""),
        "{log}"
    );
}

/// The README's "Your own program", followed as a new user would: a crate made from its lines
/// (the dependency, the `[[bin]]` entry, the program, the deploy alias and profiles) builds,
/// `pso serve` serves its program, and `cargo deploy` makes it a static program (no
/// interpreter in its ELF header).
#[test]
fn a_new_crate_made_from_the_readme_is_served_and_deploys_static() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let section = readme
        .split("## Your own program")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("the README's Your own program section");
    // The fenced blocks of the section, in order: dependencies, [[bin]], the program, the
    // alias, the profiles.
    let blocks: Vec<&str> = section
        .split("```")
        .skip(1)
        .step_by(2)
        .map(|block| block.split_once('\n').map_or("", |(_, body)| body))
        .collect();
    let [_, bin, program, alias, profiles] = blocks[..] else {
        panic!("the section's blocks changed: {blocks:?}");
    };
    let root = tempfile::tempdir().unwrap();
    let repo = env!("CARGO_MANIFEST_DIR");
    std::fs::write(
        root.path().join("Cargo.toml"),
        format!(
            "[package]\nname = \"site\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\npso = {{ path = \"{repo}\" }}\n\n{bin}\n{profiles}"
        ),
    )
    .unwrap();
    std::fs::create_dir(root.path().join("cgi-bin")).unwrap();
    std::fs::write(root.path().join("cgi-bin/guestbook.rs"), program).unwrap();
    std::fs::create_dir(root.path().join(".cargo")).unwrap();
    std::fs::write(root.path().join(".cargo/config.toml"), alias).unwrap();
    // One target directory for every run of this test: the library compiles once.
    let target = Path::new(repo).join("target/new-crate-tests");
    let served = Server::start(
        Command::new(PSO.as_str())
            .args(["serve", "--bind", "127.0.0.1:0"])
            .env("CARGO_TARGET_DIR", &target)
            .current_dir(root.path()),
    );
    assert!(
        served
            .urls
            .iter()
            .any(|url| url.ends_with("/cgi-bin/guestbook")),
        "{:?} {}",
        served.urls,
        served.log()
    );
    let page = served.get("/cgi-bin/guestbook");
    assert!(page.ends_with("Visit 1"), "{page}");
    drop(served);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let deployed = Command::new(cargo)
        .args(["deploy", "--quiet"])
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(root.path())
        .status()
        .unwrap();
    assert!(deployed.success());
    let program = target.join("x86_64-unknown-linux-gnu/deploy/guestbook");
    let elf = std::fs::read(&program).unwrap();
    assert!(
        !has_interpreter(&elf),
        "{} is not static",
        program.display()
    );
    let dynamic = std::fs::read(common::example("reload")).unwrap();
    assert!(
        has_interpreter(&dynamic),
        "the check tells a dynamic program apart"
    );
}

/// Whether a 64-bit little-endian ELF file names an interpreter (a PT_INTERP program header):
/// a dynamically linked program does, a static one does not.
fn has_interpreter(elf: &[u8]) -> bool {
    let word = |at: usize, len: usize| {
        elf[at..at + len]
            .iter()
            .rev()
            .fold(0u64, |n, b| (n << 8) | u64::from(*b))
    };
    assert_eq!(&elf[..4], b"\x7fELF");
    let (phoff, phentsize, phnum) = (
        word(0x20, 8) as usize,
        word(0x36, 2) as usize,
        word(0x38, 2),
    );
    (0..phnum as usize).any(|i| word(phoff + i * phentsize, 4) == 3)
}
