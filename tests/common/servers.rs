//! Real web servers for tests: started from their Debian packages on free loopback ports, as an
//! unprivileged user when the tests run as root, and stopped (with everything they started) when
//! dropped. A browser (curl with a cookie jar) talks to them.

use std::fs;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::thread::sleep;
use std::time::{Duration, Instant};

/// The user and group servers run as when the tests run as root (Debian's nobody/nogroup).
pub const NOBODY: u32 = 65534;

/// The reload counter as each build deploys it: the default build this test run made, and
/// the statically linked one of `cargo deploy` (the README's deploy command). Each server test
/// runs both.
pub fn reload_builds() -> Vec<PathBuf> {
    let mut builds = vec![PathBuf::from(super::example("reload"))];
    builds.extend(deployed_reload());
    builds
}

/// The reload counter built by `cargo deploy`, once per test binary, into a target directory
/// of its own (`target/deploy-tests`): the nested cargo neither waits on the lock of the build
/// running these tests nor leaves a stale program to test. `None`, with a loud skip (a failure
/// in CI), where it cannot be built.
pub fn deployed_reload() -> Option<PathBuf> {
    static BUILT: OnceLock<Option<PathBuf>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            if !cfg!(all(
                target_arch = "x86_64",
                target_os = "linux",
                target_env = "gnu"
            )) {
                super::skip_or_fail("`cargo deploy` is set up for x86_64 Linux (glibc) only");
                return None;
            }
            let root = Path::new(env!("CARGO_MANIFEST_DIR"));
            let target = root.join("target").join("deploy-tests");
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let built = Command::new(cargo)
                .current_dir(root)
                .args(["deploy", "--quiet", "--target-dir"])
                .arg(&target)
                .stdin(Stdio::null())
                .status();
            let program = target.join("x86_64-unknown-linux-gnu/deploy/examples/reload");
            match built {
                Ok(status) if status.success() && program.is_file() => Some(program),
                outcome => {
                    super::skip_or_fail(&format!("`cargo deploy` did not build: {outcome:?}"));
                    None
                }
            }
        })
        .clone()
}

/// A program in `PATH`, or in the sbin directories that a normal user's `PATH` often lacks.
pub fn find_program(names: &[&str]) -> Option<PathBuf> {
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

/// Every program in `names` (as found by [`find_program`]), or a loud skip (a failure in CI).
pub fn require(names: &[&str]) -> Option<Vec<PathBuf>> {
    let mut found = Vec::new();
    for name in names {
        match find_program(&[name]) {
            Some(path) => found.push(path),
            None => {
                super::skip_or_fail(&format!("{name} is not installed"));
                return None;
            }
        }
    }
    Some(found)
}

pub fn running_as_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The uid servers and programs run as: nobody under root, else ourselves.
pub fn server_uid() -> u32 {
    if running_as_root() {
        NOBODY
    } else {
        rustix::process::geteuid().as_raw()
    }
}

/// A loopback port nobody listens on, as the kernel picks it.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A site: one temporary directory for configuration, logs, sockets, `cgi-bin/` and sessions,
/// owned by the server user.
pub struct Site {
    pub dir: tempfile::TempDir,
}

impl Site {
    /// A site whose `cgi-bin/` holds a copy of each program (a copy: the build directory may
    /// be unreadable for nobody).
    pub fn new(programs: &[&Path]) -> Site {
        let dir = tempfile::Builder::new()
            .prefix("pso-site-")
            .tempdir()
            .unwrap();
        let cgi_bin = dir.path().join("cgi-bin");
        fs::create_dir(&cgi_bin).unwrap();
        set_mode(&cgi_bin, 0o755);
        for program in programs {
            // Which build a failure came from: the test's output says.
            eprintln!("site {}: {}", dir.path().display(), program.display());
            let copy = cgi_bin.join(program.file_name().unwrap());
            fs::copy(program, &copy).unwrap();
            set_mode(&copy, 0o755);
        }
        fs::create_dir(dir.path().join("tmp")).unwrap();
        if running_as_root() {
            for path in [dir.path(), &dir.path().join("tmp")] {
                std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).unwrap();
            }
        }
        Site { dir }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn sessions(&self) -> PathBuf {
        self.path("sessions")
    }

    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path(name);
        fs::write(&path, contents).unwrap();
        set_mode(&path, 0o644);
        path
    }

    /// Every log file of the site, for a failure message.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        for entry in fs::read_dir(self.root()).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".log") || name.ends_with(".out") {
                let body = fs::read_to_string(entry.path()).unwrap_or_default();
                text.push_str(&format!("\n--- {name} ---\n{body}"));
            }
        }
        text
    }
}

/// A command run as the server user (through `setpriv` under root).
pub fn as_server_user(program: &Path) -> Command {
    as_user(running_as_root().then_some(NOBODY), program)
}

