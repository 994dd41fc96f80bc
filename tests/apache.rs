//! The reload counter behind a real Apache httpd with mod_cgi, configured by `htaccess.sample`.
//!
//! The test copies the built `reload` program into a site's `cgi-bin/` with the repository's
//! `htaccess.sample` as `.htaccess`, starts Apache on a free loopback port (as nobody when the
//! tests run as root) and talks to it with curl and a cookie jar, like a browser.
//!
//! Without Apache or curl the test is skipped with a loud message, except when `CI=true`: there
//! a missing tool is a failure, so CI cannot pass by silently testing nothing.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::servers::*;
use pso::{Meta, Record, SessionId};

const SAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/htaccess.sample");

#[test]
fn reload_counts_per_visitor_behind_apache() {
    if require(&["apache2", "curl"]).is_none() {
        return;
    }
    for reload in reload_builds() {
        behind_apache(&reload);
    }
}

fn behind_apache(reload: &Path) {
    let site = Site::new(&[reload]);
    // The sample as shipped, plus the settings this test depends on. Apache hands the `-` of
    // Max-Age to CGI as `_`: pso must still recognise it, or it logs an unknown variable,
    // which the error-log check below catches (the value agrees with the lifetime's 900).
    // Collection on every request: it must neither hold the response up nor be cut short.
    let sample = fs::read_to_string(SAMPLE).expect("read htaccess.sample");
    site.write(
        "cgi-bin/.htaccess",
        &format!(
            "{sample}\n# Added by tests/apache.rs\n\
             SetEnv PSOSessionExpire \"15*60\"\n\
             SetEnv PSOCookieSession_Max-Age \"15*60\"\n\
             SetEnv PSOSessionGCProbability 1\n\
             SetEnv PSOSessionFileLoader_Path \"{}\"\n",
            site.sessions().display()
        ),
    );
    // The user's own program, under a name of its own (the sample once covered `reload` only,
    // and Apache sent any other program as a download), and a file that is not a program.
    let guestbook = site.path("cgi-bin/guestbook");
    fs::copy(site.path("cgi-bin/reload"), &guestbook).unwrap();
    set_mode(&guestbook, 0o755);
    site.write("cgi-bin/style.css", "body { color: black }\n");
    let expired = plant_expired_sessions(&site, 20);
    let port = free_port();
    let root = site.root().display();
    // AllowOverride is the minimum htaccess.sample asks for, so the test proves it enough.
    let extra = format!(
        r#"<Directory "{root}/cgi-bin">
    AllowOverride FileInfo Options=ExecCGI
    Require all granted
</Directory>
<Files ".ht*">
    Require all denied
</Files>"#
    );
    let _apache = start_apache(&site, port, &[("cgi_module", "mod_cgi.so")], &extra);
    let outcome = check_site(&site, port, &expired);
    expect_ok(&site, outcome);
}

/// Sessions of the CGI user that expired long ago, as files; returns their paths.
fn plant_expired_sessions(site: &Site, n: usize) -> Vec<std::path::PathBuf> {
    fs::create_dir(site.sessions()).unwrap();
    set_mode(&site.sessions(), 0o700);
    let mut meta = Meta::new(1_000_000_000);
    meta.deadline = Some(1_000_000_900);
    let bytes = Record::new(meta).encode().unwrap();
    let mut paths = vec![site.sessions()];
    for _ in 0..n {
        let path = site
            .sessions()
            .join(format!("reload.{}.pso", SessionId::generate().unwrap()));
        fs::write(&path, &bytes).unwrap();
        set_mode(&path, 0o600);
        paths.push(path);
    }
    if running_as_root() {
        for path in &paths {
            std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).unwrap();
        }
    }
    paths.remove(0);
    paths
}

