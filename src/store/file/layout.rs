//! The session file's layout, version 2: two slots written in turn, in place, so that a save
//! needs no new file and a torn write can only ever spoil the slot it was writing.
//!
//! A file is two regions of the same size `R` (a multiple of 4096, so that writing one region
//! never rewrites a disk sector of the other), `R = file size / 2`. Each region is a slot:
//!
//! | bytes | content |
//! | --- | --- |
//! | 0..4 | magic `PSOF` |
//! | 4 | layout version, `2` |
//! | 5..8 | zero |
//! | 8..16 | sequence number, u64 little-endian |
//! | 16..20 | record length, u32 little-endian |
//! | 20..24 | CRC-32 of bytes 4..20 and of the record |
//! | 24..32 | zero |
//! | 32.. | the record, in [`crate::Record::encode`]'s format (which has its own version) |
//!
//! A load takes the valid slot with the highest sequence number; a save writes the other
//! slot with the next number, in one positioned write, into the file whose lock the request
//! holds. A write cut off at any byte leaves a slot that fails its checksum, and the other
//! slot, untouched, is what loads. A record that outgrows its slot goes into a new, larger
//! file, renamed into place. A version-1 file (the record alone, starting `PSOS`) still loads;
//! its next save writes version 2.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::error::{Error, ErrorKind, Result};

const MAGIC: &[u8; 4] = b"PSOF";
const VERSION: u8 = 2;
/// A slot's header before its record.
pub(crate) const SLOT_HEADER: usize = 32;
/// Regions are whole pages and disk sectors.
const ALIGN: u64 = 4096;
/// Files up to this size are read in one call.
const READ_WHOLE: u64 = 16 * 1024;
/// The record format's magic: a version-1 file is a record alone.
const RECORD_MAGIC: &[u8; 4] = b"PSOS";

/// Where a file's newest record lies, and where its next save goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// Nothing stored yet (an empty reservation).
    Empty,
    /// A version-1 file: the record alone. The next save replaces the file.
    Single,
    /// Two slots of `region` bytes; slot `newest` holds the record, numbered `seq`.
    Slots { region: u64, newest: u64, seq: u64 },
}

/// A slot's header, as read.
#[derive(Clone, Copy, Debug)]
struct Header {
    seq: u64,
    len: u64,
    crc: u32,
}

fn corrupt(why: &str) -> Error {
    Error::new(ErrorKind::Corrupt, format!("session file {why}"))
}

fn parse_header(bytes: &[u8]) -> Option<Header> {
    let h = bytes.get(..SLOT_HEADER)?;
    // The reserved bytes are zero: any other value is damage, like a checksum that fails.
    if &h[..4] != MAGIC || h[4] != VERSION || h[5..8] != [0; 3] || h[24..32] != [0; 8] {
        return None;
    }
    Some(Header {
        seq: u64::from_le_bytes(h[8..16].try_into().ok()?),
        len: u64::from(u32::from_le_bytes(h[16..20].try_into().ok()?)),
        crc: u32::from_le_bytes(h[20..24].try_into().ok()?),
    })
}

fn slot_crc(seq: u64, record: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&[VERSION, 0, 0, 0]);
    hasher.update(&seq.to_le_bytes());
    hasher.update(&(record.len() as u32).to_le_bytes());
    hasher.update(record);
    hasher.finalize()
}

/// A slot: header and record, ready for one write.
fn slot_bytes(seq: u64, record: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(SLOT_HEADER + record.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[VERSION, 0, 0, 0]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&(record.len() as u32).to_le_bytes());
    out.extend_from_slice(&slot_crc(seq, record).to_le_bytes());
    out.extend_from_slice(&[0u8; 8]);
    out.extend_from_slice(record);
    out
}

/// A buffer of `len` bytes, or an error (not an abort) when memory is short.
fn buffer(len: u64) -> Result<Vec<u8>> {
    let len = usize::try_from(len).map_err(|_| corrupt("is too large"))?;
    let mut bytes = Vec::new();
    bytes.try_reserve_exact(len).map_err(|_| {
        Error::new(
            ErrorKind::Io,
            format!("no memory to read {len} bytes of a session file"),
        )
    })?;
    Ok(bytes)
}

/// `len` bytes at `offset`, read into fresh memory (not zeroed first: it is read over).
fn read_at(file: &File, len: u64, offset: u64) -> Result<Vec<u8>> {
    let mut bytes = buffer(len)?;
    let short = || corrupt("ends before its layout says");
    while (bytes.len() as u64) < len {
        let at = offset + bytes.len() as u64;
        match rustix::io::pread(file, rustix::buffer::spare_capacity(&mut bytes), at) {
            Ok(0) => return Err(short()),
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(Error::io("reading a session file", e.into())),
        }
    }
    Ok(bytes)
}

