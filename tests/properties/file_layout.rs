//! The session file's slot reader and writer (`store/file/layout.rs`, through
//! `pso::fuzzing::layout`, behind the `fuzzing` feature).
//!
//! Input: a mode, then a file given as raw bytes (as they are, or spread over the two
//! regions of a file of one to three pages a region, the largest read slot by slot), a file
//! of two slots built from the input (each absent, valid, damaged, or too large for its
//! region, with any sequence numbers), or a series of saves with a torn last write. Checked
//! against the layout as its module documents it, written here afresh: `load`,
//! `load_settled` and `locate_newest` agree with that reading and with each other; a save
//! never touches the slot that holds the newest record, and a torn save loads the state
//! before it.

use std::fs::File;
use std::os::unix::fs::FileExt;

use pso::ErrorKind;
use pso::fuzzing::layout::{self, Layout, SLOT_HEADER};

use crate::input::Input;

const PAGE: u64 = 4096;
const MAXES: [u64; 3] = [1 << 20, 100, 0];

fn slot_crc(seq: u64, record: &[u8]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[2, 0, 0, 0]);
    crc.update(&seq.to_le_bytes());
    crc.update(&(record.len() as u32).to_le_bytes());
    crc.update(record);
    crc.finalize()
}

/// A slot as the module's table lays it out: magic `PSOF`, version 2, zeros, sequence number,
/// record length, CRC-32 of bytes 4..20 and of the record, zeros, the record.
fn slot(seq: u64, record: &[u8]) -> Vec<u8> {
    let mut out = b"PSOF\x02\0\0\0".to_vec();
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&(record.len() as u32).to_le_bytes());
    out.extend_from_slice(&slot_crc(seq, record).to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(record);
    out
}

/// What a load should give: the newest record and its layout, or `Err` for a damaged file.
fn expected(bytes: &[u8], max: u64) -> Result<(Option<Vec<u8>>, Layout), ()> {
    let size = bytes.len() as u64;
    let zeros = bytes.iter().all(|&b| b == 0);
    if size == 0 {
        return Ok((None, Layout::Empty));
    }
    if bytes.starts_with(b"PSOS") {
        return if size > max {
            Err(())
        } else {
            Ok((Some(bytes.to_vec()), Layout::Single))
        };
    }
    let region = size / 2;
    if !size.is_multiple_of(2) || !region.is_multiple_of(PAGE) || region < PAGE {
        return if zeros {
            Ok((None, Layout::Empty))
        } else {
            Err(())
        };
    }
    let mut slots = Vec::new();
    for newest in 0..2u64 {
        let at = (newest * region) as usize;
        let h = &bytes[at..at + SLOT_HEADER];
        let seq = u64::from_le_bytes(h[8..16].try_into().unwrap());
        let len = u64::from(u32::from_le_bytes(h[16..20].try_into().unwrap()));
        let crc = u32::from_le_bytes(h[20..24].try_into().unwrap());
        let intact = &h[..5] == b"PSOF\x02" && h[5..8] == [0; 3] && h[24..32] == [0; 8];
        if intact && len + SLOT_HEADER as u64 <= region {
            slots.push((newest, seq, len, crc));
        }
    }
    // The higher number first; on a tie, slot 0.
    slots.sort_by_key(|&(_, seq, _, _)| std::cmp::Reverse(seq));
    for (newest, seq, len, crc) in slots {
        if len > max {
            return Err(());
        }
        let at = (newest * region) as usize + SLOT_HEADER;
        let record = &bytes[at..at + len as usize];
        if slot_crc(seq, record) == crc {
            return Ok((
                Some(record.to_vec()),
                Layout::Slots {
                    region,
                    newest,
                    seq,
                },
            ));
        }
    }
    if zeros {
        Ok((None, Layout::Empty))
    } else {
        Err(())
    }
}

fn file_of(bytes: &[u8]) -> File {
    let file = tempfile::tempfile().expect("a temporary file");
    file.write_all_at(bytes, 0).expect("written");
    file
}

/// Loads `bytes` every way there is and compares with [`expected`].
pub fn check_file(bytes: &[u8], max: u64) {
    let file = file_of(bytes);
    let size = bytes.len() as u64;
    let want = expected(bytes, max);
    let context = || format!("{} bytes, max {max}: expected {want:?}", bytes.len());
    let loaded = layout::load(&file, size, max);
    match (&loaded, &want) {
        (Ok(got), Ok(want)) => assert_eq!(got, want, "{}", context()),
        (Err(e), Err(())) => assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}: {}", context()),
        (got, _) => panic!("loaded {got:?}: {}", context()),
    }
    let settled = layout::load_settled(&file, max);
    match (&settled, &loaded) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "{}", context()),
        (Err(a), Err(b)) => assert_eq!(a.kind(), b.kind(), "{}", context()),
        (a, _) => panic!("load_settled gave {a:?}: {}", context()),
    }
    // Where the record lies, found without reading it whole (and without a size cap).
    let located = layout::locate_newest(&file, size);
    match (located, expected(bytes, u64::MAX)) {
        (Ok(None), Ok((None, _))) => {}
        (Ok(Some((offset, len))), Ok((Some(record), _))) => {
            assert_eq!(
                &bytes[offset as usize..(offset + len) as usize],
                &record[..],
                "{}",
                context()
            );
        }
        (Err(e), Err(())) => assert_eq!(e.kind(), ErrorKind::Corrupt, "{}", context()),
        (got, want) => panic!("located {got:?}, expected {want:?}: {}", context()),
    }
}

