//! Waiting for a node's change-log polls, shared by the tests of each database.

use std::time::Duration;

use cohort::ClusterEvent;
use tokio::sync::broadcast;
use tokio::time::Instant;

/// Waits for a complete poll that started after `after`: every change committed before it is
/// then applied on the node.
pub(crate) async fn poll_after(events: &mut broadcast::Receiver<ClusterEvent>, after: Instant) {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(ClusterEvent::LogPolled { started, .. }) = events.recv().await
                && started > after
            {
                return;
            }
        }
    })
    .await
    .expect("the node polled the change log");
}
