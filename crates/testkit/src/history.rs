//! The staleness checker: judges a history of reads and updates against the bound, online or
//! at once. `cohort check` and `cohort demo` judge real processes with it, the simulations their
//! simulated clients; it is the one statement of the rule they are held to.
//!
//! The rule: a read of key k that started at `t` must return a version at least as new as every
//! update of k that had returned more than its promise before `t` (the bound Δ, or nothing for a
//! strong update). Both ends are exclusive: an update that returned exactly when the read
//! started was not missed, and a read that started exactly the promise after it is within it.
//! Versions come from the database, which serializes writes of one key, so a higher version is a
//! later write. An update counts once it has returned, not while it is in flight; a write whose
//! caller never learned the outcome (a request that timed out) is not an update, but every
//! version a read returned had committed by the time that read ended, so the caller hands it over
//! as one ([`Read::seen`]): later reads owe it too, as Jepsen judges indeterminate operations.
//! A fail-safe read, which served a value it declared to be `age` old because the source was
//! down ([`Read::age`]), is held to that age instead of the bound: it may miss what returned
//! within it, nothing older.
//!
//! Pure: the caller hands operations over as they complete, with their times; the [`Judge`]
//! says which reads broke the promise. A read's verdict depends only on the updates that returned
//! before it started, so a read can be judged as soon as everything that completed before its
//! start has been handed over: the judge holds each read back for a short window after it ended,
//! in case operations that completed around the same time reach it a little out of order, then
//! judges it and forgets it. Per key and promise it keeps only the updates any read could still
//! be judged against: a staircase of versions, each returned before every newer one kept, from
//! which what returned longer ago than a horizon is folded into the newest such step. Memory grows
//! with the keys and the updates of one horizon, never with the length of the history; judging
//! costs O(log n) per operation. [`judge`] judges a complete history at once.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::time::{Duration, Instant};

/// An update known to have committed: one that returned to its caller, or a version a read
/// returned ([`Read::seen`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Update<T> {
    /// The key written.
    pub key: u64,
    /// The version the write made (or the read returned).
    pub version: u64,
    /// When the write returned to its caller (or the read that saw it ended).
    pub returned: Instant,
    /// How long after `returned` a read may still miss it.
    pub promise: Duration,
    /// Who made it, for the report.
    pub by: T,
}

/// A read and what it saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Read<T> {
    /// The key read.
    pub key: u64,
    /// The version it returned.
    pub version: u64,
    /// When the read was sent: the updates it owes are those due before this.
    pub started: Instant,
    /// When it returned: the version it saw had committed by then.
    pub ended: Instant,
    /// Who read, for the report.
    pub by: T,
    /// For a fail-safe read (`Source::Stale`): how long before it was read its value was last
    /// known current, as the read declared. Such a read is held to that age (or to the missed
    /// update's promise, if longer) instead of the promise: it may miss what returned within it.
    pub age: Option<Duration>,
}

impl<T: Copy> Read<T> {
    /// The update this read proves: its version had committed by the time it ended, so every read
    /// that starts more than `promise` after that owes it, whether or not its writer learned the
    /// outcome.
    pub fn seen(&self, promise: Duration) -> Update<T> {
        Update {
            key: self.key,
            version: self.version,
            returned: self.ended,
            promise,
            by: self.by,
        }
    }
}

/// What the judge concluded so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Reads judged.
    pub judged: u64,
    /// Reads that missed an update which had returned more than its promise before they started.
    pub stale_beyond_bound: u64,
    /// Reads that missed an update which had returned before they started, within its promise.
    pub stale_within_bound: u64,
    /// The longest time by which any read lagged behind a returned update.
    pub max_staleness: Duration,
    /// Whether some read missed updates older than the horizon, so that it lagged longer than
    /// the lag known, maybe longer than `max_staleness`.
    pub max_staleness_at_least: bool,
    /// Reads that reached the judge more than the horizon after they started: not judged.
    pub too_old: u64,
    /// Judged reads that declared their value's age (fail-safe reads), judged against it.
    pub declared_stale: u64,
    /// Updates that reached the judge after a read of their key that started after they had
    /// returned was judged (more than the window after they returned): those reads may have been
    /// judged without them.
    pub recorded_late: u64,
}

