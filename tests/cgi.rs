//! The reload counter run as a real CGI process, with a real CGI environment.

mod common;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Reply, Site, have, skip_or_fail};

static RELOAD: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| common::example("reload"));

use pso::store::{LockOptions, SessionKey, Store};
use pso::{Meta, Record, SessionId};

fn key(service: &str, cookie: &str) -> SessionKey {
    let id: SessionId = cookie.split_once('=').unwrap().1.parse().unwrap();
    SessionKey::new(service.parse().unwrap(), id)
}

fn lock_options() -> LockOptions {
    LockOptions::new(Duration::from_secs(10))
}

/// Every file below `dir`, recursively.
fn tree(dir: &Path) -> BTreeSet<PathBuf> {
    let mut all = BTreeSet::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            all.extend(tree(&path));
        }
        all.insert(path);
    }
    all
}

fn is_session_file(name: &str) -> bool {
    name.strip_prefix("reload.")
        .and_then(|n| n.strip_suffix(".pso"))
        .is_some_and(|id| id.parse::<SessionId>().is_ok())
}

#[test]
fn the_cookie_chain_counts_one_two_three() {
    let site = Site::new(RELOAD.as_str());
    let first = site.get(None);
    assert_eq!(first.status(), "Status: 200 OK");
    assert_eq!(first.count(), 1);
    assert!(
        first
            .head
            .contains("Content-Type: text/html; charset=utf-8")
    );
    let cookie = first.cookie();
    assert!(
        cookie.starts_with("reload=") && cookie.len() == "reload=".len() + 48,
        "{cookie}"
    );
    assert_eq!(
        first.set_cookie().unwrap(),
        format!("{cookie}; HttpOnly; SameSite=Lax; Path=/")
    );
    let second = site.get(Some(&cookie));
    // The browser has its cookie: a returning visit sends none, so that it can never put an
    // older id back over a newer one.
    assert_eq!((second.count(), second.set_cookie()), (2, None));
    assert!(
        second.head.contains("Cache-Control: no-store"),
        "{second:?}"
    );
    assert_eq!(site.get(Some(&cookie)).count(), 3);

    // A second visitor has a session of their own.
    let other = site.get(None);
    assert_eq!(other.count(), 1);
    assert_ne!(other.cookie(), cookie);
    assert_eq!(site.get(Some(&cookie)).count(), 4);
    assert_eq!(site.files().len(), 2);
}

#[test]
fn files_are_private_and_named_by_service_and_id() {
    let site = Site::new(RELOAD.as_str());
    let cookie = site.get(None).cookie();
    let id = cookie.split_once('=').unwrap().1;
    assert_eq!(site.files(), BTreeSet::from([format!("reload.{id}.pso")]));
    let dir = fs::metadata(site.sessions()).unwrap();
    assert_eq!(dir.mode() & 0o777, 0o700);
    let file = fs::metadata(site.sessions().join(format!("reload.{id}.pso"))).unwrap();
    assert_eq!(file.mode() & 0o777, 0o600);
    // The file is in pso's versioned format and holds the counter.
    let record = site.store().peek(&key("reload", &cookie)).unwrap().unwrap();
    assert_eq!(record.get::<u64>("reloads").unwrap(), Some(1));
    assert_eq!(record.meta.client_addr.as_deref(), Some("192.0.2.7"));
    assert!(
        fs::read(site.sessions().join(format!("reload.{id}.pso")))
            .unwrap()
            .starts_with(b"PSOF\x02")
    );
}

#[test]
fn run_from_a_terminal_it_prints_the_whole_response_and_continues_with_a_cookie() {
    let mut site = Site::new(RELOAD.as_str());
    site.unset("GATEWAY_INTERFACE")
        .unset("SCRIPT_NAME")
        .unset("REQUEST_METHOD");
    let first = site.get(None);
    assert_eq!(first.status(), "Status: 200 OK");
    assert!(
        first.cookie().starts_with("reload="),
        "named after the program: {first:?}"
    );
    assert_eq!(site.get(Some(&first.cookie())).count(), 2);
}

#[test]
fn head_requests_get_headers_only() {
    let mut site = Site::new(RELOAD.as_str());
    site.set("REQUEST_METHOD", "HEAD");
    let reply = site.get(None);
    assert_eq!(reply.body, "");
    assert!(reply.set_cookie().is_some());
}

#[test]
fn service_id_names_the_cookie_and_the_files() {
    let mut site = Site::new(RELOAD.as_str());
    site.set("PSOServiceId", "shop");
    let reply = site.get(None);
    let cookie = reply.cookie();
    assert!(cookie.starts_with("shop="), "{cookie}");
    let id = cookie.split_once('=').unwrap().1;
    assert_eq!(site.files(), BTreeSet::from([format!("shop.{id}.pso")]));
    // The same id under another service is another session.
    site.set("PSOServiceId", "blog");
    let blog = site.get(Some(&cookie.replace("shop=", "blog=")));
    assert_eq!(blog.count(), 1);
    assert_ne!(blog.cookie(), cookie.replace("shop=", "blog="));
}

#[test]
fn a_variable_named_like_the_service_forces_the_session_id() {
    let mut site = Site::new(RELOAD.as_str());
    site.set("PSOServiceId", "MyService")
        .set("MyService", "007");
    let first = site.get(None);
    assert_eq!(
        (first.count(), first.cookie()),
        (1, "MyService=007".to_owned())
    );
    // Everybody shares it, cookie or not.
    assert_eq!(site.get(None).count(), 2);
    assert_eq!(
        site.get(Some(
            "MyService=0123456789abcdef0123456789abcdef0123456789abcdef"
        ))
        .count(),
        3
    );
    assert_eq!(
        site.files(),
        BTreeSet::from(["MyService.007.pso".to_owned()])
    );

    // An unsafe forced id is refused and logged; the visitor gets an ordinary session.
    site.set("MyService", "../../etc/passwd");
    let reply = site.get(None);
    assert_eq!(reply.count(), 1);
    assert!(reply.stderr.contains("MyService"), "{}", reply.stderr);
}

