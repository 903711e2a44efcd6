//! `cohort bench`: cohort measured side by side with what a user would pick instead, in one run,
//! reported as ratios against a baseline measured in the same run.
//!
//! Partitioned mode is measured against replicated caches (database loads, hit ratio, local
//! hits) and against Redis (a read answered by another node).
//!
//! A page of 50 users read from `cohort serve` with one batch request against 50 single ones
//! (`batch`), cold and warm, with the database queries each made.
//!
//! How cost grows with the cluster (`scale`: 5 to 50 nodes) runs in a full run, or with `--scale`.
//!
//! Each figure prints as `bench: <name> <value> <unit> ratio=<x> vs=<baseline>`; `--json` prints
//! the same figures as one JSON array instead.

mod batch;
mod hit;
mod memory;
mod partitioned;
mod postgres;
mod propagation;
mod redis;
mod scale;

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
    #[arg(long, conflicts_with = "scale")]
    hits_only: bool,
    /// Also with `--quick`: how cost grows with the cluster, at 5, 10, 25 and 50 nodes
    /// (propagation to every peer, bytes and system calls per update and idle, idle CPU,
    /// change-log polls, memory per node); about a minute. A full run always includes these rows.
    #[arg(long)]
    scale: bool,
    /// Internal: fill one contender with small entries in this process and print the resident
    /// memory it took (run as a child, so each contender starts from a clean heap).
    #[arg(long, hide = true)]
    memory_probe: Option<memory::Contender>,
    /// Internal: measure a cluster of this many nodes in this process and print the figures as
    /// JSON (run as a child, one per size, so each starts from a clean heap).
    #[arg(long, hide = true)]
    scale_probe: Option<usize>,
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
    /// For a ratio taken as the median of per-round ratios: how they spread.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) spread: Option<Spread>,
    /// False when the ratio is too uncertain to judge anything by.
    pub(crate) judged: bool,
}

/// How the per-round ratios behind a median ratio spread.
#[derive(Clone, Copy, Debug, Serialize)]
pub(crate) struct Spread {
    /// Their first and third quartiles.
    pub(crate) quartiles: [f64; 2],
    /// The 95% confidence interval of their median.
    pub(crate) interval: [f64; 2],
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
            spread: None,
            judged: true,
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
    if let Some(nodes) = args.scale_probe {
        scale::probe(nodes).await?;
        return Ok(true);
    }
    let mut figures = tokio::task::spawn_blocking(move || hit::measure(args.quick)).await??;
    if !args.hits_only {
        let rest = rest(args.quick, &figures).await?;
        figures.extend(rest);
    }
    if args.scale || !(args.quick || args.hits_only) {
        figures.extend(scale::measure().await?);
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
    figures.extend(batch::measure(quick).await?);
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
            let ratio = match f.ratio {
                Some(_) if !f.judged => "unjudged".to_owned(),
                Some(r) => format!("{r:.2}"),
                None => String::new(),
            };
            let value = match &f.skipped {
                Some(_) => "skipped".to_owned(),
                None => format!("{:.1}", f.value),
            };
            let vs = f.vs.as_deref().or(f.skipped.as_deref()).unwrap_or("");
            println!(
                "{:<36} {value:>14} {:<12} {ratio:>9}  {vs}{}",
                f.name,
                f.unit,
                spread(f)
            );
        }
        println!();
        for f in figures {
            if let Some(reason) = &f.skipped {
                println!("bench: {} skipped reason={reason}", f.name);
                continue;
            }
            match (&f.ratio, &f.vs) {
                (Some(_), Some(_)) if !f.judged => println!(
                    "bench: {} {:.1} {} ratio=unjudged vs={}{}",
                    f.name,
                    f.value,
                    f.unit,
                    f.vs.as_deref().unwrap_or_default(),
                    spread(f)
                ),
                (Some(ratio), Some(vs)) => println!(
                    "bench: {} {:.1} {} ratio={ratio:.2} vs={vs}{}",
                    f.name,
                    f.value,
                    f.unit,
                    spread(f)
                ),
                _ => println!("bench: {} {:.1} {}", f.name, f.value, f.unit),
            }
        }
    }
    Ok(())
}

/// How a ratio's rounds spread, as printed after it: nothing for a plain ratio.
fn spread(figure: &Figure) -> String {
    let Some(Spread {
        quartiles: [q1, q3],
        interval: [low, high],
    }) = figure.spread
    else {
        return String::new();
    };
    let judged = if figure.judged {
        String::new()
    } else {
        format!(
            " (median {:.2}: too uncertain to judge; rerun on a quieter machine)",
            figure.ratio.unwrap_or_default()
        )
    };
    format!(" ci95={low:.2}..{high:.2} iqr={q1:.2}..{q3:.2}{judged}")
}

/// The `p` quantile (0 to 1) of `sorted`, by nearest rank; zero for none.
pub(crate) fn quantile(sorted: &[f64], p: f64) -> f64 {
    let last = sorted.len().saturating_sub(1);
    let rank = (p * last as f64).round() as usize;
    sorted.get(rank.min(last)).copied().unwrap_or(0.0)
}

/// The median of `samples` (sorted in place); zero for none.
pub(crate) fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    quantile(samples, 0.5)
}
