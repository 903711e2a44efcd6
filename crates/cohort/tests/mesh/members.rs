//! The member table under hostile or broken peers: impossible hellos, floods of fake members.
//!
//! Raw connections speak the wire format through mirror types of the frames they need (postcard
//! encodes an enum as its variant's index, so the first variants line up with the node's).

use std::net::SocketAddr;

use serde::Serialize;
use tokio::net::TcpListener;

use super::*;

#[derive(Serialize)]
enum Frame<'a> {
    Hello(Hello<'a>),
    Peers(Vec<PeerInfo<'a>>),
}

#[derive(Serialize)]
struct Hello<'a> {
    node: &'a str,
    incarnation: u64,
    listen: SocketAddr,
    seq: u64,
    replay_from: u64,
    peers: Vec<PeerInfo<'a>>,
}

#[derive(Serialize)]
struct PeerInfo<'a> {
    node: &'a str,
    incarnation: u64,
    addr: SocketAddr,
}

fn hello(node: &str, listen: SocketAddr, seq: u64, replay_from: u64) -> Frame<'_> {
    Frame::Hello(Hello {
        node,
        incarnation: 1,
        listen,
        seq,
        replay_from,
        peers: Vec::new(),
    })
}

/// The bytes of `frame` on the wire: its length, then its postcard body.
fn framed(frame: &Frame<'_>) -> Vec<u8> {
    let body = postcard::to_stdvec(frame).unwrap();
    [(body.len() as u32).to_be_bytes().to_vec(), body].concat()
}

/// Opens a raw link to `node`: exchanges preambles and says `frames`.
async fn raw_link(node: &Cluster, frames: &[Frame<'_>]) -> TcpStream {
    let mut stream = TcpStream::connect(node.local_addr()).await.unwrap();
    stream.write_all(&preamble(PROTOCOL)).await.unwrap();
    let mut theirs = [0; 7];
    stream.read_exact(&mut theirs).await.unwrap();
    for frame in frames {
        stream.write_all(&framed(frame)).await.unwrap();
    }
    stream
}

/// Waits until the node closes `stream`.
async fn closed(mut stream: TcpStream) {
    let mut rest = Vec::new();
    wait::within(stream.read_to_end(&mut rest))
        .await
        .expect("the node closed the link")
        .ok();
}

fn nowhere(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A hello whose replay ring starts past the sender's next event would make every later event of
/// that name look like a duplicate; a name over 128 bytes is not a member. Both close the link
/// and are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impossible_hellos_are_refused_and_counted() {
    let node = Cluster::builder().node_name("a").start().await.unwrap();

    let link = raw_link(&node, &[hello("liar", nowhere(1), 3, 9)]).await;
    closed(link).await;
    assert_eq!(node.stats().frames_rejected, 1);

    let long = "x".repeat(129);
    let link = raw_link(&node, &[hello(&long, nowhere(1), 0, 1)]).await;
    closed(link).await;
    assert_eq!(node.stats().members_refused, 1);
    assert!(node.members().is_empty(), "{:?}", node.members());
}

/// A node that dials a peer whose answer claims events the node never sent refuses the link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_claiming_unsent_events_is_refused() {
    let fake = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake_addr = fake.local_addr().unwrap();
    let node = Cluster::builder()
        .node_name("a")
        .seeds([fake_addr.to_string()])
        .start()
        .await
        .unwrap();
    let (mut stream, _) = fake.accept().await.unwrap();
    stream.write_all(&preamble(PROTOCOL)).await.unwrap();
    let mut theirs = [0; 7];
    stream.read_exact(&mut theirs).await.unwrap();
    stream
        .write_all(&framed(&hello("b", fake_addr, 1_000, 0)))
        .await
        .unwrap();
    closed(stream).await;
    // The dialer closes the socket as it gives up, and counts the refusal just after.
    wait::until(&mut node.subscribe(), || node.stats().frames_rejected > 0)
        .await
        .expect("the refusal is counted");
    assert_eq!(node.stats().frames_rejected, 1);
    assert!(
        node.members().iter().all(|m| m.node.is_none()),
        "{:?}",
        node.members()
    );
}

/// 10,000 fake members gossiped by one raw link, and 200 raw links each claiming a fake name,
/// against a node whose table holds 16: the table stays at its cap, the real peer keeps its place
/// and its links carry events both ways, and once the fakes are forgotten (never reached) the
/// peer-only cache serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_fake_members_keeps_the_table_at_its_cap() {
    const CAP: usize = 16;
    let bound = Duration::from_millis(100);
    let a = Cluster::builder()
        .node_name("a")
        .max_staleness(bound)
        .forget_after(bound * 5)
        .max_members(CAP)
        .start()
        .await
        .unwrap();
    let b = Cluster::builder()
        .node_name("b")
        .max_staleness(bound)
        .seeds([a.local_addr().to_string()])
        .start()
        .await
        .unwrap();
    wait_linked(&a, 1).await;
    wait_linked(&b, 1).await;
    let (on_a, on_b) = (users(&a, Mode::Invalidate), users(&b, Mode::Invalidate));

    let names: Vec<String> = (0..10_000).map(|i| format!("fake-{i}")).collect();
    let gossip: Vec<Frame<'_>> = names
        .chunks(500)
        .enumerate()
        .map(|(chunk, names)| {
            Frame::Peers(
                names
                    .iter()
                    .enumerate()
                    .map(|(i, node)| PeerInfo {
                        node,
                        incarnation: 1,
                        addr: nowhere(20_000 + (chunk * 500 + i) as u16 % 40_000),
                    })
                    .collect(),
            )
        })
        .collect();
    let mut frames = vec![hello("gossiper", nowhere(2), 0, 1)];
    frames.extend(gossip);
    let gossiper = raw_link(&a, &frames).await;
    let mut ghosts = Vec::new();
    for i in 0..200 {
        let name = format!("ghost-{i}");
        ghosts.push(raw_link(&a, &[hello(&name, nowhere(3), 0, 1)]).await);
    }
    let members = a.members();
    assert!(members.len() <= CAP, "{} members", members.len());
    assert!(
        members
            .iter()
            .any(|m| m.node.as_ref().is_some_and(|n| n.as_str() == "b")),
        "the real peer kept its place"
    );
    assert!(a.stats().members_refused >= 10_000 - CAP as u64);

    let db = Db::with(&[(1, "ada"), (2, "bob")]);
    let mut a_events = a.subscribe();
    let event = on_b.invalidate(&1).await.unwrap();
    applied(&mut a_events, &event).await;
    let mut b_events = b.subscribe();
    let event = on_a.invalidate(&2).await.unwrap();
    applied(&mut b_events, &event).await;

    drop((gossiper, ghosts));
    wait::until(&mut a.subscribe(), || a.members().len() <= 1)
        .await
        .unwrap_or_else(|missed| {
            panic!(
                "the fakes were never forgotten ({missed}): {:?}",
                a.members()
            )
        });
    assert!(a.stats().members_forgotten >= CAP as u64 - 1);
    wait_linked(&a, 1).await;
    load(&on_a, &db, 1).await;
    assert!(on_a.get(&1).is_some(), "a serves from its cache again");
}
