//! Any text as a change-log row's key: applied, or counted and flushed, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|key: &str| {
    cohort::fuzzing::logged_key(key);
});
