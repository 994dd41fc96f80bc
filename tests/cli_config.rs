//! `pso config`, run as the real binary with a cleared environment, real `.htaccess` files
//! (the repository's `htaccess.sample` among them) and real session directories.

mod common;

use common::{stderr, stdout};

use serde_json::json;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

static PSO: std::sync::LazyLock<String> = std::sync::LazyLock::new(common::helper);

/// A private session directory, as pso wants it, in a fresh temporary directory.
struct Deployment {
    root: tempfile::TempDir,
}

impl Deployment {
    fn new() -> Deployment {
        let root = tempfile::tempdir().unwrap();
        let sessions = root.path().join("sessions");
        fs::create_dir(&sessions).unwrap();
        fs::set_permissions(&sessions, fs::Permissions::from_mode(0o700)).unwrap();
        Deployment { root }
    }

    fn sessions(&self) -> PathBuf {
        self.root.path().join("sessions")
    }

    fn htaccess(&self, text: &str) -> PathBuf {
        let path = self.root.path().join(".htaccess");
        fs::write(&path, text).unwrap();
        path
    }
}

/// `pso config ARGS` with only `env` in its environment.
fn config(env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(PSO.as_str())
        .arg("config")
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// The report's line for a variable.
fn line_of(output: &Output, name: &str) -> String {
    stdout(output)
        .lines()
        .find(|line| line.starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no line for {name} in\n{}", stdout(output)))
        .to_owned()
}

fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(output)))
}

fn variable<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["variables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {report}"))
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Some user other than the one the tests run as.
fn other_user() -> &'static str {
    if is_root() { "65534" } else { "0" }
}

#[test]
fn a_valid_configuration_exits_zero_with_evaluated_values() {
    let deployment = Deployment::new();
    let dir = deployment.sessions();
    let output = config(
        &[
            ("PSOSessionFileLoader_Path", dir.to_str().unwrap()),
            ("PSOSessionExpire", "15*60"),
            ("PSOSessionGCProbability", "0.5%"),
            ("PSOSessionMaxBytes", "64*1024"),
            ("PSOCookieSession_SameSite", "strict"),
            ("PSOLogLevel", "debug"),
        ],
        &[],
    );
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}{}",
        stdout(&output),
        stderr(&output)
    );
    assert_eq!(stderr(&output), "");
    let expire = line_of(&output, "PSOSessionExpire");
    assert!(expire.contains("15*60 → 900 s (15m)"), "{expire}");
    assert!(
        expire.contains("environment") && expire.contains("browser close"),
        "{expire}"
    );
    assert!(line_of(&output, "PSOSessionGCProbability").contains("0.5% → 5/1000 (0.5%)"));
    assert!(line_of(&output, "PSOSessionMaxBytes").contains("65536 bytes (64 KiB)"));
    assert!(line_of(&output, "PSOCookieSession_SameSite").contains("strict → Strict"));
    let lock = line_of(&output, "PSOSessionLockTimeout");
    assert!(lock.contains("30 s") && lock.contains("default"), "{lock}");
    assert!(line_of(&output, "PSOLogLevel").contains("debug"));
    let text = stdout(&output);
    for check in ["exists", "type", "owner", "mode", "writable", "file system"] {
        assert!(
            text.lines()
                .any(|l| l.trim_start().starts_with("ok") && l.contains(check)),
            "{check}: {text}"
        );
    }
    assert!(text.ends_with("OK: 0 warnings\n"), "{text}");
}

