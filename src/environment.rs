//! The CGI environment of one request, as a map handed in rather than read from the process.
//!
//! Under CGI the map is the process environment; under FastCGI it is one request's parameters.
//! Keeping it a value means no request ever writes the process environment (httpoxy) and one
//! process can serve requests with different configurations.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

/// The meta-variables of one request (RFC 3875 §4.1) plus whatever the server `SetEnv`s.
///
/// Kept in the order given, unsorted: a CGI program builds one at every start, and a few dozen
/// names are found faster by a scan than sorted. When a name comes twice, the last one counts
/// (as for FastCGI parameters).
///
/// ```
/// let env = pso::Environment::from_pairs([("REQUEST_METHOD", "GET"), ("PSOServiceId", "shop")]);
/// assert_eq!(env.get("PSOServiceId"), Some("shop"));
/// assert_eq!(env.get("HTTPS"), None);
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Environment {
    vars: Vec<(OsString, OsString)>,
}

/// Names every variable, but shows no value that can hold a secret: the client's cookies and
/// credentials, and pso's variables that can hold a password. A handler that logs its
/// environment must not log a session id or a store's password.
///
/// ```
/// let id = "0123456789abcdef0123456789abcdef0123456789abcdef";
/// let env = pso::Environment::from_pairs([
///     ("HTTP_COOKIE", format!("shop={id}").as_str()),
///     ("REDIRECT_HTTP_AUTHORIZATION", "Basic ZWdnczpzcGFt"),
///     ("QUERY_STRING", format!("page=2&shop={id}").as_str()),
///     ("PSOSessionStore", "redis://:s3cret@cache/0"),
///     ("REQUEST_METHOD", "GET"),
/// ]);
/// let shown = format!("{env:?}");
/// assert!(shown.contains("REQUEST_METHOD") && shown.contains("GET"));
/// assert!(shown.contains("page=2&shop=<id>"));
/// assert!(!shown.contains("0123456789") && !shown.contains("s3cret") && !shown.contains("ZWdn"));
/// ```
impl std::fmt::Debug for Environment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut map = f.debug_map();
        for (name, value) in &self.vars {
            let text = name.to_string_lossy();
            if holds_secret(&text) {
                map.entry(&text, &format_args!("<{} bytes, not shown>", value.len()));
            } else {
                map.entry(&text, &without_ids(&value.to_string_lossy()));
            }
        }
        map.finish()
    }
}

/// `text` with every run of 20 or more letters and digits masked: a session id (in a query
/// string, a URL, a Referer), a token, a key. Generous on purpose: it is for a person to read.
fn without_ids(text: &str) -> String {
    let mut shown = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(|c: char| c.is_ascii_alphanumeric()) {
        let run = rest[start..]
            .find(|c: char| !c.is_ascii_alphanumeric())
            .map_or(rest.len(), |end| start + end);
        shown.push_str(&rest[..start]);
        shown.push_str(if run - start >= 20 {
            "<id>"
        } else {
            &rest[start..run]
        });
        rest = &rest[run..];
    }
    shown.push_str(rest);
    shown
}

/// Whether a variable's value can hold a secret.
fn holds_secret(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    // Anywhere in the name: Apache passes them on as REDIRECT_HTTP_COOKIE after a rewrite.
    upper.contains("HTTP_COOKIE")
        || upper.contains("AUTHORIZATION")
        || upper.contains("PASSWORD")
        || upper.contains("SECRET")
        || upper.contains("TOKEN")
        // The stores' URLs, under any prefix a server adds (`REDIRECT_`).
        || upper.contains("PSOSESSIONSTORE")
        || crate::config::Variable::find(name).is_some_and(|variable| variable.secret)
}

impl Environment {
    /// The process environment: what a CGI server hands a CGI program.
    pub fn from_process() -> Environment {
        Environment {
            vars: std::env::vars_os().collect(),
        }
    }

