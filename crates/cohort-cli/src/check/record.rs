//! Recording a check's history: operations counted, written to the history file and handed to
//! the judge as they complete, then forgotten.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;

use cohort_testkit::history::{Judge, Late, Read, Update};

use crate::api::Source;

use super::faults::Planned;
use super::html::Gathered;

/// How long after an operation completes the judge waits for those that completed before it:
/// clients record an answer under one lock right after it comes, so this only covers a thread
/// descheduled in between.
pub(crate) const JUDGE_WINDOW: Duration = Duration::from_secs(1);

/// How long after it started a read may reach the judge and still be judged: far beyond
/// [`REQUEST_TIMEOUT`](super::clients::REQUEST_TIMEOUT). Lags longer than this are reported as lower bounds.
pub(crate) const JUDGE_HORIZON: Duration = Duration::from_secs(30);

/// The `?max_stale=` of the clients' fail-safe reads: the oldest value they take when the
/// database fails, and the age the judge holds such reads to.
pub(crate) const FAILSAFE_MAX_STALE: Duration = Duration::from_secs(5);

/// The late reads the report shows, the longest lags beyond the bound.
const WORST: usize = 5;

/// Who performed an operation.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Actor {
    /// A client, through node `n{node}`.
    Client { client: u16, node: usize },
    /// Plain SQL, through no node.
    Sql,
}

/// One recorded operation.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Op {
    pub(crate) actor: Actor,
    pub(crate) key: u64,
    /// The version read, or written.
    pub(crate) version: u64,
    /// For reads: what answered.
    pub(crate) source: Option<Source>,
    pub(crate) started: Instant,
    pub(crate) ended: Instant,
    /// For a fail-safe read: the age its value declared.
    pub(crate) age: Option<Duration>,
}

/// Who made an update, or performed a read, as the judge hands them back to the report.
#[derive(Clone, Copy, Debug)]
pub(crate) enum By {
    /// A client's PUT through node `n{node}`.
    Put { node: usize },
    /// A client's team rename or clear through node `n{node}`, as each user it changed.
    Bulk { node: usize, what: Bulk },
    /// Plain SQL, through no node.
    Sql,
    /// A read on node `n{node}`, answered by `source`; as an update, the first read that
    /// returned the version.
    Read { node: usize, source: Source },
}

/// A change of many users at once, which a node learns of by a tag invalidation or a clear.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Bulk {
    /// `PUT /teams/{id}`.
    TeamRename,
    /// `POST /users/clear`.
    Clear,
}

impl Bulk {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::TeamRename => "team rename",
            Self::Clear => "clear",
        }
    }
}

impl By {
    /// Who made an update, for the report.
    pub(crate) fn describe(self) -> String {
        match self {
            Self::Put { node } => format!("a PUT on n{node}"),
            Self::Bulk { node, what } => format!("a {} on n{node}", what.name()),
            Self::Sql => "plain SQL".to_owned(),
            Self::Read { node, .. } => format!("a read on n{node} that returned it"),
        }
    }

    /// The node and the source of a read, for the report.
    pub(crate) fn read_on(self) -> (usize, Source) {
        match self {
            Self::Read { node, source } => (node, source),
            Self::Put { node } | Self::Bulk { node, .. } => (node, Source::Db),
            Self::Sql => (usize::MAX, Source::Db),
        }
    }
}

/// What a run recorded: operations are counted, written to the history file and handed to the
/// judge as they complete, then forgotten.
pub(crate) struct Recorded {
    pub(crate) judge: Judge<By>,
    /// What an update through a node promises: the bound (bounded mode) or at once (strong).
    pub(crate) bound: Duration,
    /// What a plain-SQL update, which no node hears of before it commits, and a version a read
    /// returned promise.
    max_staleness: Duration,
    pub(crate) counts: Counts,
    /// Faults injected, by kind.
    pub(crate) faults: BTreeMap<&'static str, u64>,
    /// The late reads with the longest lags beyond the bound, longest first.
    pub(crate) worst: Vec<Late<By>>,
    history: Option<HistoryFile>,
    /// What `--report` draws, if asked for.
    pub(crate) gathered: Option<Gathered>,
}

/// Operations by kind.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Counts {
    pub(crate) reads: u64,
    /// Reads the node's cache answered.
    pub(crate) from_cache: u64,
    /// Reads another node answered, as the key's owner (partitioned mode).
    pub(crate) from_owner: u64,
    /// Reads whose owner did not answer in time or could not serve, read from the database.
    pub(crate) owner_skipped: u64,
    /// Fail-safe reads served stale, the database having failed.
    pub(crate) stale: u64,
    pub(crate) updates: u64,
    /// Updates by plain SQL, through no node.
    pub(crate) by_sql: u64,
    /// Updates of users by team renames and clears.
    pub(crate) by_bulk: u64,
    /// Batch reads (each of their users also counts as a read).
    pub(crate) batches: u64,
    /// Requests that failed or timed out.
    pub(crate) failed: u64,
}

impl Recorded {
    /// Records a run whose updates through a node promise `bound`, other versions
    /// `max_staleness`; writes the history to `history` if any.
    pub(crate) fn new(
        bound: Duration,
        max_staleness: Duration,
        history: Option<HistoryFile>,
    ) -> Self {
        Self {
            judge: Judge::new(JUDGE_WINDOW, JUDGE_HORIZON).max_age(FAILSAFE_MAX_STALE),
            bound,
            max_staleness,
            counts: Counts::default(),
            faults: BTreeMap::new(),
            worst: Vec::new(),
            history,
            gathered: None,
        }
    }

