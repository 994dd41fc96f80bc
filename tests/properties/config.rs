//! The configuration read from an environment of any names and any bytes
//! (`Config::from_env_checked`).
//!
//! Input: a few variables, each a name (one of pso's, in any of the spellings web servers make
//! of it, `SCRIPT_NAME`, the name that forces an id, or the input's own) and a value of any
//! bytes. Checked: nothing panics; every setting is within its documented bounds whatever the
//! value; a problem is reported only for a variable the environment holds; the session cookie
//! it configures prints as one clean `Set-Cookie` that parses back with its name, value and
//! the attributes its prefix demands (the prefix read off the name, in any case, as
//! browsers read it).

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::time::{Duration, UNIX_EPOCH};

use pso::{Config, Environment, Expiry, GcProbability, SessionId, VARIABLES};

use crate::input::Input;

/// The spellings a web server may make of a variable's name: as documented, Apache's (`-`
/// as `_`), lighttpd's (upper case, everything but letters and digits as `_`).
fn spellings(name: &str) -> [String; 3] {
    let lighttpd = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    [name.to_owned(), name.replace('-', "_"), lighttpd]
}

fn name(input: &mut Input<'_>) -> Vec<u8> {
    let choice = input.byte();
    let names: Vec<&str> = VARIABLES.iter().flat_map(|v| v.names()).collect();
    match usize::from(choice) {
        i if i < names.len() * 3 => spellings(names[i / 3])[i % 3].clone().into_bytes(),
        i if i % 4 == 0 => b"SCRIPT_NAME".to_vec(),
        i if i % 4 == 1 => b"app".to_vec(),
        i if i % 4 == 2 => b"HTTP_X".to_vec(),
        _ => input.chunk().to_vec(),
    }
}

pub fn check(data: &[u8]) {
    let mut input = Input::new(data);
    let count = input.below(12);
    let mut pairs: Vec<(OsString, OsString)> = Vec::new();
    for _ in 0..count {
        let name = name(&mut input);
        let value = input.chunk().to_vec();
        pairs.push((OsString::from_vec(name), OsString::from_vec(value)));
    }
    check_env(&Environment::from_pairs(pairs));
}

/// Whether `name` starts with `prefix`, ignoring case, as browsers match cookie prefixes
/// (RFC 6265bis).
fn starts(name: &str, prefix: &str) -> bool {
    name.get(..prefix.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(prefix))
}

pub fn check_env(env: &Environment) {
    let (config, problems) = Config::from_env_checked(env);
    let context = format!("{env:?}: {config:?}");

    assert!(
        config.lock_timeout <= Duration::from_secs(3_600),
        "{context}"
    );
    assert!(
        config.regenerate_grace <= Duration::from_secs(300),
        "{context}"
    );
    assert!((1024..=64 << 20).contains(&config.max_bytes), "{context}");
    assert!(config.max_body <= 1 << 40, "{context}");
    assert!(config.session_dir.is_absolute(), "{context}");
    assert_ne!(config.idle, Some(Duration::ZERO), "{context}");
    assert_ne!(config.lifetime, Expiry::In(Duration::ZERO), "{context}");
    assert_ne!(config.lifetime, Expiry::Now, "{context}");
    let p = config.gc_probability;
    assert_eq!(GcProbability::parse(&p.to_string()), Some(p), "{context}");
    let service = config.service.as_str();
    assert!(
        (1..=64).contains(&service.len())
            && service
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
        "{context}"
    );
    if let Some(forced) = &config.forced_id {
        assert!(!forced.is_generated(), "{context}");
        assert_eq!(
            SessionId::forced(forced.as_str()).ok().as_ref(),
            Some(forced),
            "{context}"
        );
    }
    for problem in &problems {
        // Under the name it came with, or under its documented name.
        let forms = spellings(&problem.variable);
        let named = env
            .iter()
            .any(|(name, _)| forms.iter().any(|form| name == form.as_bytes()));
        assert!(
            named,
            "a problem with {:?}, which is not set: {context}",
            problem.variable
        );
        assert!(!problem.message.is_empty());
    }

    let cookie = &config.cookie;
    let prefix = cookie
        .name
        .strip_suffix(service)
        .unwrap_or_else(|| panic!("{context}"));
    assert!(["", "__Host-", "__Secure-"].contains(&prefix), "{context}");
    // Browsers read a prefix off the name, whatever put it there, in any case.
    assert_eq!(
        cookie.host_prefix,
        starts(&cookie.name, "__Host-"),
        "{context}"
    );
    assert!(
        cookie.path.starts_with('/') && cookie.path.len() <= 512,
        "{context}"
    );
    if let Some(domain) = &cookie.domain {
        assert!(
            !domain.is_empty()
                && domain.bytes().all(|b| b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || b == b'-'
                    || b == b'.'),
            "{context}"
        );
    }

    let id: SessionId = "0123456789abcdef0123456789abcdef0123456789abcdef"
        .parse()
        .expect("an id");
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let deadline = config.lifetime.deadline(now);
    for https in [false, true] {
        let set = cookie.set_cookie(&id, deadline, now, https);
        let revoke = cookie.revoke_cookie(https);
        let form = cookie.form_cookie(Some(&id), https);
        for (header, value) in [(&set, id.as_str()), (&revoke, ""), (&form, id.as_str())] {
            assert!(
                header.bytes().all(|b| (0x20..0x7f).contains(&b)),
                "a Set-Cookie with a control character: {header:?} ({context})"
            );
            let parsed = cookie::Cookie::parse(header.as_str())
                .unwrap_or_else(|e| panic!("{header:?} does not parse: {e} ({context})"));
            assert_eq!(parsed.value(), value, "{header:?}");
            if starts(parsed.name(), "__Host-") {
                assert_eq!(parsed.secure(), Some(true), "{header:?}");
                assert_eq!(parsed.path(), Some("/"), "{header:?}");
                assert_eq!(parsed.domain(), None, "{header:?}");
            } else if starts(parsed.name(), "__Secure-") {
                assert_eq!(parsed.secure(), Some(true), "{header:?}");
            }
        }
        assert_eq!(
            cookie::Cookie::parse(set.as_str())
                .map(|c| c.name().to_owned())
                .ok()
                .as_deref(),
            Some(cookie.name.as_str())
        );
    }
}