    /// An environment from name/value pairs (FastCGI parameters, tests).
    pub fn from_pairs<I, K, V>(pairs: I) -> Environment
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<OsString>,
        V: Into<OsString>,
    {
        Environment {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// The last variable named exactly `name`.
    fn find(&self, name: &[u8]) -> Option<&(OsString, OsString)> {
        self.vars
            .iter()
            .rev()
            .find(|(found, _)| found.as_bytes() == name)
    }

    /// A variable's value, if it is set and is UTF-8.
    ///
    /// A value that is not UTF-8 is logged and treated as unset: every value pso reads is
    /// ASCII by its grammar, so such a value is a misconfiguration or an attack, never data.
    pub fn get(&self, name: &str) -> Option<&str> {
        let (_, value) = self.find(name.as_bytes())?;
        match value.to_str() {
            Some(text) => Some(text),
            None => {
                log::warn!("{name} is not valid UTF-8; ignoring it");
                None
            }
        }
    }

    /// A variable's raw value, whatever its encoding (paths may be any bytes on Unix).
    pub fn get_os(&self, name: &str) -> Option<&OsStr> {
        self.find(name.as_bytes())
            .map(|(_, value)| value.as_os_str())
    }

    /// A configuration variable as the web server passed it on: under its own name, or under
    /// the names servers make of it. Apache turns `-` into `_` (`PSOCookieSession_Max-Age`
    /// arrives as `PSOCookieSession_Max_Age`); lighttpd upper-cases names and turns everything
    /// but letters and digits into `_` (`PSOServiceId` arrives as `PSOSERVICEID`). Returns the
    /// name found and the raw value; the name itself wins over a server's form of it.
    ///
    /// ```
    /// let env = pso::Environment::from_pairs([("PSOSERVICEID", "shop"), ("PSOCookieSession_Max_Age", "60")]);
    /// assert_eq!(env.lookup("PSOServiceId").map(|(n, v)| (n, v.to_str())), Some(("PSOSERVICEID", Some("shop"))));
    /// assert!(env.lookup("PSOCookieSession_Max-Age").is_some());
    /// assert!(env.lookup("PSOSession").is_none());
    /// ```
    pub fn lookup(&self, name: &str) -> Option<(&str, &OsStr)> {
        best_form(
            self.vars.iter().rev().filter_map(|(n, v)| entry(n, v)),
            name,
        )
    }

    /// pso's own variables (every name starting with `PSO`, where all forms of their names
    /// start), gathered once for many lookups.
    pub(crate) fn pso_variables(&self) -> PsoVariables<'_> {
        PsoVariables {
            vars: self
                .vars
                .iter()
                .rev()
                .filter(|(name, _)| name.as_bytes().starts_with(b"PSO"))
                .filter_map(|(name, value)| entry(name, value))
                .collect(),
        }
    }

    /// Like [`Environment::lookup`], the value as text; a value that is not UTF-8 is logged and
    /// treated as unset.
    pub fn lookup_str(&self, name: &str) -> Option<(&str, &str)> {
        as_text(self.lookup(name)?)
    }

    /// Whether a variable is set at all, to any value.
    pub fn contains(&self, name: &str) -> bool {
        self.find(name.as_bytes()).is_some()
    }

    /// Sets a variable in this map (never in the process environment).
    pub fn set(&mut self, name: impl Into<OsString>, value: impl Into<OsString>) {
        let (name, value) = (name.into(), value.into());
        self.vars.retain(|(found, _)| *found != name);
        self.vars.push((name, value));
    }

    /// Every variable, as raw bytes, in the order given (a name given twice, twice).
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.vars.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes()))
    }
}

/// The best of `candidates` (latest first) for `name`: the name itself, else Apache's form,
/// else lighttpd's.
fn best_form<'a>(
    candidates: impl Iterator<Item = (&'a str, &'a OsStr)>,
    name: &str,
) -> Option<(&'a str, &'a OsStr)> {
    let mut best: Option<(u8, &'a str, &'a OsStr)> = None;
    for (found, value) in candidates {
        let rank = if found == name {
            return Some((found, value));
        } else {
            match form(found.as_bytes(), name.as_bytes()) {
                Some(rank) => rank,
                None => continue,
            }
        };
        if best.is_none_or(|(best, _, _)| rank < best) {
            best = Some((rank, found, value));
        }
    }
    best.map(|(_, found, value)| (found, value))
}

/// A found variable's value as text; one that is not UTF-8 is logged and treated as unset.
fn as_text<'a>((found, value): (&'a str, &'a OsStr)) -> Option<(&'a str, &'a str)> {
    match value.to_str() {
        Some(text) => Some((found, text)),
        None => {
            log::warn!("{found} is not valid UTF-8; ignoring it");
            None
        }
    }
}

/// pso's variables of an environment, looked up as [`Environment::lookup`] does.
pub(crate) struct PsoVariables<'a> {
    vars: Vec<(&'a str, &'a OsStr)>,
}

impl<'a> PsoVariables<'a> {
    pub(crate) fn lookup(&self, name: &str) -> Option<(&'a str, &'a OsStr)> {
        best_form(self.vars.iter().copied(), name)
    }

    /// Like [`PsoVariables::lookup`], the value as text (a value that is not is logged).
    pub(crate) fn lookup_str(&self, name: &str) -> Option<(&'a str, &'a str)> {
        as_text(self.lookup(name)?)
    }
}

/// Which server's form of `name` `found` is: 1 Apache's (`-` as `_`), 2 lighttpd's (upper
/// case, everything but letters and digits as `_`).
fn form(found: &[u8], name: &[u8]) -> Option<u8> {
    if found.len() != name.len() {
        return None;
    }
    let apache = |n: u8| if n == b'-' { b'_' } else { n };
    if found.iter().zip(name).all(|(f, n)| *f == apache(*n)) {
        return Some(1);
    }
    if found
        .iter()
        .zip(name)
        .all(|(f, n)| *f == canonical_byte(*n))
    {
        return Some(2);
    }
    None
}

/// A found variable as (name, value), if its name is text.
fn entry<'a>(found: &'a OsString, value: &'a OsString) -> Option<(&'a str, &'a OsStr)> {
    Some((found.to_str()?, value.as_os_str()))
}

/// Whether two variable names are one name as a web server may have rewritten it: equal once
/// letters are upper-cased and anything but letters and digits is `_`.
pub(crate) fn same_variable(a: &str, b: &str) -> bool {
    same_variable_bytes(a.as_bytes(), b.as_bytes())
}

fn same_variable_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| canonical_byte(*x) == canonical_byte(*y))
}

fn canonical_byte(b: u8) -> u8 {
    if b.is_ascii_alphanumeric() {
        b.to_ascii_uppercase()
    } else {
        b'_'
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;

    #[test]
    fn non_utf8_values_read_as_unset_but_stay_reachable_raw() {
        let env = Environment::from_pairs([(
            OsString::from("PSOSessionFileLoader_Path"),
            OsString::from_vec(b"/tmp/\xff".to_vec()),
        )]);
        assert_eq!(env.get("PSOSessionFileLoader_Path"), None);
        assert_eq!(
            env.get_os("PSOSessionFileLoader_Path").map(OsStr::as_bytes),
            Some(&b"/tmp/\xff"[..])
        );
    }
}
