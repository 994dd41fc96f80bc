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
use std::time::Duration;

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

/// A file's newest record (`None`: no record yet) and where it lies.
pub(crate) type Newest = (Option<Vec<u8>>, Layout);

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

/// Reads the newest valid record of a file of `size` bytes, for a reader that holds the file's
/// lock; records over `max_record` bytes are corrupt (and never read into memory). A file of
/// zeros is an empty reservation whose first save was cut off before its slot was written.
pub(crate) fn load(file: &File, size: u64, max_record: u64) -> Result<Newest> {
    read_state(file, size, max_record, &mut || {}).0
}

/// How often a read without the lock is done again because a save changed the file meanwhile,
/// or because the file looked damaged (a first save may be half laid out).
const SETTLE_TRIES: u32 = 40;
const DAMAGED_TRIES: u32 = 3;
const MAX_SETTLE_PAUSE: Duration = Duration::from_millis(5);

/// Reads the newest record of a file that a request holding its lock may be saving into at
/// this very moment (a read without the lock). One `pread` is not atomic against a `pwrite`:
/// it can see part of a save, or the slots of two different moments. So the slot headers are
/// read again afterwards, and a read during which they changed is done again (a seqlock: every
/// save raises the sequence number in the header it writes). What comes back is a state the
/// file held while the read ran: never a mix of two saves, never older than a save finished
/// before the read began. A file that reads as damaged is read again after a pause before it
/// is called so (a first save may be laying the file out). A file that never stops changing
/// is an error of kind [`ErrorKind::LockTimeout`], never `Corrupt`.
pub(crate) fn load_settled(file: &File, max_record: u64) -> Result<Newest> {
    load_settled_with(file, max_record, &mut || {})
}

/// [`load_settled`], calling `meanwhile` between reading the headers and reading a record,
/// where a test lands saves.
fn load_settled_with(file: &File, max_record: u64, meanwhile: &mut dyn FnMut()) -> Result<Newest> {
    let mut pause = Duration::from_micros(20);
    let mut damaged = 0;
    for _ in 0..SETTLE_TRIES {
        let size = file_size(file)?;
        let (loaded, seen) = read_state(file, size, max_record, meanwhile);
        if seen.size == 0 || heads(file, seen.region)? == seen {
            match loaded {
                Err(e) if e.kind() == ErrorKind::Corrupt && damaged + 1 < DAMAGED_TRIES => {
                    damaged += 1;
                }
                loaded => return loaded,
            }
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(MAX_SETTLE_PAUSE);
    }
    Err(Error::new(
        ErrorKind::LockTimeout,
        "a session file kept changing while it was read without its lock",
    ))
}

/// Runs `read` over a file that a request holding its lock may be saving into (a read without
/// the lock, of any part of the file), again until no save landed during it: the size and slot
/// headers are the same before and after. What `read` gets to see is a state the file held.
pub(crate) fn read_settled<T>(file: &File, mut read: impl FnMut(&File) -> Result<T>) -> Result<T> {
    let mut pause = Duration::from_micros(20);
    for _ in 0..SETTLE_TRIES {
        let before = heads(file, region_of(file_size(file)?).ok())?;
        let result = read(file);
        if heads(file, before.region)? == before {
            return result;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(MAX_SETTLE_PAUSE);
    }
    Err(Error::new(
        ErrorKind::LockTimeout,
        "a session file kept changing while it was read without its lock",
    ))
}

/// What a read saw of the parts that every save changes: the file's size and its slot headers
/// (for a version-1 file, its first bytes).
#[derive(Debug, Default, PartialEq, Eq)]
struct Seen {
    size: u64,
    /// The region size the read went by (`None`: one header only, at 0).
    region: Option<u64>,
    heads: [[u8; SLOT_HEADER]; 2],
}

fn file_size(file: &File) -> Result<u64> {
    let stat =
        rustix::fs::fstat(file).map_err(|e| Error::io("inspecting a session file", e.into()))?;
    Ok(u64::try_from(stat.st_size).unwrap_or(0))
}

/// The size and slot headers of `file` now, read as `read_state` reads them.
fn heads(file: &File, region: Option<u64>) -> Result<Seen> {
    let size = file_size(file)?;
    let mut seen = Seen {
        size,
        region,
        ..Seen::default()
    };
    let offsets = [Some(0), region];
    for (head, at) in seen.heads.iter_mut().zip(offsets) {
        if let Some(at) = at {
            let n = read_some_at(file, head, at)?;
            head[n..].fill(0);
        }
    }
    Ok(seen)
}

/// Reads into `buf` at `offset` until it is full or the file ends; the number of bytes read.
fn read_some_at(file: &File, buf: &mut [u8], offset: u64) -> Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("reading a session file", e)),
        }
    }
    Ok(done)
}