#[test]
fn session_expire_sets_the_cookie_lifetime_and_the_server_deadline() {
    let mut site = Site::new(RELOAD.as_str());
    for name in ["PSOSessionExpire", "PSOSessionExpires"] {
        site.unset("PSOSessionExpire").set(name, "15*60");
        let reply = site.get(None);
        let set = reply.set_cookie().unwrap();
        assert!(set.contains("; Max-Age=900; Expires="), "{name}: {set}");
    }
    site.set("PSOSessionExpire", "(2*24+1)*3600");
    assert!(
        site.get(None)
            .set_cookie()
            .unwrap()
            .contains("; Max-Age=176400;")
    );
    site.set("PSOSessionExpire", "+30m");
    assert!(
        site.get(None)
            .set_cookie()
            .unwrap()
            .contains("; Max-Age=1800;")
    );
    site.set("PSOSessionExpire", "Mon, 15 Apr 2041 19:00:00 GMT");
    assert!(
        site.get(None)
            .set_cookie()
            .unwrap()
            .ends_with("; Expires=Mon, 15 Apr 2041 19:00:00 GMT")
    );

    // The deadline is stored with the session and enforced by the server.
    site.set("PSOSessionExpire", "15*60");
    let cookie = site.get(None).cookie();
    let record = site.store().peek(&key("reload", &cookie)).unwrap().unwrap();
    assert_eq!(record.meta.deadline, Some(record.meta.created + 900));

    // A bad value: logged with the variable's name, and the default (browser close) is used.
    for bad in ["1/0", "15*", "99999999999999*99999999999999", "tomorrow"] {
        site.set("PSOSessionExpire", bad);
        let reply = site.get(None);
        assert_eq!(
            reply.set_cookie().unwrap(),
            format!("{}; HttpOnly; SameSite=Lax; Path=/", reply.cookie())
        );
        assert!(
            reply.stderr.contains("PSOSessionExpire"),
            "{bad}: {}",
            reply.stderr
        );
    }
}

#[test]
fn an_expired_session_is_replaced() {
    let site = Site::new(RELOAD.as_str());
    let cookie = site.get(None).cookie();
    let store = site.store();
    let key = key("reload", &cookie);
    let mut lock = store.lock(&key, lock_options()).unwrap();
    let mut record = lock.load().unwrap().unwrap();
    record.meta.deadline = Some(1_000);
    lock.save(&record).unwrap();
    drop(lock);
    let reply = site.get(Some(&cookie));
    assert_eq!(reply.count(), 1);
    assert_ne!(reply.cookie(), cookie);
    assert_eq!(
        store.peek(&key).unwrap(),
        None,
        "the expired session is deleted"
    );
}

#[test]
fn a_browser_close_session_dies_after_gc_max_lifetime_unused() {
    let mut site = Site::new(RELOAD.as_str());
    site.set("PSOSessionGCMaxLifetime", "1h");
    let cookie = site.get(None).cookie();
    let store = site.store();
    let key = key("reload", &cookie);
    let record = store.peek(&key).unwrap().unwrap();
    assert_eq!(record.meta.max_idle, Some(3600));
    let mut lock = store.lock(&key, lock_options()).unwrap();
    let mut record = lock.load().unwrap().unwrap();
    record.meta.last_access -= 3601;
    lock.save(&record).unwrap();
    drop(lock);
    assert_eq!(site.get(Some(&cookie)).count(), 1);
}

#[test]
fn session_directory_setting() {
    let mut site = Site::new(RELOAD.as_str());
    // Only the directory itself is created, never a missing parent: a 500 and a log line.
    let custom = site.root.path().join("deep/custom");
    site.set(
        "PSOSessionFileLoader_Path",
        format!("{}/", custom.display()),
    );
    let output = site.command(None).output().unwrap();
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("Status: 500 "));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("the parent of the session directory")
    );
    assert!(!site.root.path().join("deep").exists());
    fs::create_dir(site.root.path().join("deep")).unwrap();
    site.get(None);
    assert_eq!(fs::read_dir(&custom).unwrap().count(), 1);
    assert!(!site.sessions().exists());

    // Unset: a private directory under the system temp dir.
    let root = site.root.path().to_owned();
    site.unset("PSOSessionFileLoader_Path").set("TMPDIR", &root);
    site.get(None);
    let uid = fs::metadata("/proc/self").unwrap().uid();
    let default = site.root.path().join(format!("pso-{uid}"));
    assert_eq!(fs::read_dir(&default).unwrap().count(), 1);
    assert_eq!(fs::metadata(&default).unwrap().mode() & 0o777, 0o700);

    // A directory that is a symbolic link is refused: a 500 and a log line, nothing written.
    let link = site.root.path().join("link");
    std::os::unix::fs::symlink(&custom, &link).unwrap();
    site.set("PSOSessionFileLoader_Path", &link);
    let output = site.command(None).output().unwrap();
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.starts_with("Status: 500 "), "{text}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("symbolic link"));
    assert_eq!(fs::read_dir(&custom).unwrap().count(), 1);
}

