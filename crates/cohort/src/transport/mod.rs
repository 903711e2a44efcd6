//! Links between nodes: connecting, the preamble exchange, the Noise handshake when the cluster has
//! keys (`secure`), framed halves and reconnect delays.
//!
//! A link is one TCP connection over which one node (the dialer) sends its events to another (the
//! acceptor). Every node dials every peer it knows, so each pair of nodes shares two links, one per
//! direction; neither side ever has to decide which of two crossing connections to keep. What the
//! frames mean is the `cluster`'s business; this module moves them.
//!
//! Connections come from a [`Network`]: [`Tcp`] (tokio's sockets) unless the application gives
//! another, such as a simulated network in deterministic tests.

pub(crate) mod backoff;
#[cfg(feature = "redis")]
mod redis_bus;
mod secure;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

pub(crate) use backoff::Backoff;
#[cfg(feature = "redis")]
pub use redis_bus::RedisBus;
pub(crate) use secure::Keyring;
pub use secure::{ClusterKey, KeyError};
pub use secure::{MESSAGE_HEADER, message_header, message_len};

use crate::wire::{self, PREAMBLE_LEN, WireError};

/// A byte stream between two nodes.
pub trait Connection: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Connection for T {}

/// A boxed [`Connection`].
pub type BoxConnection = Box<dyn Connection>;

/// A boxed future, as [`Network`] and [`Listener`] return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Accepts connections from peers.
pub trait Listener: Send + Sync + 'static {
    /// The next connection and the address it came from.
    fn accept(&self) -> BoxFuture<'_, io::Result<(BoxConnection, SocketAddr)>>;
    /// The address the listener is bound to.
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

/// Where a node's connections come from.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cluster = cohort::Cluster::builder().network(cohort::Tcp).start().await?;
/// # Ok(()) }
/// ```
pub trait Network: Send + Sync + 'static {
    /// Binds a listener.
    fn bind(&self, addr: SocketAddr) -> BoxFuture<'_, io::Result<Box<dyn Listener>>>;
    /// Connects to a peer.
    fn connect(&self, addr: SocketAddr) -> BoxFuture<'_, io::Result<BoxConnection>>;

    /// Resolves a seed given as `host:port` (a DNS name may stand for several nodes).
    ///
    /// Defaults to: the system resolver, through tokio.
    fn resolve<'a>(&'a self, seed: &'a str) -> BoxFuture<'a, io::Result<Vec<SocketAddr>>> {
        Box::pin(async move { Ok(tokio::net::lookup_host(seed).await?.collect()) })
    }

    /// Whether a node bound at `bound` on this network can be reached from this machine only. A
    /// node that can be reached from elsewhere refuses to start without cluster keys unless told
    /// it may ([`ClusterBuilder::insecure`](crate::ClusterBuilder::insecure)).
    ///
    /// Defaults to: whether `bound` is a loopback address.
    fn is_private(&self, bound: SocketAddr) -> bool {
        bound.ip().is_loopback()
    }

    /// Ends what this network runs for its node, once the node stopped using it (its listener
    /// and links are gone), and waits until that is done: a node's
    /// [`shutdown`](crate::Cluster::shutdown) awaits this after its own tasks ended.
    ///
    /// Defaults to: nothing to end.
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// The operating system's TCP, through tokio, with Nagle's algorithm off. The default.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tcp;

impl Network for Tcp {
    fn bind(&self, addr: SocketAddr) -> BoxFuture<'_, io::Result<Box<dyn Listener>>> {
        Box::pin(async move {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            Ok(Box::new(TcpListener(listener)) as Box<dyn Listener>)
        })
    }

    fn connect(&self, addr: SocketAddr) -> BoxFuture<'_, io::Result<BoxConnection>> {
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream) as BoxConnection)
        })
    }
}

struct TcpListener(tokio::net::TcpListener);

