//! The `SetEnv` and `UnsetEnv` lines of an Apache `.htaccess`, so that one file configures
//! Apache, `pso serve` and `pso config`.
//!
//! Words are split as Apache's `ap_getword_conf` splits them: by white space, with `"..."` or
//! `'...'` quoting (a backslash before the quote character keeps it), and a line that ends in a
//! backslash continues on the next. Directive names are case-insensitive, variable names are
//! not. Other directives are ignored, and so are sections (`<IfModule>`, `<Files>`): the lines
//! inside them count as if outside, which is what a `.htaccess` of a `cgi-bin/` means in
//! practice.

use std::io;
use std::path::{Path, PathBuf};

/// Files larger than this are not a `.htaccess` anyone wrote by hand.
const MAX_BYTES: u64 = 1 << 20;

/// One `SetEnv` or `UnsetEnv`, where it was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Directive {
    /// The variable's name.
    pub name: String,
    /// `Some(value)` for `SetEnv` (an absent value is the empty string), `None` for `UnsetEnv`.
    pub value: Option<String>,
    /// The line it starts on, from 1.
    pub line: usize,
}

/// The environment directives of one file, in order.
#[derive(Clone, Debug, Default)]
pub struct Htaccess {
    /// The file read.
    pub path: PathBuf,
    /// Every `SetEnv` and `UnsetEnv`, in the order written.
    pub directives: Vec<Directive>,
    /// Lines that Apache would refuse, as `line N: why`.
    pub problems: Vec<String>,
}

impl Htaccess {
    /// Reads and parses `path`.
    pub fn read(path: &Path) -> io::Result<Htaccess> {
        use std::io::Read;
        // Not a FIFO or a device: opening one could wait forever.
        if !std::fs::metadata(path)?.is_file() {
            return Err(io::Error::other(format!(
                "{} is not a regular file",
                path.display()
            )));
        }
        let file = std::fs::File::open(path)?;
        let mut bytes = Vec::new();
        file.take(MAX_BYTES + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > MAX_BYTES {
            return Err(io::Error::other(format!(
                "{} is larger than {MAX_BYTES} bytes",
                path.display()
            )));
        }
        let text = String::from_utf8(bytes).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not UTF-8", path.display()),
            )
        })?;
        Ok(Htaccess::parse(path, &text))
    }

    /// Parses the text of a file; `path` is for messages.
    pub fn parse(path: &Path, text: &str) -> Htaccess {
        let mut parsed = Htaccess {
            path: path.to_path_buf(),
            ..Htaccess::default()
        };
        for (line, logical) in logical_lines(text) {
            let words = match words(&logical) {
                Ok(words) => words,
                Err(why) => {
                    parsed.problems.push(format!("line {line}: {why}"));
                    continue;
                }
            };
            let Some(directive) = words.first() else {
                continue;
            };
            let arguments = &words[1..];
            if directive.eq_ignore_ascii_case("SetEnv") {
                match arguments {
                    [name] => parsed.push(name, Some(String::new()), line),
                    [name, value] => parsed.push(name, Some(value.clone()), line),
                    _ => parsed
                        .problems
                        .push(format!("line {line}: SetEnv takes a name and a value")),
                }
            } else if directive.eq_ignore_ascii_case("UnsetEnv") {
                if arguments.is_empty() {
                    parsed
                        .problems
                        .push(format!("line {line}: UnsetEnv needs a name"));
                }
                for name in arguments {
                    parsed.push(name, None, line);
                }
            }
        }
        parsed
    }

    fn push(&mut self, name: &str, value: Option<String>, line: usize) {
        self.directives.push(Directive {
            name: name.to_string(),
            value,
            line,
        });
    }

    /// The variables in effect after every directive, with the line that set each, in the
    /// order first set.
    pub fn variables(&self) -> Vec<(&str, &str, usize)> {
        let mut set: Vec<(&str, &str, usize)> = Vec::new();
        for directive in &self.directives {
            // Apache's environment table ignores case: `UnsetEnv psoserviceid` removes
            // `PSOServiceId`.
            set.retain(|(name, _, _)| !name.eq_ignore_ascii_case(&directive.name));
            if let Some(value) = &directive.value {
                set.push((&directive.name, value, directive.line));
            }
        }
        set
    }
}

