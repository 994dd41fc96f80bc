//! What the server serves: the programs of one directory under `/cgi-bin/`, the sessions page
//! under `/_pso/`, an index at `/`; and the `SetEnv` variables every program gets.
//!
//! Whether a path names a program is decided once, from the normalised path: its first
//! segment after `/cgi-bin/` must be a plain name (no leading dot) of a program cargo built or
//! of an executable regular file in the directory; a symbolic link counts only if it resolves
//! inside the directory.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::build::Built;

/// Where programs live in URLs.
pub const PREFIX: &str = "/cgi-bin/";
/// Where the sessions page lives.
pub const DASHBOARD: &str = "/_pso/";

/// What a path names.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// A program: its name, its executable, and the path after its name.
    Program {
        name: String,
        executable: PathBuf,
        path_info: String,
    },
    /// The sessions page, with what follows `/_pso/`.
    Dashboard(String),
    /// The list of programs.
    Index,
    /// Nothing.
    NotFound,
}

/// The served directory and what was built from it.
#[derive(Debug)]
pub struct Programs {
    /// The directory, canonical.
    pub dir: PathBuf,
    /// Programs cargo built from sources in the directory.
    pub built: Built,
}

impl Programs {
    /// Decides what `path` (normalised, see `http::normalize`) names.
    pub fn route(&self, path: &str) -> Route {
        if path == "/" {
            return Route::Index;
        }
        if let Some(rest) = path.strip_prefix(DASHBOARD) {
            return Route::Dashboard(rest.to_string());
        }
        if path == "/_pso" {
            return Route::Dashboard(String::new());
        }
        let Some(rest) = path.strip_prefix(PREFIX) else {
            return Route::NotFound;
        };
        let (name, path_info) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash..]),
            None => (rest, ""),
        };
        match self.executable(name) {
            Some(executable) => Route::Program {
                name: name.to_string(),
                executable,
                path_info: path_info.to_string(),
            },
            None => Route::NotFound,
        }
    }

    /// The executable a program name stands for, if any.
    pub fn executable(&self, name: &str) -> Option<PathBuf> {
        if !is_plain_name(name) {
            return None;
        }
        if let Some(built) = self.built.get(name) {
            return Some(built.clone());
        }
        let candidate = self.dir.join(name);
        // Resolving the whole path answers both "is it a link out of the directory" and "is
        // it a link to a link": only where it finally lands counts.
        let resolved = candidate.canonicalize().ok()?;
        if !resolved.starts_with(&self.dir) {
            return None;
        }
        let metadata = std::fs::metadata(&resolved).ok()?;
        (metadata.is_file() && metadata.permissions().mode() & 0o111 != 0).then_some(resolved)
    }

    /// Every program's name, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.built.keys().cloned().collect();
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                if let Some(name) = entry.file_name().to_str()
                    && !names.iter().any(|n| n == name)
                    && self.executable(name).is_some()
                {
                    names.push(name.to_string());
                }
            }
        }
        names.sort();
        names
    }
}

/// A name a program may have: `A-Z a-z 0-9 . _ -`, not starting with a dot (`.htaccess`,
/// `..`).
pub(super) fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The canonical form of a directory to serve, or why it cannot be.
pub fn served_dir(dir: &Path) -> Result<PathBuf, String> {
    let canonical = dir.canonicalize().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            format!(
                "cannot serve {}: there is no such directory here. A program's source goes in {}/NAME.rs, with its entry in Cargo.toml:\n\n{}\nthen `pso serve` builds it and serves it at /cgi-bin/NAME (README: Your own program)",
                dir.display(),
                dir.display(),
                bin_entry("NAME", dir)
            )
        } else {
            format!("cannot serve {}: {e}", dir.display())
        }
    })?;
    if !canonical.is_dir() {
        return Err(format!("cannot serve {}: not a directory", dir.display()));
    }
    Ok(canonical)
}

/// The `[[bin]]` entry of Cargo.toml for a program `name` whose source is in `dir`.
pub fn bin_entry(name: &str, dir: &Path) -> String {
    format!(
        "[[bin]]\nname = \"{name}\"\npath = \"{}/{name}.rs\"\n",
        dir.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn executable(path: &Path) {
        std::fs::write(path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn names_only_programs_inside_the_directory() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("cgi-bin");
        std::fs::create_dir(&dir).unwrap();
        executable(&dir.join("app"));
        executable(&dir.join(".hidden"));
        std::fs::write(dir.join("data.txt"), "not a program").unwrap();
        std::fs::write(dir.join("main.rs"), "fn main() {}").unwrap();
        executable(&root.path().join("outside"));
        symlink(root.path().join("outside"), dir.join("escape")).unwrap();
        symlink(dir.join("app"), dir.join("alias")).unwrap();
        std::fs::create_dir(dir.join("sub")).unwrap();
        let dir = served_dir(&dir).unwrap();
        let mut built = Built::new();
        built.insert("main".into(), PathBuf::from("/target/debug/main"));
        let programs = Programs {
            dir: dir.clone(),
            built,
        };

        assert_eq!(
            programs.route("/cgi-bin/app/x/y"),
            Route::Program {
                name: "app".into(),
                executable: dir.join("app"),
                path_info: "/x/y".into()
            }
        );
        assert_eq!(
            programs.route("/cgi-bin/main"),
            Route::Program {
                name: "main".into(),
                executable: PathBuf::from("/target/debug/main"),
                path_info: String::new()
            }
        );
        assert!(matches!(
            programs.route("/cgi-bin/alias"),
            Route::Program { .. }
        ));
        for not_found in [
            "/cgi-bin/.hidden",
            "/cgi-bin/data.txt",
            "/cgi-bin/main.rs",
            "/cgi-bin/escape",
            "/cgi-bin/sub",
            "/cgi-bin/",
            "/cgi-bin/missing",
            "/app",
            "/cgi-binx/app",
        ] {
            assert_eq!(programs.route(not_found), Route::NotFound, "{not_found}");
        }
        assert_eq!(programs.route("/"), Route::Index);
        assert_eq!(programs.route("/_pso/end"), Route::Dashboard("end".into()));
        assert_eq!(programs.names(), vec!["alias", "app", "main"]);
    }
}
