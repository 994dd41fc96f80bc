//! The work inside one request, with criterion (`cargo bench --bench store`): a session's
//! lock, load and save beside 1,000 and 1,000,000 other sessions; cookie parsing; expiry
//! evaluation; id generation; a value's encoding and decoding, as pso does it (MessagePack with
//! fields by name) beside bincode as pso did it before record format version 2
//! (`cargo bench --bench store -- value`, which also prints the sizes).
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

#[derive(serde::Serialize, serde::Deserialize)]
struct Entry {
    name: String,
    message: String,
    at: u64,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Profile {
    id: u64,
    name: String,
    email: String,
    bio: String,
    tags: Vec<String>,
    admin: bool,
    scores: Vec<u32>,
}

/// Encodes and decodes `value` through a record (MessagePack, checked before decoding) and as
/// bincode with the limit pso used, exactly consumed.
fn value<T>(c: &mut Criterion, name: &str, value: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let config = bincode::config::standard().with_limit::<{ 64 << 20 }>();
    let bincode_bytes = bincode::serde::encode_to_vec(value, config).unwrap();
    let mut record = Record::new(Meta::new(1_700_000_000));
    record.set("v", value).unwrap();
    eprintln!(
        "value {name}: {} bytes in MessagePack, {} in bincode",
        record.value_len("v").unwrap(),
        bincode_bytes.len()
    );
    let mut group = c.benchmark_group(format!("value {name}"));
    group.bench_function("MessagePack encode", |b| {
        b.iter(|| record.set("v", black_box(value)).unwrap())
    });
    group.bench_function("bincode encode", |b| {
        b.iter(|| bincode::serde::encode_to_vec(black_box(value), config).unwrap())
    });
    group.bench_function("MessagePack decode", |b| {
        b.iter(|| black_box(record.get::<T>(black_box("v")).unwrap()))
    });
    group.bench_function("bincode decode", |b| {
        b.iter(|| {
            let (v, used) =
                bincode::serde::decode_from_slice::<T, _>(black_box(&bincode_bytes), config)
                    .unwrap();
            assert_eq!(used, bincode_bytes.len());
            black_box(v)
        })
    });
    group.finish();
}

fn values(c: &mut Criterion) {
    value(c, "u64 counter", &123_456u64);
    value(c, "String", &"Eggs and spam, a fine breakfast".to_owned());
    let entries: Vec<Entry> = (0..20)
        .map(|i| Entry {
            name: format!("visitor {i}"),
            message: "Lovely site!".into(),
            at: 1_700_000_000 + i,
        })
        .collect();
    value(c, "Vec of 20 structs", &entries);
    let profile = Profile {
        id: 42,
        name: "Eggs Benedict".into(),
        email: "eggs@example.org".into(),
        bio: "x".repeat(880),
        tags: (0..10).map(|i| format!("tag{i}")).collect(),
        admin: false,
        scores: (0..40).collect(),
    };
    value(c, "1 KiB struct", &profile);
}

criterion_group!(benches, lock_load_save, parsing, values);
criterion_main!(benches);
