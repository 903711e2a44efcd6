//! Entry points for the fuzz targets in `fuzz/`, compiled only under `--cfg fuzzing` (which
//! `cargo fuzz` sets): decoders and state machines that take bytes from the network or the
//! database, reached without a socket.

use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::id::NodeId;
use crate::membership::{Identity, Membership};
use crate::{Cache, Cluster};

/// Decodes `bytes` as a frame body.
pub fn decode_frame(bytes: &[u8]) {
    let _ = crate::wire::decode(bytes);
}

/// Hands `bytes` to SWIM as a packet from a peer, then drains what it asks for.
pub fn swim_packet(bytes: &[u8]) {
    static MEMBERSHIP: OnceLock<Mutex<Membership>> = OnceLock::new();
    let membership = MEMBERSHIP.get_or_init(|| {
        let me = Identity::new(
            NodeId::from("fuzz"),
            SocketAddr::from(([127, 0, 0, 1], 1)),
            1,
        );
        Mutex::new(Membership::new(
            me,
            Duration::from_millis(500),
            Duration::from_secs(30),
            7,
        ))
    });
    let mut membership = membership.lock().unwrap_or_else(|e| e.into_inner());
    let _ = membership.receive(bytes);
    membership.drain();
}

/// Applies `text` as a change-log row's key to caches keyed by integers and by strings.
pub fn logged_key(text: &str) {
    static CACHES: OnceLock<(
        tokio::runtime::Runtime,
        Cluster,
        Cache<i64, u8>,
        Cache<String, u8>,
    )> = OnceLock::new();
    let (_, _, numbers, names) = CACHES.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the fuzzed node");
        let (cluster, numbers, names) = runtime.block_on(async {
            let cluster = Cluster::builder()
                .start()
                .await
                .expect("a fuzzed node starts");
            let numbers = cluster.cache::<i64, u8>("numbers").build_for_fuzzing();
            let names = cluster.cache::<String, u8>("names").build_for_fuzzing();
            (cluster, numbers, names)
        });
        (runtime, cluster, numbers, names)
    });
    numbers.apply_logged_for_fuzzing(text);
    names.apply_logged_for_fuzzing(text);
}

/// Plays `bytes` to a node's protocol state machine as one peer's inbound link: a time step
/// (one byte, milliseconds), a length (two bytes, big-endian) and a frame body per record, the
/// first a hello.
pub fn node_link(bytes: &[u8]) {
    crate::node::play_link(bytes);
}

/// A seed for [`node_link`]: every seed frame, the hello first, 10 ms apart.
pub fn seed_node_link() -> Vec<u8> {
    let mut link = Vec::new();
    for frame in seed_frames() {
        link.push(10);
        link.extend_from_slice(&u16::try_from(frame.len()).unwrap_or(u16::MAX).to_be_bytes());
        link.extend_from_slice(&frame);
    }
    link
}

/// Frame bodies of every kind, as a node sends them: seeds for the frame decoder.
pub fn seed_frames() -> Vec<Vec<u8>> {
    use crate::wire::{Change, Event, Frame, Hello, PeerInfo};
    let addr = SocketAddr::from(([127, 0, 0, 1], 7001));
    let event = |change| {
        Frame::Event(Event {
            node: "a",
            incarnation: 1,
            seq: 1,
            cache: "users",
            change,
        })
    };
    [
        Frame::Hello(Hello {
            node: "a",
            incarnation: 1,
            listen: addr,
            seq: 0,
            replay_from: 1,
            peers: vec![PeerInfo {
                node: "b",
                incarnation: 2,
                addr,
            }],
        }),
        Frame::Peers(vec![PeerInfo {
            node: "c",
            incarnation: 3,
            addr,
        }]),
        event(Change::Invalidate { key: b"\x01" }),
        event(Change::Replicate {
            key: b"\x01",
            version: 2,
            value: b"\x03ada",
        }),
        event(Change::Intent { key: b"\x01" }),
        event(Change::Release { key: b"\x01" }),
        event(Change::InvalidateMany {
            keys: b"\x02\x01\x01\x01\x02",
        }),
        event(Change::Clear),
        event(Change::InvalidateTag { tag: "team" }),
        Frame::Ping { nonce: 1 },
        Frame::Pong {
            nonce: 1,
            incarnation: 1,
            seq: 1,
            heard: Some(vec!["a"]),
        },
        Frame::IntentAck { seq: 1 },
        Frame::Swim(b"\x00"),
        Frame::Leave,
    ]
    .iter()
    .map(|frame| frame.encode().to_vec())
    .collect()
}

/// What a keyless peer sends on a link it dialed: its preamble, then every seed frame, framed.
/// A seed for the listener (its first byte picks the keyless node).
pub fn seed_link() -> Vec<u8> {
    let mut link = vec![0];
    link.extend_from_slice(&crate::wire::preamble(false));
    for frame in seed_frames() {
        link.extend_from_slice(&(frame.len() as u32).to_be_bytes());
        link.extend_from_slice(&frame);
    }
    link
}