/// A command run as `uid` (through `setpriv`), or as ourselves for `None`.
pub fn as_user(uid: Option<u32>, program: &Path) -> Command {
    match uid {
        Some(uid) => {
            let mut command =
                Command::new(find_program(&["setpriv"]).expect("setpriv (util-linux)"));
            command
                .arg(format!("--reuid={uid}"))
                .arg(format!("--regid={uid}"))
                .arg("--clear-groups")
                .arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// nginx's configuration for a site: one server on `port` with `location`, every temporary
/// path inside the site.
pub fn nginx_conf(site: &Site, port: u16, location: &str) -> PathBuf {
    let root = site.root().display();
    site.write(
        "nginx.conf",
        &format!(
            r#"# Written by the tests
daemon off;
worker_processes 2;
pid {root}/nginx.pid;
error_log {root}/nginx-error.log info;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    keepalive_requests 100000;
    client_body_temp_path {root}/tmp/body;
    fastcgi_temp_path {root}/tmp/fastcgi;
    proxy_temp_path {root}/tmp/proxy;
    uwsgi_temp_path {root}/tmp/uwsgi;
    scgi_temp_path {root}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        {location}
    }}
}}
"#
        ),
    )
}

/// nginx, as the server user, with the site's `nginx.conf`.
pub fn start_nginx(site: &Site, port: u16, location: &str) -> Daemon {
    let conf = nginx_conf(site, port, location);
    let nginx = find_program(&["nginx"]).expect("nginx");
    let mut command = as_server_user(&nginx);
    command
        .arg("-p")
        .arg(site.root())
        .arg("-c")
        .arg(&conf)
        .arg("-e")
        .arg(site.path("nginx-error.log"));
    Daemon::start("nginx", command, site, Ready::Port(port))
}

/// A running server or application; dropping it stops it and everything it started.
pub struct Daemon {
    pub name: String,
    child: Child,
}

/// What a daemon is ready for.
pub enum Ready<'a> {
    Port(u16),
    Socket(&'a Path),
}

impl Daemon {
    /// Spawns `command` in its own process group, output to `<site>/<name>.out`, and waits
    /// until it listens.
    pub fn start(name: &str, mut command: Command, site: &Site, ready: Ready<'_>) -> Daemon {
        let out = fs::File::create(site.path(&format!("{name}.out"))).unwrap();
        command
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let mut daemon = Daemon {
            name: name.to_owned(),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!("{name} exited with {status}:{}", site.logs());
            }
            let up = match &ready {
                Ready::Port(port) => TcpStream::connect((Ipv4Addr::LOCALHOST, *port)).is_ok(),
                Ready::Socket(path) => std::os::unix::net::UnixStream::connect(path).is_ok(),
            };
            if up {
                return daemon;
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not start:{}",
                site.logs()
            );
            sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let pid = self.child.id();
        super::signal(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            sleep(Duration::from_millis(20));
        }
        // The daemon leads its own process group.
        if let Some(group) = rustix::process::Pid::from_raw(pid as i32) {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
        let _ = self.child.wait();
    }
}

/// One answer: the header block and the body.
#[derive(Debug)]
pub struct Reply {
    pub head: String,
    pub body: String,
}

impl Reply {
    pub fn status(&self) -> &str {
        self.head.lines().next().unwrap_or("")
    }

    pub fn header(&self, wanted: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case(wanted).then(|| value.trim())
        })
    }

    /// The number in the reload counter's page.
    pub fn count(&self) -> Option<u64> {
        let rest = self.body.split("You reloaded: ").nth(1)?;
        rest.split(' ').next()?.parse().ok()
    }
}

/// A browser: curl with a cookie jar.
pub struct Browser {
    curl: PathBuf,
    jar: PathBuf,
}

impl Browser {
    pub fn new(site: &Site, name: &str) -> Browser {
        Browser {
            curl: find_program(&["curl"]).expect("curl"),
            jar: site.path(&format!("{name}.jar")),
        }
    }

    pub fn get(&self, url: &str) -> Result<Reply, String> {
        let jar = self.jar.as_os_str();
        let args = ["--cookie-jar".as_ref(), jar, "--cookie".as_ref(), jar];
        self.fetch(url, &args)
    }

    /// A GET without the jar, with `header` as the whole `Cookie` header, any bytes.
    pub fn get_with_cookie(&self, url: &str, header: &[u8]) -> Result<Reply, String> {
        use std::os::unix::ffi::OsStringExt;
        let line = std::ffi::OsString::from_vec([&b"Cookie: "[..], header].concat());
        self.fetch(url, &["-H".as_ref(), line.as_os_str()])
    }

