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
