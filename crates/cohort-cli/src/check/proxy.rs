//! The fault proxy: every peer link between the checked nodes passes through it.
//!
//! Each node advertises the proxy's address for it instead of its own, so every link to node `j`
//! arrives at proxy port `j`, which forwards to wherever `j` listens now (it moves when `j` is
//! restarted). The nodes' links are keyed: after the preambles (the library's
//! [`PREAMBLE_LEN`] bytes each way), the dialer sends its name in the clear, then every handshake
//! and transport message travels after a [`MESSAGE_HEADER`] that gives its length (read and
//! written with the library's own `message_len` and `message_header`). The proxy knows which node dialed from that name and then forwards whole messages, so it can
//! cut, drop or delay them per pair of nodes: a cut link swallows every message (the stream stays
//! open and stuck, as across a real partition), a slow one holds each message back for a while,
//! in order, and a lossy one drops a share of the transport messages. A dropped message makes the
//! next one fail to decrypt, so the receiver closes the link and it is dialed again: loss on an
//! encrypted link is a broken link, as a TCP stream that lost a segment for good would be.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cohort::link::{MESSAGE_HEADER, PREAMBLE_LEN, message_header, message_len};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// What the proxy does to links now.
#[derive(Debug, Default)]
struct Rules {
    /// Pairs of nodes (either direction) whose messages are swallowed.
    cut: HashSet<(usize, usize)>,
    /// The share of transport messages dropped on every link.
    drop: f64,
    /// How long every frame is held back.
    delay: Duration,
}

impl Rules {
    fn is_cut(&self, a: usize, b: usize) -> bool {
        self.cut.contains(&(a, b)) || self.cut.contains(&(b, a))
    }
}

/// The proxy's state, shared by its tasks and the fault scheduler.
pub(crate) struct Proxy {
    names: Vec<String>,
    targets: Mutex<Vec<Option<SocketAddr>>>,
    rules: Mutex<Rules>,
    addrs: Vec<SocketAddr>,
    seed: u64,
}

impl Proxy {
    /// Listens on one loopback port per node named in `names`.
    pub(crate) async fn start(names: Vec<String>, seed: u64) -> anyhow::Result<Arc<Self>> {
        let mut listeners = Vec::new();
        for _ in &names {
            listeners.push(
                TcpListener::bind("127.0.0.1:0")
                    .await
                    .context("the fault proxy cannot listen")?,
            );
        }
        let addrs = listeners
            .iter()
            .map(TcpListener::local_addr)
            .collect::<Result<_, _>>()?;
        let proxy = Arc::new(Self {
            targets: Mutex::new(vec![None; names.len()]),
            names,
            rules: Mutex::default(),
            addrs,
            seed,
        });
        for (to, listener) in listeners.into_iter().enumerate() {
            let proxy = Arc::clone(&proxy);
            tokio::spawn(async move { proxy.accept(to, listener).await });
        }
        Ok(proxy)
    }

    /// The address node `i` advertises: its proxy port.
    pub(crate) fn addr(&self, i: usize) -> SocketAddr {
        self.addrs[i]
    }

    /// Node `i` now listens at `addr`.
    pub(crate) fn set_target(&self, i: usize, addr: SocketAddr) {
        self.targets.lock()[i] = Some(addr);
    }

    /// Swallows every message between the nodes of `side` and all the others.
    pub(crate) fn partition(&self, side: &[usize]) {
        let mut rules = self.rules.lock();
        for &a in side {
            for b in (0..self.names.len()).filter(|b| !side.contains(b)) {
                rules.cut.insert((a, b));
            }
        }
    }

    /// Drops `share` of the transport messages on every link.
    pub(crate) fn drop_messages(&self, share: f64) {
        self.rules.lock().drop = share;
    }

    /// Holds every message back for `delay`.
    pub(crate) fn delay(&self, delay: Duration) {
        self.rules.lock().delay = delay;
    }