/// Reads the newest valid record of a file of `size` bytes; records over `max_record` bytes
/// are corrupt (and never read into memory).
pub(crate) fn load(file: &File, size: u64, max_record: u64) -> Result<(Option<Vec<u8>>, Layout)> {
    if size == 0 {
        return Ok((None, Layout::Empty));
    }
    let whole = if size <= READ_WHOLE {
        Some(read_at(file, size, 0)?)
    } else {
        None
    };
    let start = match &whole {
        Some(bytes) => bytes[..bytes.len().min(SLOT_HEADER)].to_vec(),
        None => read_at(file, (SLOT_HEADER as u64).min(size), 0)?,
    };
    if start.starts_with(RECORD_MAGIC) {
        if size > max_record {
            return Err(corrupt("is larger than PSOSessionMaxBytes"));
        }
        let record = match whole {
            Some(bytes) => bytes,
            None => read_at(file, size, 0)?,
        };
        return Ok((Some(record), Layout::Single));
    }
    let region = region_of(size)?;
    let header_of = |slot: u64| -> Result<Option<Header>> {
        let at = slot * region;
        let bytes = match &whole {
            Some(bytes) => bytes[at as usize..at as usize + SLOT_HEADER].to_vec(),
            None => read_at(file, SLOT_HEADER as u64, at)?,
        };
        Ok(parse_header(&bytes).filter(|h| h.len + SLOT_HEADER as u64 <= region))
    };
    let mut slots: Vec<(u64, Header)> = Vec::with_capacity(2);
    for slot in 0..2 {
        if let Some(header) = header_of(slot)? {
            slots.push((slot, header));
        }
    }
    slots.sort_by_key(|(_, h)| std::cmp::Reverse(h.seq));
    for (slot, header) in slots {
        if header.len > max_record {
            // Judged by its slot alone: a newer slot too large is no valid state to return to.
            return Err(corrupt("holds a record larger than PSOSessionMaxBytes"));
        }
        let at = slot * region + SLOT_HEADER as u64;
        let record = match &whole {
            Some(bytes) => bytes[at as usize..(at + header.len) as usize].to_vec(),
            None => read_at(file, header.len, at)?,
        };
        if slot_crc(header.seq, &record) == header.crc {
            let layout = Layout::Slots {
                region,
                newest: slot,
                seq: header.seq,
            };
            return Ok((Some(record), layout));
        }
    }
    Err(corrupt("has no slot that passes its checksum"))
}

/// Whether `start` (a file's first bytes) is of this layout's magic but another version: written
/// by another version of pso, so not for this one to judge.
pub(crate) fn is_other_version(start: &[u8]) -> bool {
    start.len() > 4 && &start[..4] == MAGIC && start[4] != VERSION
}

/// Where the newest valid record of a file lies, found without holding a record in memory
/// (checksums are computed over chunks): `(offset, length)`, `None` for an empty file.
pub(crate) fn locate_newest(file: &File, size: u64) -> Result<Option<(u64, u64)>> {
    if size == 0 {
        return Ok(None);
    }
    let start = read_at(file, (SLOT_HEADER as u64).min(size), 0)?;
    if start.starts_with(RECORD_MAGIC) {
        return Ok(Some((0, size)));
    }
    let region = region_of(size)?;
    let mut slots = Vec::with_capacity(2);
    for slot in 0..2 {
        let bytes = read_at(file, SLOT_HEADER as u64, slot * region)?;
        if let Some(h) = parse_header(&bytes).filter(|h| h.len + SLOT_HEADER as u64 <= region) {
            slots.push((slot, h));
        }
    }
    slots.sort_by_key(|(_, h)| std::cmp::Reverse(h.seq));
    for (slot, header) in slots {
        let at = slot * region + SLOT_HEADER as u64;
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&[VERSION, 0, 0, 0]);
        hasher.update(&header.seq.to_le_bytes());
        hasher.update(&(header.len as u32).to_le_bytes());
        let mut chunk = vec![0u8; 64 * 1024];
        let mut done = 0;
        while done < header.len {
            let n = (header.len - done).min(chunk.len() as u64) as usize;
            file.read_exact_at(&mut chunk[..n], at + done)
                .map_err(|e| Error::io("reading a session file", e))?;
            hasher.update(&chunk[..n]);
            done += n as u64;
        }
        if hasher.finalize() == header.crc {
            return Ok(Some((at, header.len)));
        }
    }
    Err(corrupt("has no slot that passes its checksum"))
}

