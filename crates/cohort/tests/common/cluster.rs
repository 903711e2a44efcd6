//! Waiting for a node's links and applied events, shared by the tests over TCP and over the
//! Redis bus.

use cohort::{Cluster, ClusterEvent, EventId};
use cohort_testkit::wait;
use tokio::sync::broadcast;

/// Waits until `node` has an outgoing link to `peers` peers.
pub(crate) async fn wait_linked(node: &Cluster, peers: usize) {
    wait::within(node.wait_for_peers(peers))
        .await
        .unwrap_or_else(|missed| {
            panic!(
                "{} never linked to {peers} peers ({missed}): {:?}",
                node.node_id(),
                node.members()
            )
        });
}

/// Waits until `events` reports `event` applied.
pub(crate) async fn applied(events: &mut broadcast::Receiver<ClusterEvent>, event: &EventId) {
    wait::event(events, |e| {
        matches!(e, ClusterEvent::Applied { event: ref applied, .. } if applied == event)
            .then_some(())
    })
    .await
    .unwrap_or_else(|missed| panic!("{event} never applied: {missed}"));
}
