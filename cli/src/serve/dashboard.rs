//! `/_pso/`: the sessions of the programs served, for the developer at this machine: each
//! session's id prefix, times, deadlines, keys and value sizes, and a button that ends it.
//!
//! Only for a client on the loopback interface that calls the server by a loopback name
//! (`Host: 127.0.0.1:…`, `localhost`, `[::1]`), so that a web page elsewhere cannot read it
//! through DNS rebinding; the button's form carries a secret made at start-up, so that a page
//! elsewhere cannot end sessions through the developer's browser. Ids are shown by a prefix
//! of 12 characters (48 of their 192 bits): enough to tell them apart, not enough to take one
//! over.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::sync::Arc;

use pso::store::{Admin, StoreLocation};
use pso::{Config, Environment, ServiceId};

use super::http::{self, Request};
use super::{Site, site};
use crate::inventory::{self, Detail};

/// Characters of an id shown and accepted back.
const PREFIX_LEN: usize = 12;
/// Sessions listed per store, the most recently used first.
const MAX_LISTED: usize = 200;
/// The largest form body accepted.
const MAX_FORM: u64 = 4096;

/// The cookie that carries the page's key, for `/_pso/` only.
const KEY_COOKIE: &str = "pso-serve-key";

/// Answers a request under `/_pso/`: `rest` is the path after it, `query` the query string.
pub fn serve(
    site: &Site,
    conn: &mut TcpStream,
    request: &Request,
    (method, rest, query): (&str, &str, &str),
    peer: SocketAddr,
) -> (u16, u64) {
    if !peer.ip().is_loopback() || !http::loopback_host(request.header("Host")) {
        return error(conn, 403, "the sessions page is for this machine only");
    }
    // The key in the URL that pso serve printed: exchanged for a cookie, so that it leaves the
    // address bar and no other page (SameSite=Strict) and no other local user has it.
    let offered = form_urlencoded::parse(query.as_bytes())
        .find(|(name, _)| name == "key")
        .map(|(_, value)| value.into_owned());
    if let Some(key) = offered {
        if !same_secret(&key, &site.token) {
            return error(
                conn,
                403,
                "that is not this server's key: open the URL pso serve printed",
            );
        }
        let cookie = format!(
            "{KEY_COOKIE}={}; Path={}; HttpOnly; SameSite=Strict",
            site.token,
            site::DASHBOARD
        );
        let _ = http::respond(
            conn,
            303,
            "text/plain; charset=utf-8",
            &[("Location", site::DASHBOARD), ("Set-Cookie", &cookie)],
            b"",
            false,
        );
        return (303, 0);
    }
    // Every Cookie header, read as bytes as the library reads a session cookie: another local
    // program's odd cookie on localhost (cookies ignore ports) must not hide the key.
    let cookies: Vec<u8> = request
        .headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("Cookie"))
        .flat_map(|(_, value)| [value.as_slice(), b"; "])
        .flatten()
        .copied()
        .collect();
    let has_key = pso::cookies::offered_ids(&cookies, KEY_COOKIE)
        .ids
        .iter()
        .any(|id| same_secret(id.as_str(), &site.token));
    if !has_key {
        return error(
            conn,
            403,
            "the sessions page needs its key: open the URL that pso serve printed (/_pso/?key=...)",
        );
    }
    match (method, rest) {
        ("GET" | "HEAD", "") => {
            let page = page(site);
            let _ = http::respond(
                conn,
                200,
                "text/html; charset=utf-8",
                &[
                    (
                        "Content-Security-Policy",
                        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
                    ),
                    ("X-Frame-Options", "DENY"),
                ],
                page.as_bytes(),
                method == "HEAD",
            );
            (200, page.len() as u64)
        }
        ("POST", "end") => end(site, conn, request),
        (_, "" | "end") => error(conn, 405, "not with this method"),
        _ => error(conn, 404, "no such page"),
    }
}

/// Compares secrets in time that does not depend on where they differ.
fn same_secret(offered: &str, secret: &str) -> bool {
    pso::same_secret(offered.as_bytes(), secret.as_bytes())
}

fn error(conn: &mut TcpStream, status: u16, why: &str) -> (u16, u64) {
    let _ = http::respond_error(conn, status, why);
    (status, 0)
}

