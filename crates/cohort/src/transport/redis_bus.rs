//! Links over Redis pub/sub, for nodes that cannot open ports to each other (feature `redis`).
//!
//! [`RedisBus`] is a [`Network`]: every node subscribes to a channel of its own, named after a
//! virtual address, and a link between two nodes is a virtual connection whose bytes travel as
//! messages published to the other node's channel. Everything above the byte stream is the TCP
//! mesh's, unchanged: the preamble and hello, per-node sequence numbers, gap detection and
//! replay from the sender's ring, SWIM, confirmations and leases.
//!
//! Redis pub/sub delivers the messages one connection publishes in order, and drops them when a
//! subscriber's connection breaks. So a node publishes through one connection, and when its
//! subscription breaks it resets every virtual connection (as a TCP reset would): the links
//! reconnect, the hello says where each stream resumes, and the sender replays what was lost, or
//! the receiver counts a gap and flushes. A publish that reaches no subscriber (the peer is gone)
//! resets the connection too.
//!
//! Discovery: a node registers its virtual address in a Redis sorted set when it binds, scored
//! with the time, and renews it every [`REGISTRATION_RENEWAL`]; any seed resolves to the addresses
//! renewed within [`REGISTRATION_TTL`], so `seeds(["redis"])` finds the others and stops naming a
//! node that died (older entries are deleted as they are found). Times are the nodes' wall
//! clocks, so a clock off by more than the TTL minus the renewal period hides its node. A node
//! that shuts down removes its entry, once its links published their last bytes (its leave).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{BoxConnection, BoxFuture, Listener, Network};
use crate::clock::millis;
use crate::transport::backoff::Backoff;

/// Bytes a virtual connection buffers in each direction before the writer waits.
const PIPE_BYTES: usize = 256 * 1024;

/// Reads from the application's side of a link are published in chunks of at most this much.
const CHUNK_BYTES: usize = 64 * 1024;

/// Messages that may wait for a link's reader; past this the link is reset, as an overflowing
/// TCP link is, rather than buffer without bound.
const ARRIVALS_QUEUED: usize = 4096;

/// Links a node keeps open on the bus, both ways: openings past it are ignored, so a stranger
/// publishing openings on a node's channel costs it a bounded amount of memory. (A node links
/// to each peer once each way; its inbound links are capped lower still, by
/// `max_inbound_links`.)
const MAX_LINKS: usize = 2048;

/// How often a node renews its registration.
pub(crate) const REGISTRATION_RENEWAL: Duration = Duration::from_secs(10);

/// How long a registration lasts unrenewed.
pub(crate) const REGISTRATION_TTL: Duration = Duration::from_secs(60);

/// How long a closing bus waits for its links to publish their last bytes (a node's leave) and
/// for its registration to be removed; past it, what is left is dropped (Redis is unreachable,
/// and the peers notice by their own timeouts).
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Links over Redis pub/sub instead of TCP; give each node its own with
/// [`ClusterBuilder::network`](crate::ClusterBuilder::network).
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cluster = cohort::Cluster::builder()
///     .network(cohort::RedisBus::new("redis://127.0.0.1:6379")?)
///     .seeds(["redis"])
///     .start()
///     .await?;
/// # Ok(()) }
/// ```
pub struct RedisBus {
    client: redis::Client,
    namespace: Arc<str>,
    hub: Arc<Mutex<Option<Arc<Hub>>>>,
}

impl RedisBus {
    /// A bus on the Redis server at `url` (`redis://host:port`), in the namespace `cohort`.
    pub fn new(url: &str) -> Result<Self, redis::RedisError> {
        Ok(Self {
            client: redis::Client::open(url)?,
            namespace: Arc::from("cohort"),
            hub: Arc::default(),
        })
    }

    /// Puts the bus's channels and member set under `namespace`, so that several clusters can
    /// share one Redis server.
    #[must_use]
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = Arc::from(namespace);
        self
    }

    fn registry_key(&self) -> String {
        format!("{}:registry", self.namespace)
    }
}