/// A read that missed an update which had returned before the read started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Late<T> {
    /// The read.
    pub read: Read<T>,
    /// The missed update that exceeds its promise the most, or else the one that returned first.
    pub missed: Update<T>,
    /// How long before the read started that update had returned.
    pub lag: Duration,
    /// Whether that is longer than the update's promise (or the read's declared age, if
    /// longer) allows.
    pub beyond: bool,
    /// Whether older missed updates may have been folded away, so that the read lagged at least
    /// `lag`, maybe longer (it is beyond its promise either way).
    pub at_least: bool,
}

/// Judges reads against updates online, with memory bounded by the keys and one horizon.
///
/// Call order: hand every completed operation over as it completes ([`handle_update`] for an
/// update and for each version a read returned ([`Read::seen`]), [`handle_read`] for the read),
/// in any order
/// within `window` of its completion; call [`handle_timeout`] a few times a window (a read is
/// judged at the first call a window after it ended, and steps are folded away there), and
/// [`finish`] once the history is complete; drain [`poll_late`] after each of these. The
/// [`verdict`] sums up every read judged so far.
///
/// [`handle_update`]: Self::handle_update
/// [`handle_read`]: Self::handle_read
/// [`handle_timeout`]: Self::handle_timeout
/// [`finish`]: Self::finish
/// [`poll_late`]: Self::poll_late
/// [`verdict`]: Self::verdict
#[derive(Debug)]
pub struct Judge<T> {
    /// How long after it completes an operation may still reach the judge.
    window: Duration,
    /// How long after it started a read may reach the judge and still be judged.
    horizon: Duration,
    keys: HashMap<u64, Key<T>>,
    /// Reads waiting for their window to pass, in the order they came.
    pending: VecDeque<Read<T>>,
    late: VecDeque<Late<T>>,
    verdict: Verdict,
    /// The longest promise of any update so far.
    longest_promise: Duration,
    /// The longest age a read may declare and be held to.
    max_age: Duration,
    /// Steps that returned before this were folded into the newest such step of their stairs.
    folded_before: Option<Instant>,
}

/// What the judge holds for one key.
#[derive(Debug)]
struct Key<T> {
    /// One staircase per promise.
    stairs: Vec<Stairs<T>>,
    /// The latest start of a judged read of the key.
    judged_through: Option<Instant>,
}

/// A key's updates of one promise that a read could still be judged against, by version: each
/// kept step returned strictly before every newer one. An update returned no earlier than a newer
/// one is never the first newer update a read missed, so it is not kept.
#[derive(Debug)]
struct Stairs<T> {
    promise: Duration,
    steps: BTreeMap<u64, Step<T>>,
    /// The newest version folded away (all folded versions are older than the first step).
    folded: Option<u64>,
}

#[derive(Clone, Copy, Debug)]
struct Step<T> {
    returned: Instant,
    by: T,
}

impl<T: Copy> Judge<T> {
    /// A judge that waits `window` after a read ended before judging it, and judges reads that
    /// reach it up to `horizon` after they started.
    pub fn new(window: Duration, horizon: Duration) -> Self {
        Self {
            window,
            horizon,
            keys: HashMap::new(),
            pending: VecDeque::new(),
            late: VecDeque::new(),
            verdict: Verdict::default(),
            longest_promise: Duration::ZERO,
            max_age: Duration::ZERO,
            folded_before: None,
        }
    }

