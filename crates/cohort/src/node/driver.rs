//! The tasks that drive a node: one accepting links, one reading each inbound link, one dialing
//! and writing each outbound link. They hold no protocol logic of their own: frames go to the
//! [`Node`], whose decisions come from the pure sequence tracker.
//!
//! Every `select!` is biased (shutdown first), as are the change-log tailer's: tokio picks among
//! ready branches at random otherwise, and a simulation would not replay exactly from its seed.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures_util::SinkExt;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::Semaphore;
use tokio::time::MissedTickBehavior;

use super::Node;
use super::link_queue::QueueRx;
use super::state::{Answered, Greeting, Inbound, LinkId};
use crate::id::NodeId;
use crate::transport::{
    self, Backoff, BoxConnection, FrameReader, FrameWriter, LinkError, Listener, Role,
};
use crate::wire::{self, Frame, WireError};

/// Accepts links until the node stops.
pub(super) fn spawn_listener(node: &Arc<Node>, listener: Box<dyn Listener>) {
    let node = Arc::clone(node);
    let mut shutdown = node.shutdown.subscribe();
    let tasks = node.tasks.clone();
    let links = Arc::new(Semaphore::new(node.config.max_inbound_links));
    tasks.spawn(async move {
        loop {
            let accepted = tokio::select! {
                biased;
                _ = shutdown.wait_for(|stop| *stop) => return,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, from)) => {
                    let Ok(permit) = Arc::clone(&links).try_acquire_owned() else {
                        node.counters.links_refused.incr();
                        tracing::warn!(node = %node.id, %from, "too many inbound links; closed one");
                        continue;
                    };
                    let node_for_link = Arc::clone(&node);
                    node.tasks.spawn(async move {
                        inbound(node_for_link, stream, from).await;
                        drop(permit);
                    });
                }
                // Accept fails on resource exhaustion (EMFILE); keep serving the links we have.
                Err(e) => {
                    tracing::warn!(node = %node.id, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    });
}

/// Reads one inbound link until it closes, fails or the node stops.
async fn inbound(node: Arc<Node>, stream: BoxConnection, from: SocketAddr) {
    let mut shutdown = node.shutdown.subscribe();
    let result = tokio::select! {
        biased;
        _ = shutdown.wait_for(|stop| *stop) => Ok(()),
        result = serve_inbound(&node, stream) => result,
    };
    if let Err(error) = result {
        node.count_link_error(&error);
        tracing::warn!(node = %node.id, %from, %error, "closed an inbound link");
    }
}

async fn serve_inbound(node: &Arc<Node>, stream: BoxConnection) -> Result<(), LinkError> {
    let timeout = node.config.handshake_timeout;
    let (mut reader, mut writer) = transport::open(
        stream,
        Role::Acceptor,
        node.config.keyring.as_ref(),
        node.config.max_frame_bytes,
        timeout,
    )
    .await?;
    let body = transport::handshake_frame(&mut reader, timeout).await?;
    let Frame::Hello(hello) = wire::decode(&body)? else {
        return Err(WireError::Unexpected("a link must open with a hello").into());
    };
    // Judged before answering: the answer tells the dialer where to resume, and the events it
    // replays must find the tracker already expecting them.
    let Greeting { peer, answer } = node.with_time(|state, now| state.handle_hello(&hello, now))?;
    transport::send_frame(&mut writer, answer, timeout).await?;
    let Some(peer) = peer else {
        return Ok(());
    };
    drop(body);
    transport::accept_frames(&mut reader, node.config.max_frame_bytes);

    // A timer per frame would cost more than the frame; a silence is counted in quarter-limit
    // ticks instead, so a link is given up on after at least the limit and at most 5/4 of it.
    let tick = silence_limit(node) / 4;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + tick, tick);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut silent_ticks = 0;
    loop {
        tokio::select! {
            biased;
            body = transport::next_frame(&mut reader) => {
                let Some(body) = body? else { break };
                silent_ticks = 0;
                if node.receive(&peer, &wire::decode(&body)?)? == Inbound::Closed {
                    break;
                }
            }
            _ = ticks.tick() => {
                silent_ticks += 1;
                if silent_ticks > 4 {
                    return Err(LinkError::Idle);
                }
            }
        }
    }
    Ok(())
}

/// Runs the node's timers (the heartbeat, SWIM's) until the node stops: sleeps until the state's
/// next timeout, or until an input scheduled an earlier one.
pub(super) fn spawn_timers(node: &Arc<Node>) {
    let node = Arc::clone(node);
    let tasks = node.tasks.clone();
    tasks.spawn(async move {
        let mut shutdown = node.shutdown.subscribe();
        loop {
            let wait = node.arm_timer().map(Duration::from_millis);
            tokio::select! {
                biased;
                _ = shutdown.wait_for(|stop| *stop) => return,
                () = node.rearm.notified() => {}
                () = sleep_for(wait) => node.with_time(|state, now| state.handle_timeout(now)),
            }
        }
    });
}

/// Folds the node's counters and gauges into the `metrics` facade every
/// [`EXPORT_EVERY`](crate::metrics::facade::EXPORT_EVERY) until the node stops.
#[cfg(feature = "metrics")]
pub(super) fn spawn_metrics(node: &Arc<Node>) {
    use crate::metrics::facade;

    let node = Arc::clone(node);
    let tasks = node.tasks.clone();
    tasks.spawn(async move {
        let mut shutdown = node.shutdown.subscribe();
        let mut ticks = tokio::time::interval(facade::EXPORT_EVERY);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.wait_for(|stop| *stop) => return,
                _ = ticks.tick() => facade::export(&node.report()),
            }
        }
    });
}

