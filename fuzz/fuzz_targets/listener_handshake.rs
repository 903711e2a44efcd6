//! A node's listener as an unknown peer sees it: the input is everything a connection sends
//! (preamble, handshake, frames) before closing its side. Its first byte picks a keyless node or
//! one with a cluster key. The node must close the connection, or answer and carry on, and never
//! panic or hang.
#![no_main]

use std::io;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use cohort::{BoxConnection, BoxFuture, Cluster, ClusterKey, Listener, Network};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::runtime::Runtime;
use tokio::sync::{Mutex, mpsc};

/// A network whose only connections are the fuzzer's, handed over through a channel.
struct Feed(std::sync::Mutex<Option<mpsc::UnboundedReceiver<DuplexStream>>>);

struct FeedListener(Mutex<mpsc::UnboundedReceiver<DuplexStream>>);

impl Network for Feed {
    fn bind(&self, _addr: SocketAddr) -> BoxFuture<'_, io::Result<Box<dyn Listener>>> {
        let connections = self.0.lock().unwrap().take().expect("bound once");
        Box::pin(async move { Ok(Box::new(FeedListener(Mutex::new(connections))) as Box<dyn Listener>) })
    }

    fn connect(&self, _addr: SocketAddr) -> BoxFuture<'_, io::Result<BoxConnection>> {
        Box::pin(async { Err(io::ErrorKind::ConnectionRefused.into()) })
    }

    fn is_private(&self, _bound: SocketAddr) -> bool {
        true
    }
}

impl Listener for FeedListener {
    fn accept(&self) -> BoxFuture<'_, io::Result<(BoxConnection, SocketAddr)>> {
        Box::pin(async move {
            match self.0.lock().await.recv().await {
                Some(stream) => Ok((Box::new(stream) as BoxConnection, SocketAddr::from(([10, 0, 0, 2], 7000)))),
                None => std::future::pending().await,
            }
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(SocketAddr::from(([10, 0, 0, 1], 7000)))
    }
}

struct Target {
    runtime: Runtime,
    plain: mpsc::UnboundedSender<DuplexStream>,
    keyed: mpsc::UnboundedSender<DuplexStream>,
    _nodes: (Cluster, Cluster),
}

fn target() -> &'static Target {
    static TARGET: OnceLock<Target> = OnceLock::new();
    TARGET.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (plain, plain_rx) = mpsc::unbounded_channel();
        let (keyed, keyed_rx) = mpsc::unbounded_channel();
        let nodes = runtime.block_on(async {
            let start = |feed: mpsc::UnboundedReceiver<DuplexStream>, keys: Vec<ClusterKey>| async move {
                Cluster::builder()
                    .node_name("fuzzed")
                    .network(Feed(std::sync::Mutex::new(Some(feed))))
                    .cluster_keys(keys)
                    .handshake_timeout(Duration::from_millis(200))
                    .start()
                    .await
                    .unwrap()
            };
            let key: ClusterKey = "00".repeat(32).parse().unwrap();
            (start(plain_rx, Vec::new()).await, start(keyed_rx, vec![key]).await)
        });
        Target { runtime, plain, keyed, _nodes: nodes }
    })
}

libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    let Some((&mode, bytes)) = input.split_first() else {
        return;
    };
    let target = target();
    let (mut ours, theirs) = tokio::io::duplex(1 << 20);
    let feed = if mode % 2 == 0 { &target.plain } else { &target.keyed };
    feed.send(theirs).unwrap();
    target.runtime.block_on(async {
        ours.write_all(bytes).await.unwrap();
        ours.shutdown().await.unwrap();
        // The node answers or closes; either way it lets go of the connection in time.
        let mut reply = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), ours.read_to_end(&mut reply))
            .await
            .expect("the node let go of the connection")
            .ok();
    });
});