#[test]
fn cookie_attributes_from_the_environment() {
    let mut site = Site::new(RELOAD.as_str());
    site.set("PSOCookieSession_Domain", "example.org")
        .set("PSOCookieSession_Path", "/cgi-bin/")
        .set("PSOCookieSession_SameSite", "Strict")
        .set("PSOCookieSession_HttpOnly", "off")
        .set("PSOCookieSession_Comment", "pso compatibility")
        .set("PSOCookieSession_Version", "1");
    let reply = site.get(None);
    assert_eq!(
        reply.set_cookie().unwrap(),
        format!(
            "{}; SameSite=Strict; Path=/cgi-bin/; Domain=example.org",
            reply.cookie()
        )
    );
    assert!(
        reply.stderr.is_empty(),
        "obsolete attributes are accepted quietly: {}",
        reply.stderr
    );

    let mut site = Site::new(RELOAD.as_str());
    site.set("PSOCookieSession_Max-Age", "3600");
    assert!(
        site.get(None)
            .set_cookie()
            .unwrap()
            .contains("; Max-Age=3600; Expires=")
    );
    site.unset("PSOCookieSession_Max-Age")
        .set("PSOCookieSession_expires", "Mon, 15 Apr 2041 19:00:00 GMT");
    assert!(
        site.get(None)
            .set_cookie()
            .unwrap()
            .ends_with("; Expires=Mon, 15 Apr 2041 19:00:00 GMT")
    );

    let mut site = Site::new(RELOAD.as_str());
    site.set("PSOCookieSession_Secure", "on");
    assert!(site.get(None).set_cookie().unwrap().contains("; Secure"));
    site.set("PSOCookieSession_Secure", "auto")
        .set("HTTPS", "on");
    assert!(
        site.get(None).set_cookie().unwrap().contains("; Secure"),
        "Secure under HTTPS"
    );
    site.unset("HTTPS");
    assert!(!site.get(None).set_cookie().unwrap().contains("Secure"));
    site.set("PSOCookieSession_Prefix", "__Host-")
        .set("PSOCookieSession_Path", "/x");
    let reply = site.get(None);
    assert!(reply.cookie().starts_with("__Host-reload="));
    assert!(reply.set_cookie().unwrap().ends_with("; Secure; Path=/"));

    // Bad values are logged and replaced by the defaults: no injection into the header.
    let mut site = Site::new(RELOAD.as_str());
    site.set("PSOCookieSession_Domain", "evil.org; Secure")
        .set("PSOCookieSession_Path", "/a;Domain=evil.org")
        .set("PSOCookieSession_SameSite", "sometimes");
    let reply = site.get(None);
    assert_eq!(
        reply.set_cookie().unwrap(),
        format!("{}; HttpOnly; SameSite=Lax; Path=/", reply.cookie())
    );
    for name in [
        "PSOCookieSession_Domain",
        "PSOCookieSession_Path",
        "PSOCookieSession_SameSite",
    ] {
        assert!(reply.stderr.contains(name), "{name}: {}", reply.stderr);
    }
}

#[test]
fn strict_mode_never_adopts_an_id_it_did_not_issue() {
    let mut site = Site::new(RELOAD.as_str());
    site.set("PSOLogLevel", "info");
    let forged = "reload=0123456789abcdef0123456789abcdef0123456789abcdef";
    let reply = site.get(Some(forged));
    assert_eq!(reply.count(), 1);
    assert_ne!(reply.cookie(), forged);
    assert!(
        !site
            .files()
            .iter()
            .any(|f| f.contains("0123456789abcdef0123"))
    );
    assert!(reply.stderr.contains("unknown"), "{}", reply.stderr);
    assert!(
        !reply.stderr.contains("0123456789abcdef0123456789abcdef"),
        "no full id in logs"
    );
}

#[test]
fn a_live_session_wins_over_tossed_cookies_whatever_their_order() {
    let site = Site::new(RELOAD.as_str());
    let real = site.get(None).cookie();
    let tossed = "reload=ffffffffffffffffffffffffffffffffffffffffffffffff";
    assert_eq!(site.get(Some(&format!("{tossed}; {real}"))).count(), 2);
    assert_eq!(site.get(Some(&format!("{real}; {tossed}"))).count(), 3);
    assert_eq!(
        site.get(Some(&format!("x=1; reload=junk; {real}; reload=\"\"")))
            .count(),
        4
    );
}

/// A well-formed id that names no session.
fn dead_cookie() -> String {
    format!("reload={}", SessionId::generate().unwrap())
}

/// One request whose `Cookie` header is any bytes.
fn get_with_header(site: &Site, header: &[u8]) -> Reply {
    let mut command = site.command(None);
    command.env("HTTP_COOKIE", OsString::from_vec(header.to_vec()));
    Reply::from_output(command.output().unwrap())
}

#[test]
fn dead_ids_cannot_hide_the_visitors_session_behind_a_tossed_one() {
    // Before the fix, the first few ids were all that was checked and dead ones counted: a few
    // dead ids, then the attacker's live one, hid the visitor's own and fixed the attacker's.
    for attacker_first in [true, false] {
        let site = Site::new(RELOAD.as_str());
        let mine = site.get(None).cookie();
        let theirs = site.get(None).cookie();
        let mut cookies: Vec<String> = (0..3).map(|_| dead_cookie()).collect();
        if attacker_first {
            cookies.extend([theirs.clone(), mine.clone()]);
        } else {
            cookies.extend([mine.clone(), theirs.clone()]);
        }
        let reply = site.get(Some(&cookies.join("; ")));
        assert_eq!(reply.count(), 1, "neither live session is adopted");
        assert_ne!(
            reply.cookie(),
            theirs,
            "the attacker's id is never sent back"
        );
        assert_ne!(reply.cookie(), mine);
        assert!(reply.stderr.contains("cookie tossing"), "{}", reply.stderr);
        // Both ended: the attacker cannot keep one ready for the visitor.
        assert_eq!(site.get(Some(&theirs)).count(), 1);
        assert_eq!(site.get(Some(&mine)).count(), 1);
    }
}

#[test]
fn made_up_ids_cannot_crowd_out_the_visitors_session() {
    // Before the fix, nine made-up ids (they need not name anything) kept a visitor out of
    // their session for as long as the tossed cookies lasted.
    let site = Site::new(RELOAD.as_str());
    let mine = site.get(None).cookie();
    let made_up: Vec<String> = (0..20).map(|_| dead_cookie()).collect();
    let before = format!("{}; {mine}", made_up.join("; "));
    let after = format!("{mine}; {}", made_up.join("; "));
    assert_eq!(site.get(Some(&before)).count(), 2);
    assert_eq!(site.get(Some(&after)).count(), 3);
}

#[test]
fn more_tossed_sessions_than_are_checked_get_a_fresh_session_never_the_attackers() {
    for attacker_first in [true, false] {
        let site = Site::new(RELOAD.as_str());
        let mine = site.get(None).cookie();
        let theirs: Vec<String> = (0..pso::cookies::MAX_CANDIDATES)
            .map(|_| site.get(None).cookie())
            .collect();
        let header = if attacker_first {
            format!("{}; {mine}", theirs.join("; "))
        } else {
            format!("{mine}; {}", theirs.join("; "))
        };
        let reply = site.get(Some(&header));
        assert_eq!(reply.count(), 1);
        assert!(!theirs.contains(&reply.cookie()), "never the attacker's");
        assert!(reply.stderr.contains("ending them all"), "{}", reply.stderr);
        // They all ended: the same tossed cookies now name nothing and keep nobody out.
        let fresh = reply.cookie();
        let header = format!("{}; {fresh}", theirs.join("; "));
        assert_eq!(site.get(Some(&header)).count(), 2);
    }
}