    /// The same judge, holding reads that declare an age ([`Read::age`]) to ages up to
    /// `max_age`; a read declaring more is held to `max_age`. Updates are kept at least that
    /// long, so that such a read is judged exactly.
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age;
        self
    }

    /// How long before a read started an update must have returned for every read to owe it.
    fn longest_allowance(&self) -> Duration {
        self.longest_promise.max(self.max_age)
    }

    /// An update that committed (returned, or was seen by a read).
    pub fn handle_update(&mut self, update: Update<T>) {
        self.longest_promise = self.longest_promise.max(update.promise);
        let key = self.keys.entry(update.key).or_insert_with(Key::new);
        if key.judged_through.is_some_and(|t| update.returned < t) {
            self.verdict.recorded_late += 1;
        }
        let stairs = match key.stairs.iter().position(|s| s.promise == update.promise) {
            Some(i) => &mut key.stairs[i],
            None => {
                key.stairs.push(Stairs::new(update.promise));
                key.stairs.last_mut().expect("just pushed")
            }
        };
        stairs.insert(update.version, update.returned, update.by);
    }

    /// A read that returned; it is judged once `window` has passed since it ended.
    pub fn handle_read(&mut self, read: Read<T>) {
        self.pending.push_back(read);
    }

    /// Judges the reads whose window has passed by `now`, then folds away the steps no read
    /// still to come can need.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(read) = self.pending.front() {
            if read.ended + self.window > now {
                break;
            }
            let read = *read;
            self.pending.pop_front();
            self.judge(read);
        }
        let oldest = self.pending.iter().map(|r| r.started).min();
        let cut = now
            .checked_sub(self.window.saturating_add(self.horizon))
            .map(|cut| oldest.map_or(cut, |oldest| oldest.min(cut)))
            .and_then(|cut| cut.checked_sub(self.longest_allowance()));
        if let Some(cut) = cut
            && self.folded_before.is_none_or(|before| before < cut)
        {
            self.folded_before = Some(cut);
            for key in self.keys.values_mut() {
                for stairs in &mut key.stairs {
                    stairs.fold_before(cut);
                }
            }
        }
    }

    /// The history is complete: judges every read still waiting.
    pub fn finish(&mut self) {
        while let Some(read) = self.pending.pop_front() {
            self.judge(read);
        }
    }

    /// The next late read found.
    pub fn poll_late(&mut self) -> Option<Late<T>> {
        self.late.pop_front()
    }

    /// Sums up every read judged so far.
    pub fn verdict(&self) -> Verdict {
        self.verdict
    }

    /// Steps held in all, for tests of the memory bound.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.keys
            .values()
            .flat_map(|k| &k.stairs)
            .map(|s| s.steps.len())
            .sum::<usize>()
            + self.pending.len()
    }

    /// Checks `read` against the first newer version of each promise: it is beyond its promise
    /// if the earliest due of those came before it started, late at all if the earliest return
    /// did. If newer versions were folded away, it missed them: they returned more than the
    /// longest promise before it started; the earliest return kept stands for them.
    fn judge(&mut self, read: Read<T>) {
        // Every folded step returned more than the longest allowance before this.
        let judgeable = self
            .folded_before
            .is_none_or(|before| before + self.longest_allowance() <= read.started);
        if !judgeable {
            self.verdict.too_old += 1;
            return;
        }
        self.verdict.judged += 1;
        let age = read.age.map(|age| age.min(self.max_age));
        if age.is_some() {
            self.verdict.declared_stale += 1;
        }
        let Some(key) = self.keys.get_mut(&read.key) else {
            return;
        };
        key.judged_through = Some(
            key.judged_through
                .map_or(read.started, |t| t.max(read.started)),
        );
        let mut overdue: Option<Candidate<T>> = None;
        let mut first: Option<Candidate<T>> = None;
        let mut folded = false;
        for stairs in &key.stairs {
            let Some(candidate) = stairs.first_newer(read.version) else {
                continue;
            };
            folded |= candidate.at_least;
            if overdue.is_none_or(|o| candidate.due(age) < o.due(age)) {
                overdue = Some(candidate);
            }
            if first.is_none_or(|f| candidate.step.returned < f.step.returned) {
                first = Some(candidate);
            }
        }
        let missed = match (overdue, first) {
            (_, Some(first)) if folded => Candidate {
                at_least: true,
                ..first
            },
            (Some(overdue), _) if overdue.due(age) < read.started => overdue,
            (_, Some(first)) if first.step.returned < read.started => first,
            _ => return,
        };
        let lag = read.started - missed.step.returned;
        let late = Late {
            read,
            missed: Update {
                key: read.key,
                version: missed.version,
                returned: missed.step.returned,
                promise: missed.promise,
                by: missed.step.by,
            },
            lag,
            beyond: lag > missed.allowance(age),
            at_least: missed.at_least,
        };
        if late.beyond {
            self.verdict.stale_beyond_bound += 1;
        } else {
            self.verdict.stale_within_bound += 1;
        }
        self.verdict.max_staleness = self.verdict.max_staleness.max(lag);
        self.verdict.max_staleness_at_least |= late.at_least;
        self.late.push_back(late);
    }
}

