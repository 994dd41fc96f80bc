//! The programs in `examples/`, run as real CGI processes.

mod common;

use std::path::PathBuf;
use std::process::Stdio;

use common::{Reply, Site};

fn example(name: &str) -> PathBuf {
    PathBuf::from(common::example(name))
}

#[test]
fn expiry_is_controlled_at_run_time() {
    let mut site = Site::new(example("expiry"));
    let first = site.get(None);
    assert_eq!(
        first.body,
        "Visit 1. This session lasts until you close the browser."
    );
    let cookie = first.cookie();

    site.set("QUERY_STRING", "expire=15*60");
    let reply = site.get(Some(&cookie));
    assert!(
        reply
            .set_cookie()
            .unwrap()
            .contains("; Max-Age=900; Expires="),
        "{reply:?}"
    );
    assert!(
        reply.body.starts_with("Visit 2. This session lasts until "),
        "{reply:?}"
    );

    site.set("QUERY_STRING", "expire=Mon, 15 Apr 2041 19:00:00 GMT");
    let reply = site.get(Some(&cookie));
    assert!(
        reply
            .set_cookie()
            .unwrap()
            .ends_with("; Expires=Mon, 15 Apr 2041 19:00:00 GMT")
    );

    site.set(
        "QUERY_STRING",
        "expire=Mon, 15 APR 2041 19:00:00&format=%a, %d %b %Y %H:%M:%S",
    );
    let reply = site.get(Some(&cookie));
    // The same deadline in another spelling: the browser's cookie says it already.
    assert_eq!(reply.set_cookie(), None, "{reply:?}");
    assert_eq!(
        reply.body,
        "Visit 4. This session lasts until Mon, 15 Apr 2041 19:00:00 GMT."
    );

    site.set("QUERY_STRING", "expire=browser");
    let reply = site.get(Some(&cookie));
    assert_eq!(
        reply.set_cookie().unwrap(),
        format!("{cookie}; HttpOnly; SameSite=Lax; Path=/")
    );

    // A bad expression is the handler's error: a 500, logged, and the session is untouched.
    site.set("QUERY_STRING", "expire=1/0");
    let reply = site.get(Some(&cookie));
    assert!(reply.status().starts_with("Status: 500 "), "{reply:?}");
    assert!(
        reply.stderr.contains("division by zero"),
        "{}",
        reply.stderr
    );

    site.set("QUERY_STRING", "expire=now");
    let reply = site.get(Some(&cookie));
    assert_eq!(
        reply.body,
        "Visit 6. This session lasts no longer: it ends with this page."
    );
    assert!(
        reply
            .set_cookie()
            .unwrap()
            .contains("; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT")
    );
    assert!(site.files().is_empty(), "deleted on the server");

    site.unset("QUERY_STRING");
    assert!(site.get(Some(&cookie)).body.starts_with("Visit 1."));
}

#[test]
fn save_keeps_work_and_revert_undoes_a_failed_step() {
    let mut site = Site::new(example("save_revert"));
    site.set("QUERY_STRING", "add=spam");
    let cookie = site.get(None).cookie();
    for item in ["eggs", "ham"] {
        site.set("QUERY_STRING", format!("add={item}"));
        site.get(Some(&cookie));
    }
    site.set("QUERY_STRING", "add=beans&pay=1");
    let reply = site.get(Some(&cookie));
    assert_eq!(
        reply.body,
        "Payment refused; nothing was charged. Cart: 4 item(s): spam, eggs, ham, beans. Paid: false."
    );
    site.unset("QUERY_STRING");
    assert_eq!(
        site.get(Some(&cookie)).body,
        "Cart: 4 item(s): spam, eggs, ham, beans. Paid: false."
    );

    let mut small = Site::new(example("save_revert"));
    small.set("QUERY_STRING", "add=spam&pay=1");
    let cookie = small.get(None).cookie();
    small.unset("QUERY_STRING");
    assert_eq!(
        small.get(Some(&cookie)).body,
        "Cart: 1 item(s): spam. Paid: true."
    );
}

