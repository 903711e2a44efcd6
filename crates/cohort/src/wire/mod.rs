//! The wire format between nodes: a preamble, then length-delimited postcard frames.
//!
//! A link starts with a fixed [`PREAMBLE_LEN`]-byte preamble from each side: the magic bytes
//! `COHO`, the protocol version as a big-endian `u16`, and whether the sender's links are keyed
//! (1) or plain (0). It sits outside the framing so that a node can tell "not a cohort peer", "a
//! cohort peer speaking another version" and "a peer with (or without) cluster keys" apart before
//! decoding anything. A keyed link runs the Noise handshake next (`transport::secure`). After it, every [`Frame`] travels as a 4-byte big-endian length followed by
//! that many bytes of postcard. The length is checked against the node's maximum frame size
//! before anything is allocated for the frame.
//!
//! Frames borrow from the receive buffer: keys, values and names are decoded as slices, so
//! applying an event allocates only what the cache itself needs.

use std::net::SocketAddr;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio_util::codec::LengthDelimitedCodec;

/// The protocol version this build speaks. A peer with another version is refused.
pub(crate) const PROTOCOL_VERSION: u16 = 5;

/// Magic bytes that open every link.
const MAGIC: [u8; 4] = *b"COHO";

/// Length of the preamble each side sends first.
pub const PREAMBLE_LEN: usize = 7;

/// The preamble this build sends, for a node with cluster keys (`keyed`) or without.
pub(crate) fn preamble(keyed: bool) -> [u8; PREAMBLE_LEN] {
    let [hi, lo] = PROTOCOL_VERSION.to_be_bytes();
    [
        MAGIC[0],
        MAGIC[1],
        MAGIC[2],
        MAGIC[3],
        hi,
        lo,
        u8::from(keyed),
    ]
}

/// Checks a peer's preamble against this node's (`keyed` or not).
pub(crate) fn check_preamble(bytes: [u8; PREAMBLE_LEN], keyed: bool) -> Result<(), WireError> {
    if bytes[..4] != MAGIC {
        return Err(WireError::NotCohort);
    }
    match u16::from_be_bytes([bytes[4], bytes[5]]) {
        PROTOCOL_VERSION => {}
        version => {
            return Err(WireError::UnsupportedVersion {
                version,
                supported: PROTOCOL_VERSION,
            });
        }
    }
    match (bytes[6], keyed) {
        (1, true) | (0, false) => Ok(()),
        (0, true) => Err(WireError::Keys(
            "the peer has no cluster keys and this node does",
        )),
        (1, false) => Err(WireError::Keys(
            "the peer has cluster keys and this node has none",
        )),
        _ => Err(WireError::Keys("the peer's preamble names no key mode")),
    }
}

/// The codec for frames, rejecting any longer than `max_frame_bytes` before reading them.
pub(crate) fn codec(max_frame_bytes: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_type::<u32>()
        .max_frame_length(max_frame_bytes)
        .new_codec()
}

/// Everything one node says to another after the preamble.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) enum Frame<'a> {
    /// The first frame each side sends: who it is and whom it knows.
    #[serde(borrow)]
    Hello(Hello<'a>),
    /// Members the sender has met (or that changed address) since its hello.
    #[serde(borrow)]
    Peers(Vec<PeerInfo<'a>>),
    /// A change to one cache, originated by the sender.
    #[serde(borrow)]
    Event(Event<'a>),
    /// Asks the receiver to confirm; sent by a dialer on its link.
    Ping { nonce: u64 },
    /// Answers a ping, queued behind the sender's events on its own link: `seq` is the sender's
    /// latest event when it answered; `heard`, the members it heard from within twice the bound
    /// (its testimony: see `node::confirm`), or `None` when they did not fit half a frame.
    Pong {
        nonce: u64,
        incarnation: u64,
        seq: u64,
        #[serde(borrow)]
        heard: Option<Vec<&'a str>>,
    },
    /// The sender is shutting down: stop waiting for it.
    Leave,
    /// The receiver applied the sender's intent event `seq` (a strong update's announcement):
    /// it dropped the key and holds back fills of it.
    IntentAck { seq: u64 },
    /// A SWIM membership packet (see `membership`).
    #[serde(borrow)]
    Swim(&'a [u8]),
    /// Asks the receiver, which owns `key` of a partitioned cache, for its value. Sent on the
    /// sender's own link, behind every change the sender published before asking.
    Request {
        id: u64,
        cache: &'a str,
        #[serde(borrow)]
        key: &'a [u8],
    },
    /// Answers request `id`, on the answering node's own link: the value's encoding, or `None`
    /// when the owner cannot serve it now (its lease lapsed, its load failed, no such cache).
    Answer {
        id: u64,
        #[serde(borrow)]
        value: Option<&'a [u8]>,
    },
}

/// A node's introduction.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Hello<'a> {
    /// The node's name, unique in the cluster.
    pub(crate) node: &'a str,
    /// The node's process epoch: a restarted node has a higher one and a fresh sequence space.
    pub(crate) incarnation: u64,
    /// Where the node accepts links.
    pub(crate) listen: SocketAddr,
    /// From the dialer: the sequence number of the last event it originated before this link
    /// existed; the link carries every later one. From the acceptor: the dialer's event after
    /// which the dialer should resume, replaying from its ring up to its own `seq` first.
    pub(crate) seq: u64,
    /// From the dialer: the oldest event its replay ring still holds. Zero from the acceptor.
    pub(crate) replay_from: u64,
    /// Other members it has reached, as many as fit in half a frame.
    #[serde(borrow)]
    pub(crate) peers: Vec<PeerInfo<'a>>,
}

/// A member as gossiped: its identity (name and process) and where it accepts links.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PeerInfo<'a> {
    /// The member's name.
    pub(crate) node: &'a str,
    /// The member's process epoch.
    pub(crate) incarnation: u64,
    /// Where it accepts links.
    pub(crate) addr: SocketAddr,
}

/// One change, numbered in its origin's sequence.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Event<'a> {
    /// The originating node's name.
    pub(crate) node: &'a str,
    /// The originating node's incarnation.
    pub(crate) incarnation: u64,
    /// Position in the origin's sequence, from 1, without holes.
    pub(crate) seq: u64,
    /// The cache the change applies to.
    pub(crate) cache: &'a str,
    #[serde(borrow)]
    pub(crate) change: Change<'a>,
}

