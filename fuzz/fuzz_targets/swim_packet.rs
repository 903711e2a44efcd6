//! Any bytes as a SWIM packet from a peer: handled or refused, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|packet: &[u8]| {
    cohort::fuzzing::swim_packet(packet);
});
