//! Waiting in tests without sleeping as synchronization: for an event on a broadcast stream (a
//! node's event stream), for a condition re-checked as events come, or, where nothing announces
//! the change (another process's HTTP answers, a database's catalog), for a condition polled.
//! Each waits at most [`PATIENCE`] and then says what it missed, for the caller to fail with
//! whatever else it knows (`.expect("what")`, or `.unwrap_or_else(|e| panic!(…))` naming the
//! state it waited on).

use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant};

use tokio::sync::broadcast::{self, error::RecvError};

/// How long a wait lasts before it gives up. What the tests wait for happens within
/// milliseconds; the rest leaves room for a loaded two-core machine.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// How often [`until`] re-checks its condition when no event comes: a counter may move just
/// after the event that announces it, or on a path that sends none (a handshake timing out).
const RECHECK: Duration = Duration::from_millis(50);

/// How often [`poll`] and [`poll_blocking`] ask.
const POLL_EVERY: Duration = Duration::from_millis(10);

/// Why a wait gave up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Missed {
    /// [`PATIENCE`] ran out. `lagged` counts the events the stream dropped before the waiter
    /// saw them, the one awaited maybe among them (0 where no stream was read).
    TimedOut {
        /// Events dropped unseen.
        lagged: u64,
    },
    /// Every sender of the stream is gone (its node stopped): nothing more will come.
    Closed,
}

impl fmt::Display for Missed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TimedOut { lagged: 0 } => write!(f, "timed out after {PATIENCE:?}"),
            Self::TimedOut { lagged } => write!(
                f,
                "timed out after {PATIENCE:?}, having missed {lagged} events of a lagging stream"
            ),
            Self::Closed => write!(f, "the event stream closed"),
        }
    }
}

impl std::error::Error for Missed {}

/// Awaits `future` for at most [`PATIENCE`].
pub async fn within<F: Future>(future: F) -> Result<F::Output, Missed> {
    tokio::time::timeout(PATIENCE, future)
        .await
        .map_err(|_| Missed::TimedOut { lagged: 0 })
}

/// Waits for the first event on `events` that `pick` maps to something, and returns that.
/// Events that came before the wait began are not seen unless still queued: subscribe before
/// the action whose event is awaited. A lagging stream is read on (what is awaited may come
/// later; if it was dropped, the timeout says so).
pub async fn event<E: Clone, T>(
    events: &mut broadcast::Receiver<E>,
    mut pick: impl FnMut(E) -> Option<T>,
) -> Result<T, Missed> {
    let mut lagged = 0;
    let wait = async {
        loop {
            match events.recv().await {
                Ok(event) => {
                    if let Some(found) = pick(event) {
                        return Ok(found);
                    }
                }
                Err(RecvError::Lagged(missed)) => lagged += missed,
                Err(RecvError::Closed) => return Err(Missed::Closed),
            }
        }
    };
    let waited = tokio::time::timeout(PATIENCE, wait).await;
    waited.unwrap_or(Err(Missed::TimedOut { lagged }))
}

/// Waits until `done` holds, checking it at once, after every event on `events` (the changes it
/// reads are announced there) and every 50 ms besides.
pub async fn until<E: Clone>(
    events: &mut broadcast::Receiver<E>,
    mut done: impl FnMut() -> bool,
) -> Result<(), Missed> {
    let wait = async {
        while !done() {
            // An event, a lag or a quiet spell: each is a reason to look again.
            if let Ok(Err(RecvError::Closed)) = tokio::time::timeout(RECHECK, events.recv()).await {
                return if done() { Ok(()) } else { Err(Missed::Closed) };
            }
        }
        Ok(())
    };
    within(wait).await?
}

/// Asks `probe` every 10 ms until it answers, and returns the answer: for state that changes
/// with no event to wait on (a database's catalog, a buffer filled by another task).
pub async fn poll<T>(mut probe: impl AsyncFnMut() -> Option<T>) -> Result<T, Missed> {
    within(async {
        loop {
            if let Some(found) = probe().await {
                return found;
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    })
    .await
}

/// [`poll`] outside any runtime, blocking the thread between tries: for another process, which
/// a test can only ask (its HTTP answers, its exit status).
pub fn poll_blocking<T>(mut probe: impl FnMut() -> Option<T>) -> Result<T, Missed> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(found) = probe() {
            return Ok(found);
        }
        if Instant::now() >= deadline {
            return Err(Missed::TimedOut { lagged: 0 });
        }
        std::thread::sleep(POLL_EVERY);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_event_is_picked_out_of_the_others() {
        let (tx, mut rx) = broadcast::channel(16);
        for n in [1, 2, 30, 4] {
            tx.send(n).unwrap();
        }
        let found = event(&mut rx, |n: u32| (n > 10).then_some(n * 2)).await;
        assert_eq!(found, Ok(60));
        assert_eq!(rx.try_recv(), Ok(4), "the events after it are left");
    }

    /// A stream that lagged past the awaited event says so when the wait times out; a closed
    /// one ends the wait at once.
    #[tokio::test(start_paused = true)]
    async fn a_lost_or_closed_stream_is_reported() {
        let (tx, mut rx) = broadcast::channel(2);
        for n in 0..5 {
            tx.send(n).unwrap();
        }
        let missed = event(&mut rx, |n: u32| (n == 0).then_some(())).await;
        assert_eq!(missed, Err(Missed::TimedOut { lagged: 3 }));
        drop(tx);
        let started = tokio::time::Instant::now();
        assert_eq!(event(&mut rx, Some).await, Err(Missed::Closed));
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    /// A condition is re-checked after each event, and after a quiet spell for a change no event
    /// announced.
    #[tokio::test(start_paused = true)]
    async fn a_condition_is_checked_on_events_and_between_them() {
        let (tx, mut rx) = broadcast::channel(16);
        let count = Arc::new(AtomicU64::new(0));
        let bump = Arc::clone(&count);
        tokio::spawn(async move {
            for _ in 0..3 {
                bump.fetch_add(1, Ordering::SeqCst);
                tx.send(()).unwrap();
            }
            // Past the last event, a change with none, while the sender is still alive.
            tokio::time::sleep(Duration::from_secs(1)).await;
            bump.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(tx);
        });
        let started = tokio::time::Instant::now();
        until(&mut rx, || count.load(Ordering::SeqCst) == 3)
            .await
            .unwrap();
        assert_eq!(started.elapsed(), Duration::ZERO, "on the events");
        until(&mut rx, || count.load(Ordering::SeqCst) == 4)
            .await
            .unwrap();
        assert!(started.elapsed() <= Duration::from_secs(1) + RECHECK);
        let never = until(&mut rx, || false).await;
        assert_eq!(never, Err(Missed::TimedOut { lagged: 0 }));
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_is_asked_until_it_answers() {
        let mut asked = 0;
        let answer = poll(async || {
            asked += 1;
            (asked == 3).then_some("yes")
        })
        .await;
        assert_eq!(answer, Ok("yes"));
        let mut asked = 0;
        let answer = poll_blocking(|| {
            asked += 1;
            (asked == 3).then_some(asked)
        });
        assert_eq!(answer, Ok(3));
    }
}