/// What changed. Keys and values are postcard encodings of the cache's own types.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) enum Change<'a> {
    /// Drop the key.
    Invalidate {
        #[serde(borrow)]
        key: &'a [u8],
    },
    /// Replace a held, older version of the key with this value.
    Replicate {
        #[serde(borrow)]
        key: &'a [u8],
        version: u64,
        #[serde(borrow)]
        value: &'a [u8],
    },
    /// A strong update of the key is about to run: drop it, store no fill of it until the
    /// matching release (or a timeout), and acknowledge.
    Intent {
        #[serde(borrow)]
        key: &'a [u8],
    },
    /// The strong update announced by an intent has ended (its change went out just before).
    Release {
        #[serde(borrow)]
        key: &'a [u8],
    },
    /// Drop every key in `keys`: the postcard encoding of a sequence of key encodings (see
    /// [`encode_keys`]), kept as one slice so that a change stays `Copy` and borrows from the
    /// receive buffer.
    InvalidateMany {
        #[serde(borrow)]
        keys: &'a [u8],
    },
    /// Drop every key of the cache, and every load of it in flight.
    Clear,
    /// Drop every key whose value carries `tag`, and every load in flight whose value does.
    InvalidateTag {
        #[serde(borrow)]
        tag: &'a str,
    },
}

impl Frame<'_> {
    /// Encodes the frame's body (the codec adds the length).
    pub(crate) fn encode(&self) -> Bytes {
        // Serializing these types into a Vec cannot fail: every field is a plain
        // integer, string, byte slice, address or sequence of them.
        postcard::to_stdvec(self)
            .expect("frames always serialize")
            .into()
    }
}

/// Decodes one frame body. The frame borrows from `body`.
pub(crate) fn decode(body: &[u8]) -> Result<Frame<'_>, WireError> {
    postcard::from_bytes(body).map_err(WireError::Malformed)
}

/// Encodes a key or value of a cache for a [`Change`].
pub(crate) fn encode_item<T: Serialize>(item: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_stdvec(item)
}

/// Decodes a key or value of a cache from a [`Change`].
pub(crate) fn decode_item<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}

/// Encodes the encodings of many keys as one [`Change::InvalidateMany`] payload.
pub(crate) fn encode_keys(keys: &[Vec<u8>]) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_stdvec(keys)
}

/// Decodes a [`Change::InvalidateMany`] payload into the keys' encodings, borrowed from `bytes`.
pub(crate) fn decode_keys(bytes: &[u8]) -> Result<Vec<&[u8]>, postcard::Error> {
    postcard::from_bytes(bytes)
}

