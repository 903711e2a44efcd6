//! Tailing the change log: the cursor, the pruning check, and what each batch asks of the node.
//!
//! Pure state. The driver reads batches of rows after the cursor (with the log's prune watermark,
//! from the same snapshot) and feeds them here; [`Tail::handle`] says which rows to apply, whether
//! the node fell behind the pruning and must flush, and whether the poll is complete (the batch
//! was not cut off by the size limit), which is what renews the lease.

/// One change-log row: a key of a cache that changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Row {
    pub(crate) seq: u64,
    pub(crate) cache: String,
    pub(crate) key: String,
}

/// What one read of the log returned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Batch {
    /// Rows after the cursor, in sequence order, at most the limit asked for.
    pub(crate) rows: Vec<Row>,
    /// The highest sequence number pruning has deleted up to.
    pub(crate) pruned_through: u64,
    /// Whether the read reached the end of the log (returned fewer rows than the limit).
    pub(crate) complete: bool,
}

/// What the node must do about one batch.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Step<'a> {
    /// Rows were pruned before this node read them: it cannot tell which keys changed.
    pub(crate) flush: bool,
    /// Rows to apply, in order.
    pub(crate) rows: &'a [Row],
    /// The log has been read to its end: the poll is complete.
    pub(crate) caught_up: bool,
}

/// A node's position in the change log.
#[derive(Debug)]
pub(crate) struct Tail {
    cursor: u64,
}

impl Tail {
    /// Starts after `head`, the last sequence number the log has assigned: a starting node holds
    /// nothing cached, so nothing before it matters.
    pub(crate) fn new(head: u64) -> Self {
        Self { cursor: head }
    }

    /// Where the next read starts (exclusive).
    pub(crate) fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Judges a batch read after [`Tail::cursor`] and moves past it.
    pub(crate) fn handle<'a>(&mut self, batch: &'a Batch) -> Step<'a> {
        let flush = batch.pruned_through > self.cursor;
        let start = batch.rows.partition_point(|row| row.seq <= self.cursor);
        let rows = &batch.rows[start..];
        if let Some(last) = rows.last() {
            self.cursor = last.seq;
        }
        if flush {
            self.cursor = self.cursor.max(batch.pruned_through);
        }
        Step {
            flush,
            rows,
            caught_up: batch.complete,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: u64) -> Row {
        Row {
            seq,
            cache: "users".into(),
            key: seq.to_string(),
        }
    }

    fn batch(seqs: impl IntoIterator<Item = u64>, pruned_through: u64, complete: bool) -> Batch {
        Batch {
            rows: seqs.into_iter().map(row).collect(),
            pruned_through,
            complete,
        }
    }

    #[test]
    fn rows_move_the_cursor() {
        let mut tail = Tail::new(10);
        let b = batch(11..=13, 0, true);
        let step = tail.handle(&b);
        assert_eq!(step.rows.len(), 3);
        assert!(!step.flush && step.caught_up);
        assert_eq!(tail.cursor(), 13);
    }

    #[test]
    fn an_empty_complete_batch_is_caught_up() {
        let mut tail = Tail::new(10);
        let b = batch([], 5, true);
        assert_eq!(
            tail.handle(&b),
            Step {
                flush: false,
                rows: &[],
                caught_up: true
            }
        );
        assert_eq!(tail.cursor(), 10);
    }

    #[test]
    fn a_cut_off_batch_is_not_caught_up() {
        let mut tail = Tail::new(0);
        let b = batch(1..=100, 0, false);
        assert!(!tail.handle(&b).caught_up);
        assert_eq!(tail.cursor(), 100);
    }

    #[test]
    fn pruning_past_the_cursor_flushes_and_skips_ahead() {
        let mut tail = Tail::new(10);
        let b = batch(31..=32, 30, true);
        let step = tail.handle(&b);
        assert!(step.flush);
        assert_eq!(step.rows.len(), 2);
        assert_eq!(tail.cursor(), 32);

        let mut tail = Tail::new(10);
        let b = batch([], 30, true);
        assert!(tail.handle(&b).flush);
        assert_eq!(tail.cursor(), 30);
        let b = batch([], 30, true);
        assert!(!tail.handle(&b).flush, "only once");
    }

    #[test]
    fn rows_at_or_before_the_cursor_are_not_applied_again() {
        let mut tail = Tail::new(12);
        let b = batch(11..=14, 0, true);
        let step = tail.handle(&b);
        assert_eq!(
            step.rows.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [13, 14]
        );
    }
}