#[test]
fn other_cookies_cannot_hide_the_session_cookie_however_many() {
    // Before the fix, only the first 256 cookies were read.
    let site = Site::new(RELOAD.as_str());
    let mine = site.get(None).cookie();
    let others: Vec<String> = (0..300).map(|i| format!("c{i}=v")).collect();
    let before = format!("{}; {mine}", others.join("; "));
    let after = format!("{mine}; {}", others.join("; "));
    assert_eq!(site.get(Some(&before)).count(), 2);
    assert_eq!(site.get(Some(&after)).count(), 3);
    // The tossed id goes last here, past the 300 others: it is still found, and both end.
    let theirs = site.get(None).cookie();
    let reply = site.get(Some(&format!("{after}; {theirs}")));
    assert_eq!(reply.count(), 1);
    assert_eq!(site.get(Some(&mine)).count(), 1);
}

#[test]
fn a_header_as_long_as_apache_and_nginx_allow_is_read_whole() {
    // Apache's LimitRequestFieldSize is 8190 bytes, nginx's large_client_header_buffers 8k.
    let site = Site::new(RELOAD.as_str());
    let mine = site.get(None).cookie();
    let mut filler = String::new();
    let mut i = 0;
    while filler.len() + 40 + mine.len() + 2 <= 8190 {
        filler.push_str(&format!("pad{i}=xxxxxxxxxxxxxxxxxxxxxxxx; "));
        i += 1;
    }
    for (n, header) in [format!("{filler}{mine}"), format!("{mine}; {filler}")]
        .iter()
        .enumerate()
    {
        assert!((8000..=8190).contains(&header.len()), "{}", header.len());
        let reply = site.get(Some(header));
        assert_eq!((reply.count(), reply.set_cookie()), (n as u64 + 2, None));
    }
    assert_eq!(site.get(Some(&mine)).count(), 4);
}

#[test]
fn a_byte_that_is_not_utf8_in_another_cookie_does_not_log_the_visitor_out() {
    // Before the fix, the whole header was ignored: every request a fresh session.
    let site = Site::new(RELOAD.as_str());
    let mine = site.get(None).cookie();
    let bad: &[u8] = b"tracker=\xff\xfe\xc3\x28; \x80=x";
    let before = [bad, b"; ", mine.as_bytes()].concat();
    let after = [mine.as_bytes(), b"; ", bad].concat();
    assert_eq!(get_with_header(&site, &before).count(), 2);
    assert_eq!(get_with_header(&site, &after).count(), 3);
}

#[test]
fn a_cookie_lifetime_of_zero_means_browser_close_in_every_variable() {
    // PSOCookieSession_expires=0 sent Max-Age=0 (the browser dropped the cookie at once).
    for name in [
        "PSOCookieSession_expires",
        "PSOCookieSession_Max-Age",
        "PSOSessionExpire",
    ] {
        let mut site = Site::new(RELOAD.as_str());
        site.set(name, "0");
        let reply = site.get(None);
        let set = reply.set_cookie().unwrap().to_owned();
        assert!(
            !set.contains("Max-Age") && !set.contains("Expires"),
            "{name}: {set}"
        );
        assert_eq!(site.get(Some(&reply.cookie())).count(), 2, "{name}");
    }
}

#[test]
fn hostile_ids_get_a_fresh_session_and_touch_nothing_outside() {
    let site = Site::new(RELOAD.as_str());
    site.get(None);
    let before = tree(site.root.path());
    let hostile: Vec<OsString> = [
        "reload=../../etc/passwd",
        "reload=",
        "reload",
        "reload=/etc/passwd",
        "reload=..%2F..%2Fetc%2Fpasswd",
        &format!("reload={}", "a".repeat(10_000)),
        &format!("reload={}", "0".repeat(47)),
        &format!("reload={}", "0".repeat(49)),
        "reload=0123456789abcdef0123456789abcdef0123456789abcde.",
        "reload=\"../../../../tmp/x\"",
        "reload=0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF",
        ";;;===;;; reload = ; reload=\t",
        &"x=1; ".repeat(5_000),
        &format!("{}reload=1", "a".repeat(70_000)),
    ]
    .iter()
    .map(OsString::from)
    .chain([OsString::from_vec(b"reload=\xff\xfe../../x".to_vec())])
    .collect();
    for cookie in &hostile {
        let output = site
            .command(None)
            .env("HTTP_COOKIE", cookie)
            .output()
            .unwrap();
        let reply = Reply::from_output(output);
        assert_eq!(reply.count(), 1, "{cookie:?}");
        let after = tree(site.root.path());
        let new: Vec<_> = after.difference(&before).collect();
        assert_eq!(new.len(), 1, "{cookie:?}: {new:?}");
        assert_eq!(
            new[0].parent(),
            Some(site.sessions().as_path()),
            "{cookie:?}"
        );
        assert!(is_session_file(
            new[0].file_name().unwrap().to_str().unwrap()
        ));
        fs::remove_file(new[0]).unwrap();
    }
}

