//! Tailing the change log: the cursor, the pruning check, and what each batch asks of the node.
//!
//! Pure state. Rows are ordered by [`LogPosition`]: the writing transaction, then the sequence
//! number. A log whose sequence order is commit order (SQLite) puts every row in transaction 0.
//! Postgres assigns sequence numbers at insert and commits out of order, so a row may appear
//! *behind* rows already read; each batch therefore carries a horizon: every transaction below it
//! had ended when the batch was read, so its rows are final and nothing new can appear before
//! them. The cursor only moves over final rows. Rows past the horizon that are already visible
//! (committed by a transaction that started after an older one still open) are applied at once,
//! since waiting for the horizon would make the staleness bound depend on the oldest open
//! transaction, and remembered so that the next polls, which read them again, do not reapply them.
//!
//! The driver starts each poll at the cursor ([`Tail::begin_poll`]), reads batches from
//! [`Tail::read_from`] and feeds them to [`Tail::handle`], which says which rows to apply,
//! whether the node fell behind the pruning and must flush, and whether the node has caught up,
//! which is what renews the lease. Caught up means more than reaching the end of the log: a batch
//! that continued after a cut-off one read after the last row seen, not after the cursor, so a
//! transaction that committed meanwhile behind that row was not read. Only a batch that started at
//! the cursor and reached the end proves that every commit before it started has been read.

use std::collections::BTreeSet;

/// A place in the log: rows are ordered by transaction, then sequence number.
///
/// ```
/// let first = cohort::LogPosition::in_commit_order(1);
/// assert!(first < cohort::LogPosition { txn: 1, seq: 0 });
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogPosition {
    /// The writing transaction (Postgres `xid8`); 0 for logs in commit order.
    pub txn: u64,
    /// The row's sequence number.
    pub seq: u64,
}

impl LogPosition {
    /// A position in a log whose sequence order is commit order.
    pub fn in_commit_order(seq: u64) -> Self {
        Self { txn: 0, seq }
    }
}

/// One change-log row: a key of a cache that changed, and how new the change made it.
///
/// ```
/// let row = cohort::LogRow {
///     at: cohort::LogPosition::in_commit_order(7),
///     cache: "users".into(),
///     key: "42".into(),
///     version: Some(3),
/// };
/// assert_eq!(row.at.seq, 7);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRow {
    /// Where the row is in the log.
    pub at: LogPosition,
    /// The cache the changed key belongs to.
    pub cache: String,
    /// The changed key, as text (see [`Key`](crate::Key)).
    pub key: String,
    /// The row's version after the change, from the watch's
    /// [version column](crate::WatchedTable::version_column): a node keeps a copy of the key
    /// whose version is at least this one (the change is already in it) and drops any other.
    /// `None` (no version column, a delete, an insert, a changed key, an update that did not
    /// raise the version, a value that is not a non-negative integer) drops every copy.
    pub version: Option<u64>,
}

/// What one read of the log returned.
///
/// ```
/// let end = cohort::LogBatch::default();
/// assert!(end.complete && end.rows.is_empty());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogBatch {
    /// Rows after the read position, in order, at most the limit asked for.
    pub rows: Vec<LogRow>,
    /// The last position pruning has deleted up to.
    pub pruned_through: LogPosition,
    /// Every transaction below this one had ended when the batch was read; `u64::MAX` for logs in
    /// commit order.
    pub horizon: u64,
    /// Whether the read reached the end of the log (returned fewer rows than the limit).
    pub complete: bool,
}

impl Default for LogBatch {
    fn default() -> Self {
        Self {
            rows: Vec::new(),
            pruned_through: LogPosition::default(),
            horizon: u64::MAX,
            complete: true,
        }
    }
}

/// What the node must do about one batch.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Step<'a> {
    /// Rows were pruned before this node read them: it cannot tell which keys changed.
    pub(crate) flush: bool,
    /// Rows to apply, in order.
    pub(crate) rows: Vec<&'a LogRow>,
    /// The batch was cut off by the size limit: read on from [`Tail::read_from`].
    pub(crate) cut_off: bool,
    /// Every row committed before the batch was read has been applied.
    pub(crate) caught_up: bool,
}