/// Ends the session named by the form's `id` prefix, then sends the browser back to the page.
fn end(site: &Site, conn: &mut TcpStream, request: &Request) -> (u16, u64) {
    if request.content_length > MAX_FORM {
        return error(conn, 413, "the form is too large");
    }
    let mut body = request.body_start.clone();
    let rest = request.content_length.saturating_sub(body.len() as u64);
    if let Ok(clone) = conn.try_clone() {
        let _ = clone.take(rest).read_to_end(&mut body);
    }
    body.truncate(request.content_length as usize);
    let form: BTreeMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    if !form
        .get("token")
        .is_some_and(|token| same_secret(token, &site.token))
    {
        return error(conn, 403, "the form's token is not this server's");
    }
    let (Some(prefix), Some(service)) = (form.get("id"), form.get("service")) else {
        return error(conn, 400, "the form names no session");
    };
    let stores = stores(site);
    let Some(store) = stores.iter().find(|s| s.service.as_str() == service) else {
        return error(conn, 400, "no program uses that service");
    };
    match store.end(prefix) {
        Ok(true) => {}
        Ok(false) => return error(conn, 404, "no session with that prefix"),
        Err(why) => return error(conn, 500, &why),
    }
    let _ = http::respond(
        conn,
        303,
        "text/plain; charset=utf-8",
        &[("Location", site::DASHBOARD)],
        b"ended\n",
        false,
    );
    (303, 6)
}

/// One program's sessions: its store (a session directory or a server) and service.
struct ProgramStore {
    programs: Vec<String>,
    dir: PathBuf,
    location: StoreLocation,
    password_file: Option<PathBuf>,
    service: ServiceId,
    lock_timeout: Duration,
}

/// The stores of the programs served, one per directory and service.
fn stores(site: &Site) -> Vec<ProgramStore> {
    let mut stores: Vec<ProgramStore> = Vec::new();
    for name in site.programs.names() {
        // The configuration the program itself will read, as it gets it from the server.
        let mut pairs: Vec<(String, String)> = site.set_env.clone();
        pairs.push(("SCRIPT_NAME".into(), format!("{}{name}", site::PREFIX)));
        let config = Config::from_env(&Environment::from_pairs(pairs));
        match stores.iter_mut().find(|s| {
            s.location == config.store
                && (s.location != StoreLocation::Files || s.dir == config.session_dir)
                && s.service == config.service
        }) {
            Some(store) => store.programs.push(name),
            None => stores.push(ProgramStore {
                programs: vec![name],
                dir: config.session_dir,
                location: config.store,
                password_file: config.store_password_file,
                service: config.service,
                lock_timeout: config.lock_timeout,
            }),
        }
    }
    stores
}

impl ProgramStore {
    /// Where the sessions are, for the page.
    fn place(&self) -> String {
        match &self.location {
            StoreLocation::Server(url) => url.to_string(),
            _ => self.dir.display().to_string(),
        }
    }

    /// The store; for files, if its directory exists: the page never creates one.
    fn open(&self) -> Result<Option<Arc<dyn Admin>>, String> {
        match &self.location {
            StoreLocation::Server(url) => {
                inventory::open_server(url, self.password_file.as_deref())
                    .map(Some)
                    .map_err(|e| pso::ErrorChain(&e).to_string())
            }
            StoreLocation::Files => {
                if std::fs::symlink_metadata(&self.dir).is_err() {
                    return Ok(None);
                }
                inventory::open(&self.dir)
                    .map(|store| Some(Arc::new(store) as Arc<dyn Admin>))
                    .map_err(|e| format!("{}: {}", self.dir.display(), pso::ErrorChain(&e)))
            }
            _ => Err("PSOSessionStore names no store pso knows".to_owned()),
        }
    }

    /// The service's sessions in full, the most recently used first.
    fn sessions(&self, now: u64) -> Result<Vec<Detail>, String> {
        let Some(store) = self.open()? else {
            return Ok(Vec::new());
        };
        let mut summaries = Vec::new();
        inventory::for_each(&*store, Some(&self.service), now, |found| {
            if let Ok(summary) = found {
                summaries.push(summary);
            }
            ControlFlow::Continue(())
        })
        .map_err(|e| pso::ErrorChain(&e).to_string())?;
        summaries.sort_by_key(|summary| std::cmp::Reverse(summary.last_access));
        summaries.truncate(MAX_LISTED);
        Ok(summaries
            .iter()
            .filter_map(|summary| inventory::detail(&*store, &summary.key, now).ok().flatten())
            .collect())
    }

