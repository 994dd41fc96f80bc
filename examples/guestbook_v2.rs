//! The guestbook of `guestbook_v1.rs`, next release: entries have stars, and the form
//! remembers the author as a name and an email. Both changes meet sessions that the first
//! release wrote (README: "When your types change"):
//!
//! - `Entry` gained a field, with `#[serde(default)]`: the entries stored by the first release
//!   read as before, with no stars. `get` reads them.
//! - "author" was a `String` and is now an `Author`: no default bridges that. It is read with
//!   `get_or_remove`, so an old value is dropped (and logged once) instead of failing every
//!   page of the visitor until the session expires.

use std::io::Write;

use pso::{BoxError, Context};
use serde::{Deserialize, Serialize};

const MAX_ENTRIES: usize = 50;
const MAX_CHARS: usize = 200;

#[derive(Serialize, Deserialize)]
struct Entry {
    name: String,
    message: String,
    /// New in this release: entries of the first have none.
    #[serde(default)]
    stars: u8,
}

/// The author last signed as, to fill in the form; the first release kept a `String`.
#[derive(Serialize, Deserialize, Default)]
struct Author {
    name: String,
    email: Option<String>,
}

fn main() {
    pso::run(guestbook);
}

fn guestbook(cx: &mut Context) -> Result<(), BoxError> {
    if cx.request.method() == "POST" {
        return sign(cx);
    }
    let entries: Vec<Entry> = cx.session.get("entries")?.unwrap_or_default();
    let author: Author = cx.session.get_or_remove("author")?.unwrap_or_default();
    let token = cx.session.create_form_token()?;
    writeln!(
        cx.response,
        "<!DOCTYPE html>\n<title>Guestbook</title>\n<ul>"
    )?;
    for entry in &entries {
        writeln!(
            cx.response,
            "<li>{}: {} ({} stars)</li>",
            escape(&entry.name),
            escape(&entry.message),
            entry.stars
        )?;
    }
    writeln!(
        cx.response,
        "</ul>\n<form method=\"post\"><input type=\"hidden\" name=\"token\" value=\"{token}\">\
         <input name=\"name\" value=\"{}\"> <input name=\"email\" value=\"{}\"> \
         <input name=\"message\"> <input name=\"stars\"> <button>Sign</button></form>",
        escape(&author.name),
        escape(author.email.as_deref().unwrap_or(""))
    )?;
    Ok(())
}

fn sign(cx: &mut Context) -> Result<(), BoxError> {
    let token = cx.request.form_value("token")?.unwrap_or_default();
    if !cx.session.take_form_token(&token)? {
        cx.response.set_status(403)?;
        write!(cx.response, "That form has expired: reload the page.")?;
        return Ok(());
    }
    let stars = field(cx, "stars")?.parse::<u8>().unwrap_or(0).min(5);
    let entry = Entry {
        name: field(cx, "name")?,
        message: field(cx, "message")?,
        stars,
    };
    let email = Some(field(cx, "email")?).filter(|email| !email.is_empty());
    let mut entries: Vec<Entry> = cx.session.get("entries")?.unwrap_or_default();
    cx.session.set(
        "author",
        &Author {
            name: entry.name.clone(),
            email,
        },
    )?;
    entries.push(entry);
    entries.drain(..entries.len().saturating_sub(MAX_ENTRIES));
    cx.session.set("entries", &entries)?;
    let back = cx.url(cx.request.script_name());
    cx.response.redirect(&back)?;
    Ok(())
}

/// A posted field, cut to its longest.
fn field(cx: &mut Context, name: &str) -> Result<String, BoxError> {
    let value = cx.request.form_value(name)?.unwrap_or_default();
    Ok(value.chars().take(MAX_CHARS).collect())
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
