//! Where each variable comes from: the process environment, then an Apache `.htaccess` whose
//! `SetEnv` and `UnsetEnv` lines apply over it, as Apache applies them for a CGI program.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

use pso::Environment;

use crate::htaccess::Htaccess;

/// Where a variable was set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Environment,
    File { path: PathBuf, line: usize },
    CommandLine,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Environment => f.write_str("environment"),
            Source::File { path, line } => write!(f, "{}:{line}", path.display()),
            Source::CommandLine => f.write_str("command line"),
        }
    }
}

/// The variables in effect, each with where it was set.
#[derive(Default)]
pub struct Layered {
    entries: Vec<(OsString, OsString, Source)>,
}

impl Layered {
    /// Starts from the process environment.
    pub fn from_process() -> Layered {
        Layered {
            entries: std::env::vars_os()
                .map(|(name, value)| (name, value, Source::Environment))
                .collect(),
        }
    }

    /// Applies a file's directives in order. A `SetEnv` replaces every earlier spelling of the
    /// same variable (as web servers pass names on, `PSOSERVICEID` is `PSOServiceId`), so the
    /// file wins over the environment whatever spelling either uses; `UnsetEnv` removes them.
    pub fn apply(&mut self, file: &Htaccess, shown_as: &std::path::Path) {
        for directive in &file.directives {
            self.entries
                .retain(|(name, _, _)| !same_variable(name, &directive.name));
            if let Some(value) = &directive.value {
                self.entries.push((
                    directive.name.clone().into(),
                    value.clone().into(),
                    Source::File {
                        path: shown_as.to_path_buf(),
                        line: directive.line,
                    },
                ));
            }
        }
    }

    /// Sets one variable from the command line, over everything else.
    pub fn set(&mut self, name: &str, value: &str) {
        self.entries
            .retain(|(found, _, _)| found.as_os_str() != std::ffi::OsStr::new(name));
        self.entries
            .push((name.into(), value.into(), Source::CommandLine));
    }

    /// The environment a pso program would get.
    pub fn environment(&self) -> Environment {
        Environment::from_pairs(
            self.entries
                .iter()
                .map(|(name, value, _)| (name.clone(), value.clone())),
        )
    }

    /// Where the variable named exactly `name` was set.
    pub fn source_of(&self, name: &str) -> Option<&Source> {
        self.entries
            .iter()
            .rev()
            .find(|(found, _, _)| found.as_os_str() == std::ffi::OsStr::new(name))
            .map(|(_, _, source)| source)
    }

    /// Every variable name, for spotting typos.
    pub fn names(&self) -> impl Iterator<Item = &OsString> {
        self.entries.iter().map(|(name, _, _)| name)
    }
}

/// Whether two names are one variable once a web server has passed it on: equal once letters
/// are upper-cased and anything but letters and digits is `_` (lighttpd's rewriting, which
/// covers Apache's `-` to `_`). The library's `Environment::lookup` reads names the same way.
pub fn same_variable(a: &OsString, b: &str) -> bool {
    let canonical = |byte: u8| {
        if byte.is_ascii_alphanumeric() {
            byte.to_ascii_uppercase()
        } else {
            b'_'
        }
    };
    let a = a.as_encoded_bytes();
    a.len() == b.len()
        && a.iter()
            .zip(b.bytes())
            .all(|(x, y)| canonical(*x) == canonical(y))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn the_file_wins_over_any_spelling_in_the_environment() {
        let mut layered = Layered {
            entries: vec![
                ("PSOSESSIONEXPIRE".into(), "60".into(), Source::Environment),
                ("PSOServiceId".into(), "env".into(), Source::Environment),
                ("KEEP".into(), "1".into(), Source::Environment),
            ],
        };
        let file = Htaccess::parse(
            Path::new("x"),
            "SetEnv PSOSessionExpire 15*60\nUnsetEnv PSOSERVICEID\n",
        );
        layered.apply(&file, Path::new("cgi-bin/.htaccess"));
        let env = layered.environment();
        assert_eq!(
            env.lookup_str("PSOSessionExpire"),
            Some(("PSOSessionExpire", "15*60"))
        );
        assert_eq!(env.lookup_str("PSOServiceId"), None);
        assert_eq!(env.get("KEEP"), Some("1"));
        assert_eq!(
            layered.source_of("PSOSessionExpire").unwrap().to_string(),
            "cgi-bin/.htaccess:1"
        );
        assert_eq!(layered.source_of("KEEP"), Some(&Source::Environment));
    }
}