/// A posted form to `site`'s program, as a browser on the same site sends it.
fn post(site: &Site, cookie: &str, form: &str) -> Reply {
    use std::io::Write;
    let mut command = site.command(Some(cookie));
    command
        .env("REQUEST_METHOD", "POST")
        .env("CONTENT_TYPE", "application/x-www-form-urlencoded")
        .env("CONTENT_LENGTH", form.len().to_string())
        .env("HTTP_SEC_FETCH_SITE", "same-origin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(form.as_bytes())
        .unwrap();
    Reply::from_output(child.wait_with_output().unwrap())
}

fn set_cookies(reply: &Reply) -> Vec<&str> {
    reply
        .head
        .lines()
        .filter_map(|l| l.strip_prefix("Set-Cookie: "))
        .collect()
}

fn session_files(site: &Site) -> usize {
    site.files().iter().filter(|f| f.ends_with(".pso")).count()
}

fn token_in(page: &str) -> String {
    page.split("name=\"token\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no token in {page}"))
        .to_owned()
}

#[test]
fn the_notes_page_keeps_notes_shows_a_notice_once_and_exports_them() {
    let mut site = Site::new(example("notes"));
    site.set("PSOServiceId", "notes")
        .set("SCRIPT_NAME", "/cgi-bin/notes");
    let page = site.get(None);
    // Looking stores nothing: the form's token is tied to the form cookie.
    assert_eq!(session_files(&site), 0);
    let set = set_cookies(&page);
    assert!(
        set.len() == 1 && set[0].starts_with("notes.form="),
        "{set:?}"
    );
    let browser = page.cookie();
    let token = token_in(&page.body);

    let forged = post(&site, &browser, "token=forged&note=spam");
    assert!(forged.status().starts_with("Status: 403"), "{forged:?}");
    let added = post(
        &site,
        &browser,
        &format!("token={token}&note=%3Cb%3Espam+%26+eggs%3C%2Fb%3E"),
    );
    assert!(added.status().starts_with("Status: 302"), "{added:?}");
    assert!(
        added.head.contains("Location: /cgi-bin/notes\r\n"),
        "{added:?}"
    );
    let session = added.cookie();
    assert!(session.starts_with("notes="), "{added:?}");
    assert_eq!(
        set_cookies(&added).len(),
        1,
        "the form cookie stays: {added:?}"
    );
    assert_eq!(session_files(&site), 1);
    // Without the browser's form cookie, its token is worth nothing.
    let replay = post(&site, &session, &format!("token={token}&note=again"));
    assert!(replay.status().starts_with("Status: 403"), "{replay:?}");

    // The notice once, then not; the note escaped.
    let shown = site.get(Some(&session));
    assert!(
        shown.body.contains("<p class=\"notice\">Note saved.</p>"),
        "{shown:?}"
    );
    assert!(
        shown
            .body
            .contains("<li>&lt;b&gt;spam &amp; eggs&lt;/b&gt;</li>"),
        "{shown:?}"
    );
    let again = site.get(Some(&session));
    assert!(!again.body.contains("Note saved."), "{again:?}");

    // A second note through a token kept in the session now.
    let token = token_in(&again.body);
    let added = post(&site, &session, &format!("token={token}&note=ham"));
    assert!(added.status().starts_with("Status: 302"), "{added:?}");

    site.set("QUERY_STRING", "export");
    let export = site.get(Some(&session));
    assert!(
        export
            .head
            .contains("Content-Type: text/plain; charset=utf-8"),
        "{export:?}"
    );
    assert_eq!(export.body, "<b>spam & eggs</b>\nham\n");

    // The read-only companion, on the same service.
    let mut count = Site::new(example("note_count"));
    count
        .set("PSOServiceId", "notes")
        .set("PSOSessionFileLoader_Path", site.sessions());
    let reply = count.get(Some(&session));
    assert_eq!(reply.body, "{\"notes\":2}");
    assert!(
        reply.head.contains("Content-Type: application/json"),
        "{reply:?}"
    );
    assert_eq!(count.get(None).body, "{\"notes\":0}");
    assert_eq!(session_files(&site), 1, "a reader stores nothing");

    // Without cookies (PSOSessionUrl=on), the links carry the session, followed from the
    // site's own pages.
    site.set("PSOSessionUrl", "on")
        .set("QUERY_STRING", session.as_str())
        .set("HTTP_HOST", "shop.example")
        .set("HTTP_REFERER", "http://shop.example/cgi-bin/notes");
    let cookieless = site.get(None);
    let id = session.split_once('=').unwrap().1;
    assert!(
        cookieless
            .body
            .contains(&format!("href=\"/cgi-bin/notes?export&amp;notes={id}\"")),
        "{cookieless:?}"
    );
    assert!(cookieless.body.contains("<li>ham</li>"), "{cookieless:?}");
}