    fn fetch(&self, url: &str, args: &[&std::ffi::OsStr]) -> Result<Reply, String> {
        let output = Command::new(&self.curl)
            .args(["--silent", "--show-error", "--include", "--max-time", "30"])
            .args(args)
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
        // Skip interim responses (100 Continue) if any.
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("no header block in the answer to {url}:\n{text}"))?;
        Ok(Reply {
            head: head.to_owned(),
            body: body.to_owned(),
        })
    }
}

/// Debian's Apache with `modules` loaded (besides the MPM and the basics, unless compiled
/// in), configured by `extra`, on `port`, as the server user.
pub fn start_apache(site: &Site, port: u16, modules: &[(&str, &str)], extra: &str) -> Daemon {
    let apache = find_program(&["apache2", "httpd"]).expect("apache2");
    let compiled_in =
        String::from_utf8_lossy(&Command::new(&apache).arg("-l").output().unwrap().stdout)
            .into_owned();
    let has_mpm = ["prefork.c", "worker.c", "event.c"]
        .iter()
        .any(|m| compiled_in.contains(m));
    let mpm = [("mpm_event_module", "mod_mpm_event.so")];
    let basics = [
        ("unixd_module", "mod_unixd.so"),
        ("authz_core_module", "mod_authz_core.so"),
        ("env_module", "mod_env.so"),
        ("mime_module", "mod_mime.so"),
    ];
    let dir = Path::new("/usr/lib/apache2/modules");
    let load: String = mpm
        .iter()
        .filter(|_| !has_mpm)
        .chain(basics.iter())
        .chain(modules.iter())
        .filter(|(_, file)| !compiled_in.contains(&file.replace(".so", ".c")))
        .map(|(name, file)| format!("LoadModule {name} \"{}\"\n", dir.join(file).display()))
        .collect();
    let root = site.root().display();
    let conf = site.write(
        "httpd.conf",
        &format!(
            r#"# Written by the tests
ServerRoot "{root}"
ServerName 127.0.0.1
Listen 127.0.0.1:{port}
{load}
PidFile "{root}/httpd.pid"
ErrorLog "{root}/apache-error.log"
LogLevel warn
DefaultRuntimeDir "{root}"
TypesConfig /dev/null
DocumentRoot "{root}"
<Directory />
    AllowOverride None
    Require all denied
</Directory>
{extra}
"#
        ),
    );
    let mut command = as_server_user(&apache);
    command.arg("-f").arg(&conf).arg("-DFOREGROUND");
    Daemon::start("apache", command, site, Ready::Port(port))
}

/// What every server must show with the reload counter configured through its own way of
/// setting variables: `PSOServiceId shop`, `PSOSessionExpire "15*60"` and the site's
/// session directory. The counter goes 1, 2, 3 for one browser and starts again for another;
/// the cookie is named `shop` with `Max-Age=900`; the session's file is in the directory.
pub fn check_counter(site: &Site, url: &str) -> Result<(), String> {
    let browser = Browser::new(site, "first");
    let mut id = String::new();
    for expected in 1..=3 {
        let reply = browser.get(url)?;
        if reply.count() != Some(expected) {
            return Err(format!(
                "expected count {expected}, got:\n{}\n\n{}",
                reply.head, reply.body
            ));
        }
        if expected == 1 {
            let cookie = reply
                .header("Set-Cookie")
                .ok_or_else(|| format!("no Set-Cookie:\n{}", reply.head))?;
            let value = cookie
                .strip_prefix("shop=")
                .ok_or_else(|| format!("the cookie is not named by PSOServiceId: {cookie}"))?;
            id = value.split(';').next().unwrap_or("").to_owned();
            if !cookie.contains("Max-Age=900") {
                return Err(format!(
                    "PSOSessionExpire \"15*60\" did not reach the cookie: {cookie}"
                ));
            }
        }
    }
    let file = site.sessions().join(format!("shop.{id}.pso"));
    let meta =
        fs::metadata(&file).map_err(|e| format!("no session file {} ({e})", file.display()))?;
    if meta.mode() & 0o777 != 0o600 || meta.uid() != server_uid() {
        return Err(format!(
            "{} has mode {:o}, owner {}",
            file.display(),
            meta.mode() & 0o777,
            meta.uid()
        ));
    }
    let dir = fs::metadata(site.sessions()).unwrap();
    if dir.mode() & 0o777 != 0o700 {
        return Err(format!(
            "the session directory has mode {:o}",
            dir.mode() & 0o777
        ));
    }
    let other = Browser::new(site, "second").get(url)?;
    if other.count() != Some(1) {
        return Err(format!(
            "a second browser should start at 1:\n{}",
            other.body
        ));
    }
    Ok(())
}

/// Runs `checks`, then panics with every log of the site if they failed.
pub fn expect_ok(site: &Site, outcome: Result<(), String>) {
    if let Err(problem) = outcome {
        panic!("{problem}\n{}", site.logs());
    }
}
