//! The CGI environment of one request, as a map handed in rather than read from the process.
//!
//! Under CGI the map is the process environment; under FastCGI it is one request's parameters.
//! Keeping it a value means no request ever writes the process environment (httpoxy) and one
//! process can serve requests with different configurations.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

/// The meta-variables of one request (RFC 3875 §4.1) plus whatever the server `SetEnv`s.
///
/// ```
/// let env = pso::Environment::from_pairs([("REQUEST_METHOD", "GET"), ("PSOServiceId", "shop")]);
/// assert_eq!(env.get("PSOServiceId"), Some("shop"));
/// assert_eq!(env.get("HTTPS"), None);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Environment {
    vars: BTreeMap<OsString, OsString>,
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

    /// A variable's value, if it is set and is UTF-8.
    ///
    /// A value that is not UTF-8 is logged and treated as unset: every value pso reads is
    /// ASCII by its grammar, so such a value is a misconfiguration or an attack, never data.
    pub fn get(&self, name: &str) -> Option<&str> {
        let value = self.vars.get(OsStr::new(name))?;
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
        self.vars.get(OsStr::new(name)).map(OsString::as_os_str)
    }

    /// A configuration variable as the web server passed it on: under its own name, or else
    /// under the name servers make of it. lighttpd upper-cases names and turns everything but
    /// letters and digits into `_` (`PSOServiceId` arrives as `PSOSERVICEID`); Apache turns
    /// `-` into `_`. Returns the name found and the raw value.
    ///
    /// ```
    /// let env = pso::Environment::from_pairs([("PSOSERVICEID", "shop"), ("PSOCookieSession_Max_Age", "60")]);
    /// assert_eq!(env.lookup("PSOServiceId").map(|(n, v)| (n, v.to_str())), Some(("PSOSERVICEID", Some("shop"))));
    /// assert!(env.lookup("PSOCookieSession_Max-Age").is_some());
    /// assert!(env.lookup("PSOSession").is_none());
    /// ```
    pub fn lookup(&self, name: &str) -> Option<(&str, &OsStr)> {
        if let Some((found, value)) = self.vars.get_key_value(OsStr::new(name))
            && let Some(found) = found.to_str()
        {
            return Some((found, value.as_os_str()));
        }
        self.vars.iter().find_map(|(found, value)| {
            let found = found.to_str()?;
            same_variable(found, name).then_some((found, value.as_os_str()))
        })
    }

    /// Like [`Environment::lookup`], the value as text; a value that is not UTF-8 is logged and
    /// treated as unset.
    pub fn lookup_str(&self, name: &str) -> Option<(&str, &str)> {
        let (found, value) = self.lookup(name)?;
        match value.to_str() {
            Some(text) => Some((found, text)),
            None => {
                log::warn!("{found} is not valid UTF-8; ignoring it");
                None
            }
        }
    }

    /// Whether a variable is set at all, to any value.
    pub fn contains(&self, name: &str) -> bool {
        self.vars.contains_key(OsStr::new(name))
    }

    /// Sets a variable in this map (never in the process environment).
    pub fn set(&mut self, name: impl Into<OsString>, value: impl Into<OsString>) {
        self.vars.insert(name.into(), value.into());
    }

    /// Every variable, in name order, as raw bytes.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.vars.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes()))
    }
}

/// Whether two variable names are one name as a web server may have rewritten it: equal once
/// letters are upper-cased and anything but letters and digits is `_`.
pub(crate) fn same_variable(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .all(|(x, y)| canonical_byte(x) == canonical_byte(y))
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
