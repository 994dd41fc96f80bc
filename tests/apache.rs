//! The reload counter behind a real Apache httpd with mod_cgi, configured by `htaccess.sample`.
//!
//! The test writes a minimal httpd.conf into a temporary directory, copies the built `reload`
//! program into its `cgi-bin/` with the repository's `htaccess.sample` as `.htaccess`, starts
//! Apache on a free loopback port and talks to it with curl and a cookie jar, like a browser.
//!
//! Apache and curl are looked up at run time. Without them the test is skipped with a loud
//! message, except when `CI=true`: there a missing tool is a failure, so CI cannot pass by
//! silently testing nothing.

use std::fs;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

const RELOAD: &str = env!("CARGO_BIN_EXE_reload");
const SAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/htaccess.sample");

/// The user and group Apache runs as when the test runs as root (Debian's nobody/nogroup).
const NOBODY: u32 = 65534;
/// How long Apache may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long Apache may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The Apache modules the test needs: (module name, shared object, name when compiled in).
/// mod_unixd is compiled into Debian's apache2 but is a shared module elsewhere.
const MODULES: &[(&str, &str, &str)] = &[
    ("unixd_module", "mod_unixd.so", "mod_unixd.c"),
    ("authz_core_module", "mod_authz_core.so", "mod_authz_core.c"),
    // AddHandler in htaccess.sample.
    ("mime_module", "mod_mime.so", "mod_mime.c"),
    // SetEnv.
    ("env_module", "mod_env.so", "mod_env.c"),
    ("cgi_module", "mod_cgi.so", "mod_cgi.c"),
];

/// The MPM to load unless the binary has one compiled in: prefork suits mod_cgi.
const PREFORK: (&str, &str, &str) = ("mpm_prefork_module", "mod_mpm_prefork.so", "prefork.c");
const COMPILED_IN_MPMS: &[&str] = &["prefork.c", "worker.c", "event.c"];

/// Where distributions put Apache's shared modules.
const MODULE_DIRS: &[&str] = &[
    "/usr/lib/apache2/modules",
    "/usr/lib64/httpd/modules",
    "/usr/lib/httpd/modules",
    "/usr/lib/apache2",
    "/usr/libexec/apache2",
    "/usr/local/libexec/apache24",
];

#[test]
fn reload_counts_per_visitor_behind_apache() {
    let Some(tools) = Tools::find() else { return };
    let site = Site::new(&tools);
    let server = Server::start(&tools, &site);

    // Run every check before stopping Apache, then panic with its logs: an assertion alone
    // would hide why the server misbehaved.
    let outcome = check_site(&tools, &site, &server);
    let logs = site.logs();
    drop(server);
    if let Err(problem) = outcome {
        panic!("{problem}\n\n{logs}");
    }
}