impl Network for RedisBus {
    fn bind(&self, addr: SocketAddr) -> BoxFuture<'_, io::Result<Box<dyn Listener>>> {
        Box::pin(async move {
            let mut publisher = self
                .client
                .get_multiplexed_async_connection()
                .await
                .map_err(redis_error)?;
            let registry = self.registry_key();
            let me = claim_address(&mut publisher, &registry, addr).await?;
            let (accepted_tx, accepted) = mpsc::unbounded_channel();
            let hub = Arc::new(Hub {
                me,
                namespace: Arc::clone(&self.namespace),
                publisher,
                links: Mutex::default(),
                accepted: accepted_tx,
                tasks: TaskTracker::new(),
                listening: CancellationToken::new(),
                abandon: CancellationToken::new(),
            });
            let subscription = subscribe(&self.client, &hub.channel(me)).await?;
            let listening = hub.listening.clone();
            let reader = read_messages(self.client.clone(), Arc::clone(&hub), subscription);
            let renewal = renew_registration(hub.publisher.clone(), registry, me);
            hub.tasks.spawn(async move {
                tokio::select! {
                    biased;
                    () = listening.cancelled() => {}
                    () = reader => {}
                    () = renewal => {}
                }
            });
            *self.hub.lock() = Some(Arc::clone(&hub));
            Ok(Box::new(BusListener {
                me,
                accepted: tokio::sync::Mutex::new(accepted),
                listening: hub.listening.clone(),
            }) as Box<dyn Listener>)
        })
    }

    fn connect(&self, addr: SocketAddr) -> BoxFuture<'_, io::Result<BoxConnection>> {
        Box::pin(async move {
            let hub = self.hub.lock().clone().ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotConnected, "the bus is not bound yet")
            })?;
            let link = LinkId {
                peer: addr,
                id: rand::random(),
                dialed_by_peer: false,
            };
            let connection = hub.open_pipe(link);
            let reached = hub
                .publish(
                    addr,
                    &Message::Open {
                        from: hub.me,
                        link: link.id,
                    },
                )
                .await?;
            if reached == 0 {
                hub.forget(&link);
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!("no node listens on {addr} on the bus"),
                ));
            }
            Ok(connection)
        })
    }

    /// Links go through the Redis server: private only if it is on this machine.
    fn is_private(&self, _bound: SocketAddr) -> bool {
        match self.client.get_connection_info().addr() {
            redis::ConnectionAddr::Tcp(host, _) => {
                host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
            }
            redis::ConnectionAddr::Unix(_) => true,
            _ => false,
        }
    }

    /// Waits (two seconds at most) until every link published its last bytes, and
    /// removes this node from the registry, so that seeds stop resolving to it at once.
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let Some(hub) = self.hub.lock().take() else {
                return;
            };
            hub.listening.cancel();
            hub.tasks.close();
            let unregister = async {
                let removed: Result<u64, _> = redis::cmd("ZREM")
                    .arg(self.registry_key())
                    .arg(hub.me.to_string())
                    .query_async(&mut hub.publisher.clone())
                    .await;
                if let Err(error) = removed {
                    tracing::warn!(me = %hub.me, %error, "cannot remove the bus registration");
                }
            };
            let done = async { tokio::join!(hub.tasks.wait(), unregister) };
            if tokio::time::timeout(CLOSE_GRACE, done).await.is_err() {
                hub.abandon.cancel();
                hub.tasks.wait().await;
            }
        })
    }

    fn resolve<'a>(&'a self, _seed: &'a str) -> BoxFuture<'a, io::Result<Vec<SocketAddr>>> {
        Box::pin(async move {
            let mut connection = self
                .client
                .get_multiplexed_async_connection()
                .await
                .map_err(redis_error)?;
            let oldest = unix_millis().saturating_sub(millis(REGISTRATION_TTL));
            let (members,): (Vec<String>,) = redis::pipe()
                .cmd("ZREMRANGEBYSCORE")
                .arg(self.registry_key())
                .arg("-inf")
                .arg(format!("({oldest}"))
                .ignore()
                .cmd("ZRANGEBYSCORE")
                .arg(self.registry_key())
                .arg(oldest)
                .arg("+inf")
                .query_async(&mut connection)
                .await
                .map_err(redis_error)?;
            Ok(members.iter().filter_map(|m| m.parse().ok()).collect())
        })
    }
}

/// A message on a node's channel.
#[derive(Serialize, Deserialize)]
enum Message<'a> {
    /// `from` dials the receiver over a new link.
    Open { from: SocketAddr, link: u64 },
    /// Bytes of a link; `to_dialed` says whether they travel from the dialer to the dialed.
    Data {
        from: SocketAddr,
        link: u64,
        to_dialed: bool,
        #[serde(borrow)]
        bytes: &'a [u8],
    },
    /// The sender closed its side of a link.
    Close {
        from: SocketAddr,
        link: u64,
        to_dialed: bool,
    },
}