impl Listener for TcpListener {
    fn accept(&self) -> BoxFuture<'_, io::Result<(BoxConnection, SocketAddr)>> {
        Box::pin(async move {
            let (stream, from) = self.0.accept().await?;
            stream.set_nodelay(true)?;
            Ok((Box::new(stream) as BoxConnection, from))
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// The receiving half of a link: length-delimited frames.
pub(crate) type FrameReader = FramedRead<ReadHalf<BoxConnection>, LengthDelimitedCodec>;
/// The sending half of a link.
pub(crate) type FrameWriter = FramedWrite<WriteHalf<BoxConnection>, LengthDelimitedCodec>;

/// Why a link failed or was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkError {
    /// The connection failed or broke.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The other end sent something this node refuses.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The other end did not complete its part of the handshake in time.
    #[error("handshake timed out")]
    Timeout,
    /// The other end sent nothing, not even a ping, for too long.
    #[error("idle for too long")]
    Idle,
    /// The other end closed the link during the handshake.
    #[error("closed during the handshake")]
    Closed,
    /// The other end is not admitted as a member (see the member table's rules).
    #[error("not admitted: {0}")]
    Refused(Box<dyn std::error::Error + Send + Sync>),
    /// The other end failed to authenticate: it holds none of this node's cluster keys, or the
    /// handshake was malformed.
    #[error("authentication failed: {0}")]
    Auth(String),
}

/// Which end of a new link this node is.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Role<'a> {
    /// It dialed, as the node named `me`; `attempt` picks the key (the primary first, the next
    /// one after each failure).
    Dialer { me: &'a str, attempt: usize },
    /// It accepted.
    Acceptor,
}

/// The largest frame read before a link's hello has been accepted.
pub(crate) const MAX_HELLO_BYTES: usize = 64 << 10;

/// Exchanges preambles over a fresh connection, runs the Noise handshake if this node has
/// cluster keys, and splits the link into framed halves.
///
/// Both ends call this; each sends its preamble first, so neither waits on the other. Until the
/// caller [accepts the peer's hello](accept_frames), frames are limited to [`MAX_HELLO_BYTES`]:
/// what an unauthenticated peer can make a node read is small.
pub(crate) async fn open(
    mut stream: BoxConnection,
    role: Role<'_>,
    keyring: Option<&Keyring>,
    max_frame_bytes: usize,
    timeout: Duration,
) -> Result<(FrameReader, FrameWriter), LinkError> {
    let keyed = keyring.is_some();
    tokio::time::timeout(timeout, stream.write_all(&wire::preamble(keyed)))
        .await
        .map_err(|_| LinkError::Timeout)??;
    let mut theirs = [0; PREAMBLE_LEN];
    tokio::time::timeout(timeout, stream.read_exact(&mut theirs))
        .await
        .map_err(|_| LinkError::Timeout)??;
    wire::check_preamble(theirs, keyed)?;
    if let Some(keyring) = keyring {
        let keys = keyring.keys();
        let session = match role {
            Role::Dialer { me, attempt } => {
                let key = &keys[attempt % keys.len()];
                secure::dial(&mut stream, me, key, timeout).await?
            }
            Role::Acceptor => secure::accept(&mut stream, &keys, timeout).await?.0,
        };
        stream = Box::new(secure::NoiseStream::new(stream, session));
    }
    let (read, write) = tokio::io::split(stream);
    Ok((
        FramedRead::new(read, wire::codec(MAX_HELLO_BYTES.min(max_frame_bytes))),
        FramedWrite::new(write, wire::codec(max_frame_bytes)),
    ))
}

/// The peer's hello was accepted: frames up to `max_frame_bytes` are read from now on.
pub(crate) fn accept_frames(reader: &mut FrameReader, max_frame_bytes: usize) {
    reader.decoder_mut().set_max_frame_length(max_frame_bytes);
}

/// The next frame body from `reader`; `Ok(None)` when the other end closed cleanly.
pub(crate) async fn next_frame(reader: &mut FrameReader) -> Result<Option<BytesMut>, LinkError> {
    match reader.next().await {
        None => Ok(None),
        Some(Ok(body)) => Ok(Some(body)),
        // The codec reports an oversized length prefix as InvalidData.
        Some(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
            Err(WireError::Framing(e).into())
        }
        Some(Err(e)) => Err(e.into()),
    }
}

/// Like [`next_frame`], but a close or a silence longer than `timeout` is an error.
pub(crate) async fn handshake_frame(
    reader: &mut FrameReader,
    timeout: Duration,
) -> Result<BytesMut, LinkError> {
    tokio::time::timeout(timeout, next_frame(reader))
        .await
        .map_err(|_| LinkError::Timeout)??
        .ok_or(LinkError::Closed)
}

/// Sends one frame and flushes it, within `timeout`.
pub(crate) async fn send_frame(
    writer: &mut FrameWriter,
    frame: Bytes,
    timeout: Duration,
) -> Result<(), LinkError> {
    use futures_util::SinkExt;
    tokio::time::timeout(timeout, writer.send(frame))
        .await
        .map_err(|_| LinkError::Timeout)??;
    Ok(())
}
