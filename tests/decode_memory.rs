//! Decoding is bounded in memory, not only in bytes: whatever a record's shape, loading it
//! takes at most a small multiple of its size.
//!
//! A counting allocator measures the peak; everything runs in one test so that no other test
//! thread allocates meanwhile.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use pso::store::{FileStore, LockOptions, SessionKey, Store};
use pso::{Meta, Record, SessionId};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; only sizes are counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = CURRENT.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
        PEAK.fetch_max(now, Ordering::SeqCst);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        CURRENT.fetch_sub(layout.size(), Ordering::SeqCst);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            let now = CURRENT.fetch_add(new_size - layout.size(), Ordering::SeqCst)
                + (new_size - layout.size());
            PEAK.fetch_max(now, Ordering::SeqCst);
        } else {
            CURRENT.fetch_sub(layout.size() - new_size, Ordering::SeqCst);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The most memory `f` holds at once beyond what was held before it, and its result.
fn peak_during<T>(f: impl FnOnce() -> T) -> (usize, T) {
    let before = CURRENT.load(Ordering::SeqCst);
    PEAK.store(before, Ordering::SeqCst);
    let result = f();
    (PEAK.load(Ordering::SeqCst) - before, result)
}

/// A record of about `size` bytes made of as many keys as fit, each with the smallest value
/// (`()`, MessagePack's one-byte nil): the shape that costs most per byte.
fn tiny_keys(size: usize) -> Record {
    let mut record = Record::new(Meta::new(1_700_000_000));
    let mut i = 0u64;
    let mut used = 0;
    while used < size {
        let key = format!("{i:x}");
        used += key.len() + 3;
        record.set(&key, &()).unwrap();
        i += 1;
    }
    record
}

fn one_big_value(size: usize) -> Record {
    let mut record = Record::new(Meta::new(1_700_000_000));
    record.set("blob", &vec![7u8; size]).unwrap();
    record
}

fn mixed(size: usize) -> Record {
    let mut record = Record::new(Meta::new(1_700_000_000));
    for i in 0..size / 100 {
        record
            .set(&format!("key-{i}"), &format!("value {i:080}"))
            .unwrap();
    }
    record
}

#[test]
fn decoding_takes_at_most_a_small_multiple_of_the_record() {
    const FACTOR: usize = 10;
    const SLACK: usize = 16 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path().join("sessions"))
        .unwrap()
        .with_max_bytes(16 << 20);
    let shapes: Vec<(&str, Record)> = vec![
        ("1 MiB of tiny keys", tiny_keys((1 << 20) - 1024)),
        ("16 MiB of tiny keys", tiny_keys((16 << 20) - 1024)),
        ("one 1 MiB value", one_big_value(1 << 20)),
        ("1 MiB of ordinary pairs", mixed(1 << 20)),
        ("100 bytes", mixed(100)),
        ("empty", Record::new(Meta::new(0))),
    ];
    for (shape, record) in shapes {
        let bytes = record.encode().unwrap();
        drop(record);
        let size = bytes.len();
        let bound = FACTOR * size + SLACK;

        let (peak, decoded) = peak_during(|| Record::decode(&bytes, 16 << 20).unwrap());
        eprintln!(
            "{shape}: {size} bytes decode with a peak of {peak} bytes ({:.1}x)",
            peak as f64 / size as f64
        );
        assert!(peak <= bound, "{shape}: {peak} bytes to decode {size}");
        drop(decoded);

        // Through the file store, as a request loads it.
        let key = SessionKey::new("svc".parse().unwrap(), SessionId::generate().unwrap());
        std::fs::write(store.path_of(&key), &bytes).unwrap();
        let options = LockOptions::new(Duration::from_secs(5));
        let (peak, loaded) = peak_during(|| {
            let mut lock = store.lock(&key, options).unwrap();
            lock.load().unwrap().unwrap()
        });
        eprintln!("{shape}: loaded from a file with a peak of {peak} bytes");
        assert!(peak <= bound, "{shape}: {peak} bytes to load {size}");
        drop(loaded);

        // Collection judges from the metadata alone.
        let (peak, _) = peak_during(|| {
            store
                .collect_garbage(std::time::SystemTime::now(), Duration::from_secs(5))
                .unwrap()
        });
        assert!(peak <= 64 * 1024, "{shape}: collection took {peak} bytes");
    }
}