/// Reads the newest valid record, and what the read saw of the headers (each header is read
/// before the record after it, so a save that lands during the read changes what a second
/// look at the headers sees).
fn read_state(
    file: &File,
    size: u64,
    max_record: u64,
    meanwhile: &mut dyn FnMut(),
) -> (Result<Newest>, Seen) {
    let mut seen = Seen {
        size,
        ..Seen::default()
    };
    let loaded = read_newest(file, size, max_record, &mut seen, meanwhile);
    (loaded, seen)
}

fn read_newest(
    file: &File,
    size: u64,
    max_record: u64,
    seen: &mut Seen,
    meanwhile: &mut dyn FnMut(),
) -> Result<Newest> {
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
    seen.heads[0][..start.len()].copy_from_slice(&start);
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
    let region = match region_of(size) {
        Ok(region) => region,
        Err(_) if is_all_zero(file, size, whole.as_deref())? => return Ok((None, Layout::Empty)),
        Err(e) => return Err(e),
    };
    seen.region = Some(region);
    let mut slots: Vec<(u64, Header)> = Vec::with_capacity(2);
    for slot in 0..2 {
        let at = slot * region;
        let bytes = match &whole {
            Some(bytes) => bytes[at as usize..at as usize + SLOT_HEADER].to_vec(),
            None => read_at(file, SLOT_HEADER as u64, at)?,
        };
        seen.heads[slot as usize].copy_from_slice(&bytes);
        if let Some(header) = parse_header(&bytes).filter(|h| h.len + SLOT_HEADER as u64 <= region)
        {
            slots.push((slot, header));
        }
    }
    slots.sort_by_key(|(_, h)| std::cmp::Reverse(h.seq));
    meanwhile();
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
    if is_all_zero(file, size, whole.as_deref())? {
        return Ok((None, Layout::Empty));
    }
    Err(corrupt("has no slot that passes its checksum"))
}

