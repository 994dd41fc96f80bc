//! Entry points for the fuzz targets of `fuzz/` and the property tests that share their
//! checks (the `fuzzing` feature): thin wrappers over parsers that are private to the crate,
//! which a target outside it cannot call.
//!
//! Not an API: these follow the internals and change with them, without notice.

/// The session file's slot reader and writer (`store/file/layout.rs`), over a file the caller
/// fills with any bytes.
pub mod layout {
    use std::fs::File;

    use crate::Result;
    use crate::store::file::layout as inner;

    /// A slot's header before its record.
    pub const SLOT_HEADER: usize = inner::SLOT_HEADER;

    /// Where a file's newest record lies, and where its next save goes.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Layout {
        /// Nothing stored yet (no bytes, or only zeros).
        Empty,
        /// A version-1 file: the record alone.
        Single,
        /// Two slots of `region` bytes; slot `newest` holds the record, numbered `seq`.
        Slots {
            /// Half the file: the size of each slot.
            region: u64,
            /// The slot (0 or 1) holding the newest record.
            newest: u64,
            /// The newest record's sequence number.
            seq: u64,
        },
    }

    impl From<inner::Layout> for Layout {
        fn from(layout: inner::Layout) -> Layout {
            match layout {
                inner::Layout::Empty => Layout::Empty,
                inner::Layout::Single => Layout::Single,
                inner::Layout::Slots {
                    region,
                    newest,
                    seq,
                } => Layout::Slots {
                    region,
                    newest,
                    seq,
                },
            }
        }
    }

    impl From<Layout> for inner::Layout {
        fn from(layout: Layout) -> inner::Layout {
            match layout {
                Layout::Empty => inner::Layout::Empty,
                Layout::Single => inner::Layout::Single,
                Layout::Slots {
                    region,
                    newest,
                    seq,
                } => inner::Layout::Slots {
                    region,
                    newest,
                    seq,
                },
            }
        }
    }

    /// The newest valid record of a file of `size` bytes, read as under its lock.
    pub fn load(file: &File, size: u64, max_record: u64) -> Result<(Option<Vec<u8>>, Layout)> {
        inner::load(file, size, max_record).map(|(record, layout)| (record, layout.into()))
    }

    /// The newest valid record, read as without the lock (checked against concurrent saves).
    pub fn load_settled(file: &File, max_record: u64) -> Result<(Option<Vec<u8>>, Layout)> {
        inner::load_settled(file, max_record).map(|(record, layout)| (record, layout.into()))
    }

    /// Where the newest valid record lies, `(offset, length)`, found without reading it whole.
    pub fn locate_newest(file: &File, size: u64) -> Result<Option<(u64, u64)>> {
        inner::locate_newest(file, size)
    }

    /// Saves `record` in the slot that does not hold the newest; `None`: it must go to a new
    /// file.
    pub fn save_in_place(file: &File, layout: Layout, record: &[u8]) -> Result<Option<Layout>> {
        inner::save_in_place(file, layout.into(), record).map(|saved| saved.map(Layout::from))
    }

    /// Lays out an empty file with `record` in its first slot, numbered `seq`.
    pub fn write_new(file: &File, record: &[u8], seq: u64) -> Result<Layout> {
        inner::write_new(file, record, seq).map(Layout::from)
    }
}

/// The choice among the verdicts on the ids a request names (`adoption.rs`'s `decide`).
pub mod adoption {
    use crate::adoption as inner;
    use crate::{Ended, Meta, Origin, Record, SessionId};

    /// One id, judged: the crate's verdict without the data it carries.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Verdict {
        /// A live session.
        Live,
        /// A live session reached through an old id (a session regenerated moments ago).
        LiveThroughOldId,
        /// An old id still in its grace, forwarding to another.
        Forward,
        /// Another address's live session.
        Foreign,
        /// An ended session, and whether its record (the data of an expired one) came along.
        Ended(Ended, bool),
        /// One of more stored sessions than a request judges.
        Unjudged,
    }

    /// What to do with the candidates: indexes into the verdicts.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct Decision {
        /// The candidate adopted.
        pub adopt: Option<usize>,
        /// Why a new session, when none is adopted.
        pub why: Origin,
        /// The candidate whose expired data the new session may hand over.
        pub expired_from: Option<usize>,
        /// Live candidates that end now.
        pub end: Vec<usize>,
        /// Dead candidates to remove.
        pub remove: Vec<usize>,
    }

    /// Chooses among `verdicts` as a request that named them would.
    pub fn decide(verdicts: &[Verdict], offered_any: bool) -> Decision {
        let record = || Record::new(Meta::new(0));
        let built: Vec<inner::Verdict> = verdicts
            .iter()
            .map(|verdict| match *verdict {
                Verdict::Live | Verdict::LiveThroughOldId => inner::Verdict::Live(record()),
                // Which id it forwards to plays no part in the choice.
                Verdict::Forward => inner::Verdict::Forward(SessionId::user_record(0)),
                Verdict::Foreign => inner::Verdict::Foreign,
                Verdict::Ended(why, data) => inner::Verdict::Ended(why, data.then(record)),
                Verdict::Unjudged => inner::Verdict::Unjudged,
            })
            .collect();
        let weighed: Vec<inner::Weighed<'_>> = built
            .iter()
            .zip(verdicts)
            .map(|(verdict, given)| inner::Weighed {
                verdict,
                through_old_id: *given == Verdict::LiveThroughOldId,
            })
            .collect();
        let decision = inner::decide(&weighed, offered_any);
        Decision {
            adopt: decision.adopt,
            why: decision.why,
            expired_from: decision.expired_from,
            end: decision.end,
            remove: decision.remove,
        }
    }
}
