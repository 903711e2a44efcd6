//! Memory per entry: the resident memory 1M small entries (u64 → u64) take in cohort and in a
//! bare quick_cache, each measured in a child process of its own so neither sees the other's
//! heap.

use std::process::Command;

use anyhow::Context;

use super::Figure;

const ENTRIES: u64 = 1_000_000;

/// A cache whose memory is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Contender {
    QuickCache,
    Cohort,
}

pub(super) fn measure() -> anyhow::Result<Vec<Figure>> {
    let bare = bytes_per_entry("quick-cache")?;
    let ours = bytes_per_entry("cohort")?;
    let bare = Figure::plain("memory_quick_cache", bare, "bytes/entry");
    let ours = Figure::plain("memory_cohort", ours, "bytes/entry").against(&bare);
    Ok(vec![bare, ours])
}

fn bytes_per_entry(contender: &str) -> anyhow::Result<f64> {
    let exe = std::env::current_exe().context("cannot find the cohort binary")?;
    let output = Command::new(exe)
        .args(["bench", "--memory-probe", contender])
        .output()
        .context("cannot run the memory probe")?;
    anyhow::ensure!(output.status.success(), "the memory probe failed");
    let text = String::from_utf8(output.stdout)?;
    let bytes: f64 = text
        .trim()
        .parse()
        .context("the memory probe printed no number")?;
    Ok(bytes / ENTRIES as f64)
}

/// Fills `contender` and prints how many resident bytes that took.
pub(super) async fn probe(contender: Contender) -> anyhow::Result<()> {
    let before = resident_bytes();
    match contender {
        Contender::QuickCache => {
            let cache = quick_cache::sync::Cache::<u64, u64>::new(ENTRIES as usize);
            for key in 0..ENTRIES {
                cache.insert(key, key);
            }
            report(before, cache.len())
        }
        Contender::Cohort => {
            let cluster = cohort::Cluster::builder().start().await?;
            let cache = cluster
                .cache::<u64, u64>("memory")
                .capacity(ENTRIES)
                .build()?;
            for key in 0..ENTRIES {
                let _ = cache
                    .get_or_load(&key, |k| async move { Ok::<_, ()>(k) })
                    .await;
            }
            report(before, cache.stats().entries)
        }
    }
}

fn report(before: u64, entries: usize) -> anyhow::Result<()> {
    anyhow::ensure!(
        entries as u64 > ENTRIES * 9 / 10,
        "only {entries} entries kept"
    );
    println!("{}", resident_bytes().saturating_sub(before));
    Ok(())
}

/// Resident set size, from `/proc/self/statm` (in pages of 4 KiB).
pub(super) fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}