#[test]
fn http_dates_show_the_time_left_and_a_past_one_warns() {
    let deployment = Deployment::new();
    let dir = deployment.sessions();
    let dir = dir.to_str().unwrap();
    let future = "Mon, 15 Apr 2041 19:00:00 GMT";
    let output = config(
        &[
            ("PSOSessionFileLoader_Path", dir),
            ("PSOSessionExpire", future),
        ],
        &["--json"],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    let report = json(&output);
    let effective = variable(&report, "PSOSessionExpire")["effective"]
        .as_str()
        .unwrap()
        .to_owned();
    let left: u64 = effective
        .strip_prefix(&format!("{future}, in "))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{effective}"));
    let expected = 2_249_665_200
        - std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
    assert!(left.abs_diff(expected) < 600, "{left} against {expected}");

    let output = config(
        &[
            ("PSOSessionFileLoader_Path", dir),
            ("PSOSessionExpire", "Mon, 15 Apr 2013 19:00:00 GMT"),
        ],
        &[],
    );
    assert_eq!(output.status.code(), Some(0), "a warning does not fail");
    assert!(stdout(&output).contains("warning: PSOSessionExpire: the date has passed"));
    assert!(stdout(&output).ends_with("OK: 1 warning\n"));
}

#[test]
fn each_invalid_value_exits_one_naming_the_variable_and_what_was_expected() {
    let deployment = Deployment::new();
    let dir = deployment.sessions();
    let cases = [
        ("PSOServiceId", "a b", "service id"),
        ("PSOSessionExpire", "1/0", "division by zero"),
        ("PSOSessionExpire", "tomorrow", "an HTTP date"),
        (
            "PSOSessionFileLoader_Path",
            "sessions",
            "not an absolute path",
        ),
        ("PSOSessionLockTimeout", "2h", "a duration from 0 to 1 hour"),
        ("PSOSessionSync", "maybe", "on or off"),
        (
            "PSOSessionMaxBytes",
            "10",
            "a size from 1024 to 67108864 bytes",
        ),
        (
            "PSOSessionGCProbability",
            "150%",
            "a probability like 1/100",
        ),
        (
            "PSOSessionGCMaxLifetime",
            "-1",
            "a duration like 86400 or 24h",
        ),
        ("PSOMaxBodyBytes", "1M", "a size in bytes"),
        (
            "PSOCookieSession_Domain",
            "evil.org; HttpOnly",
            "a host name",
        ),
        (
            "PSOCookieSession_Path",
            "relative",
            "a path starting with /",
        ),
        ("PSOCookieSession_Secure", "sometimes", "on, off or auto"),
        ("PSOCookieSession_HttpOnly", "maybe", "on or off"),
        ("PSOCookieSession_SameSite", "Loose", "Strict, Lax or None"),
        (
            "PSOCookieSession_Max-Age",
            "soon",
            "a duration like 3600 or 1h",
        ),
        ("PSOCookieSession_expires", "soon", "an HTTP date"),
        ("PSOCookieSession_Prefix", "__Evil-", "__Host- or __Secure-"),
        (
            "PSOLogLevel",
            "loud",
            "off, error, warn, info, debug or trace",
        ),
        ("PSOSessionStore", "memcached://cache", "no store of scheme"),
        (
            "PSOSessionStorePasswordFile",
            "password.txt",
            "an absolute path",
        ),
        (
            "PSOSessionLockLease",
            "0",
            "a duration from 1 second to 1 hour",
        ),
        ("PSO_FCGI_BIND", "nowhere", "unix:/path, host:port"),
        ("PSO_FCGI_WORKERS", "0", "a number from 1 to 1024"),
        (
            "PSO_FCGI_IDLE_TIMEOUT",
            "25h",
            "a duration from 1 second to 1 day",
        ),
    ];
    for (name, bad, expected) in cases {
        let mut env = vec![(name, bad)];
        if name != "PSOSessionFileLoader_Path" {
            env.push(("PSOSessionFileLoader_Path", dir.to_str().unwrap()));
        }
        let output = config(&env, &[]);
        assert_eq!(
            output.status.code(),
            Some(1),
            "{name}={bad}: {}",
            stdout(&output)
        );
        let text = stdout(&output);
        let problem = text
            .lines()
            .find(|line| line.starts_with(&format!("  error: {name}: ")))
            .unwrap_or_else(|| panic!("{name}={bad}: no error line in\n{text}"));
        assert!(problem.contains(expected), "{name}={bad}: {problem}");
        assert!(
            text.ends_with("INVALID: 1 error, 0 warnings\n") || name == "PSOSessionFileLoader_Path",
            "{text}"
        );
        let stderr = stderr(&output);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with("pso: the configuration is invalid"),
            "{stderr}"
        );
    }
}

