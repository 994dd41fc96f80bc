//! A login done right, as a CGI (or FastCGI) program: a form with a token against CSRF, a new
//! session id at login, an inactivity timeout that forces a new login, an audit line when a
//! session timed out, a logout that ends the session on the server and in the browser, and a
//! "sign out everywhere" that ends every session of the user.
//!
//! Configured, like pso, by the web server's environment (`SetEnv` in `.htaccess`):
//! - `LoginUser`, `LoginPassword`: the one account (default `eggs` / `spam`, as in the
//!   mod_python recipe this follows);
//! - `LoginIdle`: seconds a signed-in session may go unused (default 5);
//! - `LoginAuditLog`: a file to append audit lines to (default: standard error, which the web
//!   server writes to its error log).

use std::io::Write;
use std::time::{Duration, UNIX_EPOCH};

use pso::{BoxError, Context, Ended, Expiry, Origin};

fn main() {
    pso::run(login);
}

fn login(cx: &mut Context) -> Result<(), BoxError> {
    cx.response.set_header("Cache-Control", "no-store")?;
    let mut notice = String::new();
    if let Origin::Replaced(Ended::Idle) = cx.session.origin()
        && let Some(old) = cx.session.take_expired()
        && let Some(user) = old.get::<String>("user")?
    {
        audit(
            cx,
            &format!(
                "session of {user} timed out: started at {}, last used at {}",
                old.meta.created, old.meta.last_access
            ),
        );
        notice = "You were away too long: please sign in again.".into();
    }
    if cx.request.method() == "POST" {
        return post(cx);
    }
    match cx.request.query("bye").as_deref() {
        Some("everywhere") => notice = "You have signed out everywhere.".into(),
        Some(_) => notice = "You have signed out.".into(),
        None => {}
    }
    match cx.session.get::<String>("user")? {
        Some(user) => signed_in(cx, &user),
        None => form(cx, &notice),
    }
}

/// A posted form: sign in or out, if its token is one this session issued.
fn post(cx: &mut Context) -> Result<(), BoxError> {
    if cx.session.origin() == Origin::Moved {
        // Posted through the old id of a session that has just signed in (a tab opened
        // before, or whoever planted that id): pso lets it change nothing, and the page
        // shows where things stand.
        cx.response.redirect(cx.request.script_name())?;
        return Ok(());
    }
    let token = cx.request.form_value("token")?.unwrap_or_default();
    if !cx.session.take_form_token(&token)? {
        cx.response.set_status(403)?;
        return form(
            cx,
            "That form has expired or was not ours: please try again.",
        );
    }
    match cx.request.form_value("action")?.as_deref() {
        Some("login") => {
            let user = cx.request.form_value("user")?.unwrap_or_default();
            let password = cx.request.form_value("password")?.unwrap_or_default();
            let expected_user = cx.request.var("LoginUser").unwrap_or("eggs").to_owned();
            let expected_password = cx.request.var("LoginPassword").unwrap_or("spam").to_owned();
            // Both compared whole, so the time taken does not say which one was wrong.
            let right = pso::same_secret(user.as_bytes(), expected_user.as_bytes())
                & pso::same_secret(password.as_bytes(), expected_password.as_bytes());
            if !right {
                audit(cx, &format!("failed sign-in as {user:?}"));
                return form(cx, "Wrong user name or password.");
            }
            // A new id at the change of privilege: an id planted before is worth nothing now.
            cx.session.regenerate_id()?;
            cx.session.set("user", &user)?;
            // Named for "sign out everywhere".
            cx.session.set_user(&user)?;
            cx.session
                .set_idle_limit(Some(Duration::from_secs(idle(cx))))?;
            audit(cx, &format!("{user} signed in"));
            cx.response.redirect(cx.request.script_name())?;
            Ok(())
        }
        Some("logout_everywhere") => {
            if let Some(user) = cx.session.get::<String>("user")? {
                audit(cx, &format!("{user} signed out everywhere"));
                cx.session.log_out_everywhere()?;
            }
            // A new page (a GET), so that reloading it posts nothing again.
            let back = format!("{}?bye=everywhere", cx.request.script_name());
            cx.response.redirect(&back)?;
            Ok(())
        }
        Some("logout") => {
            if let Some(user) = cx.session.get::<String>("user")? {
                audit(cx, &format!("{user} signed out"));
            }
            cx.session.expire(Expiry::Now)?;
            let back = format!("{}?bye=1", cx.request.script_name());
            cx.response.redirect(&back)?;
            Ok(())
        }
        _ => {
            cx.response.set_status(400)?;
            form(cx, "Unknown action.")
        }
    }
}