/// The requests and what they must leave behind.
fn check_site(tools: &Tools, site: &Site, server: &Server) -> Result<(), String> {
    let url = format!("http://127.0.0.1:{}/cgi-bin/reload", server.port);
    let first_jar = site.root().join("visitor-1.jar");

    // The first answer creates the session; the next two must find it through the cookie.
    let first = tools.get(&url, &first_jar)?;
    first.expect_count(1)?;
    let set_cookie = first
        .set_cookie()
        .ok_or_else(|| format!("the first answer set no cookie:\n{}", first.head))?;
    let cookie = SessionCookie::parse(set_cookie)?;
    // 900 is PSOSessionExpire "15*60" from the .htaccess: proof that SetEnv reached pso.
    ensure(
        cookie.max_age == 900,
        format!("a new session's cookie should say Max-Age=900: {set_cookie}"),
    )?;

    for expected in 2..=3 {
        let reply = tools.get(&url, &first_jar)?;
        reply.expect_count(expected)?;
        // pso may repeat the cookie with the same id. PSOCookieSession_Max-Age gives each
        // cookie 900 seconds from its own response, so Expires may move on by a second.
        if let Some(set_cookie) = reply.set_cookie() {
            let again = SessionCookie::parse(set_cookie)?;
            ensure(
                again.id == cookie.id && again.max_age <= 900,
                format!("the cookie changed from\n  {cookie:?}\nto\n  {again:?}"),
            )?;
        }
    }

    check_sessions_dir(site, &cookie.id)?;

    // A Cookie header as long as Apache allows by default (LimitRequestFieldSize 8190), with
    // 200 other cookies and bytes that are not UTF-8 before the session cookie, and after it:
    // the session is still found.
    let session = format!("reload={}", cookie.id);
    let mut filler = b"tracker=\xff\xfe; ".to_vec();
    let mut i = 0;
    while filler.len() + session.len() + 40 <= 8190 {
        filler.extend_from_slice(format!("pad{i}=xxxxxxxxxxxxxxxxxxxxxxxx; ").as_bytes());
        i += 1;
    }
    let before = [filler.clone(), session.clone().into_bytes()].concat();
    let after = [session.clone().into_bytes(), b"; ".to_vec(), filler].concat();
    for (expected, header) in [(4, before), (5, after)] {
        tools
            .get_with_cookie(&url, &header)?
            .expect_count(expected)?;
    }

    // A second browser, without the first one's cookie, gets a session of its own.
    let reply = tools.get(&url, &site.root().join("visitor-2.jar"))?;
    reply.expect_count(1)?;

    // The server refuses to show .htaccess, which may one day hold secrets.
    let htaccess = format!("http://127.0.0.1:{}/cgi-bin/.htaccess", server.port);
    let reply = tools.get(&htaccess, &site.root().join("visitor-3.jar"))?;
    ensure(
        reply.status().contains(" 403"),
        format!("cgi-bin/.htaccess was not refused: {}", reply.status()),
    )?;

    // pso reports configuration problems on stderr, which Apache logs; the sample has none.
    let error_log = fs::read_to_string(site.root().join("error.log")).unwrap_or_default();
    ensure(
        !error_log.contains("pso:"),
        "pso complained about the configuration (see the error log)".to_owned(),
    )
}

/// What a `Set-Cookie` for the session says.
#[derive(Debug)]
struct SessionCookie {
    id: String,
    max_age: u64,
}

impl SessionCookie {
    /// Parses the header and checks the attributes every session cookie here must have.
    fn parse(set_cookie: &str) -> Result<SessionCookie, String> {
        let (pair, attributes) = set_cookie.split_once(';').unwrap_or((set_cookie, ""));
        let id = pair
            .strip_prefix("reload=")
            .filter(|id| is_session_id(id))
            .ok_or_else(|| format!("the cookie is not reload=<48 hex digits>: {set_cookie}"))?;
        let attributes: Vec<&str> = attributes.split(';').map(str::trim).collect();
        for wanted in ["HttpOnly", "SameSite=Lax", "Path=/"] {
            ensure(
                attributes.contains(&wanted),
                format!("the cookie lacks {wanted}: {set_cookie}"),
            )?;
        }
        let value = |name: &str| attributes.iter().find_map(|a| a.strip_prefix(name));
        let max_age = value("Max-Age=")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("the cookie lacks Max-Age: {set_cookie}"))?;
        ensure(
            value("Expires=").is_some(),
            format!("the cookie lacks Expires: {set_cookie}"),
        )?;
        Ok(SessionCookie {
            id: id.to_owned(),
            max_age,
        })
    }
}

/// The session directory is private to the CGI user and holds the one visitor's session.
fn check_sessions_dir(site: &Site, cookie_id: &str) -> Result<(), String> {
    let dir = site.sessions();
    let meta = fs::symlink_metadata(&dir)
        .map_err(|e| format!("no session directory {}: {e}", dir.display()))?;
    ensure(
        meta.is_dir() && meta.mode() & 0o7777 == 0o700,
        format!("{} has mode {:o}, not 0700", dir.display(), meta.mode()),
    )?;
    ensure(
        meta.uid() == site.cgi_uid,
        format!(
            "{} belongs to uid {}, not to the CGI user {}",
            dir.display(),
            meta.uid(),
            site.cgi_uid
        ),
    )?;

    // "name mode" of every entry, e.g. "reload.<id>.pso 600".
    let entries: Vec<String> = fs::read_dir(&dir)
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| {
            let mode = e.metadata().map_or(0, |m| m.mode() & 0o7777);
            format!("{} {mode:o}", e.file_name().to_string_lossy())
        })
        .collect();
    let expected = format!("reload.{cookie_id}.pso 600");
    ensure(
        entries == [expected.as_str()],
        format!(
            "{} should hold only {expected:?} (name, mode), but holds {entries:?}",
            dir.display()
        ),
    )
}