/// The first version newer than a read's, in one staircase.
#[derive(Clone, Copy, Debug)]
struct Candidate<T> {
    version: u64,
    step: Step<T>,
    promise: Duration,
    /// Whether versions newer than the read's, returned before this one, were folded away.
    at_least: bool,
}

impl<T> Candidate<T> {
    /// How long after it returned a read that declared `age` may still miss it.
    fn allowance(&self, age: Option<Duration>) -> Duration {
        age.map_or(self.promise, |age| age.max(self.promise))
    }

    /// When a read that declared `age` may no longer miss it.
    fn due(&self, age: Option<Duration>) -> Instant {
        self.step.returned + self.allowance(age)
    }
}

impl<T> Key<T> {
    fn new() -> Self {
        Self {
            stairs: Vec::new(),
            judged_through: None,
        }
    }
}

impl<T: Copy> Stairs<T> {
    fn new(promise: Duration) -> Self {
        Self {
            promise,
            steps: BTreeMap::new(),
            folded: None,
        }
    }

    /// Keeps `version`, returned at `returned`, unless a version as new returned no later; drops
    /// the older versions that returned no earlier.
    fn insert(&mut self, version: u64, returned: Instant, by: T) {
        if let Some((_, newer)) = self.steps.range(version..).next()
            && newer.returned <= returned
        {
            return;
        }
        while let Some((&older, step)) = self.steps.range(..version).next_back()
            && step.returned >= returned
        {
            self.steps.remove(&older);
        }
        self.steps.insert(version, Step { returned, by });
    }

    /// The earliest-returned version newer than `version`.
    fn first_newer(&self, version: u64) -> Option<Candidate<T>> {
        let mut steps = self
            .steps
            .range((Bound::Excluded(version), Bound::Unbounded));
        let (&newer, &step) = steps.next()?;
        Some(Candidate {
            version: newer,
            step,
            promise: self.promise,
            at_least: self.folded.is_some_and(|folded| version < folded),
        })
    }

    /// Drops the steps that returned before `cut`, but the newest of them: a read that started
    /// after `cut` and saw an older version missed that one at least.
    fn fold_before(&mut self, cut: Instant) {
        while let Some(second) = self.steps.values().nth(1)
            && second.returned < cut
        {
            let folded = self.steps.pop_first().map(|(version, _)| version);
            self.folded = self.folded.max(folded);
        }
    }
}

