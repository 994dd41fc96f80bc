//! The `SetEnv` and `UnsetEnv` lines of an Apache `.htaccess`, so that one file configures
//! Apache, `pso serve` and `pso config`.
//!
//! Words are split as Apache's `ap_getword_conf` splits them: by white space, with `"..."` or
//! `'...'` quoting (a backslash before the quote character keeps it), and a line that ends in a
//! backslash continues on the next. Directive names are case-insensitive, variable names are
//! not. Other directives are ignored, and so are sections (`<IfModule>`, `<Files>`) for
//! `SetEnv`: the lines inside them count as if outside, which is what a `.htaccess` of a
//! `cgi-bin/` means in practice. A handler set inside `<Files>` or `<FilesMatch>` covers the
//! names the section matches.

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

/// The environment directives of one file, in order, and its CGI handlers.
#[derive(Clone, Debug, Default)]
pub struct Htaccess {
    /// The file read.
    pub path: PathBuf,
    /// Every `SetEnv` and `UnsetEnv`, in the order written.
    pub directives: Vec<Directive>,
    /// Lines that Apache would refuse, as `line N: why`.
    pub problems: Vec<String>,
    /// Whether `Options` turns `ExecCGI` on (`Some(true)`) or off, as last written.
    pub exec_cgi: Option<bool>,
    /// Which names the `cgi-script` handler covers.
    handlers: Vec<Covers>,
}

/// The names a `cgi-script` handler covers.
#[derive(Clone, Debug)]
enum Covers {
    /// Every file (`SetHandler cgi-script` outside any `<Files>`).
    All,
    /// Names ending in one of these extensions (`AddHandler cgi-script .cgi`), lowercase.
    Extension(String),
    /// Names matching a `<Files>` wildcard (`*`, `?`).
    Wildcard(String),
    /// Names matching a `<FilesMatch>` (or `<Files ~>`) regular expression.
    Regex(regex_lite::Regex),
}