/// Sleeps for `wait`, or forever without one.
async fn sleep_for(wait: Option<Duration>) {
    match wait {
        Some(wait) => tokio::time::sleep(wait).await,
        None => std::future::pending().await,
    }
}

/// Resolves the seeds given as names again every `every`, and learns what they stand for now.
pub(super) fn spawn_seed_refresh(node: &Arc<Node>, seeds: Vec<String>, every: std::time::Duration) {
    let node = Arc::clone(node);
    let tasks = node.tasks.clone();
    tasks.spawn(async move {
        let mut shutdown = node.shutdown.subscribe();
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.wait_for(|stop| *stop) => return,
                _ = ticks.tick() => {}
            }
            for seed in &seeds {
                match node.network.resolve(seed).await {
                    Ok(addrs) => node.add_seeds(&addrs, false),
                    Err(error) => {
                        tracing::warn!(node = %node.id, %seed, %error, "cannot resolve a seed")
                    }
                }
            }
        }
    });
}

/// Keeps an outbound link to `addr` up until the node stops, reconnecting with backoff.
pub(super) fn spawn_dialer(node: &Arc<Node>, addr: SocketAddr) {
    let node = Arc::clone(node);
    let tasks = node.tasks.clone();
    tasks.spawn(async move {
        let mut shutdown = node.shutdown.subscribe();
        let (min, max) = node.config.reconnect;
        let mut backoff = Backoff::new(min, max);
        let mut rng = StdRng::seed_from_u64(node.rng_seed ^ hash_addr(addr));
        let mut attempt = 0;
        let wanted = || node.with_state(|state| state.wants(addr));
        while wanted() {
            let outcome = outbound(&node, addr, attempt, &mut shutdown).await;
            if !wanted() {
                return;
            }
            match outcome {
                Ok(Outbound::Closed) => {
                    backoff.reset();
                    attempt = 0;
                }
                Ok(Outbound::Myself) => return,
                Err(error) => {
                    node.count_link_error(&error);
                    if matches!(error, LinkError::Auth(_)) {
                        // The peer may not have this key yet (a rotation under way): the next
                        // attempt dials with the next key of the ring.
                        attempt += 1;
                        tracing::warn!(node = %node.id, %addr, %error, "link attempt failed");
                    } else {
                        tracing::debug!(node = %node.id, %addr, %error, "link attempt failed");
                    }
                }
            }
            let delay = backoff.next_delay(&mut rng);
            tokio::select! {
                biased;
                _ = shutdown.wait_for(|stop| *stop) => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    });
}

/// Mixes a peer's address into the node's seed, so each dialer jitters differently yet
/// reproducibly.
fn hash_addr(addr: SocketAddr) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(addr)
}

enum Outbound {
    /// The link was up and has closed.
    Closed,
    /// The address is this node's own.
    Myself,
}

/// Dials `addr`, introduces this node and streams its events until the link breaks or the queue
/// closes. Shutting down interrupts the handshake, not the stream: the queue's last frame then is
/// the node's leave.
async fn outbound(
    node: &Arc<Node>,
    addr: SocketAddr,
    attempt: usize,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<Outbound, LinkError> {
    let link = tokio::select! {
        biased;
        _ = shutdown.wait_for(|stop| *stop) => return Ok(Outbound::Closed),
        link = handshake(node, addr, attempt) => link?,
    };
    let Some(Link {
        mut reader,
        mut writer,
        id,
        queue,
        answered:
            Answered {
                peer,
                incarnation,
                replay,
            },
    }) = link
    else {
        return Ok(Outbound::Myself);
    };
    node.counters.connects.incr();
    tracing::debug!(node = %node.id, %peer, %addr, "linked");
    node.with_time(|state, now| state.handle_link_up(id, addr, &peer, incarnation, now));
    let result = tokio::select! {
        biased;
        () = goes_silent(node, &peer) => Err(LinkError::Idle),
        result = pump(&mut reader, &mut writer, replay, queue, node.config.handshake_timeout) => result,
    };
    node.with_state(|state| state.handle_link_down(addr, &peer));
    result.map(|()| Outbound::Closed)
}

/// A live peer pings every quarter of the bound; a link silent for twice the bound is stuck (a
/// partition that never closed it) and is dropped, so that a fresh one can replace it.
fn silence_limit(node: &Node) -> Duration {
    node.config.max_staleness * 2
}

/// Returns once `peer` has been silent on every link for twice the bound, as the inbound side
/// does. Nothing comes back on an outgoing link, so without this a connection the peer dropped
/// without a word (a half-open one: its end closed during a partition, or a peer that forgot
/// this node) would look healthy for as long as writes fit in the socket's buffer, and the peer
/// would never hear this node's hello again.
async fn goes_silent(node: &Node, peer: &NodeId) {
    let idle = silence_limit(node);
    loop {
        tokio::time::sleep(idle / 4).await;
        if !node.with_time(|state, now| state.heard_within(peer, idle, now)) {
            return;
        }
    }
}

/// An established outgoing link.
struct Link {
    reader: FrameReader,
    writer: FrameWriter,
    id: LinkId,
    /// Frames for the peer, after the replay.
    queue: QueueRx,
    /// Who answered, and what to replay to it.
    answered: Answered,
}

/// Connects and exchanges hellos, dialing with the key `attempt` picks; `None` when the address
/// is this node's own.
async fn handshake(
    node: &Arc<Node>,
    addr: SocketAddr,
    attempt: usize,
) -> Result<Option<Link>, LinkError> {
    let timeout = node.config.handshake_timeout;
    let stream = tokio::time::timeout(timeout, node.network.connect(addr))
        .await
        .map_err(|_| LinkError::Timeout)??;
    let role = Role::Dialer {
        me: node.id.as_str(),
        attempt,
    };
    let (mut reader, mut writer) = transport::open(
        stream,
        role,
        node.config.keyring.as_ref(),
        node.config.max_frame_bytes,
        timeout,
    )
    .await?;
    // Open the link before saying hello: every event after `start.seq` is then queued on it.
    let (id, start, queue) = node.open_link(addr);
    let hello = node.with_state(|state| state.hello(start));
    transport::send_frame(&mut writer, hello, timeout).await?;
    let body = transport::handshake_frame(&mut reader, timeout).await?;
    let Frame::Hello(hello) = wire::decode(&body)? else {
        return Err(WireError::Unexpected("a link must open with a hello").into());
    };
    let answered = node.with_time(|state, now| state.handle_answer(addr, start, &hello, now))?;
    Ok(answered.map(|answered| Link {
        reader,
        writer,
        id,
        queue,
        answered,
    }))
}

/// Writes the replayed frames, then queued ones, many per flush when they pile up, until the
/// queue closes (the node stopped or the link overflowed) or the peer goes away. A peer that
/// takes in nothing for `stall` is given up on.
async fn pump(
    reader: &mut FrameReader,
    writer: &mut FrameWriter,
    replay: Vec<Bytes>,
    mut queue: QueueRx,
    stall: Duration,
) -> Result<(), LinkError> {
    if !replay.is_empty() {
        let write = async {
            for frame in replay {
                writer.feed(frame).await?;
            }
            SinkExt::<Bytes>::flush(writer).await
        };
        within(stall, write).await??;
    }
    loop {
        tokio::select! {
            biased;
            frame = queue.recv() => {
                let Some(frame) = frame else { return Ok(()) };
                let write = async {
                    writer.feed(frame).await?;
                    while let Some(frame) = queue.try_recv() {
                        writer.feed(frame).await?;
                    }
                    SinkExt::<Bytes>::flush(writer).await
                };
                within(stall, write).await??;
            }
            // The acceptor sends nothing after its hello: any input is a close or an error.
            read = transport::next_frame(reader) => {
                return match read? {
                    None => Ok(()),
                    Some(_) => Err(WireError::Unexpected("a frame from an acceptor").into()),
                };
            }
        }
    }
}

/// Runs `write`, giving up after `stall`. Most writes complete when first polled (the socket
/// has room): those need no timer, which would cost more than the write.
async fn within<T>(stall: Duration, write: impl Future<Output = T>) -> Result<T, LinkError> {
    let mut write = pin!(write);
    if let Poll::Ready(done) = poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await {
        return Ok(done);
    }
    tokio::time::timeout(stall, write)
        .await
        .map_err(|_| LinkError::Timeout)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::node::link_queue;
    use crate::wire::{Change, Event};

    const TIMEOUT: Duration = Duration::from_secs(10);
    const MAX_FRAME: usize = 1 << 16;

    fn event(seq: u64) -> Bytes {
        Frame::Event(Event {
            node: "a",
            incarnation: 1,
            seq,
            cache: "users",
            change: Change::Invalidate { key: &[1] },
        })
        .encode()
    }

    /// A link sends what it carries in order: the replay, then the queue as it was queued, many
    /// frames per flush. A pong queued behind events reaches the peer behind them, as it must:
    /// it vouches for them.
    #[tokio::test]
    async fn a_link_sends_the_replay_then_the_queue_in_order() {
        let (near, far) = tokio::io::duplex(MAX_FRAME);
        let dialer = Role::Dialer {
            me: "a",
            attempt: 0,
        };
        let (near, far) = tokio::join!(
            transport::open(Box::new(near), dialer, None, MAX_FRAME, TIMEOUT),
            transport::open(Box::new(far), Role::Acceptor, None, MAX_FRAME, TIMEOUT),
        );
        let ((mut reader, mut writer), (mut far_reader, _far_writer)) =
            (near.unwrap(), far.unwrap());
        let (queue, queued) = link_queue::channel(16, MAX_FRAME);
        let pong = Frame::Pong {
            nonce: 7,
            incarnation: 1,
            seq: 4,
            heard: Some(Vec::new()),
        };
        for frame in [event(3), event(4), pong.encode(), event(5)] {
            queue.try_send(frame).unwrap();
        }
        // The queue closes once drained, which ends the link.
        drop(queue);
        pump(
            &mut reader,
            &mut writer,
            vec![event(1), event(2)],
            queued,
            TIMEOUT,
        )
        .await
        .unwrap();

        let mut sent = Vec::new();
        for _ in 0..6 {
            let body = transport::next_frame(&mut far_reader)
                .await
                .unwrap()
                .expect("a frame");
            sent.push(match wire::decode(&body).unwrap() {
                Frame::Event(event) => format!("event {}", event.seq),
                Frame::Pong { seq, .. } => format!("pong after {seq}"),
                other => panic!("unexpected {other:?}"),
            });
        }
        assert_eq!(
            sent,
            [
                "event 1",
                "event 2",
                "event 3",
                "event 4",
                "pong after 4",
                "event 5"
            ]
        );
    }

    /// An inbound link whose peer says nothing after its hello (a half-open connection, a
    /// frozen peer) is closed once the silence passed the limit, and not long after.
    #[tokio::test(start_paused = true)]
    async fn a_silent_inbound_link_is_closed_after_the_limit() {
        let config = crate::config::Config::default();
        let address = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let acceptor = Node::new(NodeId::from("a"), address(1), &config);
        let dialer = Node::new(NodeId::from("b"), address(2), &config);
        let (near, far) = tokio::io::duplex(MAX_FRAME);
        let opened = tokio::time::Instant::now();
        let served = tokio::spawn({
            let acceptor = Arc::clone(&acceptor);
            async move { serve_inbound(&acceptor, Box::new(near)).await }
        });
        let role = Role::Dialer {
            me: "b",
            attempt: 0,
        };
        let (mut reader, mut writer) =
            transport::open(Box::new(far), role, None, MAX_FRAME, TIMEOUT)
                .await
                .unwrap();
        let hello = dialer.with_state(|state| {
            let (_, start) = state.open_link(address(1));
            state.hello(start)
        });
        transport::send_frame(&mut writer, hello, TIMEOUT)
            .await
            .unwrap();
        transport::handshake_frame(&mut reader, TIMEOUT)
            .await
            .unwrap();

        let result = served.await.unwrap();
        let silence = opened.elapsed();
        assert!(matches!(result, Err(LinkError::Idle)), "{result:?}");
        let limit = silence_limit(&acceptor);
        assert!(
            silence >= limit && silence <= limit * 5 / 4,
            "closed after {silence:?}, the limit being {limit:?}"
        );
    }
}
