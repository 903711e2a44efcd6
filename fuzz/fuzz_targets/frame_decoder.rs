//! Any bytes as a frame body: decoding returns a frame or an error, never panics.
#![no_main]

libfuzzer_sys::fuzz_target!(|body: &[u8]| {
    cohort::fuzzing::decode_frame(body);
});