/// A `<Files>`-like section the parser is inside, and what it matches.
enum Section {
    /// `<IfModule>`, `<IfDefine>`, ...: what is inside counts as outside.
    Transparent,
    Files(Covers),
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
        let mut sections: Vec<Section> = Vec::new();
        for (line, logical) in logical_lines(text) {
            let trimmed = logical.trim();
            if let Some(closing) = trimmed.strip_prefix("</") {
                let _ = closing;
                sections.pop();
                continue;
            }
            if let Some(opening) = trimmed.strip_prefix('<') {
                let inside = opening.strip_suffix('>').unwrap_or(opening);
                sections.push(match words(inside) {
                    Ok(words) => parsed.section(&words, line),
                    Err(why) => {
                        parsed.problems.push(format!("line {line}: {why}"));
                        Section::Transparent
                    }
                });
                continue;
            }
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
            } else if directive.eq_ignore_ascii_case("Options") {
                parsed.options(arguments);
            } else if directive.eq_ignore_ascii_case("SetHandler")
                && arguments
                    .first()
                    .is_some_and(|h| h.eq_ignore_ascii_case("cgi-script"))
            {
                let covers = sections.iter().rev().find_map(|section| match section {
                    Section::Files(covers) => Some(covers.clone()),
                    Section::Transparent => None,
                });
                parsed.handlers.push(covers.unwrap_or(Covers::All));
            } else if directive.eq_ignore_ascii_case("AddHandler")
                && arguments
                    .first()
                    .is_some_and(|h| h.eq_ignore_ascii_case("cgi-script"))
            {
                for extension in &arguments[1..] {
                    let extension = extension.trim_start_matches('.').to_ascii_lowercase();
                    parsed.handlers.push(Covers::Extension(extension));
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

    /// What a section line (`<Files "reload">`, without its `<` and `>`) opens.
    fn section(&mut self, words: &[String], line: usize) -> Section {
        let Some(name) = words.first() else {
            return Section::Transparent;
        };
        let regex = |this: &mut Htaccess, pattern: &str| match regex_lite::Regex::new(pattern) {
            Ok(regex) => Section::Files(Covers::Regex(regex)),
            Err(_) => {
                this.problems
                    .push(format!("line {line}: not a regular expression: {pattern}"));
                Section::Transparent
            }
        };
        match (name.to_ascii_lowercase().as_str(), &words[1..]) {
            ("files", [tilde, pattern]) if tilde == "~" => regex(self, pattern),
            ("files", [pattern]) => Section::Files(Covers::Wildcard(pattern.clone())),
            ("filesmatch", [pattern]) => regex(self, pattern),
            _ => Section::Transparent,
        }
    }

    /// `Options`: a list of all-new options (`ExecCGI Indexes`, `All`) or changes
    /// (`+ExecCGI -Indexes`).
    fn options(&mut self, arguments: &[String]) {
        let absolute = arguments
            .iter()
            .all(|option| !option.starts_with(['+', '-']));
        if absolute {
            self.exec_cgi = Some(arguments.iter().any(|option| {
                option.eq_ignore_ascii_case("ExecCGI") || option.eq_ignore_ascii_case("All")
            }));
            return;
        }
        for option in arguments {
            if option.eq_ignore_ascii_case("+ExecCGI") {
                self.exec_cgi = Some(true);
            } else if option.eq_ignore_ascii_case("-ExecCGI") {
                self.exec_cgi = Some(false);
            }
        }
    }

    /// Whether a `cgi-script` handler of this file covers a file named `name`.
    pub fn runs_as_cgi(&self, name: &str) -> bool {
        self.handlers.iter().any(|covers| match covers {
            Covers::All => true,
            Covers::Extension(extension) => name
                .rsplit_once('.')
                .is_some_and(|(_, ext)| ext.eq_ignore_ascii_case(extension)),
            Covers::Wildcard(pattern) => wildcard_matches(pattern, name),
            Covers::Regex(regex) => regex.is_match(name),
        })
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

/// Whether `name` matches a `<Files>` wildcard: `*` any run of characters, `?` one.
fn wildcard_matches(pattern: &str, name: &str) -> bool {
    let (pattern, name): (Vec<char>, Vec<char>) =
        (pattern.chars().collect(), name.chars().collect());
    // The classic two-pointer match, backtracking to the last `*`.
    let (mut p, mut n, mut star, mut mark) = (0, 0, None, 0);
    while n < name.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == name[n]) {
            p += 1;
            n += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            star = Some(p);
            mark = n;
            p += 1;
        } else if let Some(at) = star {
            p = at + 1;
            mark += 1;
            n = mark;
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
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

    #[test]
    fn tells_which_names_a_cgi_handler_covers() {
        let file = parse(
            "Options +ExecCGI -Indexes\n\
             <IfModule mod_mime.c>\n\
             AddHandler cgi-script .cgi .PL\n\
             </IfModule>\n\
             <Files \"report?\">\n\
             SetHandler cgi-script\n\
             </Files>\n\
             <FilesMatch \"^[^.]+$\">\n\
             SetHandler cgi-script\n\
             </FilesMatch>\n\
             <Files ~ \"^guest.*\\.bin$\">\n\
             SetHandler cgi-script\n\
             </Files>\n\
             <Files \"*.txt\">\n\
             SetHandler default-handler\n\
             </Files>\n",
        );
        assert_eq!(file.problems, Vec::<String>::new());
        assert_eq!(file.exec_cgi, Some(true));
        for name in [
            "reload",
            "guestbook",
            "a.cgi",
            "b.pl",
            "report1",
            "report.x",
            "guest1.bin",
        ] {
            let expected = name != "report.x";
            assert_eq!(file.runs_as_cgi(name), expected, "{name}");
        }
        for name in ["style.css", "notes.txt", ".htaccess"] {
            assert!(!file.runs_as_cgi(name), "{name}");
        }
        // The sample's form before: one program by name only.
        let named = parse("<Files \"reload\">\nSetHandler cgi-script\n</Files>\n");
        assert!(named.runs_as_cgi("reload") && !named.runs_as_cgi("guestbook"));
        assert_eq!(named.exec_cgi, None);
        assert_eq!(
            parse("SetHandler cgi-script\nOptions None\n").exec_cgi,
            Some(false)
        );
        assert!(parse("SetHandler cgi-script\n").runs_as_cgi("anything.at.all"));
        assert_eq!(
            parse("<FilesMatch \"(\">\n</FilesMatch>\n").problems,
            vec!["line 1: not a regular expression: ("]
        );
    }

    #[test]
    fn wildcards_match_as_files_sections_do() {
        for (pattern, name, expected) in [
            ("reload", "reload", true),
            ("reload", "reloads", false),
            ("*", "", true),
            ("*.cgi", "a.cgi", true),
            ("*.cgi", "a.cgi.txt", false),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("?", "ab", false),
        ] {
            assert_eq!(
                wildcard_matches(pattern, name),
                expected,
                "{pattern} {name}"
            );
        }
    }
}
