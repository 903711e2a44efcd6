//! Read hits: cohort's `Cache::get` against a bare quick_cache and moka's sync cache, on the same
//! 100k keys holding the same 1 KiB values, read in the same Zipf(0.99) order, one thread and two.
//!
//! The contenders take turns, round after round; each figure is the median of its rounds, and
//! each ratio the median of the per-round ratios against the baseline's turn of the same round,
//! with their interquartile range: on a shared VM, back-to-back runs drift more than the
//! differences being measured, and a ratio whose rounds disagree too much is reported as such
//! instead of as a number.
//!
//! A fourth contender, `quick_cache_clocked`, is the bare cache behind the one check every cache
//! that bounds staleness by time must make on a hit: read the coarse monotonic clock (the clock
//! cohort reads, read as cohort reads it) and compare it with a deadline. It is the floor for
//! cohort's hit, the part of its cost that no implementation of a lease can shed; the row
//! `hit_cohort_over_floor` sets cohort against it, round by round.
//!
//! Every cache is filled the way a read-through cache is: quick_cache through its placeholder
//! API (`get_value_or_guard`, the path cohort's loads take), moka through `get_with`. A
//! quick_cache filled by plain inserts reads faster though it holds the same entries; the fifth
//! contender, `quick_cache_inserted`, shows by how much.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use rand::SeedableRng;
use rand::rngs::StdRng;

use super::{Figure, Spread, median, quantile};
use crate::workload::Zipf;

const KEYS: u64 = 100_000;
/// Reads in the key sequence every contender reads.
pub(super) const SEQUENCE: usize = 1 << 16;

type Value = Arc<[u8]>;

/// The caches, filled alike: each key loaded once through the cache's own read-through path,
/// in the same order, with the same value allocation.
struct Contenders {
    bare: quick_cache::sync::Cache<u64, Value>,
    /// The bare cache filled by plain inserts instead: reads from it are faster (measured ~1.3×
    /// on the development VM), though it holds the same entries, so it shows how much of every
    /// figure is the fill rather than the read.
    inserted: quick_cache::sync::Cache<u64, Value>,
    moka: moka::sync::Cache<u64, Value>,
    cohort: cohort::Cache<u64, Value>,
    _cluster: cohort::Cluster,
    _runtime: tokio::runtime::Runtime,
}

impl Contenders {
    fn get(&self, which: usize, key: &u64) -> bool {
        match which {
            0 => self.bare.get(key).is_some(),
            1 => self.cohort.get(key).is_some(),
            2 => self.moka.get(key).is_some(),
            3 => cohort::coarse_now() < black_box(u64::MAX) && self.bare.get(key).is_some(),
            _ => self.inserted.get(key).is_some(),
        }
    }
}

const NAMES: [&str; 5] = [
    "quick_cache",
    "cohort",
    "moka",
    "quick_cache_clocked",
    "quick_cache_inserted",
];

pub(super) fn measure(quick: bool) -> anyhow::Result<Vec<Figure>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let cluster = runtime.block_on(cohort::Cluster::builder().start())?;
    let cohort_cache = cluster
        .cache::<u64, Value>("bench")
        .capacity(KEYS * 2)
        .build()?;
    let contenders = Contenders {
        bare: quick_cache::sync::Cache::new(KEYS as usize * 2),
        inserted: quick_cache::sync::Cache::new(KEYS as usize * 2),
        moka: moka::sync::Cache::new(KEYS * 2),
        cohort: cohort_cache,
        _cluster: cluster,
        _runtime: runtime,
    };
    for key in 1..=KEYS {
        let value: Value = vec![7_u8; 1024].into();
        if let quick_cache::sync::GuardResult::Guard(slot) =
            contenders.bare.get_value_or_guard(&key, None)
        {
            let _ = slot.insert(value.clone());
        }
        contenders.inserted.insert(key, value.clone());
        contenders.moka.get_with(key, || value.clone());
        contenders
            ._runtime
            .block_on(
                contenders
                    .cohort
                    .get_or_load(&key, |_| async move { Ok::<_, ()>(value) }),
            )
            .map_err(|()| anyhow::anyhow!("filling the cache failed"))?;
    }
    anyhow::ensure!(
        contenders.bare.len() == KEYS as usize,
        "the bare cache took {} of {KEYS} keys",
        contenders.bare.len()
    );
    let filled_misses = contenders.cohort.stats().misses;
    let zipf = Zipf::new(KEYS, 0.99);
    let mut rng = StdRng::seed_from_u64(42);
    let keys: Vec<u64> = (0..SEQUENCE).map(|_| zipf.sample(&mut rng)).collect();
    let mut figures = Vec::new();
    for threads in THREADS {
        let rounds = take_turns(
            NAMES.len(),
            |which, key| contenders.get(which, key),
            &keys,
            threads,
            quick,
        );
        let name = |which: usize| format!("hit_{}_{threads}t", NAMES[which]);
        let baseline = rounds.figure(name(0), 0);
        let others: Vec<Figure> = (1..NAMES.len())
            .map(|which| rounds.figure_against(name(which), which, 0, &baseline))
            .collect();
        let floor = &others[2];
        let over_floor =
            rounds.figure_against(format!("hit_cohort_over_floor_{threads}t"), 1, 3, floor);
        figures.push(baseline);
        figures.extend(others);
        figures.push(over_floor);
    }
    anyhow::ensure!(
        contenders.cohort.stats().misses == filled_misses,
        "a measured cohort read missed"
    );
    Ok(figures)
}