/// Under strace, every file the program opens, creates, renames or removes is in the session
/// directory (or a system file it reads), whatever the cookie says.
#[test]
fn hostile_ids_under_strace_never_reach_a_path_outside() {
    if !have("strace") {
        skip_or_fail("strace is not installed (apt-get install strace)");
        return;
    }
    let mut site = Site::new(RELOAD.as_str());
    // Collection too, on every request: it lists and opens files of the directory.
    site.set("PSOSessionGCProbability", "1");
    let sessions = site.sessions().display().to_string();
    let parent = site.root.path().display().to_string();
    site.get(None);
    // The directories above the session directory are walked down to it, one at a time.
    let above = |path: &str| {
        std::path::Path::new(&sessions)
            .ancestors()
            .any(|dir| dir == std::path::Path::new(path))
    };
    let allowed = |path: &str| {
        path.starts_with(&sessions)
            || path == parent
            || above(path)
            || ["/etc/ld.so", "/lib", "/usr/lib", "/proc/", "/sys/", "/dev/"]
                .iter()
                .any(|p| path.starts_with(p))
            || path.starts_with("pipe:")
            || path.starts_with("socket:")
    };
    for cookie in [
        "reload=../../etc/passwd",
        "reload=/tmp/evil",
        "reload=....//....//x",
        "reload=0123456789abcdef0123456789abcdef0123456789abcdef/../../x",
    ] {
        let trace = site.root.path().join("trace");
        let command = site.command(Some(cookie));
        let program = command.get_program().to_owned();
        let mut traced = Command::new("strace");
        // -y shows the path behind every descriptor, so calls relative to the session
        // directory's handle (openat(3</…/sessions>, "reload.….pso")) can be checked too.
        traced
            .args(["-f", "-qq", "-y", "-e", "trace=%file", "-o"])
            .arg(&trace)
            .arg(program)
            .env_clear()
            .envs(command.get_envs().filter_map(|(k, v)| Some((k, v?))));
        Reply::from_output(traced.output().unwrap());
        let log = fs::read_to_string(&trace).unwrap();
        for line in log.lines().filter(|l| !l.contains("execve(")) {
            // Every descriptor's path, and every path string of the call. Relative to the
            // working directory, only absolute paths are expected.
            let cwd_relative = line.contains("AT_FDCWD");
            let line = match line.split_once("AT_FDCWD<") {
                Some((before, after)) => {
                    format!(
                        "{before}AT_FDCWD{}",
                        after.split_once('>').map_or("", |(_, a)| a)
                    )
                }
                None => line.to_owned(),
            };
            if cwd_relative {
                let name = line.split('"').nth(1).unwrap_or("/");
                assert!(
                    name.starts_with('/'),
                    "{cookie}: relative to the working directory: {line}"
                );
            }
            for dir in line.split('<').skip(1).filter_map(|s| s.split('>').next()) {
                assert!(allowed(dir), "{cookie}: a call relative to {dir:?}: {line}");
            }
            for name in line.split('"').skip(1).step_by(2) {
                if name.starts_with('/') {
                    assert!(
                        allowed(name),
                        "{cookie}: the program touched {name:?}: {line}"
                    );
                } else {
                    assert!(!name.contains('/') && name != "..", "{cookie}: {line}");
                }
                assert!(!name.contains("passwd") && !name.contains("evil"), "{line}");
            }
        }
    }
}

#[test]
fn a_corrupt_session_file_gives_a_fresh_session_not_a_crash() {
    let site = Site::new(RELOAD.as_str());
    let cookie = site.get(None).cookie();
    let id = cookie.split_once('=').unwrap().1;
    let path = site.sessions().join(format!("reload.{id}.pso"));
    let good = fs::read(&path).unwrap();
    // Damage inside the one slot written so far: its checksum fails, and there is no other.
    let damaged = |at: usize| {
        let mut v = good.clone();
        v[at] ^= 0xff;
        v
    };
    let record_len = u32::from_le_bytes(good[16..20].try_into().unwrap()) as usize;
    // A version-1 file (the record alone), damaged.
    let v1 = {
        let mut record = site
            .store()
            .peek(&key("reload", &cookie))
            .unwrap()
            .unwrap()
            .encode()
            .unwrap();
        let last = record.len() - 1;
        record[last] ^= 0xff;
        record
    };
    let corruptions: Vec<Vec<u8>> = vec![
        Vec::from(&good[..good.len() / 2]),
        Vec::from(&good[..good.len() - 1]),
        b"not a session".to_vec(),
        damaged(4),
        damaged(10),
        damaged(32 + record_len - 1),
        v1,
        // A version-1 header that claims a 4 GiB payload.
        [&b"PSOS\x01\xff\xff\xff\xff"[..], &[0; 4]].concat(),
        vec![0xff; 8192],
    ];
    for bytes in corruptions {
        fs::write(&path, &bytes).unwrap();
        let reply = site.get(Some(&cookie));
        assert_eq!(reply.count(), 1, "{reply:?}");
        assert_ne!(reply.cookie(), cookie);
        assert!(reply.stderr.contains("unreadable"), "{}", reply.stderr);
        assert!(!path.exists(), "the dead file is removed");
    }
}

#[test]
fn a_version_one_file_loads_and_is_rewritten_as_version_two() {
    let site = Site::new(RELOAD.as_str());
    let cookie = site.get(None).cookie();
    let path = site
        .sessions()
        .join(format!("reload.{}.pso", cookie.split_once('=').unwrap().1));
    // What the first pso wrote: the record alone, in format version 1, its values bincode.
    let meta = Meta::new(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    );
    let config = bincode::config::standard();
    let value = bincode::serde::encode_to_vec(41u64, config).unwrap();
    let values = std::collections::BTreeMap::from([("reloads", serde_bytes::ByteBuf::from(value))]);
    let payload = bincode::serde::encode_to_vec((meta, values), config).unwrap();
    let mut record = b"PSOS\x01".to_vec();
    record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&record[4..9]);
    crc.update(&payload);
    record.extend_from_slice(&crc.finalize().to_le_bytes());
    record.extend_from_slice(&payload);
    assert!(Record::decode(&record, 1 << 20).is_ok());
    fs::write(&path, &record).unwrap();
    assert_eq!(site.get(Some(&cookie)).count(), 42);
    let file = fs::read(&path).unwrap();
    assert!(file.starts_with(b"PSOF\x02"));
    assert_eq!(
        &file[32..37],
        b"PSOS\x02",
        "the record is written in format version 2"
    );
    assert_eq!(site.get(Some(&cookie)).count(), 43);
}

#[test]
fn an_oversized_session_file_is_dead() {
    let mut site = Site::new(RELOAD.as_str());
    site.set("PSOSessionMaxBytes", "2048");
    let cookie = site.get(None).cookie();
    let key = key("reload", &cookie);
    let store = site.store();
    let mut lock = store.lock(&key, lock_options()).unwrap();
    let mut record = lock.load().unwrap().unwrap();
    record.set("ballast", &vec![1u8; 4096]).unwrap();
    lock.save(&record).unwrap();
    drop(lock);
    let reply = site.get(Some(&cookie));
    assert_eq!(reply.count(), 1);
    assert!(
        reply.stderr.contains("PSOSessionMaxBytes"),
        "{}",
        reply.stderr
    );
}

