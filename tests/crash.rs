//! Crash safety of saves in place: SIGKILL at random instants during saves of sessions from
//! 1 KiB to 256 KiB leaves the previous state or the new one, never anything else; and many
//! processes on one session, while it grows past its slots and collection runs, lose nothing.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::Site;
use pso::SessionId;
use pso::store::{SessionKey, Store};

fn inspect() -> PathBuf {
    PathBuf::from(common::example("inspect"))
}

/// The digest `examples/inspect.rs` keeps beside its ballast (FNV-1a of visit and ballast).
fn digest(n: u64, ballast: &[u8]) -> u64 {
    n.to_le_bytes()
        .iter()
        .chain(ballast)
        .fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        })
}

/// The slots of a version-2 session file, as (sequence number, checksum holds), read by the
/// format the README documents.
fn slots(path: &Path) -> Vec<(u64, bool)> {
    let bytes = fs::read(path).unwrap_or_default();
    let region = bytes.len() / 2;
    (0..2)
        .filter_map(|i| {
            let h = bytes.get(i * region..i * region + 32)?;
            if &h[..5] != b"PSOF\x02" {
                return None;
            }
            let seq = u64::from_le_bytes(h[8..16].try_into().unwrap());
            let len = u32::from_le_bytes(h[16..20].try_into().unwrap()) as usize;
            let crc = u32::from_le_bytes(h[20..24].try_into().unwrap());
            let record = bytes.get(i * region + 32..i * region + 32 + len);
            let ok = record.is_some_and(|record| {
                let mut hasher = crc32fast::Hasher::new();
                hasher.update(&[2, 0, 0, 0]);
                hasher.update(&seq.to_le_bytes());
                hasher.update(&(len as u32).to_le_bytes());
                hasher.update(record);
                hasher.finalize() == crc
            });
            Some((seq, ok))
        })
        .collect()
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn a_thousand_kills_during_saves_leave_the_previous_or_the_new_state() {
    let mut rng = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let (mut killed, mut torn, mut renamed) = (0, 0, 0);
    for size in [1024, 16 * 1024, 64 * 1024, 256 * 1024] {
        let mut site = Site::new(inspect());
        site.set("QUERY_STRING", format!("ballast={size}"))
            .set("PSOSessionMaxBytes", "1048576")
            .set("PSOSessionGCProbability", "0");
        let cookie = site.get(None).cookie();
        let id: SessionId = cookie.split_once('=').unwrap().1.parse().unwrap();
        let key = SessionKey::new("reload".parse().unwrap(), id.clone());
        let path = site.sessions().join(format!("reload.{id}.pso"));
        let store = site.store();
        site.get(Some(&cookie));
        let mut last = 2u64;
        let mut kills_here = 0;
        // How long a run takes, learnt from the runs that finish before their kill.
        let mut run = Duration::from_millis(2);
        // 250 kills per size; for the largest, more until one is seen to cut a write (the
        // machine's load decides how often a kill lands inside the one `pwrite`).
        while kills_here < 250 || (size == 256 * 1024 && torn == 0 && kills_here < 2_000) {
            let started = Instant::now();
            let mut child = site
                .command(Some(&cookie))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            // Anywhere in the second half of a run, where the save is.
            let delay = run.mul_f64(0.5 + (xorshift(&mut rng) % 600) as f64 / 1000.0);
            std::thread::sleep(delay);
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap();
                kills_here += 1;
                run = run.mul_f64(1.02);
            } else {
                run = (run + started.elapsed()) / 2;
            }
            child.wait().unwrap();
            // Every load: exactly the previous state or the new one, whole.
            let record = store
                .peek(&key)
                .unwrap_or_else(|e| panic!("{size}: the session does not load after a kill: {e}"))
                .expect("the session still exists");
            let n: u64 = record.get("count").unwrap().unwrap();
            let ballast: Vec<u8> = record.get("ballast").unwrap().unwrap();
            let kept: u64 = record.get("digest").unwrap().unwrap();
            assert_eq!(ballast.len(), size);
            assert_eq!(
                digest(n, &ballast),
                kept,
                "{size}: a session that is not whole"
            );
            assert!(n == last || n == last + 1, "{size}: {last} then {n}");
            last = n;
            // Evidence of a kill inside the write: a slot newer than what loads, failing its
            // checksum; or an unfinished new file.
            if slots(&path).iter().any(|(seq, ok)| !ok && *seq > 0) {
                torn += 1;
            }
            renamed += site.files().iter().filter(|f| f.ends_with(".tmp")).count();
        }
        killed += kills_here;
        assert_eq!(
            site.get(Some(&cookie)).body,
            format!("count={}", last + 1),
            "{size}: the next request goes on"
        );
    }
    eprintln!("{killed} kills; {torn} left a torn slot behind, {renamed} an unfinished new file");
    assert!(killed >= 1_000);
    // A slot write is one system call: a kill cuts it only between pages, so only the larger
    // records show torn slots. Cuts at every byte are `layout`'s unit tests.
    assert!(torn >= 1, "no kill landed inside a write");
}

#[test]
fn sixteen_processes_on_one_growing_session_while_collection_runs_lose_nothing() {
    let mut site = Site::new(inspect());
    // Each visit adds 64 bytes: the record outgrows its slots several times (a new file
    // renamed into place under the lock), while a tenth of requests also collect.
    site.set("QUERY_STRING", "grow=64")
        .set("PSOSessionGCProbability", "1/10");
    let cookie = site.get(None).cookie();
    let site = std::sync::Arc::new(site);
    let processes: Vec<_> = (0..16)
        .map(|_| {
            let (site, cookie) = (site.clone(), cookie.clone());
            std::thread::spawn(move || {
                for _ in 0..125 {
                    let reply = site.get(Some(&cookie));
                    assert_eq!(reply.status(), "Status: 200 OK", "{reply:?}");
                }
            })
        })
        .collect();
    let started = Instant::now();
    for process in processes {
        process.join().unwrap();
    }
    eprintln!(
        "2,000 requests from 16 processes in {:?}",
        started.elapsed()
    );
    let last = site.get(Some(&cookie));
    assert_eq!(last.body, "count=2002", "{last:?}");
    let record = site
        .store()
        .peek(&SessionKey::new(
            "reload".parse().unwrap(),
            cookie.split_once('=').unwrap().1.parse().unwrap(),
        ))
        .unwrap()
        .unwrap();
    let grown: Vec<u8> = record.get("grown").unwrap().unwrap();
    assert_eq!(grown.len(), 2002 * 64, "every request's growth is there");
}
