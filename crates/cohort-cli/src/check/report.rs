//! The report of a check: what ran, what the judge found, the verdict line.

use std::time::Instant;

use super::Args;
use super::record::{JUDGE_HORIZON, JUDGE_WINDOW, Recorded};

/// What the nodes running at the end say their mesh did.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Mesh {
    /// Peer events applied.
    pub(crate) applied: u64,
    /// Gaps found in the peers' sequences.
    pub(crate) gaps: u64,
}

/// Prints the report and the final line; returns whether the check passed. In bounded mode
/// every update is promised within the bound; in strong mode an update through a node is
/// promised at once, one by plain SQL (which no node hears of before it commits) within the bound.
pub(crate) fn report(
    args: &Args,
    recorded: &Recorded,
    mesh: Mesh,
    origin: Instant,
    workload_ended: Instant,
    problems: &[String],
) -> bool {
    let bound = recorded.bound;
    let verdict = recorded.judge.verdict();
    let counts = recorded.counts;
    let ops = counts.reads + counts.updates;
    let secs = args.duration.as_secs_f64().max(0.001);
    let faults: u64 = recorded.faults.values().sum();
    let kinds: Vec<String> = recorded
        .faults
        .iter()
        .map(|(kind, count)| format!("{kind} {count}"))
        .collect();
    println!(
        "operations  {ops} ({:.0}/s): reads {} ({} from cache, {} from owners, {} from the \
         database{}{}), updates {} ({} by plain SQL{}), {} failed or timed out",
        ops as f64 / secs,
        counts.reads,
        counts.from_cache,
        counts.from_owner,
        counts.reads - counts.from_cache - counts.from_owner,
        if counts.owner_skipped > 0 {
            format!(
                ", {} of them as their owner did not answer in time or could not serve",
                counts.owner_skipped
            )
        } else {
            String::new()
        },
        match (counts.batches, counts.stale) {
            (0, 0) => String::new(),
            (batches, stale) =>
                format!("; {batches} batch requests, {stale} served stale by the fail-safe"),
        },
        counts.updates,
        counts.by_sql,
        if counts.by_bulk > 0 {
            format!(", {} by team renames and clears", counts.by_bulk)
        } else {
            String::new()
        },
        counts.failed,
    );
    println!(
        "faults      {}",
        if kinds.is_empty() {
            "none".to_owned()
        } else {
            kinds.join(", ")
        }
    );
    println!(
        "mesh        {} events applied on the nodes running at the end, {} gaps",
        mesh.applied, mesh.gaps
    );
    println!(
        "staleness   reads behind a returned update: {} within the bound, {} beyond; max {}{} ms \
         (bound {} ms)",
        verdict.stale_within_bound,
        verdict.stale_beyond_bound,
        if verdict.max_staleness_at_least {
            "at least "
        } else {
            ""
        },
        verdict.max_staleness.as_millis(),
        bound.as_millis(),
    );
    let at = |i: Instant| i.saturating_duration_since(origin).as_secs_f64();
    for late in &recorded.worst {
        let (read, missed) = (&late.read, &late.missed);
        let (node, source) = read.by.read_on();
        let by = missed.by.describe();
        println!(
            "worst       key {}: read on n{node} started {:.3}s, saw v{} ({}); v{} had returned \
             {:.3}s by {by}: {}{} ms late",
            read.key,
            at(read.started),
            read.version,
            source.name(),
            missed.version,
            at(missed.returned),
            if late.at_least { "at least " } else { "" },
            late.lag.as_millis(),
        );
    }
    let mut problems = problems.to_vec();
    if verdict.too_old > 0 {
        problems.push(format!(
            "{} reads reached the judge more than {} s after they started, and were not judged",
            verdict.too_old,
            JUDGE_HORIZON.as_secs()
        ));
    }
    if verdict.recorded_late > 0 {
        problems.push(format!(
            "{} updates were recorded more than {} s after they returned, after reads they bear \
             on were judged",
            verdict.recorded_late,
            JUDGE_WINDOW.as_secs()
        ));
    }
    for problem in &problems {
        println!("problem     {problem}");
    }
    println!(
        "verdict     {} reads judged, {:.2} s after the workload ended",
        verdict.judged,
        workload_ended.elapsed().as_secs_f64()
    );
    let passed = verdict.stale_beyond_bound == 0
        && problems.is_empty()
        && counts.reads > 0
        && counts.updates > 0;
    println!(
        "check: ops={ops} faults={faults} stale_beyond_bound={} max_staleness_ms={} bound_ms={} \
         served_stale={} result={}",
        verdict.stale_beyond_bound,
        verdict.max_staleness.as_millis(),
        bound.as_millis(),
        counts.stale,
        if passed { "PASS" } else { "FAIL" }
    );
    passed
}