pub fn check(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.byte();
    let max = MAXES[input.below(MAXES.len())];
    match mode % 4 {
        0 => check_file(input.rest(), max),
        1 => {
            // Two regions of one to three pages, each starting with a piece of the input.
            let region = PAGE * (1 + input.below(3) as u64);
            let mut bytes = vec![0u8; 2 * region as usize];
            let first = input.chunk();
            bytes[..first.len()].copy_from_slice(first);
            let second = input.rest();
            let n = second.len().min(region as usize);
            bytes[region as usize..region as usize + n].copy_from_slice(&second[..n]);
            check_file(&bytes, max);
        }
        2 => check_file(&built(&mut input), max),
        _ => saves(&mut input),
    }
}

/// A file of two slots, each absent, valid, damaged or claiming too much.
fn built(input: &mut Input<'_>) -> Vec<u8> {
    if input.byte() == 0xff {
        // Version 1: the record alone.
        return [&b"PSOS"[..], input.rest()].concat();
    }
    let region = PAGE * (1 + input.below(3) as u64);
    let mut bytes = vec![0u8; 2 * region as usize];
    for at in [0, region as usize] {
        let kind = input.byte();
        let seq = match kind >> 4 {
            0 => u64::from(input.byte()),
            _ => input.u64(),
        };
        let record = input.chunk();
        let mut this = match kind % 5 {
            0 => continue,
            1 => input.chunk().to_vec(),
            _ => slot(seq, record),
        };
        match kind % 5 {
            3 => {
                // One byte of it damaged.
                let i = input.below(this.len());
                this[i] ^= input.byte() | 1;
            }
            4 => {
                // A length past the region.
                let len = (region as u32).saturating_sub(input.below(64) as u32);
                this[16..20].copy_from_slice(&len.to_le_bytes());
            }
            _ => {}
        }
        let n = this.len().min(region as usize);
        bytes[at..at + n].copy_from_slice(&this[..n]);
    }
    bytes
}

fn size(file: &File) -> u64 {
    file.metadata().expect("metadata").len()
}

/// A first record, saves in place until one does not fit, then a torn save.
fn saves(input: &mut Input<'_>) {
    let file = tempfile::tempfile().expect("a temporary file");
    // Sequence numbers start low: a file's first save numbers it 1, and each save adds one.
    let first = input.chunk().to_vec();
    let mut layout =
        layout::write_new(&file, &first, u64::from(input.u16()) + 1).expect("laid out");
    let mut last = first;
    while !input.is_empty() && !input.byte().is_multiple_of(8) {
        let record = if input.bool() {
            input.chunk().to_vec()
        } else {
            vec![input.byte(); input.below(3000) + 1]
        };
        let Layout::Slots { region, newest, .. } = layout else {
            panic!("a saved file has slots: {layout:?}")
        };
        let mut before = vec![0u8; region as usize];
        file.read_exact_at(&mut before, newest * region)
            .expect("read");
        match layout::save_in_place(&file, layout, &record).expect("saved") {
            Some(next) => {
                let mut after = vec![0u8; region as usize];
                file.read_exact_at(&mut after, newest * region)
                    .expect("read");
                assert!(before == after, "a save touched the newest slot");
                layout = next;
                last = record;
            }
            None => {
                assert!(
                    (SLOT_HEADER + record.len()) as u64 > region,
                    "refused a record that fits"
                );
                break;
            }
        }
        let (loaded, at) = layout::load(&file, size(&file), 1 << 20).expect("loads");
        assert_eq!((loaded.as_ref(), at), (Some(&last), layout));
    }
    let Layout::Slots {
        region,
        newest,
        seq,
    } = layout
    else {
        panic!("{layout:?}")
    };
    let mut bytes = vec![0u8; size(&file) as usize];
    file.read_exact_at(&mut bytes, 0).expect("read");
    check_file(&bytes, 1 << 20);
    // A save cut off at any byte loads the state before it, or the new one when what the cut
    // left out was on disk already.
    let next = slot(seq + 1, b"never finished");
    let cut = input.below(next.len());
    file.write_all_at(&next[..cut], (1 - newest) * region)
        .expect("written");
    let (loaded, _) = layout::load(&file, size(&file), 1 << 20).expect("loads");
    let loaded = loaded.expect("a record");
    if loaded != last {
        assert_eq!(&loaded[..], b"never finished");
        let mut on_disk = vec![0u8; next.len()];
        file.read_exact_at(&mut on_disk, (1 - newest) * region)
            .expect("read");
        assert_eq!(on_disk, next);
    }
}