/// One end's name for a link: the other end, the dialer's random id, and which end dialed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct LinkId {
    peer: SocketAddr,
    id: u64,
    dialed_by_peer: bool,
}

/// A node's end of the bus: its channel, its publishing connection and its open links.
struct Hub {
    me: SocketAddr,
    namespace: Arc<str>,
    publisher: MultiplexedConnection,
    /// Where bytes that arrive for each open link go.
    links: Mutex<HashMap<LinkId, mpsc::Sender<Bytes>>>,
    accepted: mpsc::UnboundedSender<(BoxConnection, SocketAddr)>,
    /// The subscription's reader, the registration's renewal and every link's pump, so that
    /// closing can wait for them.
    tasks: TaskTracker,
    /// Cancelled when the node stops listening: the reader and the renewal end.
    listening: CancellationToken,
    /// Cancelled when closing gave up waiting: the pumps end too.
    abandon: CancellationToken,
}

impl Hub {
    fn channel(&self, node: SocketAddr) -> String {
        format!("{}:node:{node}", self.namespace)
    }

    /// Publishes `message` to `to`'s channel; returns how many subscribers received it.
    async fn publish(&self, to: SocketAddr, message: &Message<'_>) -> io::Result<u64> {
        let payload = postcard::to_allocvec(message).map_err(io::Error::other)?;
        redis::cmd("PUBLISH")
            .arg(self.channel(to))
            .arg(payload)
            .query_async(&mut self.publisher.clone())
            .await
            .map_err(redis_error)
    }

    /// Registers `link` and returns the application's end of it; a task moves the bytes.
    fn open_pipe(self: &Arc<Self>, link: LinkId) -> BoxConnection {
        let (application, ours) = tokio::io::duplex(PIPE_BYTES);
        let (arrivals_tx, arrivals) = mpsc::channel(ARRIVALS_QUEUED);
        self.links.lock().insert(link, arrivals_tx);
        self.tasks
            .spawn(Arc::clone(self).pump(link, ours, arrivals));
        Box::new(application)
    }

    fn forget(&self, link: &LinkId) {
        self.links.lock().remove(link);
    }

    /// Moves one link's bytes both ways until either side closes or the bus loses it.
    async fn pump(
        self: Arc<Self>,
        link: LinkId,
        ours: DuplexStream,
        mut arrivals: mpsc::Receiver<Bytes>,
    ) {
        let (mut from_application, mut to_application) = tokio::io::split(ours);
        let to_dialed = !link.dialed_by_peer;
        let outgoing = async {
            // Grown as bytes arrive, not filled up front: a link that never carries anything
            // (one of many opened by a stranger) costs next to no memory.
            let mut buf = BytesMut::new();
            loop {
                buf.clear();
                buf.reserve(CHUNK_BYTES);
                let n = match from_application.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => {
                        let close = Message::Close {
                            from: self.me,
                            link: link.id,
                            to_dialed,
                        };
                        // The peer notices a lost close by its own timeouts.
                        let _ = self.publish(link.peer, &close).await;
                        return;
                    }
                    Ok(n) => n,
                };
                let data = Message::Data {
                    from: self.me,
                    link: link.id,
                    to_dialed,
                    bytes: &buf[..n],
                };
                // Nobody received it: the peer is gone or resubscribed, so the stream has a hole.
                if !matches!(self.publish(link.peer, &data).await, Ok(reached) if reached > 0) {
                    return;
                }
            }
        };
        let incoming = async {
            while let Some(bytes) = arrivals.recv().await {
                if to_application.write_all(&bytes).await.is_err() {
                    return;
                }
            }
        };
        tokio::select! {
            biased;
            () = self.abandon.cancelled() => {}
            () = outgoing => {}
            () = incoming => {}
        }
        self.forget(&link);
    }

    /// Handles one message from this node's channel.
    fn receive(self: &Arc<Self>, payload: &[u8]) {
        let Ok(message) = postcard::from_bytes::<Message<'_>>(payload) else {
            tracing::debug!(node = %self.me, "ignoring a malformed bus message");
            return;
        };
        match message {
            Message::Open { from, link } => {
                if self.links.lock().len() >= MAX_LINKS {
                    tracing::warn!(node = %self.me, %from, "too many bus links; ignoring an opening");
                    return;
                }
                let connection = self.open_pipe(LinkId {
                    peer: from,
                    id: link,
                    dialed_by_peer: true,
                });
                // The listener is gone: the link closes with the dropped connection.
                let _ = self.accepted.send((connection, from));
            }
            Message::Data {
                from,
                link,
                to_dialed,
                bytes,
            } => {
                let id = LinkId {
                    peer: from,
                    id: link,
                    dialed_by_peer: to_dialed,
                };
                let mut links = self.links.lock();
                if let Some(arrivals) = links.get(&id)
                    && arrivals.try_send(Bytes::copy_from_slice(bytes)).is_err()
                {
                    // Closed, or the reader fell too far behind: the link is reset.
                    links.remove(&id);
                }
            }
            Message::Close {
                from,
                link,
                to_dialed,
            } => {
                self.forget(&LinkId {
                    peer: from,
                    id: link,
                    dialed_by_peer: to_dialed,
                });
            }
        }
    }
}

