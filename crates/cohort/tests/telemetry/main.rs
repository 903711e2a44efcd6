//! What a node tells the application's telemetry: `tracing` spans on loads, updates,
//! invalidations, flushes and membership changes, and, with the `metrics` feature, its counters,
//! gauges and histograms through the `metrics` facade.

#[cfg(feature = "metrics")]
mod facade;
mod spans;