fn signed_in(cx: &mut Context, user: &str) -> Result<(), BoxError> {
    let token = cx.session.create_form_token()?;
    let idle = idle(cx);
    write!(
        cx.response,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Signed in</title></head><body>\n\
         <p>Signed in as <strong>{}</strong>. Idle for {idle} s and you will have to sign in again.</p>\n\
         <form method=\"post\"><input type=\"hidden\" name=\"token\" value=\"{token}\">\
         <input type=\"hidden\" name=\"action\" value=\"logout\"><button>Sign out</button></form>\n\
         <form method=\"post\"><input type=\"hidden\" name=\"token\" value=\"{token}\">\
         <input type=\"hidden\" name=\"action\" value=\"logout_everywhere\"><button>Sign out everywhere</button></form>\n\
         </body></html>\n",
        escape(user)
    )?;
    Ok(())
}

fn form(cx: &mut Context, notice: &str) -> Result<(), BoxError> {
    let token = cx.session.create_form_token()?;
    write!(
        cx.response,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Sign in</title></head><body>\n\
         <p>{}</p>\n<form method=\"post\"><input type=\"hidden\" name=\"token\" value=\"{token}\">\
         <input type=\"hidden\" name=\"action\" value=\"login\">\
         <label>User <input name=\"user\"></label> <label>Password <input name=\"password\" type=\"password\"></label> \
         <button>Sign in</button></form>\n</body></html>\n",
        escape(notice)
    )?;
    Ok(())
}

/// `LoginIdle`, in seconds (default 5).
fn idle(cx: &Context) -> u64 {
    cx.request
        .var("LoginIdle")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(5)
}

/// Appends one audit line (the time, the client, what happened) to `LoginAuditLog`, or to
/// standard error.
fn audit(cx: &Context, what: &str) {
    let when = cx
        .now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let client = cx.request.remote_addr().unwrap_or("-");
    // Bounded, one line: a user name of a megabyte must not become a megabyte of log.
    let what: String = what.chars().take(200).collect();
    let line = format!("{when} {client} {}\n", what.escape_debug());
    let written = cx.request.var("LoginAuditLog").is_some_and(|path| {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        // Private, never through a symbolic link, and only a file of our own.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(path)
            .and_then(|file| {
                let ours = file.metadata()?.uid() == rustix::process::geteuid().as_raw();
                if !ours {
                    return Err(std::io::Error::other(
                        "the audit log belongs to another user",
                    ));
                }
                (&file).write_all(line.as_bytes())
            })
            .is_ok()
    });
    if !written {
        eprint!("login audit: {line}");
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The sign-in as a visitor goes through it, with pso's test client: no web server, sessions in
/// memory, the browser's cookies kept.
#[cfg(test)]
mod tests {
    use std::time::Duration;

    use pso::testing::Client;

    fn sign_in(browser: &mut Client<impl pso::Handler>, password: &str) -> pso::testing::Reply {
        let page = browser.get("/cgi-bin/login");
        let token = page.input_value("token").expect("the form has a token");
        browser.post_form(
            "/cgi-bin/login",
            &[
                ("token", &token),
                ("action", "login"),
                ("user", "eggs"),
                ("password", password),
            ],
        )
    }

    fn client() -> Client<impl pso::Handler> {
        Client::new(super::login)
            .env("SCRIPT_NAME", "/cgi-bin/login")
            .env("LoginAuditLog", "/dev/null")
    }

    #[test]
    fn signs_in_with_a_new_id_then_signs_out() {
        let mut browser = client();
        let wrong = sign_in(&mut browser, "ham");
        assert!(wrong.text().contains("Wrong user name or password"));
        let before = browser.cookie("login").map(str::to_owned);
        let done = sign_in(&mut browser, "spam");
        assert_eq!(done.status(), 302, "{}", done.text());
        assert_ne!(
            browser.cookie("login").map(str::to_owned),
            before,
            "a new id"
        );
        let page = browser.get("/cgi-bin/login");
        assert!(page.text().contains("Signed in as <strong>eggs</strong>"));
        let token = page.input_value("token").unwrap();
        browser.post_form("/cgi-bin/login", &[("token", &token), ("action", "logout")]);
        assert_eq!(browser.cookie("login"), None, "the cookie is revoked");
        assert!(browser.get("/cgi-bin/login").text().contains("Sign in"));
    }

    #[test]
    fn a_form_from_elsewhere_is_refused_and_idling_signs_out() {
        let mut browser = client();
        let forged = browser.post_form(
            "/cgi-bin/login",
            &[
                ("token", "forged"),
                ("action", "login"),
                ("user", "eggs"),
                ("password", "spam"),
            ],
        );
        assert_eq!(forged.status(), 403);
        sign_in(&mut browser, "spam");
        browser.advance(Duration::from_secs(6));
        let page = browser.get("/cgi-bin/login");
        assert!(
            page.text().contains("You were away too long"),
            "{}",
            page.text()
        );
    }
}
