//! Any bytes as one peer's inbound link to a node's protocol state machine (a hello, then frames,
//! with time moving on and the node's timers firing): handled or refused, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    cohort::fuzzing::node_link(bytes);
});