    /// A read that returned: the read, and the version it returned, known to have committed.
    pub(crate) fn read(&mut self, op: Op) {
        // Only clients read.
        let Actor::Client { node, .. } = op.actor else {
            return;
        };
        // Reads always say what answered; one that did not would have come from the database.
        let source = op.source.unwrap_or(Source::Db);
        self.counts.reads += 1;
        self.counts.from_cache += u64::from(source == Source::Cache);
        self.counts.from_owner += u64::from(source == Source::Owner);
        self.counts.owner_skipped += u64::from(source == Source::OwnerSkipped);
        self.counts.stale += u64::from(source == Source::Stale);
        if let Some(history) = &mut self.history {
            history.write("read", &op);
        }
        if let Some(gathered) = &mut self.gathered {
            gathered.op(&op, true);
        }
        let by = By::Read { node, source };
        self.judge.handle_update(Update {
            key: op.key,
            version: op.version,
            returned: op.ended,
            promise: self.max_staleness,
            by,
        });
        self.judge.handle_read(Read {
            key: op.key,
            version: op.version,
            started: op.started,
            ended: op.ended,
            by,
            age: op.age,
        });
    }

    /// A user changed by a team rename or a clear that returned, at the version it answered.
    /// Such a change reaches the nodes as a tag invalidation or a clear, which promise the
    /// bound in every mode: strong mode's invalidation intents cover single keys only.
    pub(crate) fn bulk_update(&mut self, op: Op, what: Bulk) {
        let Actor::Client { node, .. } = op.actor else {
            return;
        };
        self.counts.updates += 1;
        self.counts.by_bulk += 1;
        if let Some(history) = &mut self.history {
            history.write(what.name(), &op);
        }
        if let Some(gathered) = &mut self.gathered {
            gathered.op(&op, false);
        }
        self.judge.handle_update(Update {
            key: op.key,
            version: op.version,
            returned: op.ended,
            promise: self.max_staleness,
            by: By::Bulk { node, what },
        });
    }

    /// An update that returned.
    pub(crate) fn update(&mut self, op: Op) {
        self.counts.updates += 1;
        if let Some(history) = &mut self.history {
            history.write("update", &op);
        }
        if let Some(gathered) = &mut self.gathered {
            gathered.op(&op, false);
        }
        let (promise, by) = match op.actor {
            Actor::Client { node, .. } => (self.bound, By::Put { node }),
            Actor::Sql => {
                self.counts.by_sql += 1;
                (self.max_staleness, By::Sql)
            }
        };
        self.judge.handle_update(Update {
            key: op.key,
            version: op.version,
            returned: op.ended,
            promise,
            by,
        });
    }

    /// A fault's window: injected at `from`, its injection over at `to`.
    pub(crate) fn fault_window(&mut self, fault: &Planned, from: Instant, to: Instant) {
        if let Some(gathered) = &mut self.gathered {
            gathered.fault(fault, from, to);
        }
    }

    /// Judges the reads whose window has passed.
    pub(crate) fn tick(&mut self, now: Instant) {
        self.judge.handle_timeout(now);
        self.collect_late();
    }

    /// The workload is over: judges every read left, closes the history file.
    pub(crate) fn finish(&mut self, problems: &mut Vec<String>) {
        self.judge.finish();
        self.collect_late();
        if let Some(problem) = self.history.as_mut().and_then(HistoryFile::finish) {
            problems.push(problem);
        }
    }

    fn collect_late(&mut self) {
        while let Some(late) = self.judge.poll_late() {
            if let Some(gathered) = &mut self.gathered {
                gathered.late(&late);
            }
            if !late.beyond {
                continue;
            }
            let at = self.worst.partition_point(|w| w.lag >= late.lag);
            if at < WORST {
                self.worst.insert(at, late);
                self.worst.truncate(WORST);
            }
        }
    }
}

/// The history file, one JSON line per operation, written as operations complete.
pub(crate) struct HistoryFile {
    path: PathBuf,
    file: BufWriter<File>,
    /// Times are written from here.
    origin: Instant,
    /// The first write that failed; nothing is written after it.
    error: Option<std::io::Error>,
}

impl HistoryFile {
    /// Creates `history.jsonl` in `dir`, creating `dir` if missing.
    pub(crate) fn create(dir: &Path, origin: Instant) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join("history.jsonl");
        let file =
            File::create(&path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(Self {
            path,
            file: BufWriter::new(file),
            origin,
            error: None,
        })
    }

    fn write(&mut self, kind: &str, op: &Op) {
        if self.error.is_some() {
            return;
        }
        let us = |at: Instant| at.saturating_duration_since(self.origin).as_micros() as u64;
        let (client, node) = match op.actor {
            Actor::Client { client, node } => (Some(client), Some(format!("n{node}"))),
            Actor::Sql => (None, None),
        };
        let line = json!({
            "kind": kind,
            "client": client,
            "node": node,
            "key": op.key,
            "version": op.version,
            "source": op.source,
            "start_us": us(op.started),
            "end_us": us(op.ended),
        });
        if let Err(e) = writeln!(self.file, "{line}") {
            self.error = Some(e);
        }
    }

    /// Flushes the file; a problem for the report if any write failed.
    fn finish(&mut self) -> Option<String> {
        let flushed = self.file.flush();
        let error = self.error.take().or(flushed.err())?;
        Some(format!("cannot write {}: {error}", self.path.display()))
    }
}
