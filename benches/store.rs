//! The work inside one request, with criterion (`cargo bench --bench store`): a session's
//! lock, load and save beside 1,000 and 1,000,000 other sessions; cookie parsing; expiry
//! evaluation; id generation.
//!
//! The directories of other sessions are made once under `target/bench/` and kept (a million
//! empty session files takes a minute or two to create).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use pso::store::{FileStore, LockOptions, SessionKey, Store};
use pso::{Expiry, Meta, Record, SessionId};

/// A session directory holding `n` sessions (empty reservations but one), made once.
fn directory(n: usize) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench/store");
    std::fs::create_dir_all(&root).unwrap();
    let dir = root.join(format!("sessions-{n}"));
    let done = root.join(format!("sessions-{n}.done"));
    if !done.exists() {
        let _ = std::fs::remove_dir_all(&dir);
        let store = FileStore::open(&dir).unwrap();
        eprintln!("making {n} sessions in {} (once)", dir.display());
        for _ in 0..n {
            let name = format!("bench.{}.pso", SessionId::generate().unwrap());
            std::fs::File::create(store.dir().join(name)).unwrap();
        }
        std::fs::write(&done, b"").unwrap();
    }
    dir
}

fn lock_load_save(c: &mut Criterion) {
    let mut group = c.benchmark_group("lock+load+save");
    group.measurement_time(Duration::from_secs(5));
    for sessions in [1_000, 1_000_000] {
        let store = FileStore::open(directory(sessions))
            .unwrap()
            .with_max_bytes(1 << 20);
        for size in [100, 1024, 64 * 1024] {
            let key = SessionKey::new("bench".parse().unwrap(), SessionId::generate().unwrap());
            let options = LockOptions::new(Duration::from_secs(5));
            let mut record = Record::new(Meta::new(1_700_000_000));
            record.set("data", &vec![7u8; size]).unwrap();
            record.set("n", &0u64).unwrap();
            store.lock(&key, options).unwrap().save(&record).unwrap();
            let id = BenchmarkId::new(format!("{size} B"), format!("{sessions} sessions"));
            group.bench_function(id, |b| {
                b.iter(|| {
                    let mut lock = store.lock(&key, options).unwrap();
                    let mut record = lock.load().unwrap().unwrap();
                    let n: u64 = record.get("n").unwrap().unwrap();
                    record.set("n", &(n + 1)).unwrap();
                    lock.save(&record).unwrap();
                })
            });
            let mut lock = store.lock(&key, options).unwrap();
            lock.delete().unwrap();
        }
    }
    group.finish();
}

fn parsing(c: &mut Criterion) {
    let header = b"_ga=GA1.2.1234567890.1700000000; theme=dark; reload=0123456789abcdef0123456789abcdef0123456789abcdef; lang=en";
    c.bench_function(
        "cookie: find the session id in a header of 4 cookies",
        |b| b.iter(|| pso::cookies::offered_ids(black_box(header), "reload")),
    );
    c.bench_function("expiry: parse and evaluate 15*60", |b| {
        let now = SystemTime::now();
        b.iter(|| Expiry::parse(black_box("15*60")).unwrap().deadline(now))
    });
    c.bench_function("expiry: parse an HTTP date", |b| {
        b.iter(|| Expiry::parse(black_box("Mon, 15 Apr 2041 19:00:00 GMT")).unwrap())
    });
    c.bench_function("id: generate from the OS", |b| {
        b.iter(|| SessionId::generate().unwrap())
    });
}

criterion_group!(benches, lock_load_save, parsing);
criterion_main!(benches);
