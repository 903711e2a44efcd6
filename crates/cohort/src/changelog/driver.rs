//! The tailer: one task per node that installs watches, polls the log and prunes it.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use super::tail::Tail;
use super::{BATCH_ROWS, ChangeLogError, LogRuntime};
use crate::event::ClusterEvent;

/// What the tailer feeds: the node's caches, and its subscribers.
pub(crate) trait LogTarget: Send + Sync + 'static {
    /// The node's name, for logs and for the backend's wake-up channel.
    fn name(&self) -> &str;
    /// Applies a change-log row: `key`, as text, changed in `cache`, to `version` if the log
    /// knows it.
    fn apply_logged(&self, cache: &str, key: &str, version: Option<u64>);
    /// Empties the caches that watch tables: the log lost rows they needed.
    fn flush_watching(&self);
    /// Tells the node's subscribers.
    fn notify(&self, event: ClusterEvent);
}

/// Starts a node's tailer among its `tasks`; it ends when `shutdown` turns true.
pub(crate) fn spawn<T: LogTarget>(
    tasks: &TaskTracker,
    mut shutdown: watch::Receiver<bool>,
    node: Arc<T>,
    log: Arc<LogRuntime>,
) {
    tasks.spawn(async move {
        let wake_ups = async {
            log.backend.listen(node.name(), &|| log.kick()).await;
            std::future::pending::<()>().await;
        };
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => {}
            () = tail(node.as_ref(), &log) => {}
            () = wake_ups => {}
        }
    });
}

async fn tail(node: &impl LogTarget, log: &LogRuntime) {
    let interval = log.bound / 4;
    let mut tail: Option<Tail> = None;
    let mut last_prune: Option<Instant> = None;
    loop {
        let next_tick = Instant::now() + interval;
        if let Err(error) = step(node, log, &mut tail).await {
            record_error(node, log, &error);
        }
        if last_prune.is_none_or(|at| at.elapsed() >= prune_every(log)) {
            last_prune = Some(Instant::now());
            match log.backend.prune(log.retention).await {
                Ok(0) => {}
                Ok(rows) => tracing::debug!(node = node.name(), rows, "pruned the change log"),
                Err(error) => record_error(node, log, &error),
            }
        }
        tokio::select! {
            biased;
            () = tokio::time::sleep_until(next_tick) => {}
            () = log.kick.notified() => {}
        }
    }
}

/// Pruning a quarter of the retention at a time keeps the table within 1.25 retentions.
fn prune_every(log: &LogRuntime) -> Duration {
    (log.retention / 4).max(log.bound)
}

/// Finds the log's head once, installs waiting watches, then polls to the end of the log.
async fn step(
    node: &impl LogTarget,
    log: &LogRuntime,
    tail: &mut Option<Tail>,
) -> Result<(), ChangeLogError> {
    let tail = match tail {
        Some(tail) => tail,
        None => tail.insert(Tail::new(log.backend.head().await?)),
    };
    // A watch whose installation failed (its table stayed locked past the lock timeout, say)
    // must not hold back the polls that keep the other caches serving; it is retried next step.
    let installed = install_pending(log).await;
    poll(node, log, tail).await?;
    installed
}

/// Installs every waiting cache's watches; a cache whose installation failed waits for the next
/// attempt, but does not hold back the others (its table may be what is wrong, say a missing
/// version column). Returns the first failure.
async fn install_pending(log: &LogRuntime) -> Result<(), ChangeLogError> {
    let pending = std::mem::take(&mut *log.pending.lock());
    let mut failure = None;
    'registrations: for registration in pending {
        for watch in &registration.watches {
            if let Err(error) = log.backend.install(watch).await {
                log.pending.lock().push(registration);
                failure.get_or_insert(error);
                continue 'registrations;
            }
        }
        log.installed.lock().push(registration.lease);
    }
    failure.map_or(Ok(()), Err)
}

/// Reads the log to its end, applying every row, then renews the leases from the start of the
/// read that proved the node caught up. A read that continued after a cut-off one cannot prove it
/// (see [`tail`](super::tail)): the poll then reads once more from the cursor, and if that does not
/// catch up either (a long-open transaction holds the cursor back behind more than a batch of
/// rows), it ends without renewing, and the next tick tries again.
async fn poll(
    node: &impl LogTarget,
    log: &LogRuntime,
    tail: &mut Tail,
) -> Result<(), ChangeLogError> {
    let mut applied = 0;
    let mut restarted = false;
    tail.begin_poll();
    loop {
        let started = log.clock.now();
        let started_at = Instant::now();
        let batch = log.backend.read(tail.read_from(), BATCH_ROWS).await?;
        let step = tail.handle(&batch);
        if step.flush {
            tracing::warn!(
                node = node.name(),
                "change-log rows were pruned before this node read them; flushing"
            );
            log.progress.lock().pruned_flushes += 1;
            node.flush_watching();
        }
        for row in &step.rows {
            node.apply_logged(&row.cache, &row.key, row.version);
        }
        applied += step.rows.len() as u64;
        if step.cut_off {
            continue;
        }
        if !step.caught_up {
            if restarted {
                return Ok(());
            }
            restarted = true;
            tail.begin_poll();
            continue;
        }
        log.node_lease.renew(&log.clock, started, log.bound);
        for lease in log.installed.lock().iter() {
            lease.renew(&log.clock, started, log.bound);
        }
        {
            let mut progress = log.progress.lock();
            progress.last_poll = Some(started_at);
            progress.behind_rows = applied;
            progress.cursor = tail.cursor().seq;
            progress.polls += 1;
            progress.last_error = None;
        }
        node.notify(ClusterEvent::LogPolled {
            rows: applied,
            started: started_at,
        });
        return Ok(());
    }
}

fn record_error(node: &impl LogTarget, log: &LogRuntime, error: &ChangeLogError) {
    let error = error.to_string();
    {
        let mut progress = log.progress.lock();
        progress.errors += 1;
        // One line per failure streak, not one per poll.
        if progress.last_error.is_none() {
            tracing::warn!(node = node.name(), %error, "change log unavailable; caches bypass until a poll succeeds");
        }
        progress.last_error = Some(error.clone());
    }
    node.notify(ClusterEvent::LogUnavailable { error });
}