/// Saves `record` into the locked `file` in place, in the slot that does not hold the newest
/// record. `None` when it cannot be done in place (a version-1 file, or a record larger than
/// a slot): the caller writes a new file instead.
pub(crate) fn save_in_place(file: &File, layout: Layout, record: &[u8]) -> Result<Option<Layout>> {
    let (region, slot, seq) = match layout {
        Layout::Slots {
            region,
            newest,
            seq,
        } => (region, 1 - newest, seq.wrapping_add(1)),
        Layout::Empty => {
            let region = region_for(record.len());
            file.set_len(2 * region)
                .map_err(|e| Error::io("sizing a session file", e))?;
            (region, 0, 1)
        }
        Layout::Single => return Ok(None),
    };
    if (SLOT_HEADER + record.len()) as u64 > region {
        return Ok(None);
    }
    file.write_all_at(&slot_bytes(seq, record), slot * region)
        .map_err(|e| Error::io("writing a session file", e))?;
    Ok(Some(Layout::Slots {
        region,
        newest: slot,
        seq,
    }))
}

/// Lays out a new file (empty, not yet at its name) with `record` in its first slot, numbered
/// `seq`. Slots get room for the record to double before the file must be replaced again.
pub(crate) fn write_new(file: &File, record: &[u8], seq: u64) -> Result<Layout> {
    let region = region_for(record.len());
    file.set_len(2 * region)
        .map_err(|e| Error::io("sizing a session file", e))?;
    file.write_all_at(&slot_bytes(seq, record), 0)
        .map_err(|e| Error::io("writing a session file", e))?;
    Ok(Layout::Slots {
        region,
        newest: 0,
        seq,
    })
}

/// The region size of a version-2 file of `size` bytes: half of it, in whole pages.
fn region_of(size: u64) -> Result<u64> {
    let region = size / 2;
    if !size.is_multiple_of(2) || !region.is_multiple_of(ALIGN) || region < ALIGN {
        return Err(corrupt(&format!("has no pso layout ({size} bytes)")));
    }
    Ok(region)
}

/// The region for a record of `len` bytes: room for it twice, in whole pages.
fn region_for(len: usize) -> u64 {
    let wanted = (SLOT_HEADER as u64).saturating_add(2 * len as u64);
    wanted.div_ceil(ALIGN).max(1) * ALIGN
}