#[test]
fn a_session_held_past_the_lock_timeout_gets_503() {
    let mut site = Site::new(RELOAD.as_str());
    let cookie = site.get(None).cookie();
    site.set("PSOSessionLockTimeout", "1");
    let id = cookie.split_once('=').unwrap().1;
    let held = fs::File::open(site.sessions().join(format!("reload.{id}.pso"))).unwrap();
    held.lock().unwrap();
    let started = Instant::now();
    let reply = site.get(Some(&cookie));
    assert_eq!(reply.status(), "Status: 503 Service Unavailable");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(
        reply.stderr.contains("PSOSessionLockTimeout"),
        "{}",
        reply.stderr
    );
    held.unlock().unwrap();
    assert_eq!(site.get(Some(&cookie)).count(), 2, "nothing was lost");
}

#[test]
fn fifty_concurrent_requests_on_one_session_lose_nothing() {
    let site = Site::new(RELOAD.as_str());
    let cookie = site.get(None).cookie();
    let children: Vec<_> = (0..50)
        .map(|_| {
            site.command(Some(&cookie))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut counts: Vec<u64> = children
        .into_iter()
        .map(|child| Reply::from_output(child.wait_with_output().unwrap()).count())
        .collect();
    counts.sort_unstable();
    assert_eq!(
        counts,
        (2..=51).collect::<Vec<u64>>(),
        "each request saw a distinct count"
    );
    assert_eq!(site.get(Some(&cookie)).count(), 52);
}

/// The fsync calls of one run of `site`'s program, with each descriptor's path (`strace -y`).
fn synced(site: &Site, cookie: Option<&str>) -> Vec<String> {
    let trace = site.root.path().join("trace");
    let command = site.command(cookie);
    let status = Command::new("strace")
        .args(["-f", "-qq", "-y", "-e", "trace=fsync,fdatasync", "-o"])
        .arg(&trace)
        .arg(command.get_program())
        .env_clear()
        .envs(command.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    fs::read_to_string(&trace)
        .unwrap()
        .lines()
        // `strace -f` starts each line with the process id.
        .map(|line| {
            line.split_once(' ')
                .map_or(line, |(_, call)| call.trim_start())
                .to_owned()
        })
        .collect()
}

#[test]
fn sync_mode_fsyncs_file_and_directory() {
    let mut site = Site::new(RELOAD.as_str());
    site.set("PSOSessionSync", "on");
    assert_eq!(site.get(None).count(), 1);
    if !have("strace") {
        skip_or_fail("strace is not installed (apt-get install strace)");
        return;
    }
    let sessions = site.sessions().display().to_string();
    let directory =
        |line: &String| line.starts_with("fsync(") && line.contains(&format!("<{sessions}>)"));
    let file =
        |line: &String| line.starts_with("fdatasync(") && line.contains(&format!("<{sessions}/"));
    // A new session: its file is renamed into place.
    let log = synced(&site, None);
    assert!(log.iter().any(file) && log.iter().any(directory), "{log:?}");
    // A forced id's first save goes into the file its lock created at its name: that name
    // must reach the disk too.
    site.set("PSOServiceId", "reload")
        .set("reload", "shared-007");
    let log = synced(&site, None);
    assert!(log.iter().any(file) && log.iter().any(directory), "{log:?}");
    // Its next save is in place: the file only.
    let log = synced(&site, None);
    assert!(
        log.iter().any(file) && !log.iter().any(directory),
        "{log:?}"
    );
}

#[test]
fn garbage_collection_removes_expired_files() {
    let mut site = Site::new(RELOAD.as_str());
    let store_cookie = site.get(None).cookie();
    let store = site.store();
    // An expired session of another visitor.
    let dead = SessionKey::new("reload".parse().unwrap(), SessionId::generate().unwrap());
    let mut record = Record::new(Meta::new(1_000));
    record.meta.deadline = Some(2_000);
    record.set("reloads", &5u64).unwrap();
    store
        .lock(&dead, lock_options())
        .unwrap()
        .save(&record)
        .unwrap();
    site.set("PSOSessionGCProbability", "0");
    site.get(Some(&store_cookie));
    assert!(
        store.peek(&dead).unwrap().is_some(),
        "0 turns collection off"
    );
    site.set("PSOSessionGCProbability", "1");
    assert_eq!(site.get(Some(&store_cookie)).count(), 3);
    assert!(store.peek(&dead).unwrap().is_none());
    assert!(store.peek(&key("reload", &store_cookie)).unwrap().is_some());
}

/// A process killed at any instant, also in the middle of writing a large session, never leaves
/// a session that does not load: the old state or the new one, nothing else.
/// A request that also collects garbage sends its whole response and closes standard output
/// first: the web server ends the response while collection runs.
#[test]
fn collection_runs_after_the_response_is_complete() {
    if !have("strace") {
        skip_or_fail("strace is not installed (apt-get install strace)");
        return;
    }
    let mut site = Site::new(RELOAD.as_str());
    site.set("PSOSessionGCProbability", "1");
    let cookie = site.get(None).cookie();
    let trace = site.root.path().join("trace");
    let command = site.command(Some(&cookie));
    let mut traced = Command::new("strace");
    traced
        .args(["-qq", "-e", "trace=write,dup2,getdents64", "-o"])
        .arg(&trace)
        .arg(command.get_program())
        .env_clear()
        .envs(command.get_envs().filter_map(|(k, v)| Some((k, v?))));
    let reply = Reply::from_output(traced.output().unwrap());
    assert_eq!(reply.count(), 2);
    let log = fs::read_to_string(&trace).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    let position = |what: &dyn Fn(&str) -> bool| lines.iter().position(|l| what(l));
    let last_output = lines
        .iter()
        .rposition(|l| l.starts_with("write(1,"))
        .unwrap();
    let listing = position(&|l| l.starts_with("getdents64("))
        .unwrap_or_else(|| panic!("no collection:\n{log}"));
    // Standard input, output and error all go before collection starts: web servers wait
    // for the end of each of them.
    for fd in 0..=2 {
        let target = format!(", {fd})");
        let closed = position(&|l| l.starts_with("dup2(") && l.contains(&target))
            .unwrap_or_else(|| panic!("descriptor {fd} is never closed:\n{log}"));
        assert!(last_output < closed && closed < listing, "{log}");
    }
}

/// Apache sends a finished CGI program SIGTERM as soon as its response is done; collection,
/// which runs after the response, goes on to its end.
#[test]
fn collection_outlives_the_servers_sigterm() {
    let mut site = Site::new(RELOAD.as_str());
    site.set("PSOSessionGCProbability", "1");
    let cookie = site.get(None).cookie();
    // Enough expired sessions that collection is still running when the signal comes.
    let mut meta = Meta::new(1_000_000_000);
    meta.deadline = Some(1_000_000_900);
    let bytes = Record::new(meta).encode().unwrap();
    for _ in 0..20_000 {
        let name = format!("reload.{}.pso", SessionId::generate().unwrap());
        fs::write(site.sessions().join(name), &bytes).unwrap();
    }
    let mut command = site.command(Some(&cookie));
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut response = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut response).unwrap();
    assert!(response.contains("You reloaded: 2 times"), "{response}");
    // Standard output is closed: the response is complete, and collection runs now.
    common::signal(child.id(), rustix::process::Signal::TERM);
    let status = child.wait().unwrap();
    assert!(status.success(), "collection was cut short: {status:?}");
    assert!(
        site.files().len() < 20_001,
        "collection removed expired sessions"
    );
}

/// A private, tiny file system for the sessions (a tmpfs in a mount namespace of its own),
/// entered by each request with `nsenter`.
struct TinyDisk {
    holder: std::process::Child,
    dir: PathBuf,
}

impl TinyDisk {
    fn mount(dir: &Path) -> Option<TinyDisk> {
        fs::create_dir_all(dir).unwrap();
        let script = format!(
            "mount -t tmpfs -o size=256k tmpfs '{}' && echo ready && exec sleep 600",
            dir.display()
        );
        // Without root, a user namespace of our own grants the right to mount.
        let user_namespace = if is_root() { &[][..] } else { &["-r"][..] };
        let mut holder = Command::new("unshare")
            .args(user_namespace)
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let mut ready = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
            &mut ready,
        )
        .ok()?;
        if ready.trim() != "ready" {
            let _ = holder.kill();
            let _ = holder.wait();
            return None;
        }
        Some(TinyDisk {
            holder,
            dir: dir.to_owned(),
        })
    }

    /// `command`, run inside the mount namespace.
    fn enter(&self, command: &Command) -> Command {
        let mut entered = Command::new("nsenter");
        entered.args(["-t", &self.holder.id().to_string()]);
        if !is_root() {
            entered.args(["-U", "--preserve-credentials"]);
        }
        entered
            .args(["-m", "--"])
            .arg(command.get_program())
            .args(command.get_args())
            .env_clear()
            .envs(command.get_envs().filter_map(|(k, v)| Some((k, v?))));
        entered
    }

    fn shell(&self, script: &str) -> String {
        let mut sh = Command::new("sh");
        sh.args(["-c", script]);
        let output = self.enter(&sh).output().unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

#[test]
fn a_full_disk_keeps_the_old_session_and_sends_no_cookie() {
    let mut site = Site::new(RELOAD.as_str());
    let Some(disk) = TinyDisk::mount(&site.root.path().join("tiny")) else {
        skip_or_fail("cannot mount a private tmpfs (unshare -m as root, or unshare -r -m)");
        return;
    };
    let sessions = disk.dir.join("sessions");
    // Collection would list the directory, and may leave its position behind: not here.
    site.set("PSOSessionFileLoader_Path", &sessions)
        .set("PSOSessionGCProbability", "0");
    let get = |site: &Site, cookie: Option<&str>| {
        let output = disk.enter(&site.command(cookie)).output().unwrap();
        Reply::from_output(output)
    };
    let cookie = get(&site, None).cookie();
    let before = disk.shell(&format!("ls -a '{}'", sessions.display()));

    disk.shell(&format!(
        "cat /dev/zero > '{}/filler' 2>/dev/null",
        disk.dir.display()
    ));
    for cookie in [Some(cookie.as_str()), None] {
        let reply = get(&site, cookie);
        assert_eq!(
            reply.status(),
            "Status: 500 Internal Server Error",
            "{reply:?}"
        );
        assert_eq!(
            reply.set_cookie(),
            None,
            "no cookie for a session that was not stored"
        );
        assert!(reply.stderr.contains("No space left"), "{}", reply.stderr);
    }
    let after = disk.shell(&format!("ls -a '{}'", sessions.display()));
    assert_eq!(
        after, before,
        "the old file is kept and no temporary file is left"
    );

    disk.shell(&format!("rm '{}/filler'", disk.dir.display()));
    assert_eq!(
        get(&site, Some(&cookie)).count(),
        2,
        "the old session is intact"
    );
}

#[test]
fn modes_are_private_whatever_the_umask() {
    let site = Site::new(RELOAD.as_str());
    for umask in ["0277", "0000", "0022"] {
        let command = site.command(None);
        let mut shell = Command::new("sh");
        shell
            .args([
                "-c",
                &format!("umask {umask} && exec \"$0\""),
                RELOAD.as_str(),
            ])
            .env_clear()
            .envs(command.get_envs().filter_map(|(k, v)| Some((k, v?))));
        let reply = Reply::from_output(shell.output().unwrap());
        assert_eq!(reply.count(), 1, "umask {umask}");
        let dir = fs::metadata(site.sessions()).unwrap();
        assert_eq!(dir.mode() & 0o777, 0o700, "umask {umask}");
        for name in site.files() {
            let file = fs::metadata(site.sessions().join(&name)).unwrap();
            assert_eq!(file.mode() & 0o777, 0o600, "umask {umask}: {name}");
        }
        fs::remove_dir_all(site.sessions()).unwrap();
    }
}

#[test]
fn a_session_directory_of_another_user_is_refused() {
    let mut site = Site::new(RELOAD.as_str());
    // Root can give a directory away; anybody else finds one of root's.
    let (dir, owner) = if is_root() {
        fs::create_dir(site.sessions()).unwrap();
        std::os::unix::fs::chown(site.sessions(), Some(65534), Some(65534)).unwrap();
        (site.sessions(), 65534)
    } else {
        (PathBuf::from("/"), 0)
    };
    site.set("PSOSessionFileLoader_Path", &dir);
    let before = tree_names(&dir);
    let output = site.command(None).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    assert!(text.starts_with("Status: 500 "), "{text}");
    assert!(!text.contains("Set-Cookie"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("belongs to uid {owner}")),
        "{stderr}"
    );
    assert_eq!(tree_names(&dir), before, "nothing was written into it");
}

/// A directory, FIFO, socket or device at a session's path (planted while the directory was
/// loose) is removed, or, when it cannot be, costs the visitor that id, not every request.
#[test]
fn anything_planted_at_a_sessions_path_never_gives_a_permanent_error() {
    type Plant = fn(&Path);
    let mut plants: Vec<(&str, Plant, bool)> = vec![
        ("empty directory", |p| fs::create_dir(p).unwrap(), true),
        (
            "directory with entries",
            |p| {
                fs::create_dir(p).unwrap();
                fs::write(p.join("x"), "").unwrap();
            },
            false,
        ),
        (
            "fifo",
            |p| {
                let status = Command::new("mkfifo").arg(p).status().unwrap();
                assert!(status.success());
            },
            true,
        ),
        (
            "socket",
            |p| drop(std::os::unix::net::UnixListener::bind(p).unwrap()),
            true,
        ),
    ];
    if is_root() {
        // A character device with /dev/null's numbers: only root can make one.
        plants.push((
            "device",
            |p| {
                let status = Command::new("mknod")
                    .arg(p)
                    .args(["c", "1", "3"])
                    .status()
                    .unwrap();
                assert!(status.success());
            },
            true,
        ));
    }
    for (what, plant, removable) in plants {
        let site = Site::new(RELOAD.as_str());
        let cookie = site.get(None).cookie();
        let path = site
            .sessions()
            .join(format!("reload.{}.pso", cookie.split_once('=').unwrap().1));
        fs::remove_file(&path).unwrap();
        plant(&path);
        for _ in 0..2 {
            let reply = site.get(Some(&cookie));
            assert_eq!(reply.status(), "Status: 200 OK", "{what}: {}", reply.stderr);
            assert_eq!(reply.count(), 1, "{what}");
            assert_ne!(reply.cookie(), cookie, "{what}: a new id");
        }
        let left = fs::symlink_metadata(&path);
        if removable {
            assert!(left.is_err(), "{what} is removed");
        } else {
            assert!(left.unwrap().is_dir(), "{what} is left alone");
        }
    }
}

/// Another local user who can write the session directory's parent swaps the directory for a
/// symbolic link to a directory of theirs, in a loop, while the victim's requests run: pso
/// refuses a directory under such a parent (every request a 500, whatever the swap's timing),
/// and no file of the victim may appear anywhere but in its own private directory.
#[test]
fn swapping_the_session_directory_never_redirects_a_file() {
    let site = Site::new(RELOAD.as_str());
    let base = site.root.path().join("shared");
    fs::create_dir(&base).unwrap();
    let trap = base.join("trap");
    fs::create_dir(&trap).unwrap();
    for dir in [site.root.path(), &base, &trap] {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o777)).unwrap();
    }
    // Two users when we can be them (root); otherwise the same race with one user.
    let (victim, attacker) = if is_root() {
        std::os::unix::fs::chown(&trap, Some(65533), Some(65533)).unwrap();
        (Some(65534), Some(65533))
    } else {
        (None, None)
    };
    let swapper = r#"
        chdir $ARGV[0] or die; my $n = 0;
        while (1) {
            if (rename "sessions", "moved$n") {
                symlink "trap", "sessions";
                select(undef, undef, undef, 0.0002);
                unlink "sessions";
                rename "moved$n", "sessions" or $n++;
            }
        }
    "#;
    let mut attacker_process = common::servers::as_user(attacker, Path::new("perl"))
        .args(["-e", swapper])
        .arg(&base)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("perl runs the swapping user");

    let sessions = base.join("sessions");
    let mut statuses = std::collections::BTreeMap::<String, u32>::new();
    let mut cookie: Option<String> = None;
    for _ in 0..300 {
        let template = site.command(cookie.as_deref());
        let mut command = common::servers::as_user(victim, Path::new(template.get_program()));
        command
            .env_clear()
            .envs(template.get_envs().filter_map(|(k, v)| Some((k, v?))))
            .env("PSOSessionFileLoader_Path", &sessions)
            .env("PSOSessionGCProbability", "1/10")
            .stdin(Stdio::null());
        let reply = Reply::from_output(command.output().unwrap());
        *statuses.entry(reply.status().to_owned()).or_default() += 1;
        if let Some(set) = reply.set_cookie() {
            cookie = Some(set.split(';').next().unwrap().to_owned());
        }
    }
    attacker_process.kill().unwrap();
    attacker_process.wait().unwrap();
    eprintln!("statuses while the directory was swapped: {statuses:?}");
    assert_eq!(
        statuses.keys().collect::<Vec<_>>(),
        vec!["Status: 500 Internal Server Error"],
        "a parent others can change is refused"
    );

    let trapped: Vec<_> = fs::read_dir(&trap).unwrap().collect();
    assert!(
        trapped.is_empty(),
        "files landed in the other user's directory: {trapped:?}"
    );
    // Every file of the victim lies in a private directory of the victim's.
    let victim_uid = victim.unwrap_or_else(|| fs::metadata("/proc/self").unwrap().uid());
    for path in tree(&base) {
        let meta = fs::symlink_metadata(&path).unwrap();
        if meta.is_file() && meta.uid() == victim_uid {
            let dir = fs::symlink_metadata(path.parent().unwrap()).unwrap();
            assert!(
                dir.is_dir() && dir.uid() == victim_uid,
                "{}",
                path.display()
            );
            assert_eq!(dir.mode() & 0o777, 0o700, "{}", path.display());
        }
    }
}

fn is_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// The names in a directory (not recursive).
fn tree_names(dir: &Path) -> BTreeSet<OsString> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect()
}
