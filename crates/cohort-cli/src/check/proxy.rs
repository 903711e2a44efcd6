//! The fault proxy: every peer link between the checked nodes passes through it.
//!
//! Each node advertises the proxy's address for it instead of its own, so every link to node `j`
//! arrives at proxy port `j`, which forwards to wherever `j` listens now (it moves when `j` is
//! restarted). The proxy knows which node dialed from the name in the link's first frame, the
//! dialer's hello, and then forwards whole frames, so it can cut, drop or delay them per pair of
//! nodes without corrupting the stream: a cut link swallows every frame (the stream stays open
//! and stuck, as across a real partition), a lossy one drops a share of frames, a slow one holds
//! each frame back for a while, in order.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Bytes before the first frame on each side of a link: `COHO` and a version.
const PREAMBLE: usize = 6;
/// Frames larger than this are not cohort's: the proxy closes the link.
const MAX_FRAME: usize = 64 << 20;

/// What the proxy does to links now.
#[derive(Debug, Default)]
struct Rules {
    /// Pairs of nodes (either direction) whose frames are swallowed.
    cut: HashSet<(usize, usize)>,
    /// The share of frames dropped on every link.
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

    /// Swallows every frame between the nodes of `side` and all the others.
    pub(crate) fn partition(&self, side: &[usize]) {
        let mut rules = self.rules.lock();
        for &a in side {
            for b in (0..self.names.len()).filter(|b| !side.contains(b)) {
                rules.cut.insert((a, b));
            }
        }
    }

    /// Drops `share` of the frames on every link.
    pub(crate) fn drop_frames(&self, share: f64) {
        self.rules.lock().drop = share;
    }

    /// Holds every frame back for `delay`.
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
    /// other's before saying hello); the dialer's hello then names it.
    async fn link(self: Arc<Self>, to: usize, dialer: TcpStream, seed: u64) -> anyhow::Result<()> {
        let target = self.targets.lock()[to].context("the node is not running")?;
        let acceptor = TcpStream::connect(target).await?;
        let (mut from_dialer, mut to_dialer) = dialer.into_split();
        let (mut from_acceptor, mut to_acceptor) = acceptor.into_split();
        let mut dialer_preamble = [0; PREAMBLE];
        let mut acceptor_preamble = [0; PREAMBLE];
        tokio::try_join!(
            from_dialer.read_exact(&mut dialer_preamble),
            from_acceptor.read_exact(&mut acceptor_preamble),
        )?;
        tokio::try_join!(
            to_acceptor.write_all(&dialer_preamble),
            to_dialer.write_all(&acceptor_preamble),
        )?;
        let hello = read_frame(&mut from_dialer).await?;
        let from = self
            .names
            .iter()
            .position(|name| hello_name(&hello) == Some(name.as_str()))
            .context("a link from no checked node")?;
        write_frame(&mut to_acceptor, &hello).await?;
        let forward = Arc::clone(&self).pump(from, to, from_dialer, to_acceptor, seed);
        let backward = self.pump(to, from, from_acceptor, to_dialer, seed.rotate_left(1));
        tokio::select! {
            result = forward => result,
            result = backward => result,
        }
    }

    /// Moves frames from `src` to `dst` under the rules for the pair `(a, b)`.
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
                write_frame(&mut dst, &frame).await?;
            }
            anyhow::Ok(())
        };
        let reader = async move {
            loop {
                let frame = read_frame(&mut src).await?;
                let (pass, delay) = {
                    let rules = self.rules.lock();
                    let pass = !rules.is_cut(a, b) && !rng.random_bool(rules.drop);
                    (pass, rules.delay)
                };
                if pass && queue.send((Instant::now() + delay, frame)).is_err() {
                    return anyhow::Ok(());
                }
            }
        };
        tokio::select! {
            result = writer => result,
            result = reader => result,
        }
    }
}

async fn read_frame(src: &mut OwnedReadHalf) -> anyhow::Result<Vec<u8>> {
    let len = src.read_u32().await? as usize;
    anyhow::ensure!(len <= MAX_FRAME, "a {len}-byte frame");
    let mut body = vec![0; len];
    src.read_exact(&mut body).await?;
    Ok(body)
}

async fn write_frame(dst: &mut OwnedWriteHalf, body: &[u8]) -> anyhow::Result<()> {
    let len = u32::try_from(body.len())?;
    dst.write_all(&len.to_be_bytes()).await?;
    dst.write_all(body).await?;
    Ok(())
}

/// The sender's name in a hello frame: postcard's variant index 0 (`Hello`), then the name as a
/// varint length and its bytes.
fn hello_name(body: &[u8]) -> Option<&str> {
    let (&variant, rest) = body.split_first()?;
    if variant != 0 {
        return None;
    }
    let (&len, rest) = rest.split_first()?;
    // Names up to 127 bytes fit a one-byte varint; the checker's names are short.
    if len >= 0x80 {
        return None;
    }
    std::str::from_utf8(rest.get(..usize::from(len))?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_name_from_a_hello() {
        let mut body = vec![0, 2];
        body.extend_from_slice(b"n1");
        body.extend_from_slice(&[1, 2, 3]);
        assert_eq!(hello_name(&body), Some("n1"));
        assert_eq!(hello_name(&[3, 2, b'n', b'1']), None, "not a hello");
        assert_eq!(hello_name(&[0, 5, b'n']), None, "truncated");
    }
}
