//! `cohort bench`: cohort measured side by side with what a user would pick instead, in one run,
//! reported as ratios against a baseline measured in the same run.
//!
//! Partitioned mode is measured against replicated caches (database loads, hit ratio, local
//! hits) and against Redis (a read answered by another node).
//!
//! Each figure prints as `bench: <name> <value> <unit> ratio=<x> vs=<baseline>`; `--json` prints
//! the same figures as one JSON array instead.

mod hit;
mod memory;
mod partitioned;
mod postgres;
mod propagation;
mod redis;

use std::time::Duration;

use serde::Serialize;

/// Options of `cohort bench`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Fewer rounds and samples: finishes in well under two minutes.
    #[arg(long)]
    quick: bool,
    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
    /// Measure only the read hits (the rows a change to the hit path moves).
    #[arg(long)]
    hits_only: bool,
    /// Internal: fill one contender with small entries in this process and print the resident
    /// memory it took (run as a child, so each contender starts from a clean heap).
    #[arg(long, hide = true)]
    memory_probe: Option<memory::Contender>,
}

/// One measured figure.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Figure {
    pub(crate) name: String,
    pub(crate) value: f64,
    pub(crate) unit: &'static str,
    /// `value` divided by the baseline's, when there is one.
    pub(crate) ratio: Option<f64>,
    pub(crate) vs: Option<String>,
    /// Why the figure could not be measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) skipped: Option<String>,
}

impl Figure {
    pub(crate) fn plain(name: impl Into<String>, value: f64, unit: &'static str) -> Self {
        Self {
            name: name.into(),
            value,
            unit,
            ratio: None,
            vs: None,
            skipped: None,
        }
    }

    /// A latency, in microseconds.
    pub(crate) fn micros(name: impl Into<String>, latency: Duration) -> Self {
        Self::plain(name, latency.as_secs_f64() * 1e6, "us")
    }

    pub(crate) fn skipped(name: impl Into<String>, reason: String) -> Self {
        Self {
            skipped: Some(reason),
            ..Self::plain(name, f64::NAN, "")
        }
    }

    pub(crate) fn renamed(mut self, name: &str) -> Self {
        self.name = name.to_owned();
        self
    }

    pub(crate) fn against(mut self, baseline: &Figure) -> Self {
        self.ratio = Some(self.value / baseline.value);
        self.vs = Some(baseline.name.clone());
        self
    }
}

/// Runs the benchmark; `Ok(true)` when every part ran.
pub(crate) async fn run(args: Args) -> anyhow::Result<bool> {
    if let Some(contender) = args.memory_probe {
        memory::probe(contender).await?;
        return Ok(true);
    }
    let mut figures = tokio::task::spawn_blocking(move || hit::measure(args.quick)).await??;
    if !args.hits_only {
        let rest = rest(args.quick, &figures).await?;
        figures.extend(rest);
    }
    print(&figures, args.json)?;
    Ok(true)
}

/// Every figure but the hits, some of them set against the `hits`.
async fn rest(quick: bool, hits: &[Figure]) -> anyhow::Result<Vec<Figure>> {
    let mut figures = memory::measure()?;
    figures.extend(propagation::measure(quick).await?);
    let named = |name: &str| {
        hits.iter()
            .chain(&figures)
            .find(|f| f.name == name)
            .cloned()
    };
    if let (Some(hit), Some(p50)) = (named("hit_cohort_1t"), named("propagation_2_nodes_p50")) {
        figures.extend(redis::measure(quick, &hit, &p50).await);
        figures.push(postgres::measure(quick, &hit).await);
    }
    figures.extend(partitioned::measure(quick).await?);
    Ok(figures)
}

fn print(figures: &[Figure], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(figures)?);
    } else {
        println!(
            "{:<36} {:>14} {:<12} {:>9}  vs",
            "figure", "value", "unit", "ratio"
        );
        for f in figures {
            let ratio = f.ratio.map(|r| format!("{r:.2}")).unwrap_or_default();
            let value = match &f.skipped {
                Some(_) => "skipped".to_owned(),
                None => format!("{:.1}", f.value),
            };
            let vs = f.vs.as_deref().or(f.skipped.as_deref()).unwrap_or("");
            println!("{:<36} {value:>14} {:<12} {ratio:>9}  {vs}", f.name, f.unit);
        }
        println!();
        for f in figures {
            if let Some(reason) = &f.skipped {
                println!("bench: {} skipped reason={reason}", f.name);
                continue;
            }
            match (&f.ratio, &f.vs) {
                (Some(ratio), Some(vs)) => println!(
                    "bench: {} {:.1} {} ratio={ratio:.2} vs={vs}",
                    f.name, f.value, f.unit
                ),
                _ => println!("bench: {} {:.1} {}", f.name, f.value, f.unit),
            }
        }
    }
    Ok(())
}

/// The median of `samples` (sorted in place); zero for none.
pub(crate) fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples.get(samples.len() / 2).copied().unwrap_or(0.0)
}