#[test]
fn likely_typos_fail_and_suggest_the_name() {
    let deployment = Deployment::new();
    let dir = deployment.sessions();
    for (typo, meant) in [
        ("PSOSessionExpiry", "PSOSessionExpire"),
        ("PSOCookieSession_Domian", "PSOCookieSession_Domain"),
        ("PSOLogLvl", "PSOLogLevel"),
        ("PSOMaxBodyByte", "PSOMaxBodyBytes"),
        ("PSO_FCGI_WORKER", "PSO_FCGI_WORKERS"),
        ("PSO_FCGI_IDLE_TIMOUT", "PSO_FCGI_IDLE_TIMEOUT"),
    ] {
        let output = config(
            &[
                (typo, "900"),
                ("PSOSessionFileLoader_Path", dir.to_str().unwrap()),
            ],
            &[],
        );
        assert_eq!(output.status.code(), Some(1), "{typo}");
        let text = stdout(&output);
        assert!(
            text.contains(&format!(
                "error: {typo} (environment): is not a pso variable (a typo?); ignored (did you mean {meant}?)"
            )),
            "{text}"
        );
    }
    // The FastCGI server's own variables are not typos, and have their rows.
    let output = config(
        &[
            ("PSO_FCGI_WORKERS", "4"),
            ("PSOSessionFileLoader_Path", dir.to_str().unwrap()),
        ],
        &[],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    let workers = line_of(&output, "PSO_FCGI_WORKERS");
    assert!(
        workers.contains(" 4 ") && workers.contains("environment"),
        "{workers}"
    );
}

#[test]
fn every_variable_of_the_table_has_its_row_and_a_value_in_effect() {
    let deployment = Deployment::new();
    let dir = deployment.sessions();
    let table: Vec<&str> = pso::VARIABLES.iter().map(|v| v.name).collect();
    let every_one_set: Vec<(&str, &str)> = [
        ("PSOSessionFileLoader_Path", dir.to_str().unwrap()),
        ("PSOSessionStore", "redis://127.0.0.1:6379/0"),
        ("PSOSessionStorePasswordFile", "/etc/pso/redis-password"),
        ("PSOSessionLockLease", "10"),
        ("PSO_FCGI_BIND", "unix:/run/pso/app.sock"),
        ("PSO_FCGI_WORKERS", "8"),
        ("PSO_FCGI_MAX_CONNS", "64"),
        ("PSO_FCGI_FIRST_BYTE_TIMEOUT", "2"),
        ("PSO_FCGI_HEADER_TIMEOUT", "3"),
        ("PSO_FCGI_IDLE_TIMEOUT", "4"),
        ("PSO_FCGI_IO_TIMEOUT", "5"),
        ("PSO_FCGI_REQUEST_TIMEOUT", "6"),
    ]
    .to_vec();
    for env in [
        vec![("PSOSessionFileLoader_Path", dir.to_str().unwrap())],
        every_one_set,
    ] {
        let output = config(&env, &["--json"]);
        let report = json(&output);
        assert_eq!(report["problems"], json!([]), "{report:#}");
        // Nothing listens on the store's port (or the build cannot reach Redis): the store's
        // check fails, and only it.
        if report["store"].is_null() {
            assert_eq!(output.status.code(), Some(0), "{report:#}");
        } else {
            let failed = report["store"]["checks"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| c["level"] == "error")
                .count();
            assert_eq!(report["errors"], failed, "{report:#}");
        }
        let rows = report["variables"].as_array().unwrap();
        let names: Vec<&str> = rows.iter().map(|v| v["name"].as_str().unwrap()).collect();
        assert_eq!(names, table);
        for row in rows {
            assert!(
                !row["effective"].as_str().unwrap().is_empty(),
                "{row} has no value in effect"
            );
        }
        for (name, value) in &env {
            let row = variable(&report, name);
            assert_eq!(row["source"], "environment", "{row}");
            if name.starts_with("PSO_FCGI_") && !name.ends_with("_TIMEOUT") {
                assert_eq!(row["effective"], *value, "{row}");
            }
        }
    }
    let report = json(&config(
        &[("PSO_FCGI_IO_TIMEOUT", "90"), ("PSOSessionLockLease", "2m")],
        &["--json"],
    ));
    assert_eq!(
        variable(&report, "PSO_FCGI_IO_TIMEOUT")["effective"],
        "90 s (1m 30s)"
    );
    assert_eq!(
        variable(&report, "PSOSessionLockLease")["effective"],
        "120 s (2m)"
    );
}

#[test]
fn a_store_url_is_shown_without_its_password() {
    let deployment = Deployment::new();
    let dir = deployment.sessions();
    let env = [
        ("PSOSessionFileLoader_Path", dir.to_str().unwrap()),
        (
            "PSOSessionStore",
            "redis://:hunter2@127.0.0.1:6379/0?password=hunter2",
        ),
    ];
    let text = config(&env, &[]);
    // Nothing listens on port 6379 here: the store's check fails; the variables still show.
    assert!(!stdout(&text).contains("hunter2"), "{}", stdout(&text));
    assert!(!stderr(&text).contains("hunter2"), "{}", stderr(&text));
    let line = line_of(&text, "PSOSessionStore");
    assert!(line.contains("redis://:***@127.0.0.1:6379/0"), "{line}");
    let json_output = config(&env, &["--json"]);
    let report = json(&json_output);
    let store = variable(&report, "PSOSessionStore");
    assert_eq!(
        store["effective"],
        "redis://:***@127.0.0.1:6379/0?password=***"
    );
    assert_eq!(store["value"], store["effective"]);
    for output in [&text, &json_output] {
        assert!(!stdout(output).contains("hunter2"), "{}", stdout(output));
        assert!(!stderr(output).contains("hunter2"), "{}", stderr(output));
    }
    // Nor when the URL is one pso cannot use.
    let output = config(
        &[
            ("PSOSessionFileLoader_Path", dir.to_str().unwrap()),
            ("PSOSessionStore", "memcached://:hunter2@cache"),
        ],
        &[],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(!stdout(&output).contains("hunter2"), "{}", stdout(&output));
    assert!(line_of(&output, "PSOSessionStore").contains("unusable"));
}

#[test]
fn the_htaccess_wins_over_the_environment_and_names_its_line() {
    let deployment = Deployment::new();
    let dir = deployment.sessions();
    let htaccess = deployment.htaccess(&format!(
        "Options +ExecCGI\n# pso\nSetEnv PSOSessionExpire \"15*60\"\nSetEnv PSOSessionFileLoader_Path {}\nUnsetEnv PSOSessionSync\n",
        dir.display()
    ));
    let output = config(
        &[
            ("PSOSESSIONEXPIRE", "60"),
            ("PSOSessionSync", "on"),
            ("PSOSessionLockTimeout", "10"),
        ],
        &["--htaccess", htaccess.to_str().unwrap()],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    let expire = line_of(&output, "PSOSessionExpire");
    assert!(expire.contains("15*60 → 900 s (15m)"), "{expire}");
    assert!(
        expire.contains(&format!("{}:3", htaccess.display())),
        "{expire}"
    );
    assert!(
        line_of(&output, "PSOSessionFileLoader_Path")
            .contains(&format!("{}:4", htaccess.display()))
    );
    let sync = line_of(&output, "PSOSessionSync");
    assert!(
        sync.contains("off") && sync.contains("default"),
        "UnsetEnv removes it: {sync}"
    );
    let lock = line_of(&output, "PSOSessionLockTimeout");
    assert!(
        lock.contains("10 s") && lock.contains("environment"),
        "{lock}"
    );
    assert!(stdout(&output).starts_with(&format!(
        "Configuration from: environment, then {}\n",
        htaccess.display()
    )));

    // --no-env: only the file.
    let output = config(
        &[("PSOSessionLockTimeout", "10")],
        &["--htaccess", htaccess.to_str().unwrap(), "--no-env"],
    );
    assert_eq!(output.status.code(), Some(0));
    assert!(line_of(&output, "PSOSessionLockTimeout").contains("default"));
}

#[test]
fn control_characters_from_a_file_never_reach_the_terminal() {
    let deployment = Deployment::new();
    let htaccess = deployment.htaccess(
        "SetEnv PSOServiceId \"shop\x1b[2J\x1b]0;owned\x07\"\nSetEnv PSOSessionFileLoader_Path \"/tmp/x\ry\"\nSetEnv PSOSessionExpiry \"\x1b[1A\"\n",
    );
    let output = config(&[], &["--htaccess", htaccess.to_str().unwrap(), "--no-env"]);
    let text = stdout(&output);
    assert!(
        !text.contains('\x1b') && !text.contains('\r') && !text.contains('\x07'),
        "{text:?}"
    );
    assert!(text.contains("\\u{1b}"), "escaped, not dropped: {text}");
    let htaccess = deployment.htaccess("SetEnv A 1\n");
    std::fs::remove_file(&htaccess).unwrap();
    let status = Command::new("mkfifo").arg(&htaccess).status().unwrap();
    assert!(status.success());
    // A FIFO is refused, not waited on.
    let output = config(&[], &["--htaccess", htaccess.to_str().unwrap(), "--no-env"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
}

#[test]
fn a_line_apache_would_refuse_fails() {
    let deployment = Deployment::new();
    let htaccess = deployment.htaccess("SetEnv PSOServiceId \"shop\nSetEnv A b c\n");
    let output = config(
        &[(
            "PSOSessionFileLoader_Path",
            deployment.sessions().to_str().unwrap(),
        )],
        &["--htaccess", htaccess.to_str().unwrap()],
    );
    assert_eq!(output.status.code(), Some(1));
    let text = stdout(&output);
    assert!(
        text.contains("line 1: a quote is not closed (Apache refuses the whole file)"),
        "{text}"
    );
    assert!(
        text.contains("line 2: SetEnv takes a name and a value"),
        "{text}"
    );
}

/// A program beside the `.htaccess` that no `cgi-script` handler covers would be sent as a
/// download (the sample once named only `reload`): a warning naming it; the sample covers any
/// name without a dot.
#[test]
fn a_program_no_cgi_handler_covers_is_warned_about() {
    let deployment = Deployment::new();
    for (name, mode) in [
        ("guestbook", 0o755),
        ("style.css", 0o644),
        ("reload", 0o755),
    ] {
        let path = deployment.root.path().join(name);
        fs::write(&path, "x").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    }
    let dir = deployment.sessions();
    let check = |text: &str| {
        let htaccess = deployment.htaccess(&format!(
            "{text}SetEnv PSOSessionFileLoader_Path {}\n",
            dir.display()
        ));
        let output = config(&[], &["--htaccess", htaccess.to_str().unwrap(), "--no-env"]);
        assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
        stdout(&output)
    };
    let named =
        check("Options +ExecCGI\n<Files \"reload\">\n    SetHandler cgi-script\n</Files>\n");
    assert!(
        named.contains("covers the program guestbook: Apache would send it as a download"),
        "{named}"
    );
    assert!(
        !named.contains("program reload") && !named.contains("style.css"),
        "{named}"
    );
    let sample = fs::read_to_string(sample()).unwrap();
    let covered = check(&sample);
    assert!(covered.ends_with("OK: 0 warnings\n"), "{covered}");
    let no_exec = check("SetHandler cgi-script\n");
    assert!(no_exec.contains("no `Options +ExecCGI`"), "{no_exec}");
}

fn sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("htaccess.sample")
}

#[test]
fn the_sample_htaccess_as_shipped_configures_nothing_and_passes() {
    let deployment = Deployment::new();
    let sample = sample();
    let output = config(
        &[(
            "PSOSessionFileLoader_Path",
            deployment.sessions().to_str().unwrap(),
        )],
        &[
            "--htaccess",
            sample.to_str().unwrap(),
            "--script-name",
            "/cgi-bin/reload",
            "--json",
        ],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    let report = json(&output);
    assert_eq!(report["format"], 1);
    assert_eq!(report["ok"], true);
    assert_eq!(
        variable(&report, "PSOServiceId")["effective"],
        "reload (the cookie's name: reload)"
    );
    let from_file = report["variables"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["source"].as_str().unwrap().contains("htaccess.sample"))
        .count();
    assert_eq!(
        from_file, 0,
        "every pso line of the sample is commented out"
    );
}

#[test]
fn the_sample_htaccess_with_every_setting_uncommented_is_valid() {
    let deployment = Deployment::new();
    let dir = deployment.sessions();
    let text = fs::read_to_string(sample()).unwrap();
    let uncommented: String = text
        .lines()
        .map(|line| {
            line.strip_prefix("#SetEnv")
                .map_or(line.to_owned(), |rest| format!("SetEnv{rest}"))
        })
        .map(|line| line + "\n")
        .collect();
    let set_lines = uncommented
        .lines()
        .filter(|l| l.starts_with("SetEnv "))
        .count();
    assert!(set_lines >= 20, "{set_lines}");
    // The sample's directory would be /var/lib/pso/sessions/: the test's own comes last.
    let htaccess = deployment.htaccess(&format!(
        "{uncommented}SetEnv PSOSessionFileLoader_Path {}\n",
        dir.display()
    ));
    let output = config(
        &[],
        &[
            "--htaccess",
            htaccess.to_str().unwrap(),
            "--no-env",
            "--json",
        ],
    );
    let report = json(&output);
    assert_eq!(output.status.code(), Some(0), "{report:#}");
    assert_eq!(report["errors"], 0);
    let shown = htaccess.display().to_string();
    let not_from_file: Vec<&str> = report["variables"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| !v["source"].as_str().unwrap().starts_with(&shown))
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    // The sample has a line for every variable but PSOMaxBodyBytes (a gap in the sample) and
    // the FastCGI server's, which only the process environment sets.
    let not_from_file: Vec<&str> = not_from_file
        .into_iter()
        .filter(|name| pso::Variable::find(name).unwrap().scope != pso::Scope::FastCgi)
        .collect();
    assert_eq!(not_from_file, ["PSOMaxBodyBytes"], "{report:#}");
    // `SetEnv reload 007` with `PSOServiceId reload`: the forced session id has its row.
    assert_eq!(
        variable(&report, "reload")["effective"],
        "forces the session id 007: every visitor shares that session"
    );
    assert_eq!(variable(&report, "PSOSessionExpire")["value"], "15*60");
    assert_eq!(
        variable(&report, "PSOSessionExpire")["effective"],
        "900 s (15m)"
    );
    assert_eq!(
        variable(&report, "PSOCookieSession_Secure")["effective"],
        "on (forced by the __Host- prefix)"
    );
    // Valid but surprising settings of the sample are warnings: the obsolete attributes, and
    // the Domain the __Host- prefix drops.
    let warned: Vec<&str> = report["variables"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| !v["problems"].as_array().unwrap().is_empty())
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        warned,
        [
            "PSOCookieSession_Domain",
            "PSOCookieSession_Comment",
            "PSOCookieSession_Version"
        ]
    );
}

/// Runs `pso config` on session directory `dir` (for `user`, if given) and returns its output
/// and the JSON check named `check`.
fn directory_check(dir: &Path, user: Option<&str>, check: &str) -> (Output, serde_json::Value) {
    let mut args = vec!["--json"];
    if let Some(user) = user {
        args.extend(["--user", user]);
    }
    let output = config(
        &[("PSOSessionFileLoader_Path", dir.to_str().unwrap())],
        &args,
    );
    let report = json(&output);
    assert_eq!(report["session_directory"]["path"], dir.to_str().unwrap());
    let found = report["session_directory"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == check)
        .unwrap_or_else(|| panic!("no check {check} in {report:#}"))
        .clone();
    (output, found)
}

#[test]
fn a_missing_directory_whose_parent_exists_is_a_warning_and_is_not_created() {
    let deployment = Deployment::new();
    let dir = deployment.root.path().join("not-yet");
    let (output, exists) = directory_check(&dir, None, "exists");
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(exists["level"], "warning");
    assert!(
        exists["message"]
            .as_str()
            .unwrap()
            .contains("pso creates it (mode 0700)")
    );
    assert!(!dir.exists(), "pso config creates nothing");

    let (output, exists) = directory_check(&dir.join("deeper"), None, "exists");
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(exists["level"], "error");
    assert!(
        exists["message"]
            .as_str()
            .unwrap()
            .contains("creates only the directory itself")
    );
}

#[test]
fn a_parent_other_users_can_change_fails_unless_sticky() {
    use std::os::unix::fs::PermissionsExt;
    let deployment = Deployment::new();
    let shared = deployment.root.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let dir = shared.join("sessions");
    let (output, parent) = directory_check(&dir, None, "parent");
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(parent["level"], "error");
    assert!(
        parent["message"]
            .as_str()
            .unwrap()
            .contains("pso refuses it")
    );

    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let (output, parent) = directory_check(&dir, None, "parent");
    assert_eq!(output.status.code(), Some(0), "{parent}");
    assert_eq!(parent["level"], "ok");
}

#[test]
fn a_loose_mode_fails_and_is_left_alone() {
    let deployment = Deployment::new();
    let dir = deployment.sessions();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let (output, mode) = directory_check(&dir, None, "mode");
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(mode["level"], "error");
    assert!(
        mode["message"]
            .as_str()
            .unwrap()
            .starts_with("0755, but pso accepts only 0700"),
        "{mode}"
    );
    assert_eq!(
        fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o755
    );
}

#[test]
fn a_symbolic_link_fails() {
    let deployment = Deployment::new();
    let link = deployment.root.path().join("link");
    symlink(deployment.sessions(), &link).unwrap();
    let (output, kind) = directory_check(&link, None, "type");
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(kind["level"], "error");
    assert!(kind["message"].as_str().unwrap().contains("symbolic link"));
}

#[test]
fn a_file_fails() {
    let deployment = Deployment::new();
    let file = deployment.root.path().join("file");
    fs::write(&file, "").unwrap();
    let (output, kind) = directory_check(&file, None, "type");
    assert_eq!(output.status.code(), Some(1));
    assert!(
        kind["message"]
            .as_str()
            .unwrap()
            .contains("not a directory but a regular file")
    );
}

#[test]
fn another_users_directory_fails_for_the_owner_check() {
    let deployment = Deployment::new();
    let (output, owner) = directory_check(&deployment.sessions(), Some(other_user()), "owner");
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(owner["level"], "error");
    assert!(
        owner["message"]
            .as_str()
            .unwrap()
            .contains("but the programs run as"),
        "{owner}"
    );
}

#[test]
fn a_directory_the_user_cannot_write_fails() {
    let deployment = Deployment::new();
    let dir = deployment.sessions();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o500)).unwrap();
    // Root may write anything, so as root the directory goes to an unprivileged user.
    let user = if is_root() {
        rustix::fs::chown(&dir, Some(rustix::fs::Uid::from_raw(65534)), None).unwrap();
        Some("65534")
    } else {
        None
    };
    let (output, writable) = directory_check(&dir, user, "writable");
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(writable["level"], "error");
    assert!(
        writable["message"]
            .as_str()
            .unwrap()
            .contains("cannot write"),
        "{writable}"
    );
    assert!(
        writable["message"].as_str().unwrap().contains("r-x"),
        "{writable}"
    );
    let report = json(&output);
    let owner = report["session_directory"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "owner")
        .unwrap();
    assert_eq!(owner["level"], "ok", "only the mode is wrong: {report:#}");
}

#[test]
fn json_reports_every_variable_and_fails_like_text() {
    let deployment = Deployment::new();
    let output = config(
        &[
            (
                "PSOSessionFileLoader_Path",
                deployment.sessions().to_str().unwrap(),
            ),
            ("PSOSessionLockTimeout", "1/0"),
            ("PSOSessionExpiry", "9"),
        ],
        &["--json"],
    );
    assert_eq!(output.status.code(), Some(1));
    let report = json(&output);
    assert_eq!(report["format"], 1);
    assert_eq!(report["ok"], false);
    assert_eq!(report["errors"], 2);
    let variables = report["variables"].as_array().unwrap();
    assert_eq!(variables.len(), pso::VARIABLES.len());
    for v in variables {
        for field in [
            "name",
            "value",
            "effective",
            "source",
            "default",
            "problems",
        ] {
            assert!(v.get(field).is_some(), "{field} in {v}");
        }
    }
    let lock = variable(&report, "PSOSessionLockTimeout");
    assert_eq!(lock["value"], "1/0");
    assert_eq!(lock["effective"], "30 s");
    assert_eq!(lock["source"], "environment");
    assert_eq!(lock["problems"][0]["level"], "error");
    assert!(
        lock["problems"][0]["message"]
            .as_str()
            .unwrap()
            .contains("a duration from 0 to 1 hour")
    );
    assert_eq!(
        variable(&report, "PSOSessionSync")["value"],
        serde_json::Value::Null
    );
    assert_eq!(variable(&report, "PSOSessionSync")["source"], "default");
    assert_eq!(report["problems"][0]["subject"], "PSOSessionExpiry");
}

#[test]
fn the_command_line_is_checked() {
    let output = config(&[], &["--help"]);
    assert_eq!(output.status.code(), Some(0));
    let help = stdout(&output);
    assert!(
        help.contains("Exit codes") && help.contains("--htaccess") && help.contains("--user"),
        "{help}"
    );

    for args in [
        &["--no-such-flag"][..],
        &["--no-env"],
        &["--user", "no-such-user-here"],
    ] {
        let output = config(&[], args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(!stderr(&output).is_empty());
    }

    let output = config(&[], &["--htaccess", "/nonexistent/.htaccess"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(output.stdout, b"");
    let stderr = stderr(&output);
    assert_eq!(stderr.lines().count(), 1);
    assert!(
        stderr.starts_with("pso: cannot read /nonexistent/.htaccess: "),
        "{stderr}"
    );
}

/// Checked as root, a directory that belongs to another user (the web server's) is not an
/// error to move: the message says which uid to check as.
#[test]
fn as_root_a_directory_of_the_web_servers_user_says_which_user_to_check_as() {
    if !is_root() {
        // Only root can make a directory another user's (CI runs the tests as root).
        return;
    }
    let deployment = Deployment::new();
    std::os::unix::fs::chown(deployment.sessions(), Some(65534), None).unwrap();
    let (_, owner) = directory_check(&deployment.sessions(), None, "owner");
    assert_eq!(owner["level"], "warning", "{owner}");
    let message = owner["message"].as_str().unwrap();
    assert!(message.contains("pso config --user 65534"), "{message}");
}

/// A FastCGI program listening where other machines reach it, with no FCGI_WEB_SERVER_ADDRS
/// to say who may talk to it: a warning on PSO_FCGI_BIND's row.
#[test]
fn a_fastcgi_address_others_reach_without_fcgi_web_server_addrs_warns() {
    let deployment = Deployment::new();
    let dir = deployment.sessions();
    let dir = dir.to_str().unwrap();
    let bind_row = |env: &[(&str, &str)]| {
        let mut env = env.to_vec();
        env.push(("PSOSessionFileLoader_Path", dir));
        let report = json(&config(&env, &["--json"]));
        variable(&report, "PSO_FCGI_BIND")["problems"].clone()
    };
    let open = bind_row(&[("PSO_FCGI_BIND", "0.0.0.0:9000")]);
    assert!(
        open.to_string()
            .contains("FCGI_WEB_SERVER_ADDRS is not set"),
        "{open}"
    );
    for quiet in [
        &[
            ("PSO_FCGI_BIND", "0.0.0.0:9000"),
            ("FCGI_WEB_SERVER_ADDRS", "10.0.0.2"),
        ][..],
        &[("PSO_FCGI_BIND", "127.0.0.1:9000")][..],
        &[("PSO_FCGI_BIND", "unix:/run/pso.sock")][..],
    ] {
        assert_eq!(bind_row(quiet), serde_json::json!([]), "{quiet:?}");
    }
}