/// The thread counts every hit is measured with.
pub(super) const THREADS: [usize; 2] = [1, 2];

/// Each contender's time per read in each round, in nanoseconds: `samples[contender][round]`.
pub(super) struct Rounds {
    samples: Vec<Vec<f64>>,
}

/// The widest 95% confidence interval of a median ratio, relative to the median, that still
/// judges it: the goals are set in steps of 5 to 20 %, so a wider interval cannot tell whether
/// one is met.
const WIDEST_JUDGED_INTERVAL: f64 = 0.1;

impl Rounds {
    /// Contender `which`'s median time per read.
    pub(super) fn figure(&self, name: String, which: usize) -> Figure {
        let mut samples = self.samples[which].clone();
        Figure::plain(name, median(&mut samples), "ns/op")
    }

    /// Contender `which`'s figure against contender `baseline`'s (`baseline_figure`): its ratio
    /// is the median of each round's time over the baseline's time in the same round, its
    /// spread their interquartile range, and its interval the median's 95% confidence interval
    /// (by order statistics, which assume nothing of the rounds' distribution); an interval
    /// wider than [`WIDEST_JUDGED_INTERVAL`] leaves the ratio unjudged.
    pub(super) fn figure_against(
        &self,
        name: String,
        which: usize,
        baseline: usize,
        baseline_figure: &Figure,
    ) -> Figure {
        let mut ratios: Vec<f64> = self.samples[which]
            .iter()
            .zip(&self.samples[baseline])
            .map(|(ours, theirs)| ours / theirs)
            .collect();
        ratios.sort_by(f64::total_cmp);
        let ratio = quantile(&ratios, 0.5);
        // The median's rank is Binomial(n, 1/2): 1.96 standard deviations, sqrt(n)/2, either side.
        let n = ratios.len() as f64;
        let reach = 1.96 * n.sqrt() / 2.0 / n.max(1.0);
        let interval = [
            quantile(&ratios, 0.5 - reach),
            quantile(&ratios, 0.5 + reach),
        ];
        let mut figure = self.figure(name, which).against(baseline_figure);
        figure.ratio = Some(ratio);
        figure.spread = Some(Spread {
            quartiles: [quantile(&ratios, 0.25), quantile(&ratios, 0.75)],
            interval,
        });
        figure.judged = (interval[1] - interval[0]) / ratio <= WIDEST_JUDGED_INTERVAL;
        figure
    }
}

/// Times `contenders` contenders reading `keys` on `threads` threads, taking turns round after
/// round, each round in another order. `get(which, key)` reads `key` from contender `which`.
pub(super) fn take_turns(
    contenders: usize,
    get: impl Fn(usize, &u64) -> bool + Sync,
    keys: &[u64],
    threads: usize,
    quick: bool,
) -> Rounds {
    // Many short turns rather than a few long ones: a burst of another process's work then
    // spoils a few rounds, which the medians discard, instead of a large share of the run.
    let rounds = if quick { 21 } else { 101 };
    let passes = if quick { 2 } else { 4 };
    let mut samples = vec![Vec::new(); contenders];
    for round in 0..rounds {
        for turn in 0..contenders {
            let which = (round + turn) % contenders;
            samples[which].push(time_reads(&get, which, keys, threads, passes));
        }
    }
    Rounds { samples }
}

/// Reads the key sequence `passes` times per thread; returns nanoseconds per read, counting all
/// threads' reads against the wall time of the slowest.
///
/// Each thread first reads the sequence once untimed: contenders take turns, and without it
/// the one whose turn follows a contender sharing its map (the bare cache and the clocked one)
/// would find it warm, the others cold.
fn time_reads(
    get: &(impl Fn(usize, &u64) -> bool + Sync),
    which: usize,
    keys: &[u64],
    threads: usize,
    passes: usize,
) -> f64 {
    let ready = std::sync::Barrier::new(threads);
    let slowest = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let ready = &ready;
                scope.spawn(move || {
                    let offset = t * keys.len() / threads.max(1);
                    let sequence = || keys.iter().cycle().skip(offset);
                    for key in sequence().take(keys.len()) {
                        black_box(get(which, key));
                    }
                    ready.wait();
                    let start = Instant::now();
                    for key in sequence().take(keys.len() * passes) {
                        black_box(get(which, key));
                    }
                    start.elapsed()
                })
            })
            .collect();
        workers
            .into_iter()
            .filter_map(|worker| worker.join().ok())
            .max()
            .unwrap_or_default()
    });
    slowest.as_nanos() as f64 / (keys.len() * passes * threads) as f64
}