/// Why a link's input was refused. Each one closes the link it came on; the node keeps running.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WireError {
    /// The preamble's magic bytes were wrong: the other end is not a cohort node.
    #[error("not a cohort peer (bad preamble)")]
    NotCohort,
    /// The peer speaks a protocol version this build does not.
    #[error("unsupported protocol version {version} (this node speaks {supported})")]
    UnsupportedVersion { version: u16, supported: u16 },
    /// A frame body did not decode.
    #[error("malformed frame: {0}")]
    Malformed(postcard::Error),
    /// A frame's length prefix exceeded the maximum, or the framing was otherwise broken.
    #[error("bad framing: {0}")]
    Framing(std::io::Error),
    /// A frame arrived where the protocol does not allow it.
    #[error("unexpected frame: {0}")]
    Unexpected(&'static str),
    /// One end has cluster keys and the other has none.
    #[error("{0}")]
    Keys(&'static str),
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use tokio_util::codec::Decoder;

    use super::*;

    fn event() -> Frame<'static> {
        Frame::Event(Event {
            node: "a",
            incarnation: 7,
            seq: 42,
            cache: "users",
            change: Change::Replicate {
                key: b"\x01",
                version: 3,
                value: b"hello",
            },
        })
    }

    #[test]
    fn frames_round_trip() {
        let hello = Frame::Hello(Hello {
            node: "node-a",
            incarnation: 1,
            listen: "127.0.0.1:7001".parse().unwrap(),
            seq: 9,
            replay_from: 3,
            peers: vec![PeerInfo {
                node: "node-b",
                incarnation: 4,
                addr: "127.0.0.1:7002".parse().unwrap(),
            }],
        });
        let pong = Frame::Pong {
            nonce: 7,
            incarnation: 2,
            seq: 40,
            heard: Some(vec!["node-c"]),
        };
        for frame in [
            hello,
            event(),
            Frame::Peers(vec![PeerInfo {
                node: "c",
                incarnation: 1,
                addr: "[::1]:1".parse().unwrap(),
            }]),
            Frame::Ping { nonce: 7 },
            pong,
            Frame::Swim(b"probe"),
            Frame::IntentAck { seq: 3 },
            Frame::Leave,
            Frame::Request {
                id: 9,
                cache: "users",
                key: b"\x07",
            },
            Frame::Answer {
                id: 9,
                value: Some(b"ada"),
            },
            Frame::Answer {
                id: 10,
                value: None,
            },
            Frame::Event(Event {
                node: "a",
                incarnation: 1,
                seq: 1,
                cache: "users",
                change: Change::InvalidateMany {
                    keys: b"\x02\x01\x07\x01\x08",
                },
            }),
            Frame::Event(Event {
                node: "a",
                incarnation: 1,
                seq: 2,
                cache: "users",
                change: Change::Clear,
            }),
            Frame::Event(Event {
                node: "a",
                incarnation: 1,
                seq: 3,
                cache: "users",
                change: Change::InvalidateTag { tag: "team:7" },
            }),
        ] {
            let bytes = frame.encode();
            assert_eq!(decode(&bytes).unwrap(), frame);
        }
    }

    #[test]
    fn truncated_and_garbage_bodies_are_errors() {
        let bytes = event().encode();
        for len in 0..bytes.len() {
            assert!(
                decode(&bytes[..len]).is_err(),
                "prefix of {len} bytes decoded"
            );
        }
        assert!(matches!(decode(&[0xff; 16]), Err(WireError::Malformed(_))));
    }

    proptest::proptest! {
        /// Whatever arrives, decoding returns a frame or an error; it never panics.
        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = decode(&body);
        }

        /// A valid frame with one byte changed decodes to something or fails cleanly.
        #[test]
        fn corrupted_frames_never_panic(index in 0_usize..64, byte in proptest::prelude::any::<u8>()) {
            let mut body = event().encode().to_vec();
            let at = index % body.len();
            body[at] = byte;
            let _ = decode(&body);
        }
    }

    #[test]
    fn preamble_checks_magic_version_and_keys() {
        assert!(check_preamble(preamble(false), false).is_ok());
        assert!(check_preamble(preamble(true), true).is_ok());
        assert!(matches!(
            check_preamble(preamble(true), false),
            Err(WireError::Keys(_))
        ));
        assert!(matches!(
            check_preamble(preamble(false), true),
            Err(WireError::Keys(_))
        ));
        assert!(matches!(
            check_preamble(*b"GET / H", false),
            Err(WireError::NotCohort)
        ));
        let mut future = preamble(false);
        future[5] += 1;
        assert!(matches!(
            check_preamble(future, false),
            Err(WireError::UnsupportedVersion { version, supported: PROTOCOL_VERSION })
                if version == PROTOCOL_VERSION + 1
        ));
    }

    #[test]
    fn oversized_length_prefix_is_refused_before_allocation() {
        let mut codec = codec(1024);
        let mut buf = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
        assert!(codec.decode(&mut buf).is_err());
        assert!(buf.capacity() < 1024);
    }

    #[test]
    fn key_lists_round_trip_and_refuse_garbage() {
        let keys = vec![encode_item(&7_u64).unwrap(), encode_item(&300_u64).unwrap()];
        let bytes = encode_keys(&keys).unwrap();
        let decoded = decode_keys(&bytes).unwrap();
        assert_eq!(decoded, vec![&keys[0][..], &keys[1][..]]);
        for len in 0..bytes.len() {
            assert!(
                decode_keys(&bytes[..len]).is_err(),
                "prefix of {len} bytes decoded"
            );
        }
        // A count far beyond the bytes that follow fails without allocating for it.
        assert!(decode_keys(&[0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
    }

    #[test]
    fn items_round_trip() {
        let key = (7_u64, "x".to_owned());
        let bytes = encode_item(&key).unwrap();
        assert_eq!(decode_item::<(u64, String)>(&bytes).unwrap(), key);
        assert!(decode_item::<(u64, String)>(&bytes[..1]).is_err());
    }
}
