//! turmoil's simulated TCP for the nodes, with two faults TCP itself never shows a simulation:
//! every connection of a host reset at once, and frames lost on the wire (a write silently
//! dropped, which the reader sees as a corrupt or gapped stream).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use cohort::{BoxConnection, BoxFuture, Listener, Network};
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The share of writes a lossy host drops, after the first, which it always drops.
const LOSS_RATE: f64 = 0.05;

/// turmoil's simulated TCP, with the faults of the host's [`Wire`].
pub(crate) struct SimNet(pub Arc<Wire>);

/// What the network does to one node's connections, switched by the simulation.
pub(crate) struct Wire {
    generation: AtomicU64,
    wakers: Mutex<Vec<std::sync::Weak<AtomicWaker>>>,
    lossy: AtomicBool,
    drop_next: AtomicBool,
    dropped: AtomicU64,
    rng: Mutex<StdRng>,
}

impl Wire {
    /// A wire whose losses are drawn from `seed`.
    pub(crate) fn new(seed: u64) -> Arc<Self> {
        Arc::new(Self {
            generation: AtomicU64::new(0),
            wakers: Mutex::default(),
            lossy: AtomicBool::new(false),
            drop_next: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
        })
    }

    /// Breaks every open connection, as a reset (RST) from the network would.
    pub(crate) fn reset(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let mut wakers = self.wakers.lock();
        for waker in wakers.drain(..).filter_map(|w| w.upgrade()) {
            waker.wake();
        }
    }

    /// Starts or stops dropping a share of the writes.
    pub(crate) fn set_lossy(&self, lossy: bool) {
        self.lossy.store(lossy, Ordering::SeqCst);
        self.drop_next.store(lossy, Ordering::SeqCst);
    }

    /// Writes dropped so far.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::SeqCst)
    }

    fn drops_write(&self) -> bool {
        let drops = self.lossy.load(Ordering::SeqCst)
            && (self.drop_next.swap(false, Ordering::SeqCst)
                || self.rng.lock().random_bool(LOSS_RATE));
        if drops {
            self.dropped.fetch_add(1, Ordering::SeqCst);
        }
        drops
    }

    fn wrap(self: &Arc<Self>, stream: turmoil::net::TcpStream) -> BoxConnection {
        let waker = Arc::new(AtomicWaker::new());
        self.wakers.lock().push(Arc::downgrade(&waker));
        Box::new(Faulty {
            stream,
            wire: Arc::clone(self),
            born: self.generation.load(Ordering::SeqCst),
            waker,
        })
    }
}

/// A connection that fails with `ConnectionReset` once its wire is reset, and loses writes while
/// it is lossy.
struct Faulty {
    stream: turmoil::net::TcpStream,
    wire: Arc<Wire>,
    born: u64,
    waker: Arc<AtomicWaker>,
}

impl Faulty {
    fn check(&self, cx: &Context<'_>) -> io::Result<()> {
        self.waker.register(cx.waker());
        if self.wire.generation.load(Ordering::SeqCst) == self.born {
            Ok(())
        } else {
            Err(io::ErrorKind::ConnectionReset.into())
        }
    }
}

impl AsyncRead for Faulty {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Faulty {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        if self.wire.drops_write() {
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

struct SimListener(turmoil::net::TcpListener, Arc<Wire>);

impl Network for SimNet {
    fn bind(&self, addr: SocketAddr) -> BoxFuture<'_, io::Result<Box<dyn Listener>>> {
        Box::pin(async move {
            let listener = turmoil::net::TcpListener::bind(addr).await?;
            Ok(Box::new(SimListener(listener, Arc::clone(&self.0))) as Box<dyn Listener>)
        })
    }

    fn connect(&self, addr: SocketAddr) -> BoxFuture<'_, io::Result<BoxConnection>> {
        Box::pin(async move {
            let stream = turmoil::net::TcpStream::connect(addr).await?;
            Ok(self.0.wrap(stream))
        })
    }

    /// Nothing outside the simulation reaches it.
    fn is_private(&self, _bound: SocketAddr) -> bool {
        true
    }
}

impl Listener for SimListener {
    fn accept(&self) -> BoxFuture<'_, io::Result<(BoxConnection, SocketAddr)>> {
        Box::pin(async move {
            let (stream, from) = self.0.accept().await?;
            Ok((self.1.wrap(stream), from))
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}