/// Reads this node's channel; when the subscription breaks, resets every link (messages were
/// lost) and subscribes again, with backoff.
async fn read_messages(client: redis::Client, hub: Arc<Hub>, first: redis::aio::PubSub) {
    let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_secs(2));
    let mut subscription = Some(first);
    loop {
        if let Some(current) = subscription.take() {
            backoff.reset();
            let mut messages = current.into_on_message();
            while let Some(message) = messages.next().await {
                hub.receive(message.get_payload_bytes());
            }
            tracing::warn!(node = %hub.me, "lost the bus subscription; resetting every link");
        }
        hub.links.lock().clear();
        let delay = backoff.next_delay(&mut rand::rng());
        tokio::time::sleep(delay).await;
        subscription = subscribe(&client, &hub.channel(hub.me)).await.ok();
    }
}

async fn subscribe(client: &redis::Client, channel: &str) -> io::Result<redis::aio::PubSub> {
    let mut subscription = client.get_async_pubsub().await.map_err(redis_error)?;
    subscription.subscribe(channel).await.map_err(redis_error)?;
    Ok(subscription)
}

/// Renews `me` in the registry every [`REGISTRATION_RENEWAL`]; a failed renewal is retried at
/// the next one.
async fn renew_registration(
    mut publisher: MultiplexedConnection,
    registry: String,
    me: SocketAddr,
) {
    loop {
        tokio::time::sleep(REGISTRATION_RENEWAL).await;
        let renewed: Result<u64, _> = redis::cmd("ZADD")
            .arg(&registry)
            .arg(unix_millis())
            .arg(me.to_string())
            .query_async(&mut publisher)
            .await;
        if let Err(error) = renewed {
            tracing::warn!(%me, %error, "cannot renew the bus registration");
        }
    }
}

/// Milliseconds since the Unix epoch by this machine's clock.
fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `requested`, or for port 0 a free virtual port on its address, added to the registry.
async fn claim_address(
    publisher: &mut MultiplexedConnection,
    members: &str,
    requested: SocketAddr,
) -> io::Result<SocketAddr> {
    let ip = match requested.ip() {
        ip if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        ip => ip,
    };
    loop {
        let port = match requested.port() {
            0 => rand::random_range(1024..=u16::MAX),
            port => port,
        };
        let addr = SocketAddr::new(ip, port);
        let mut add = redis::cmd("ZADD");
        add.arg(members);
        if requested.port() == 0 {
            add.arg("NX");
        }
        let added: u64 = add
            .arg(unix_millis())
            .arg(addr.to_string())
            .query_async(publisher)
            .await
            .map_err(redis_error)?;
        // A fixed address is the caller's to reuse (a restart); a random one must be new.
        if added == 1 || requested.port() != 0 {
            return Ok(addr);
        }
    }
}

struct BusListener {
    me: SocketAddr,
    accepted: tokio::sync::Mutex<mpsc::UnboundedReceiver<(BoxConnection, SocketAddr)>>,
    /// Ends the subscription's reader and the registration's renewal.
    listening: CancellationToken,
}

impl Listener for BusListener {
    fn accept(&self) -> BoxFuture<'_, io::Result<(BoxConnection, SocketAddr)>> {
        Box::pin(async move {
            self.accepted
                .lock()
                .await
                .recv()
                .await
                .ok_or_else(|| io::Error::new(io::ErrorKind::ConnectionAborted, "the bus stopped"))
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.me)
    }
}

impl Drop for BusListener {
    fn drop(&mut self) {
        self.listening.cancel();
    }
}

fn redis_error(error: redis::RedisError) -> io::Error {
    io::Error::other(error)
}