/// Issue 22, trap 1: a deploy that changes the types in the session. Entries signed with the
/// first release read in the second, whose `Entry` gained `#[serde(default)] stars`; the
/// author it changed from a `String` to a struct is dropped once, logged without its value.
#[test]
fn a_guestbook_signed_before_a_deploy_that_changed_its_types_still_reads() {
    let mut v1 = Site::new(example("guestbook_v1"));
    v1.set("SCRIPT_NAME", "/cgi-bin/guestbook");
    let page = v1.get(None);
    let browser = page.cookie();
    let signed = post(
        &v1,
        &browser,
        &format!("token={}&name=Eggs&message=Hello", token_in(&page.body)),
    );
    assert!(signed.status().starts_with("Status: 302"), "{signed:?}");
    let session = signed.cookie();
    let page = v1.get(Some(&session));
    let signed = post(
        &v1,
        &session,
        &format!(
            "token={}&name=Spam+Lover&message=Lovely",
            token_in(&page.body)
        ),
    );
    assert!(signed.status().starts_with("Status: 302"), "{signed:?}");
    let page = v1.get(Some(&session));
    assert!(
        page.body
            .contains("<li>Eggs: Hello</li>\n<li>Spam Lover: Lovely</li>"),
        "{page:?}"
    );
    assert!(page.body.contains("value=\"Spam Lover\""), "{page:?}");

    // The second release, on the same sessions.
    let mut v2 = Site::new(example("guestbook_v2"));
    v2.set("SCRIPT_NAME", "/cgi-bin/guestbook")
        .set("PSOSessionFileLoader_Path", v1.sessions());
    let page = v2.get(Some(&session));
    assert_eq!(page.status(), "Status: 200 OK", "{page:?}");
    assert!(
        page.body
            .contains("<li>Eggs: Hello (0 stars)</li>\n<li>Spam Lover: Lovely (0 stars)</li>"),
        "{page:?}"
    );
    assert!(
        !page.body.contains("Spam Lover\""),
        "the old author is gone: {page:?}"
    );
    let warnings: Vec<&str> = page.stderr.lines().collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with("pso: warning: session value \"author\" does not read as ")
            && warnings[0].contains("Author and is removed: "),
        "{warnings:?}"
    );
    assert!(
        !warnings[0].contains("Spam"),
        "never the value: {warnings:?}"
    );

    // Removed once, and saved so: the next page says nothing.
    let page = v2.get(Some(&session));
    assert_eq!(page.stderr, "", "{page:?}");
    let signed = post(
        &v2,
        &session,
        &format!(
            "token={}&name=Ham&email=ham%40example.org&message=Five&stars=5",
            token_in(&page.body)
        ),
    );
    assert!(signed.status().starts_with("Status: 302"), "{signed:?}");
    let page = v2.get(Some(&session));
    assert!(
        page.body
            .contains("<li>Spam Lover: Lovely (0 stars)</li>\n<li>Ham: Five (5 stars)</li>"),
        "{page:?}"
    );
    assert!(page.body.contains("value=\"ham@example.org\""), "{page:?}");
}