fn is_session_id(text: &str) -> bool {
    text.len() == 48 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

fn ensure(condition: bool, problem: String) -> Result<(), String> {
    if condition { Ok(()) } else { Err(problem) }
}

/// The programs the test runs.
struct Tools {
    apache: PathBuf,
    modules_dir: PathBuf,
    /// Modules compiled into the binary (`apache2 -l`), e.g. `mod_unixd.c`.
    compiled_in: Vec<String>,
    curl: PathBuf,
    /// `setpriv`, when the test runs as root and must drop privileges for Apache.
    setpriv: Option<PathBuf>,
}

impl Tools {
    /// Finds Apache, its modules and curl; `None` (after a loud message) to skip the test.
    fn find() -> Option<Tools> {
        let Some(apache) = find_program(&["apache2", "httpd"]) else {
            return skip("apache2 (or httpd) is not installed");
        };
        let Some(modules_dir) = find_modules_dir(&apache) else {
            return skip("Apache's modules directory (with mod_cgi.so) was not found");
        };
        let Some(curl) = find_program(&["curl"]) else {
            return skip("curl is not installed");
        };
        let setpriv = if running_as_root() {
            let Some(setpriv) = find_program(&["setpriv"]) else {
                return skip("setpriv (util-linux) is needed to run Apache as nobody");
            };
            Some(setpriv)
        } else {
            None
        };
        let compiled_in = compiled_in_modules(&apache);
        Some(Tools {
            apache,
            modules_dir,
            compiled_in,
            curl,
            setpriv,
        })
    }

    /// The `LoadModule` lines for what the binary lacks.
    fn load_modules(&self) -> String {
        let has_mpm = COMPILED_IN_MPMS
            .iter()
            .any(|mpm| self.compiled_in.iter().any(|m| m == mpm));
        let mpm = (!has_mpm).then_some(&PREFORK);
        mpm.into_iter()
            .chain(MODULES)
            .filter(|(_, _, builtin)| !self.compiled_in.iter().any(|m| m == builtin))
            .map(|(name, file, _)| {
                let path = self.modules_dir.join(file);
                assert!(
                    path.exists(),
                    "the Apache module {} is missing",
                    path.display()
                );
                format!("LoadModule {name} \"{}\"\n", path.display())
            })
            .collect()
    }

    /// One request, the way a browser with cookie storage `jar` would make it.
    fn get(&self, url: &str, jar: &Path) -> Result<Reply, String> {
        let output = Command::new(&self.curl)
            .args(["--silent", "--show-error", "--include", "--max-time", "30"])
            .arg("--cookie-jar")
            .arg(jar)
            .arg("--cookie")
            .arg(jar)
            .arg(url)
            .output()
            .map_err(|e| format!("cannot run curl: {e}"))?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            return Err(format!(
                "curl {url} failed ({}): {}{text}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("no header block in the answer to {url}:\n{text}"))?;
        Ok(Reply {
            head: head.to_owned(),
            body: body.to_owned(),
        })
    }
}

impl Tools {
    /// A GET with `header` as the whole `Cookie` header, any bytes.
    fn get_with_cookie(&self, url: &str, header: &[u8]) -> Result<Reply, String> {
        use std::os::unix::ffi::OsStringExt;
        let mut line = b"Cookie: ".to_vec();
        line.extend_from_slice(header);
        let output = Command::new(&self.curl)
            .args([
                "--silent",
                "--show-error",
                "--include",
                "--max-time",
                "30",
                "-H",
            ])
            .arg(std::ffi::OsString::from_vec(line))
            .arg(url)
            .output()
            .map_err(|e| format!("cannot run curl: {e}"))?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("no header block in the answer to {url}:\n{text}"))?;
        Ok(Reply {
            head: head.to_owned(),
            body: body.to_owned(),
        })
    }
}

/// Skips the test with a message nobody can miss, or fails it in CI.
fn skip<T>(reason: &str) -> Option<T> {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{reason}: CI=true, so tests/apache.rs must run; install apache2 and curl");
    }
    eprintln!("\n********************************************************************");
    eprintln!("SKIPPED: {reason}; tests/apache.rs did not run (install apache2 and curl)");
    eprintln!("********************************************************************\n");
    None
}

/// A program in `PATH`, or in the sbin directories that a normal user's `PATH` often lacks.
fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .collect();
    names.iter().find_map(|name| {
        dirs.iter().map(|dir| dir.join(name)).find(|candidate| {
            fs::metadata(candidate).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
        })
    })
}