/// The requests and what they must leave behind.
fn check_site(site: &Site, port: u16, expired: &[std::path::PathBuf]) -> Result<(), String> {
    let url = format!("http://127.0.0.1:{port}/cgi-bin/reload");
    let browser = Browser::new(site, "visitor-1");

    // The first answer creates the session; the next two must find it through the cookie.
    let first = browser.get(&url)?;
    expect_count(&first, 1)?;
    let set_cookie = first
        .header("Set-Cookie")
        .ok_or_else(|| format!("the first answer set no cookie:\n{}", first.head))?;
    let id = session_cookie(set_cookie)?;
    // 900 is PSOSessionExpire "15*60" from the .htaccess: proof that SetEnv reached pso.
    ensure(
        set_cookie.contains("Max-Age=900"),
        format!("a new session's cookie should say Max-Age=900: {set_cookie}"),
    )?;
    for expected in 2..=3 {
        let reply = browser.get(&url)?;
        expect_count(&reply, expected)?;
        if let Some(again) = reply.header("Set-Cookie") {
            ensure(
                session_cookie(again)? == id,
                format!("the cookie changed from {set_cookie} to {again}"),
            )?;
        }
    }

    // Collection ran after those responses (it had to, on every request), despite Apache's
    // SIGTERM to a finished CGI program: the expired sessions are gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    while expired.iter().any(|p| p.exists()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left = expired.iter().filter(|p| p.exists()).count();
    ensure(
        left == 0,
        format!("{left} expired sessions were not collected"),
    )?;
    check_sessions_dir(site, &id)?;

    // A Cookie header as long as Apache allows by default (LimitRequestFieldSize 8190), with
    // 200 other cookies and bytes that are not UTF-8 before the session cookie, and after it:
    // the session is still found.
    let session = format!("reload={id}");
    let mut filler = b"tracker=\xff\xfe; ".to_vec();
    let mut i = 0;
    while filler.len() + session.len() + 40 <= 8190 {
        filler.extend_from_slice(format!("pad{i}=xxxxxxxxxxxxxxxxxxxxxxxx; ").as_bytes());
        i += 1;
    }
    let before = [filler.clone(), session.clone().into_bytes()].concat();
    let after = [session.clone().into_bytes(), b"; ".to_vec(), filler].concat();
    for (expected, header) in [(4, before), (5, after)] {
        expect_count(&browser.get_with_cookie(&url, &header)?, expected)?;
    }

    // A second browser, without the first one's cookie, gets a session of its own.
    expect_count(&Browser::new(site, "visitor-2").get(&url)?, 1)?;

    // A program of any name runs; a file with an extension is served as it is.
    let guest = Browser::new(site, "visitor-4");
    let guestbook = format!("http://127.0.0.1:{port}/cgi-bin/guestbook");
    expect_count(&guest.get(&guestbook)?, 1)?;
    expect_count(&guest.get(&guestbook)?, 2)?;
    let css = guest.get(&format!("http://127.0.0.1:{port}/cgi-bin/style.css"))?;
    ensure(
        css.status().contains(" 200") && css.body.contains("color: black"),
        format!(
            "style.css was not served as a file: {} {}",
            css.status(),
            css.body
        ),
    )?;

    // The server refuses to show .htaccess, which may one day hold secrets.
    let reply = Browser::new(site, "visitor-3")
        .get(&format!("http://127.0.0.1:{port}/cgi-bin/.htaccess"))?;
    ensure(
        reply.status().contains(" 403"),
        format!("cgi-bin/.htaccess was not refused: {}", reply.status()),
    )?;

    // pso reports configuration problems on stderr, which Apache logs; the sample has none.
    let error_log = fs::read_to_string(site.path("apache-error.log")).unwrap_or_default();
    ensure(
        !error_log.contains("pso:"),
        "pso complained about the configuration (see the error log)".to_owned(),
    )
}

fn expect_count(reply: &Reply, n: u64) -> Result<(), String> {
    ensure(
        reply.status().contains(" 200 ") && reply.count() == Some(n),
        format!(
            "expected count {n}, got:\n{}\r\n\r\n{}",
            reply.head, reply.body
        ),
    )
}

/// The id of a session cookie, after checking the attributes every one here must have.
fn session_cookie(set_cookie: &str) -> Result<String, String> {
    let (pair, attributes) = set_cookie.split_once(';').unwrap_or((set_cookie, ""));
    let id = pair
        .strip_prefix("reload=")
        .filter(|id| id.len() == 48 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| format!("the cookie is not reload=<48 hex digits>: {set_cookie}"))?;
    let attributes: Vec<&str> = attributes.split(';').map(str::trim).collect();
    for wanted in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        ensure(
            attributes.contains(&wanted),
            format!("the cookie lacks {wanted}: {set_cookie}"),
        )?;
    }
    ensure(
        attributes.iter().any(|a| a.starts_with("Expires=")),
        format!("the cookie lacks Expires: {set_cookie}"),
    )?;
    Ok(id.to_owned())
}

/// The session directory is private to the CGI user and holds the one visitor's session.
fn check_sessions_dir(site: &Site, cookie_id: &str) -> Result<(), String> {
    let dir = site.sessions();
    let meta = fs::symlink_metadata(&dir).map_err(|e| format!("no session directory: {e}"))?;
    ensure(
        meta.is_dir() && meta.mode() & 0o7777 == 0o700 && meta.uid() == server_uid(),
        format!(
            "{} has mode {:o}, owner {}",
            dir.display(),
            meta.mode(),
            meta.uid()
        ),
    )?;
    // "name mode" of every entry but the collector's position.
    let entries: Vec<String> = fs::read_dir(&dir)
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .filter(|e| {
            !e.file_name()
                .to_string_lossy()
                .starts_with(".pso-gc-cursor")
        })
        .map(|e| {
            let mode = e.metadata().map_or(0, |m| m.mode() & 0o7777);
            format!("{} {mode:o}", e.file_name().to_string_lossy())
        })
        .collect();
    let expected = format!("reload.{cookie_id}.pso 600");
    ensure(
        entries == [expected.as_str()],
        format!(
            "{} should hold only {expected:?}, but holds {entries:?}",
            dir.display()
        ),
    )
}

fn ensure(condition: bool, problem: String) -> Result<(), String> {
    if condition { Ok(()) } else { Err(problem) }
}