    /// Ends the one session whose id starts with `prefix`, under its lock.
    fn end(&self, prefix: &str) -> Result<bool, String> {
        if prefix.len() != PREFIX_LEN {
            return Ok(false);
        }
        let Some(store) = self.open()? else {
            return Ok(false);
        };
        let Ok(key) = inventory::resolve(&*store, Some(&self.service), prefix) else {
            return Ok(false);
        };
        let ended = inventory::remove(&*store, &key, self.lock_timeout)
            .map_err(|e| pso::ErrorChain(&e).to_string())?;
        eprintln!("pso serve: ended session {}", key.id.short());
        Ok(ended)
    }
}

fn page(site: &Site) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut body = String::new();
    for store in &stores(site) {
        body.push_str(&format!(
            "<h2>{} <small>service <code>{}</code> in <code>{}</code></small></h2>\n",
            escape(&store.programs.join(", ")),
            escape(store.service.as_str()),
            escape(&store.place()),
        ));
        let sessions = match store.sessions(now) {
            Ok(sessions) => sessions,
            Err(why) => {
                body.push_str(&format!("<p class=\"error\">{}</p>\n", escape(&why)));
                continue;
            }
        };
        if sessions.is_empty() {
            body.push_str("<p>No sessions yet.</p>\n");
            continue;
        }
        body.push_str(
            "<table>\n<tr><th>id</th><th>created</th><th>last used</th><th>ends</th><th>data</th><th></th></tr>\n",
        );
        for detail in &sessions {
            let prefix: String = detail
                .summary
                .key
                .id
                .as_str()
                .chars()
                .take(PREFIX_LEN)
                .collect();
            let (created, used, ends, data) = describe(detail, now);
            body.push_str(&format!(
                "<tr><td><code>{prefix}…</code></td><td>{created}</td><td>{used}</td><td>{ends}</td><td>{data}</td>\
                 <td><form method=\"post\" action=\"{}end\"><input type=\"hidden\" name=\"token\" value=\"{}\">\
                 <input type=\"hidden\" name=\"service\" value=\"{}\"><input type=\"hidden\" name=\"id\" value=\"{prefix}\">\
                 <button>End</button></form></td></tr>\n",
                site::DASHBOARD,
                site.token,
                escape(store.service.as_str()),
            ));
        }
        body.push_str("</table>\n");
    }
    if body.is_empty() {
        body.push_str("<p>No programs are served yet.</p>\n");
    }
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>pso serve: sessions</title>\n\
         <style>body{{font-family:sans-serif}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:.2em .5em;text-align:left;vertical-align:top}} .error{{color:#b00}}</style>\n\
         </head><body>\n<h1>Sessions</h1>\n<p><a href=\"/\">Programs</a> · reload this page to see sessions change.</p>\n{body}</body></html>\n"
    )
}

/// A session's times, deadlines and data, as table cells (HTML-escaped).
fn describe(detail: &Detail, now: u64) -> (String, String, String, String) {
    let summary = &detail.summary;
    let mut ends = Vec::new();
    if let Some(deadline) = summary.deadline {
        ends.push(format!("{} (lifetime)", when(deadline, now)));
    }
    if let Some(idle) = summary.idle_deadline {
        ends.push(format!("{} (unused)", when(idle, now)));
    }
    if ends.is_empty() {
        ends.push("when the browser closes".into());
    }
    if summary.expired {
        ends.push("<strong>expired</strong>".into());
    }
    let mut data = String::new();
    for key in &detail.keys {
        let value = key
            .shown
            .as_ref()
            .map(|shown| format!(" = {}", escape(&shown.to_string())))
            .unwrap_or_default();
        data.push_str(&format!(
            "<code>{}</code>{value} <small>({} B)</small><br>",
            escape(&key.name),
            key.bytes
        ));
    }
    if data.is_empty() {
        data.push_str("<em>empty</em>");
    }
    (
        when(summary.created, now),
        when(summary.last_access, now),
        ends.join("<br>"),
        data,
    )
}

/// A Unix time as an HTTP date and how far from now.
fn when(secs: u64, now: u64) -> String {
    let date = UNIX_EPOCH
        .checked_add(Duration::from_secs(secs))
        .map(crate::http_date)
        .unwrap_or_else(|| "far in the future".into());
    let relative = if secs <= now {
        format!("{} s ago", now - secs)
    } else {
        format!("in {} s", secs - now)
    };
    format!("{date}<br><small>{relative}</small>")
}

/// Text made safe inside HTML elements and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abd", "abc"));
        assert!(!same_secret("ab", "abc"));
        assert!(!same_secret("", "abc"));
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