fn find_modules_dir(apache: &Path) -> Option<PathBuf> {
    // `apache2 -V` names the server root; Fedora keeps a `modules` link there.
    let server_root = Command::new(apache)
        .arg("-V")
        .output()
        .ok()
        .and_then(|out| {
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.lines()
                .find_map(|l| l.trim().strip_prefix("-D HTTPD_ROOT="))
                .map(|root| PathBuf::from(root.trim_matches('"')).join("modules"))
        });
    server_root
        .into_iter()
        .chain(MODULE_DIRS.iter().map(PathBuf::from))
        .find(|dir| dir.join("mod_cgi.so").exists())
}

fn compiled_in_modules(apache: &Path) -> Vec<String> {
    let output = Command::new(apache)
        .arg("-l")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} -l: {e}", apache.display()));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .skip(1) // "Compiled in modules:"
        .map(|l| l.trim().to_owned())
        .collect()
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// One answer: the header block and the body.
struct Reply {
    head: String,
    body: String,
}

impl Reply {
    fn status(&self) -> &str {
        self.head.lines().next().unwrap_or("")
    }

    fn set_cookie(&self) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("set-cookie")
                .then(|| value.trim())
        })
    }

    fn expect_count(&self, n: u32) -> Result<(), String> {
        let wanted = format!("You reloaded: {n} times");
        ensure(
            self.status().contains(" 200 ") && self.body.contains(&wanted),
            format!(
                "expected \"{wanted}\", got:\n{}\r\n\r\n{}",
                self.head, self.body
            ),
        )
    }
}

/// The server's files: config, logs, cgi-bin and sessions, all in one temporary directory.
struct Site {
    dir: tempfile::TempDir,
    /// The user the CGI program runs as, who must own the session directory.
    cgi_uid: u32,
}

