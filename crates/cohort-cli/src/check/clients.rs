//! The workload's clients: reads and renames over HTTP on random nodes, recorded as they
//! complete.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::http;
use super::nodes::Cluster;
use super::record::{Actor, Op, Recorded};
use crate::api::{Rename, UserRead, Written};

/// How long a client waits for one answer. Reads sent to a paused node in its last second are
/// answered, and judged, once it resumes; the others give up, so the workload goes on.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

/// One client: random reads (80%) and renames (20%) on random nodes until the deadline.
pub(crate) async fn run_client(
    client: u16,
    cluster: Cluster,
    recorded: Arc<Mutex<Recorded>>,
    keys: u64,
    seed: u64,
    deadline: Instant,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut renames = 0_u64;
    while Instant::now() < deadline {
        let node = rng.random_range(0..cluster.lock().len());
        let target = cluster.lock()[node].as_ref().map(|n| n.http);
        let Some(http) = target else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        let key = rng.random_range(1..=keys);
        let path = format!("/users/{key}");
        let read = rng.random_bool(0.8);
        let started = Instant::now();
        let answer = if read {
            http::get::<UserRead>(http, &path, REQUEST_TIMEOUT)
                .await
                .map(|user| (user.version, Some(user.source)))
        } else {
            renames += 1;
            let rename = Rename {
                name: format!("c{client}-{renames}"),
            };
            http::put::<Written>(http, &path, &rename, REQUEST_TIMEOUT)
                .await
                .map(|written| (written.version, None))
        };
        let ended = Instant::now();
        let mut recorded = recorded.lock();
        let Ok((version, source)) = answer else {
            recorded.counts.failed += 1;
            continue;
        };
        let op = Op {
            actor: Actor::Client { client, node },
            key,
            version,
            source,
            started,
            ended,
        };
        if read {
            recorded.read(op);
        } else {
            recorded.update(op);
        }
    }
}
