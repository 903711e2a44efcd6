//! Writes the seed corpus: a frame of every kind, a whole keyless link, and a link as the node's
//! state machine sees it. Run with
//! `RUSTFLAGS="--cfg fuzzing" cargo run --bin write_seeds` in this directory.

fn main() -> std::io::Result<()> {
    let corpus = std::path::Path::new("corpus");
    let frames = corpus.join("frame_decoder");
    std::fs::create_dir_all(&frames)?;
    for (i, frame) in cohort::fuzzing::seed_frames().iter().enumerate() {
        std::fs::write(frames.join(format!("seed-{i}")), frame)?;
    }
    let links = corpus.join("listener_handshake");
    std::fs::create_dir_all(&links)?;
    std::fs::write(links.join("seed-keyless-link"), cohort::fuzzing::seed_link())?;
    let node_links = corpus.join("node_link");
    std::fs::create_dir_all(&node_links)?;
    std::fs::write(node_links.join("seed-link"), cohort::fuzzing::seed_node_link())
}