impl Site {
    fn new(tools: &Tools) -> Site {
        let dir = tempfile::Builder::new()
            .prefix("pso-apache-")
            .tempdir()
            .expect("a temporary directory");
        let root = dir.path();

        let cgi_bin = root.join("cgi-bin");
        fs::create_dir(&cgi_bin).unwrap();
        set_mode(&cgi_bin, 0o755);
        // A copy, not a link: the build directory may be unreadable for nobody.
        let program = cgi_bin.join("reload");
        fs::copy(RELOAD, &program).expect("copy the reload program");
        set_mode(&program, 0o755);

        // The sample as shipped, plus the settings this test depends on. Apache hands the `-` of
        // Max-Age to CGI as `_`: pso must still recognise it, or it logs an unknown variable,
        // which the error-log check below catches (the value agrees with the lifetime's 900).
        let sample = fs::read_to_string(SAMPLE).expect("read htaccess.sample");
        let sessions = root.join("sessions");
        let htaccess = format!(
            "{sample}\n# Added by tests/apache.rs\n\
             SetEnv PSOSessionExpire \"15*60\"\n\
             SetEnv PSOCookieSession_Max-Age \"15*60\"\n\
             SetEnv PSOSessionFileLoader_Path \"{}\"\n",
            sessions.display()
        );
        let htaccess_path = cgi_bin.join(".htaccess");
        fs::write(&htaccess_path, htaccess).unwrap();
        set_mode(&htaccess_path, 0o644);

        // Apache as nobody writes its logs and pid file here, and pso creates `sessions`.
        // The directory stays 0700: nobody (its owner now) and root need no other bits.
        let cgi_uid = if tools.setpriv.is_some() {
            std::os::unix::fs::chown(root, Some(NOBODY), Some(NOBODY))
                .expect("chown the site directory to nobody");
            NOBODY
        } else {
            // SAFETY: geteuid has no preconditions and cannot fail.
            unsafe { libc::geteuid() }
        };
        Site { dir, cgi_uid }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn sessions(&self) -> PathBuf {
        self.root().join("sessions")
    }

    fn conf(&self) -> PathBuf {
        self.root().join("httpd.conf")
    }

    /// The least configuration that runs cgi-bin/reload under the sample's rules.
    fn write_conf(&self, tools: &Tools, port: u16) {
        let root = self.root().display();
        let modules = tools.load_modules();
        // AllowOverride is the minimum htaccess.sample asks for, so the test proves it enough.
        let conf = format!(
            r#"# Written by tests/apache.rs
ServerRoot "{root}"
ServerName 127.0.0.1
Listen 127.0.0.1:{port}
{modules}
PidFile "{root}/httpd.pid"
ErrorLog "{root}/error.log"
LogLevel warn
DefaultRuntimeDir "{root}"
# mod_mime wants a types file; no file needs a type here.
TypesConfig /dev/null

<IfModule mpm_prefork_module>
    StartServers 1
    MinSpareServers 1
    MaxSpareServers 2
</IfModule>

DocumentRoot "{root}"
<Directory />
    AllowOverride None
    Require all denied
</Directory>
<Directory "{root}/cgi-bin">
    AllowOverride FileInfo Options=ExecCGI
    Require all granted
</Directory>
<Files ".ht*">
    Require all denied
</Files>
"#
        );
        fs::write(self.conf(), conf).unwrap();
        set_mode(&self.conf(), 0o644);
    }

    /// Apache's error log and its own output, for failure messages.
    fn logs(&self) -> String {
        let read = |name: &str| {
            fs::read_to_string(self.root().join(name)).unwrap_or_else(|e| format!("({e})"))
        };
        format!(
            "--- Apache error log ---\n{}\n--- Apache stdout/stderr ---\n{}",
            read("error.log"),
            read("apache.out")
        )
    }
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A running Apache; dropping it stops the server, also when the test panics.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(tools: &Tools, site: &Site) -> Server {
        // The port is free when picked but another process may take it before Apache binds
        // it, so a few tries.
        let mut failure = String::new();
        for _ in 0..3 {
            let port = free_port();
            site.write_conf(tools, port);
            // A fresh log, so that only this try's "Address already in use" counts.
            let _ = fs::remove_file(site.root().join("error.log"));
            let mut server = Server {
                child: spawn_apache(tools, site),
                port,
            };
            match server.wait_until_ready() {
                Ok(()) => return server,
                Err(e) => failure = e,
            }
            drop(server);
            if !site.logs().contains("Address already in use") {
                break;
            }
        }
        panic!("Apache did not start: {failure}\n\n{}", site.logs());
    }

    /// Polls the port until Apache accepts connections.
    fn wait_until_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("it exited with {status}"));
            }
            if TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "port {} still closed after {START_TIMEOUT:?}",
                    self.port
                ));
            }
            sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let pid = self.child.id() as libc::pid_t;
        // SIGTERM lets the parent stop its prefork children; SIGKILL would orphan them.
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            sleep(Duration::from_millis(50));
        }
        // Whatever is left of Apache's process group (a stuck child, or a parent ignoring
        // SIGTERM) is killed.
        // SAFETY: as above; Apache leads its own process group (see spawn_apache).
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

fn spawn_apache(tools: &Tools, site: &Site) -> Child {
    let mut command = match &tools.setpriv {
        // Started as root, Apache's parent would stay root and only its children switch to
        // `User`; dropping privileges first runs the whole server, and the CGI program, as
        // nobody, as on a shared host.
        Some(setpriv) => {
            let mut c = Command::new(setpriv);
            c.arg(format!("--reuid={NOBODY}"))
                .arg(format!("--regid={NOBODY}"))
                .arg("--clear-groups")
                .arg(&tools.apache);
            c
        }
        None => Command::new(&tools.apache),
    };
    // Apache's startup complaints come before the error log is open: keep them in a file.
    let out_path = site.root().join("apache.out");
    let out = fs::File::create(&out_path).expect("create apache.out");
    command
        .arg("-f")
        .arg(site.conf())
        .arg("-DFOREGROUND")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        // Its own process group, so that Drop can kill every process it started.
        .process_group(0);
    command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", tools.apache.display()))
}

/// A loopback port nobody listens on, as the kernel picks it.
fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    listener.local_addr().expect("the bound address").port()
}