    /// Undoes every fault.
    pub(crate) fn heal(&self) {
        *self.rules.lock() = Rules::default();
    }

    async fn accept(self: Arc<Self>, to: usize, listener: TcpListener) {
        let mut accepted = 0_u64;
        while let Ok((stream, _)) = listener.accept().await {
            accepted += 1;
            let proxy = Arc::clone(&self);
            let seed = self.seed ^ ((to as u64) << 32) ^ accepted;
            // A link ends with an error whenever a node is killed or gives up on a stuck link.
            tokio::spawn(async move { proxy.link(to, stream, seed).await });
        }
    }

    /// Carries one link to node `to`. The preambles cross first (each side waits for the
    /// other's before its handshake); the dialer's name then says who dialed.
    async fn link(self: Arc<Self>, to: usize, dialer: TcpStream, seed: u64) -> anyhow::Result<()> {
        let target = self.targets.lock()[to].context("the node is not running")?;
        let acceptor = TcpStream::connect(target).await?;
        let (mut from_dialer, mut to_dialer) = dialer.into_split();
        let (mut from_acceptor, mut to_acceptor) = acceptor.into_split();
        let mut dialer_preamble = [0; PREAMBLE_LEN];
        let mut acceptor_preamble = [0; PREAMBLE_LEN];
        tokio::try_join!(
            from_dialer.read_exact(&mut dialer_preamble),
            from_acceptor.read_exact(&mut acceptor_preamble),
        )?;
        tokio::try_join!(
            to_acceptor.write_all(&dialer_preamble),
            to_dialer.write_all(&acceptor_preamble),
        )?;
        let name = read_message(&mut from_dialer).await?;
        let from = self
            .names
            .iter()
            .position(|known| known.as_bytes() == name)
            .context("a link from no checked node")?;
        write_message(&mut to_acceptor, &name).await?;
        let forward = Arc::clone(&self).pump(from, to, from_dialer, to_acceptor, seed);
        let backward = self.pump(to, from, from_acceptor, to_dialer, seed.rotate_left(1));
        tokio::select! {
            result = forward => result,
            result = backward => result,
        }
    }

    /// Moves messages from `src` to `dst` under the rules for the pair `(a, b)`. The first one is
    /// the handshake's: never dropped, so a lossy link still comes up.
    async fn pump(
        self: Arc<Self>,
        a: usize,
        b: usize,
        mut src: OwnedReadHalf,
        mut dst: OwnedWriteHalf,
        seed: u64,
    ) -> anyhow::Result<()> {
        let mut rng = StdRng::seed_from_u64(seed);
        let (queue, mut due) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
        let writer = async move {
            while let Some((at, frame)) = due.recv().await {
                tokio::time::sleep_until(at).await;
                write_message(&mut dst, &frame).await?;
            }
            anyhow::Ok(())
        };
        let reader = async move {
            for n in 0_u64.. {
                let frame = read_message(&mut src).await?;
                let (pass, delay) = {
                    let rules = self.rules.lock();
                    let lost = n > 0 && rng.random_bool(rules.drop);
                    (!rules.is_cut(a, b) && !lost, rules.delay)
                };
                if pass && queue.send((Instant::now() + delay, frame)).is_err() {
                    break;
                }
            }
            anyhow::Ok(())
        };
        tokio::select! {
            result = writer => result,
            result = reader => result,
        }
    }
}

async fn read_message(src: &mut OwnedReadHalf) -> anyhow::Result<Vec<u8>> {
    let mut header = [0; MESSAGE_HEADER];
    src.read_exact(&mut header).await?;
    let mut body = vec![0; message_len(header)];
    src.read_exact(&mut body).await?;
    Ok(body)
}

async fn write_message(dst: &mut OwnedWriteHalf, body: &[u8]) -> anyhow::Result<()> {
    let header = message_header(body.len()).context("a message too long for its header")?;
    dst.write_all(&header).await?;
    dst.write_all(body).await?;
    Ok(())
}