/// Whether the file holds nothing but zeros: a reservation sized for its first save and not
/// written yet (or a first save cut off there). A damaged file with data in it is not one.
fn is_all_zero(file: &File, size: u64, whole: Option<&[u8]>) -> Result<bool> {
    if let Some(bytes) = whole {
        return Ok(bytes.iter().all(|&b| b == 0));
    }
    let mut chunk = vec![0u8; 64 * 1024];
    let mut done = 0;
    while done < size {
        let n = (size - done).min(chunk.len() as u64) as usize;
        file.read_exact_at(&mut chunk[..n], done)
            .map_err(|e| Error::io("reading a session file", e))?;
        if chunk[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        done += n as u64;
    }
    Ok(true)
}

/// Whether `start` (a file's first bytes) is of this layout's magic but another version: written
/// by another version of pso, so not for this one to judge.
pub(crate) fn is_other_version(start: &[u8]) -> bool {
    start.len() > 4 && &start[..4] == MAGIC && start[4] != VERSION
}

/// Where the newest valid record of a file lies, found without holding a record in memory
/// (checksums are computed over chunks): `(offset, length)`, `None` for an empty reservation
/// (no bytes, or only zeros).
pub(crate) fn locate_newest(file: &File, size: u64) -> Result<Option<(u64, u64)>> {
    if size == 0 {
        return Ok(None);
    }
    let start = read_at(file, (SLOT_HEADER as u64).min(size), 0)?;
    if start.starts_with(RECORD_MAGIC) {
        return Ok(Some((0, size)));
    }
    let region = match region_of(size) {
        Ok(region) => region,
        Err(_) if is_all_zero(file, size, None)? => return Ok(None),
        Err(e) => return Err(e),
    };
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
    if is_all_zero(file, size, None)? {
        return Ok(None);
    }
    Err(corrupt("has no slot that passes its checksum"))
}

/// Saves `record` into the locked `file` in place, in the slot that does not hold the newest
/// record. `None` when it cannot be done in place (a version-1 file, or a record larger than
/// a slot): the caller writes a new file instead.
pub(crate) fn save_in_place(file: &File, layout: Layout, record: &[u8]) -> Result<Option<Layout>> {
    let (region, slot, seq) = match layout {
        // The next number would wrap to 0 and lose to the slot it follows: a new file starts
        // again from 1 (only a forged file gets this far).
        Layout::Slots { seq: u64::MAX, .. } => return Ok(None),
        Layout::Slots {
            region,
            newest,
            seq,
        } => (region, 1 - newest, seq + 1),
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

/// Undoes a save in place that may not be on the disk (its sync failed), so that loads find
/// the state before it, `before`: the slot it wrote loses its header, or a file laid out by it
/// goes back to an empty reservation.
pub(crate) fn void_newest(file: &File, written: Layout, before: Layout) -> Result<()> {
    let voided = match (written, before) {
        (_, Layout::Empty) => file.set_len(0),
        (Layout::Slots { region, newest, .. }, _) => {
            file.write_all_at(&[0u8; SLOT_HEADER], newest * region)
        }
        _ => Ok(()),
    };
    voided.map_err(|e| Error::io("undoing a session file's save", e))
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
        Layout::Slots { seq, .. } => seq.checked_add(1).unwrap_or(1),
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
    fn what_is_not_a_layout_is_corrupt_and_zeros_are_a_reservation() {
        let mut zero_heads_with_data = vec![0u8; 8192];
        zero_heads_with_data[100] = 7;
        for bytes in [&b"garbage"[..], &zero_heads_with_data, &[1u8; 8192]] {
            let f = file();
            f.write_all_at(bytes, 0).unwrap();
            assert_eq!(
                load(&f, size(&f), 1 << 20).unwrap_err().kind(),
                ErrorKind::Corrupt
            );
        }
        // A first save sizes the file, then writes its slot: cut off between the two (or
        // read by a reader between them), the file is zeros, which is no record yet.
        for len in [8192, 4096 * 3, 40_000] {
            let f = file();
            f.set_len(len).unwrap();
            assert_eq!(load_all(&f), (None, Layout::Empty), "{len}");
            assert_eq!(locate_newest(&f, len).unwrap(), None);
            assert_eq!(load_settled(&f, 1 << 20).unwrap(), (None, Layout::Empty));
        }
    }

    /// A save of 9000 bytes of 3, then one of 4s cut off halfway through its record.
    fn two_saves(f: &File, mut layout: Layout) -> impl FnMut() + '_ {
        move || {
            layout = save_in_place(f, layout, &[3; 9000]).unwrap().unwrap();
            if let Layout::Slots { region, newest, .. } = layout {
                let slot = slot_bytes(4, &[4; 9000]);
                f.write_all_at(&slot[..slot.len() / 2], (1 - newest) * region)
                    .unwrap();
            }
        }
    }

    /// Two saves land while a reader without the lock reads a large file (headers first, then
    /// the record): the newest slot it chose is torn, the other one rewritten since. Read once,
    /// that is a healthy session called damaged (or an old state); read settled, it is the
    /// newest state.
    #[test]
    fn two_saves_during_one_read_are_read_again_not_called_damaged() {
        let f = file();
        let record = |n: u8| vec![n; 9000];
        let mut layout = write_new(&f, &record(1), 1).unwrap();
        layout = save_in_place(&f, layout, &record(2)).unwrap().unwrap();
        let mut once = two_saves(&f, layout);
        let (unsettled, _) = read_state(&f, size(&f), 1 << 20, &mut once);
        assert_eq!(unsettled.unwrap_err().kind(), ErrorKind::Corrupt);

        let f = file();
        let mut layout = write_new(&f, &record(1), 1).unwrap();
        layout = save_in_place(&f, layout, &record(2)).unwrap().unwrap();
        let mut saves = Some(two_saves(&f, layout));
        let mut first_read_only = || {
            if let Some(mut saves) = saves.take() {
                saves();
            }
        };
        let (settled, _) = load_settled_with(&f, 1 << 20, &mut first_read_only).unwrap();
        assert_eq!(settled.unwrap(), record(3));
    }

    /// A writer saves in place as often as requests could while readers read without the lock: no read
    /// is ever damaged, and none returns a state older than one saved before it began, or
    /// older than one the same reader saw before. Small files (read in one call) and large
    /// ones (read slot by slot), and the first save of an empty reservation.
    #[test]
    fn reads_without_the_lock_see_whole_states_never_older_ones() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        for record_len in [100usize, 3000, 9000] {
            let f = Arc::new(file());
            let saved = Arc::new(AtomicU64::new(0));
            let stop = Arc::new(AtomicBool::new(false));
            // Each record is its sequence number, repeated: a mix of two is easy to see.
            let record = move |seq: u64| -> Vec<u8> {
                seq.to_le_bytes()
                    .iter()
                    .copied()
                    .cycle()
                    .take(record_len)
                    .collect()
            };
            let writer = {
                let (f, saved, stop) = (f.clone(), saved.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut layout = Layout::Empty;
                    let mut seq = 1;
                    while !stop.load(Ordering::SeqCst) {
                        layout = save_in_place(&f, layout, &record(seq)).unwrap().unwrap();
                        saved.store(seq, Ordering::SeqCst);
                        seq += 1;
                        // No request saves a session more often than this.
                        std::thread::sleep(std::time::Duration::from_micros(20));
                    }
                })
            };
            let readers: Vec<_> = (0..2)
                .map(|_| {
                    let (f, saved, stop) = (f.clone(), saved.clone(), stop.clone());
                    std::thread::spawn(move || {
                        let mut last_seen = 0;
                        let mut reads = 0u64;
                        let started = std::time::Instant::now();
                        while started.elapsed() < std::time::Duration::from_millis(700) {
                            let floor = saved.load(Ordering::SeqCst);
                            let (bytes, _) = load_settled(&f, 1 << 20).expect("never damaged");
                            let Some(bytes) = bytes else {
                                assert_eq!(floor, 0, "nothing read after a save");
                                continue;
                            };
                            let seq = u64::from_le_bytes(bytes[..8].try_into().unwrap());
                            assert_eq!(bytes, record(seq), "a whole record");
                            assert!(seq >= floor, "{seq} is older than {floor}, saved before");
                            assert!(seq >= last_seen, "{seq} after {last_seen}");
                            last_seen = seq;
                            reads += 1;
                        }
                        stop.store(true, Ordering::SeqCst);
                        reads
                    })
                })
                .collect();
            for reader in readers {
                assert!(reader.join().unwrap() > 0);
            }
            writer.join().unwrap();
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

    #[test]
    fn the_sequence_number_never_wraps_below_the_slot_it_follows() {
        let f = file();
        let layout = write_new(&f, b"last", u64::MAX).unwrap();
        assert_eq!(
            save_in_place(&f, layout, b"next").unwrap(),
            None,
            "a new file"
        );
        assert_eq!(next_seq(layout), 1);
    }
}