/// The next sequence number after a layout's newest.
pub(crate) fn next_seq(layout: Layout) -> u64 {
    match layout {
        Layout::Slots { seq, .. } => seq.wrapping_add(1),
        Layout::Empty | Layout::Single => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn file() -> File {
        tempfile::tempfile().unwrap()
    }

    fn size(file: &File) -> u64 {
        file.metadata().unwrap().len()
    }

    fn load_all(file: &File) -> (Option<Vec<u8>>, Layout) {
        load(file, size(file), 1 << 20).unwrap()
    }

    #[test]
    fn saves_alternate_between_the_slots_in_place() {
        let f = file();
        let layout = write_new(&f, b"one", 1).unwrap();
        assert_eq!(size(&f), 2 * ALIGN);
        assert_eq!(load_all(&f), (Some(b"one".to_vec()), layout));
        let layout = save_in_place(&f, layout, b"two").unwrap().unwrap();
        assert_eq!(
            layout,
            Layout::Slots {
                region: ALIGN,
                newest: 1,
                seq: 2
            }
        );
        assert_eq!(load_all(&f).0.unwrap(), b"two");
        let layout = save_in_place(&f, layout, b"three").unwrap().unwrap();
        assert_eq!(
            layout,
            Layout::Slots {
                region: ALIGN,
                newest: 0,
                seq: 3
            }
        );
        assert_eq!(load_all(&f).0.unwrap(), b"three");
        assert_eq!(size(&f), 2 * ALIGN, "no new space, no new file");
        // Too big for a slot: the caller must write a new file.
        assert_eq!(save_in_place(&f, layout, &[0u8; 5000]).unwrap(), None);
    }

    #[test]
    fn an_empty_reservation_is_laid_out_in_place_and_version_one_is_not() {
        let f = file();
        assert_eq!(load_all(&f), (None, Layout::Empty));
        let layout = save_in_place(&f, Layout::Empty, b"first").unwrap().unwrap();
        assert_eq!(load_all(&f), (Some(b"first".to_vec()), layout));
        let v1 = file();
        v1.write_all_at(b"PSOS\x01whatever", 0).unwrap();
        assert_eq!(
            load_all(&v1),
            (Some(b"PSOS\x01whatever".to_vec()), Layout::Single)
        );
        assert_eq!(save_in_place(&v1, Layout::Single, b"x").unwrap(), None);
    }

    #[test]
    fn a_torn_newest_slot_gives_the_previous_state() {
        let f = file();
        let layout = write_new(&f, b"previous state", 1).unwrap();
        let record = vec![b'n'; 1500];
        save_in_place(&f, layout, &record).unwrap().unwrap();
        let slot = slot_bytes(2, &record);
        // Every cut of the newest slot's write, and every byte of it overwritten.
        for cut in 0..slot.len() {
            let torn = file();
            write_new(&torn, b"previous state", 1).unwrap();
            torn.write_all_at(&slot[..cut], ALIGN).unwrap();
            assert_eq!(
                load_all(&torn).0.unwrap(),
                b"previous state",
                "cut at {cut}"
            );
        }
        for at in (0..slot.len()).step_by(7) {
            let torn = file();
            write_new(&torn, b"previous state", 1).unwrap();
            let mut bad = slot.clone();
            bad[at] ^= 0x5a;
            torn.write_all_at(&bad, ALIGN).unwrap();
            assert_eq!(load_all(&torn).0.unwrap(), b"previous state", "byte {at}");
        }
    }

    #[test]
    fn big_files_are_read_slot_by_slot() {
        let f = file();
        let record = vec![3u8; 40_000];
        let layout = write_new(&f, &record, 7).unwrap();
        assert!(size(&f) > READ_WHOLE);
        assert_eq!(load_all(&f).0.unwrap(), record);
        let layout = save_in_place(&f, layout, &record[..30_000])
            .unwrap()
            .unwrap();
        assert_eq!(load_all(&f), (Some(record[..30_000].to_vec()), layout));
        assert_eq!(
            locate_newest(&f, size(&f)).unwrap(),
            Some((layout_offset(layout), 30_000))
        );
        assert!(load(&f, size(&f), 1000).is_err(), "over the cap");
    }

    fn layout_offset(layout: Layout) -> u64 {
        match layout {
            Layout::Slots { region, newest, .. } => newest * region + SLOT_HEADER as u64,
            _ => 0,
        }
    }

    #[test]
    fn what_is_not_a_layout_is_corrupt() {
        for bytes in [&b"garbage"[..], &[0u8; 8192], &[0u8; 4096 * 3]] {
            let f = file();
            f.write_all_at(bytes, 0).unwrap();
            assert_eq!(
                load(&f, size(&f), 1 << 20).unwrap_err().kind(),
                ErrorKind::Corrupt
            );
        }
    }

    proptest! {
        #[test]
        fn any_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..9000)) {
            let f = file();
            f.write_all_at(&bytes, 0).unwrap();
            let _ = load(&f, bytes.len() as u64, 1 << 20);
            let _ = locate_newest(&f, bytes.len() as u64);
        }

        #[test]
        fn the_newest_intact_slot_always_wins(records in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..3000), 1..12), tear_at in any::<prop::sample::Index>()) {
            let f = file();
            let mut layout = write_new(&f, &records[0], 1).unwrap();
            let mut last = records[0].clone();
            for record in &records[1..] {
                match save_in_place(&f, layout, record).unwrap() {
                    Some(next) => { layout = next; last = record.clone(); }
                    None => break,
                }
            }
            prop_assert_eq!(load_all(&f).0.unwrap(), last.clone());
            // A torn next save loads the previous state; or the new one, whole, when the
            // bytes the cut left out were already on disk (an older record's bytes in that
            // slot happen to match): then the slot is not torn at all.
            if let Layout::Slots { region, newest, seq } = layout {
                let slot = slot_bytes(seq + 1, b"never finished");
                let cut = tear_at.index(slot.len());
                let at = (1 - newest) * region;
                f.write_all_at(&slot[..cut], at).unwrap();
                let loaded = load_all(&f).0.unwrap();
                if loaded != last {
                    let mut on_disk = vec![0u8; slot.len()];
                    f.read_exact_at(&mut on_disk, at).unwrap();
                    prop_assert_eq!(&loaded[..], &b"never finished"[..]);
                    prop_assert_eq!(on_disk, slot);
                }
            }
        }
    }
}