/// Lines joined where one ends in a backslash, each with the number of its first line;
/// comments and blank lines dropped.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut lines = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (index, raw) in text.lines().enumerate() {
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        let (start, mut joined) = current.take().unwrap_or((index + 1, String::new()));
        if let Some(continued) = raw.strip_suffix('\\') {
            joined.push_str(continued);
            current = Some((start, joined));
            continue;
        }
        joined.push_str(raw);
        let trimmed = joined.trim_start();
        if !trimmed.is_empty() && !trimmed.starts_with('#') {
            lines.push((start, joined));
        }
    }
    if let Some((start, joined)) = current
        && !joined.trim().is_empty()
    {
        lines.push((start, joined));
    }
    lines
}

/// Splits a line into words as `ap_getword_conf` does.
fn words(line: &str) -> Result<Vec<String>, &'static str> {
    let mut words = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let Some(&first) = chars.peek() else {
            return Ok(words);
        };
        let mut word = String::new();
        if first == '"' || first == '\'' {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err("a quote is not closed"),
                    Some('\\') if chars.peek() == Some(&first) => {
                        word.push(first);
                        chars.next();
                    }
                    Some(c) if c == first => break,
                    Some(c) => word.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                word.push(c);
            }
        }
        words.push(word);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Htaccess {
        Htaccess::parse(Path::new(".htaccess"), text)
    }

    #[test]
    fn reads_set_env_lines_as_apache_splits_them() {
        let file = parse(
            "# a comment\n\
             Options +ExecCGI\n\
             SetEnv PSOServiceId shop\n\
             setenv PSOSessionExpire \"15*60\"\n\
             <IfModule mod_env.c>\n\
             \tSetEnv PSOCookieSession_Path '/a b'\n\
             </IfModule>\n\
             SetEnv Empty\n\
             SetEnv Quoted \"say \\\"hi\\\"\"\n",
        );
        assert_eq!(file.problems, Vec::<String>::new());
        assert_eq!(
            file.variables(),
            vec![
                ("PSOServiceId", "shop", 3),
                ("PSOSessionExpire", "15*60", 4),
                ("PSOCookieSession_Path", "/a b", 6),
                ("Empty", "", 8),
                ("Quoted", "say \"hi\"", 9),
            ]
        );
    }

    #[test]
    fn later_lines_win_and_unset_env_removes() {
        let file = parse("SetEnv A 1\nSetEnv B 2\nSetEnv A 3\nUnsetEnv b\n");
        assert_eq!(file.variables(), vec![("A", "3", 3)]);
    }

    #[test]
    fn continued_lines_join_and_count_from_their_first_line() {
        let file = parse("\nSetEnv PSOServiceId \\\n  shop\nSetEnv B 2\n");
        assert_eq!(
            file.variables(),
            vec![("PSOServiceId", "shop", 2), ("B", "2", 4)]
        );
    }

    #[test]
    fn reports_what_apache_would_refuse() {
        let file = parse("SetEnv\nSetEnv A b c\nSetEnv A \"open\nUnsetEnv\n");
        assert_eq!(file.directives, vec![]);
        assert_eq!(
            file.problems,
            vec![
                "line 1: SetEnv takes a name and a value",
                "line 2: SetEnv takes a name and a value",
                "line 3: a quote is not closed",
                "line 4: UnsetEnv needs a name",
            ]
        );
    }

    #[test]
    fn refuses_a_file_too_large_to_be_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".htaccess");
        std::fs::write(&path, vec![b'#'; MAX_BYTES as usize + 1]).unwrap();
        assert!(Htaccess::read(&path).is_err());
        std::fs::write(&path, "SetEnv A 1\r\n").unwrap();
        assert_eq!(
            Htaccess::read(&path).unwrap().variables(),
            vec![("A", "1", 1)]
        );
    }
}
