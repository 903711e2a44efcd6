//! Waiting for a node's change-log polls, shared by the tests of each database.

use cohort::ClusterEvent;
use cohort_testkit::wait;
use tokio::sync::broadcast;
use tokio::time::Instant;

/// Waits for a complete poll that started after `after`: every change committed before it is
/// then applied on the node.
pub(crate) async fn poll_after(events: &mut broadcast::Receiver<ClusterEvent>, after: Instant) {
    wait::event(events, |e| {
        matches!(e, ClusterEvent::LogPolled { started, .. } if started > after).then_some(())
    })
    .await
    .expect("the node polled the change log");
}
