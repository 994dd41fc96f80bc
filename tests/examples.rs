//! The programs in `examples/`, run as real CGI processes.

mod common;

use std::path::PathBuf;

use common::Site;

/// Examples are built next to the binaries, in `target/<profile>/examples/`.
fn example(name: &str) -> PathBuf {
    let binaries = PathBuf::from(env!("CARGO_BIN_EXE_reload"));
    let path = binaries.parent().unwrap().join("examples").join(name);
    assert!(
        path.exists(),
        "{} is not built: plain `cargo test` builds the examples (or run `cargo build --examples`)",
        path.display()
    );
    path
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
    assert!(
        reply
            .set_cookie()
            .unwrap()
            .ends_with("; Expires=Mon, 15 Apr 2041 19:00:00 GMT")
    );
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