/// Judges a complete history at once: every late read, and the verdict.
pub fn judge<T: Copy>(
    updates: impl IntoIterator<Item = Update<T>>,
    reads: impl IntoIterator<Item = Read<T>>,
) -> (Vec<Late<T>>, Verdict) {
    let mut judge = Judge::new(Duration::ZERO, Duration::MAX).max_age(Duration::MAX);
    for update in updates {
        judge.handle_update(update);
    }
    for read in reads {
        judge.handle_read(read);
    }
    judge.finish();
    let late = std::iter::from_fn(|| judge.poll_late()).collect();
    (late, judge.verdict())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(origin: Instant, ms: u64) -> Instant {
        origin + Duration::from_millis(ms)
    }

    /// A small seeded generator (xorshift), so the randomized test needs no dependency.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, below: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % below
        }
    }

    fn update(key: u64, version: u64, returned: Instant, promise: u64, by: usize) -> Update<usize> {
        Update {
            key,
            version,
            returned,
            promise: Duration::from_millis(promise),
            by,
        }
    }

    fn read(key: u64, version: u64, started: Instant, by: usize) -> Read<usize> {
        Read {
            key,
            version,
            started,
            ended: started,
            by,
            age: None,
        }
    }

    /// The online judgment agrees with the definition, checked read by read against every
    /// update and every version a read had returned: a read is beyond its promise exactly when
    /// some newer version returned more than its promise before the read started, and late at
    /// all when one returned before it started. Operations reach the judge out of order within
    /// the window, with timeouts between them, over histories many horizons long, so that steps
    /// are folded away as they run.
    #[test]
    fn the_online_judgment_matches_the_definition_on_random_histories() {
        let t = Instant::now();
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let (window, horizon) = (Duration::from_millis(40), Duration::from_millis(400));
        let (mut late_reads, mut lower_bounds) = (0, 0);
        for round in 0..300 {
            // Updates promised at once (even ones) or within 300 ms (odd ones).
            let updates: Vec<Update<usize>> = (0..rng.below(60))
                .map(|i| {
                    let promise = if i % 2 == 0 { 0 } else { 300 };
                    let returned = at(t, rng.below(5_000));
                    update(
                        rng.below(3),
                        1 + rng.below(40),
                        returned,
                        promise,
                        i as usize,
                    )
                })
                .collect();
            let reads: Vec<Read<usize>> = (0..rng.below(80))
                .map(|i| {
                    let started = at(t, rng.below(5_200));
                    // One read in four is a fail-safe read declaring its value's age.
                    let age = (rng.below(4) == 0).then(|| Duration::from_millis(rng.below(1_000)));
                    Read {
                        ended: started + Duration::from_millis(rng.below(100)),
                        age,
                        ..read(rng.below(3), rng.below(41), started, i as usize)
                    }
                })
                .collect();
            // What reads returned, promised within 300 ms of the end of each read.
            let seen: Vec<Update<usize>> = reads
                .iter()
                .map(|r| update(r.key, r.version, r.ended, 300, usize::MAX - r.by))
                .collect();
            let known: Vec<Update<usize>> = updates.iter().chain(&seen).copied().collect();

            // Deliver each operation up to half the window after it completed, in that order.
            enum Op {
                Update(Update<usize>),
                Read(Read<usize>),
            }
            let mut arrivals: Vec<(Instant, Op)> = Vec::new();
            for u in &updates {
                let delay = Duration::from_millis(rng.below(20));
                arrivals.push((u.returned + delay, Op::Update(*u)));
            }
            for (r, s) in reads.iter().zip(&seen) {
                let delay = Duration::from_millis(rng.below(20));
                arrivals.push((r.ended + delay, Op::Update(*s)));
                arrivals.push((r.ended + delay, Op::Read(*r)));
            }
            arrivals.sort_by_key(|(arrival, _)| *arrival);
            let mut judge = Judge::new(window, horizon).max_age(Duration::from_millis(1_000));
            let mut late = Vec::new();
            for (arrival, op) in arrivals {
                judge.handle_timeout(arrival);
                match op {
                    Op::Update(u) => judge.handle_update(u),
                    Op::Read(r) => judge.handle_read(r),
                }
                late.extend(std::iter::from_fn(|| judge.poll_late()));
            }
            judge.finish();
            late.extend(std::iter::from_fn(|| judge.poll_late()));
            let verdict = judge.verdict();
            assert_eq!(verdict.judged, reads.len() as u64, "round {round}");
            assert_eq!((verdict.too_old, verdict.recorded_late), (0, 0));
            let declared = reads.iter().filter(|r| r.age.is_some()).count();
            assert_eq!(verdict.declared_stale, declared as u64);

            for r in &reads {
                let newer: Vec<&Update<usize>> = known
                    .iter()
                    .filter(|u| u.key == r.key && u.version > r.version && u.returned < r.started)
                    .collect();
                let allowance = |u: &Update<usize>| r.age.map_or(u.promise, |a| a.max(u.promise));
                let beyond = newer.iter().any(|u| r.started - u.returned > allowance(u));
                let found: Vec<_> = late.iter().filter(|l| l.read.by == r.by).collect();
                assert!(found.len() <= 1, "round {round}: read {} judged once", r.by);
                let found = found.first();
                assert_eq!(
                    found.is_some(),
                    !newer.is_empty(),
                    "round {round} read {}",
                    r.by
                );
                assert_eq!(
                    found.is_some_and(|l| l.beyond),
                    beyond,
                    "round {round} read {}",
                    r.by
                );
                let Some(l) = found else { continue };
                late_reads += 1;
                assert_eq!(l.lag, r.started - l.missed.returned);
                if l.at_least {
                    lower_bounds += 1;
                    assert!(l.beyond, "only updates long overdue are folded away");
                    let oldest = newer.iter().map(|u| u.returned).min().unwrap();
                    assert!(r.started - oldest >= l.lag);
                    continue;
                }
                assert!(
                    newer.contains(&&l.missed),
                    "round {round}: {l:?} names a missed update"
                );
                if l.beyond {
                    let due = |u: &Update<usize>| u.returned + allowance(u);
                    let earliest = newer.iter().map(|u| due(u)).min().unwrap();
                    assert_eq!(due(&l.missed), earliest, "the most overdue one is named");
                } else {
                    let first = newer.iter().map(|u| u.returned).min().unwrap();
                    assert_eq!(l.missed.returned, first, "the first one returned is named");
                }
            }
        }
        assert!(late_reads > 1_000, "{late_reads}");
        assert!(lower_bounds > 100, "folded away: {lower_bounds}");
        assert!(
            late_reads - lower_bounds > 1_000,
            "exact: {late_reads} - {lower_bounds}"
        );
    }

    /// However long the history, the judge holds the updates of about one horizon per key.
    #[test]
    fn memory_stays_bounded_over_a_long_history() {
        let t = Instant::now();
        let (window, horizon) = (Duration::from_millis(100), Duration::from_secs(1));
        let mut judge = Judge::new(window, horizon);
        let mut most = 0;
        // 200 s of 3 keys updated every ms, read every ms.
        for ms in 0..200_000_u64 {
            let now = at(t, ms);
            let key = ms % 3;
            judge.handle_update(update(key, ms + 1, now, 500, 0));
            judge.handle_read(Read {
                ended: now,
                ..read(key, ms + 1, now, 0)
            });
            if ms % 50 == 0 {
                judge.handle_timeout(now);
                while judge.poll_late().is_some() {}
                most = most.max(judge.held());
            }
        }
        // Per ms: one update (a step) and one read (pending for the window), over the window,
        // the horizon and the promise.
        assert!(most < 1_600 + 100 + 200, "{most} held");
        judge.finish();
        assert_eq!(judge.verdict().judged, 200_000);
        assert_eq!(judge.verdict().stale_within_bound, 0);
    }

    /// A read that missed an update folded away long before is still caught, its lag a lower
    /// bound; a read that reaches the judge after the horizon is counted, not judged; an update
    /// that reaches it after a read it should have been judged against is counted.
    #[test]
    fn what_the_horizon_and_the_window_do_not_cover_is_counted() {
        let t = Instant::now();
        let (window, horizon) = (Duration::from_millis(100), Duration::from_secs(1));
        let mut judge = Judge::new(window, horizon);
        judge.handle_update(update(1, 2, at(t, 0), 500, 0));
        judge.handle_update(update(1, 3, at(t, 10), 500, 1));
        judge.handle_update(update(1, 4, at(t, 20), 500, 2));
        judge.handle_timeout(at(t, 10_000));
        judge.handle_read(read(1, 1, at(t, 9_900), 0));
        judge.handle_read(read(1, 3, at(t, 10_000), 1));
        judge.handle_read(read(1, 1, at(t, 5_000), 2));
        judge.handle_timeout(at(t, 10_100));
        let late: Vec<_> = std::iter::from_fn(|| judge.poll_late()).collect();
        assert_eq!(late.len(), 2);
        assert!(late[0].at_least && late[0].beyond);
        assert_eq!(
            late[0].missed.version, 4,
            "the newest folded step stands for them"
        );
        assert_eq!(late[0].lag, Duration::from_millis(9_880));
        assert!(!late[1].at_least && late[1].beyond);
        assert_eq!((late[1].missed.version, late[1].missed.by), (4, 2));
        let verdict = judge.verdict();
        assert_eq!((verdict.judged, verdict.too_old), (2, 1));
        assert!(verdict.max_staleness_at_least);

        judge.handle_update(update(1, 5, at(t, 9_950), 500, 3));
        assert_eq!(judge.verdict().recorded_late, 1);
        judge.handle_update(update(2, 5, at(t, 9_950), 500, 3));
        assert_eq!(
            judge.verdict().recorded_late,
            1,
            "no read of key 2 was judged"
        );
    }

    /// The negative controls, with a bound of 500 ms: a read of the old version that starts just
    /// past the bound after the update returned is flagged; one just inside it, one exactly at
    /// it, and one that started while the update was in flight are not; nor are reads of other
    /// keys or of the new version.
    #[test]
    fn a_read_just_past_the_bound_is_flagged_and_one_just_inside_is_not() {
        let t = Instant::now();
        let updates = [
            update(7, 2, at(t, 1_000), 500, 0),
            update(8, 5, at(t, 0), 500, 1),
        ];
        let reads = [
            read(7, 1, at(t, 900), 0),
            read(7, 1, at(t, 1_499), 1),
            read(7, 1, at(t, 1_500), 2),
            read(7, 1, at(t, 1_501), 3),
            read(7, 2, at(t, 5_000), 4),
            read(8, 5, at(t, 5_000), 5),
        ];
        let (late, verdict) = judge(updates, reads);
        assert_eq!(
            late.iter()
                .map(|l| (l.read.by, l.beyond))
                .collect::<Vec<_>>(),
            [(1, false), (2, false), (3, true)]
        );
        let flagged = late[2];
        assert_eq!((flagged.missed.key, flagged.missed.version), (7, 2));
        assert_eq!(flagged.lag, Duration::from_millis(501));
        assert!(!flagged.at_least);
        assert_eq!(
            verdict,
            Verdict {
                judged: 6,
                stale_beyond_bound: 1,
                stale_within_bound: 2,
                max_staleness: Duration::from_millis(501),
                ..Verdict::default()
            }
        );
    }

    /// A fail-safe read is held to the age it declared, not to the bound: with a 500 ms bound,
    /// one declaring 2 s may miss an update 1.5 s old, not one 2.5 s old; the same reads without
    /// a declared age are beyond the bound.
    #[test]
    fn a_declared_age_replaces_the_bound() {
        let t = Instant::now();
        let updates = [update(7, 2, at(t, 1_000), 500, 0)];
        let declared = |started, by| Read {
            age: Some(Duration::from_secs(2)),
            ..read(7, 1, at(t, started), by)
        };
        let reads = [
            declared(2_500, 0),
            declared(3_001, 1),
            read(7, 1, at(t, 2_500), 2),
        ];
        let (late, verdict) = judge(updates, reads);
        assert_eq!(
            late.iter()
                .map(|l| (l.read.by, l.beyond))
                .collect::<Vec<_>>(),
            [(0, false), (1, true), (2, true)]
        );
        assert_eq!(verdict.declared_stale, 2);
        assert_eq!(verdict.stale_beyond_bound, 2);
    }

    /// A write whose outcome its caller never learned is not in the history: reads that missed
    /// it pass until one returns its version, and from then on it is owed.
    #[test]
    fn an_unknown_outcome_is_owed_only_once_a_read_saw_it() {
        let t = Instant::now();
        let bound = Duration::from_millis(500);
        let before = read(1, 1, at(t, 2_000), 0);
        let saw = Read {
            ended: at(t, 2_010),
            ..read(1, 2, at(t, 2_000), 1)
        };
        let after = read(1, 1, at(t, 2_511), 2);
        let (late, verdict) = judge([saw.seen(bound)], [before, saw, after]);
        assert_eq!(late.len(), 1);
        assert_eq!((late[0].read.by, late[0].missed.by), (2, 1));
        assert_eq!(late[0].missed.returned, saw.ended);
        assert_eq!(verdict.stale_beyond_bound, 1);
    }

    /// A write whose caller timed out is not in the history, but a read returned its version:
    /// a read more than the bound after that, returning an older version, is caught.
    #[test]
    fn a_version_once_read_is_owed_to_every_later_read() {
        let t = Instant::now();
        let reads = [
            Read {
                ended: at(t, 110),
                ..read(1, 5, at(t, 100), 0)
            },
            Read {
                ended: at(t, 300),
                ..read(1, 5, at(t, 250), 1)
            },
            Read {
                ended: at(t, 50),
                ..read(1, 4, at(t, 40), 2)
            },
            read(1, 4, at(t, 400), 3),
            read(1, 4, at(t, 700), 4),
        ];
        let seen = reads.map(|r| r.seen(Duration::from_millis(500)));
        let (late, verdict) = judge(seen, reads);
        assert_eq!(
            late[0].missed.returned,
            at(t, 110),
            "the first read to return it"
        );
        assert_eq!(verdict.stale_within_bound, 1);
        assert_eq!(verdict.stale_beyond_bound, 1);
    }

    #[test]
    fn reads_of_the_newest_version_are_fresh() {
        let t = Instant::now();
        let updates = [update(1, 2, at(t, 10), 100, 0)];
        let reads = [
            read(1, 2, at(t, 1_000), 0),
            read(1, 1, at(t, 5), 1),
            read(2, 1, at(t, 1_000), 2),
        ];
        let (late, verdict) = judge(updates, reads);
        assert!(late.is_empty());
        assert_eq!(
            verdict,
            Verdict {
                judged: 3,
                ..Verdict::default()
            }
        );
    }

    #[test]
    fn a_read_missing_an_old_update_is_stale_beyond_the_bound() {
        let t = Instant::now();
        let updates = |promises: [u64; 2]| {
            [
                update(1, 2, at(t, 10), promises[0], 0),
                update(1, 3, at(t, 200), promises[1], 1),
            ]
        };
        let reads = [
            read(1, 1, at(t, 150), 0),
            read(1, 2, at(t, 250), 1),
            read(1, 1, at(t, 300), 2),
        ];
        let (late, verdict) = judge(updates([100, 100]), reads);
        assert_eq!(
            late.iter()
                .map(|l| (l.read.by, l.missed.by))
                .collect::<Vec<_>>(),
            [(0, 0), (1, 1), (2, 0)],
            "each late read names the update it missed by the most"
        );
        let (strict_second, _) = judge(updates([1_000, 0]), reads);
        assert_eq!(
            strict_second
                .iter()
                .map(|l| (l.missed.by, l.beyond))
                .collect::<Vec<_>>(),
            [(0, false), (1, true), (1, true)],
            "an update promised at once counts even when an older, laxer one was missed"
        );
        assert_eq!(verdict.stale_beyond_bound, 2, "{verdict:?}");
        assert_eq!(verdict.stale_within_bound, 1);
        assert_eq!(verdict.max_staleness, Duration::from_millis(290));
    }

    /// Both ends of the definition are exclusive: an update that returned exactly when a read
    /// started was not missed, and a read that started exactly the bound after it is within it.
    #[test]
    fn the_return_instant_and_the_bound_are_exclusive() {
        let t = Instant::now();
        let updates = [update(1, 2, at(t, 100), 100, 0)];
        let reads = [100, 200, 201].map(|ms| read(1, 1, at(t, ms), ms as usize));
        let (late, _) = judge(updates, reads);
        assert_eq!(
            late.iter()
                .map(|l| (l.read.by, l.beyond))
                .collect::<Vec<_>>(),
            [(200, false), (201, true)]
        );
    }

    /// An update that returned no earlier than a newer one, or a version seen again later, is
    /// never the one a read missed first, and is not kept.
    #[test]
    fn dominated_updates_are_not_kept() {
        let t = Instant::now();
        let mut stairs = Stairs::new(Duration::ZERO);
        stairs.insert(5, at(t, 100), 0);
        stairs.insert(3, at(t, 150), 1);
        stairs.insert(5, at(t, 200), 2);
        assert_eq!(stairs.steps.len(), 1);
        stairs.insert(7, at(t, 50), 3);
        assert_eq!(stairs.steps.keys().copied().collect::<Vec<_>>(), [7]);
        stairs.insert(6, at(t, 20), 4);
        stairs.insert(9, at(t, 300), 5);
        assert_eq!(stairs.steps.keys().copied().collect::<Vec<_>>(), [6, 7, 9]);
        assert_eq!(stairs.first_newer(6).map(|c| c.step.by), Some(3));
        assert_eq!(stairs.first_newer(9).map(|c| c.step.by), None);
    }
}