/// A node's position in the change log.
#[derive(Debug)]
pub(crate) struct Tail {
    /// Every row at or before it has been applied, and no new row can appear there.
    cursor: LogPosition,
    /// Where this poll's next read starts (exclusive).
    read_from: LogPosition,
    /// Rows past the cursor that were applied already.
    applied_ahead: BTreeSet<LogPosition>,
}

impl Tail {
    /// Starts after `head`, a position no row of a later commit can precede: a starting node
    /// holds nothing cached, so nothing before it matters.
    pub(crate) fn new(head: LogPosition) -> Self {
        Self {
            cursor: head,
            read_from: head,
            applied_ahead: BTreeSet::new(),
        }
    }

    /// The last position every row up to which has been applied.
    pub(crate) fn cursor(&self) -> LogPosition {
        self.cursor
    }

    /// Where the next read starts (exclusive).
    pub(crate) fn read_from(&self) -> LogPosition {
        self.read_from
    }

    /// Starts a poll: rows that committed behind the last one read are found only by reading
    /// from the cursor again.
    pub(crate) fn begin_poll(&mut self) {
        self.read_from = self.cursor;
    }

    /// Judges a batch read after [`Tail::read_from`] and moves past it.
    pub(crate) fn handle<'a>(&mut self, batch: &'a LogBatch) -> Step<'a> {
        let from_cursor = self.read_from <= self.cursor;
        let flush = batch.pruned_through > self.cursor;
        if flush {
            self.cursor = batch.pruned_through;
        }
        // The cursor follows the reads while they start at it and find only final rows.
        let mut contiguous = self.read_from <= self.cursor;
        let mut rows = Vec::new();
        for row in batch.rows.iter().filter(|row| row.at > self.read_from) {
            let fresh = !self.applied_ahead.contains(&row.at);
            contiguous &= row.at.txn < batch.horizon;
            if contiguous {
                self.cursor = self.cursor.max(row.at);
            } else {
                self.applied_ahead.insert(row.at);
            }
            if fresh {
                rows.push(row);
            }
        }
        if let Some(last) = batch.rows.last() {
            self.read_from = self.read_from.max(last.at);
        }
        self.read_from = self.read_from.max(self.cursor);
        self.applied_ahead = self.applied_ahead.split_off(&self.cursor);
        self.applied_ahead.remove(&self.cursor);
        Step {
            flush,
            rows,
            cut_off: !batch.complete,
            caught_up: batch.complete && from_cursor,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn at(txn: u64, seq: u64) -> LogPosition {
        LogPosition { txn, seq }
    }

    fn row(txn: u64, seq: u64) -> LogRow {
        LogRow {
            at: at(txn, seq),
            cache: "users".into(),
            key: seq.to_string(),
            version: None,
        }
    }

    fn in_order(seqs: impl IntoIterator<Item = u64>, pruned: u64, complete: bool) -> LogBatch {
        LogBatch {
            rows: seqs.into_iter().map(|seq| row(0, seq)).collect(),
            pruned_through: LogPosition::in_commit_order(pruned),
            horizon: u64::MAX,
            complete,
        }
    }

    fn seqs(step: &Step<'_>) -> Vec<u64> {
        step.rows.iter().map(|r| r.at.seq).collect()
    }

    #[test]
    fn rows_move_the_cursor() {
        let mut tail = Tail::new(LogPosition::in_commit_order(10));
        let b = in_order(11..=13, 0, true);
        let step = tail.handle(&b);
        assert_eq!(seqs(&step), [11, 12, 13]);
        assert!(!step.flush && step.caught_up);
        assert_eq!(tail.cursor(), LogPosition::in_commit_order(13));
    }

    #[test]
    fn an_empty_complete_batch_is_caught_up() {
        let mut tail = Tail::new(LogPosition::in_commit_order(10));
        let b = in_order([], 5, true);
        assert_eq!(
            tail.handle(&b),
            Step {
                flush: false,
                rows: vec![],
                cut_off: false,
                caught_up: true
            }
        );
        assert_eq!(tail.cursor(), LogPosition::in_commit_order(10));
    }

    #[test]
    fn a_cut_off_batch_is_not_caught_up_and_the_next_read_continues_after_it() {
        let mut tail = Tail::new(LogPosition::default());
        let b = in_order(1..=100, 0, false);
        assert!(!tail.handle(&b).caught_up);
        assert_eq!(tail.read_from(), LogPosition::in_commit_order(100));
        assert_eq!(tail.cursor(), LogPosition::in_commit_order(100));
    }

    #[test]
    fn pruning_past_the_cursor_flushes_and_skips_ahead() {
        let mut tail = Tail::new(LogPosition::in_commit_order(10));
        let b = in_order(31..=32, 30, true);
        let step = tail.handle(&b);
        assert!(step.flush);
        assert_eq!(seqs(&step), [31, 32]);
        assert_eq!(tail.cursor(), LogPosition::in_commit_order(32));

        let mut tail = Tail::new(LogPosition::in_commit_order(10));
        let b = in_order([], 30, true);
        assert!(tail.handle(&b).flush);
        assert_eq!(tail.cursor(), LogPosition::in_commit_order(30));
        let b = in_order([], 30, true);
        assert!(!tail.handle(&b).flush, "only once");
    }

    #[test]
    fn rows_at_or_before_the_read_position_are_not_applied_again() {
        let mut tail = Tail::new(LogPosition::in_commit_order(12));
        let b = in_order(11..=14, 0, true);
        assert_eq!(seqs(&tail.handle(&b)), [13, 14]);
    }

    /// The race the horizon exists for: transaction 100 inserts row 1 and stays open; transaction
    /// 101 inserts row 2 and commits. A cursor moved to row 2 would never see row 1.
    #[test]
    fn a_row_committed_behind_a_later_one_is_still_applied() {
        let mut tail = Tail::new(at(100, 0));
        tail.begin_poll();
        let first = LogBatch {
            rows: vec![row(101, 2)],
            horizon: 100,
            ..LogBatch::default()
        };
        assert_eq!(
            seqs(&tail.handle(&first)),
            [2],
            "visible rows are applied at once"
        );
        assert_eq!(
            tail.cursor(),
            at(100, 0),
            "but the cursor waits for the horizon"
        );

        tail.begin_poll();
        let second = LogBatch {
            rows: vec![row(100, 1), row(101, 2)],
            horizon: 102,
            ..LogBatch::default()
        };
        assert_eq!(
            seqs(&tail.handle(&second)),
            [1],
            "the late commit is applied, the row applied before is not"
        );
        assert_eq!(tail.cursor(), at(101, 2));
        assert!(tail.applied_ahead.is_empty());
    }

    #[test]
    fn the_cursor_does_not_jump_over_rows_a_later_batch_of_the_poll_skipped() {
        let mut tail = Tail::new(at(100, 0));
        tail.begin_poll();
        let cut_off = LogBatch {
            rows: vec![row(101, 2)],
            horizon: 100,
            complete: false,
            ..LogBatch::default()
        };
        tail.handle(&cut_off);
        // Transaction 100 commits now: the rest of the poll reads after row 2 and misses row 1,
        // although by now both are below the horizon.
        let rest = LogBatch {
            rows: vec![row(102, 3)],
            horizon: 200,
            ..LogBatch::default()
        };
        assert_eq!(seqs(&tail.handle(&rest)), [3]);
        assert_eq!(tail.cursor(), at(100, 0), "row 1 is still unread");
        tail.begin_poll();
        let next = LogBatch {
            rows: vec![row(100, 1), row(101, 2), row(102, 3)],
            horizon: 200,
            ..LogBatch::default()
        };
        assert_eq!(seqs(&tail.handle(&next)), [1]);
        assert_eq!(tail.cursor(), at(102, 3));
    }

    /// A toy Postgres: transactions take ids in order, insert rows with sequence numbers in
    /// order, and commit in any order. Polls see committed rows after a position.
    #[derive(Default)]
    struct Log {
        rows: Vec<(LogRow, bool)>,
        open: BTreeSet<u64>,
        next_txn: u64,
        next_seq: u64,
    }

    impl Log {
        fn begin(&mut self) -> u64 {
            self.next_txn += 1;
            self.open.insert(self.next_txn);
            self.next_txn
        }

        fn insert(&mut self, txn: u64) {
            self.next_seq += 1;
            self.rows.push((row(txn, self.next_seq), false));
        }

        fn commit(&mut self, txn: u64) {
            self.open.remove(&txn);
            for (row, committed) in &mut self.rows {
                *committed |= row.at.txn == txn;
            }
        }

        fn read(&self, after: LogPosition, limit: usize) -> LogBatch {
            let mut rows: Vec<LogRow> = self
                .rows
                .iter()
                .filter(|(row, committed)| *committed && row.at > after)
                .map(|(row, _)| row.clone())
                .collect();
            rows.sort_by_key(|row| row.at);
            let complete = rows.len() <= limit;
            rows.truncate(limit);
            LogBatch {
                rows,
                horizon: self.open.first().copied().unwrap_or(self.next_txn + 1),
                complete,
                ..LogBatch::default()
            }
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Begin,
        Insert(usize),
        Commit(usize),
        /// One read of the poll under way, starting a poll if none is.
        Read,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            Just(Op::Begin),
            (0..8_usize).prop_map(Op::Insert),
            (0..8_usize).prop_map(Op::Commit),
            Just(Op::Read),
        ]
    }

    proptest! {
        /// Whatever the interleaving of commits and reads (batches cut off at 3 rows, commits
        /// landing between the batches of a poll), a batch that says the node caught up comes
        /// after every row committed before it was read has been applied, and no row is applied
        /// twice.
        #[test]
        fn a_caught_up_node_has_applied_every_committed_row_once(
            ops in proptest::collection::vec(op(), 1..160),
        ) {
            let mut log = Log::default();
            let mut tail = Tail::new(LogPosition::default());
            let mut open: Vec<u64> = Vec::new();
            let mut applied = BTreeSet::new();
            // As the driver does: read on after a cut-off batch; at the end of the log without
            // having caught up, start over from the cursor once, then give up until the next poll.
            let mut poll: Option<bool> = None;
            for op in ops {
                match op {
                    Op::Begin => open.push(log.begin()),
                    Op::Insert(i) if !open.is_empty() => log.insert(open[i % open.len()]),
                    Op::Commit(i) if !open.is_empty() => {
                        let txn = open.remove(i % open.len());
                        log.commit(txn);
                    }
                    Op::Read => {
                        let restarted = *poll.get_or_insert_with(|| {
                            tail.begin_poll();
                            false
                        });
                        let committed: Vec<u64> = log
                            .rows
                            .iter()
                            .filter(|(_, committed)| *committed)
                            .map(|(row, _)| row.at.seq)
                            .collect();
                        let batch = log.read(tail.read_from(), 3);
                        let step = tail.handle(&batch);
                        for row in &step.rows {
                            prop_assert!(applied.insert(row.at.seq), "row {} applied twice", row.at.seq);
                        }
                        if step.caught_up {
                            for seq in committed {
                                prop_assert!(applied.contains(&seq), "committed row {seq} not applied");
                            }
                            poll = None;
                        } else if !step.cut_off {
                            poll = if restarted {
                                None
                            } else {
                                tail.begin_poll();
                                Some(true)
                            };
                        }
                    }
                    Op::Insert(_) | Op::Commit(_) => {}
                }
            }
        }
    }

    /// The horizon transaction itself is not known to have ended: its row is applied but the
    /// cursor does not move over it.
    #[test]
    fn a_row_of_the_horizon_transaction_does_not_move_the_cursor() {
        let mut tail = Tail::new(at(100, 0));
        let b = LogBatch {
            rows: vec![row(100, 1)],
            horizon: 100,
            ..LogBatch::default()
        };
        assert_eq!(seqs(&tail.handle(&b)), [1]);
        assert_eq!(tail.cursor(), at(100, 0));
    }
}
