//! Rounds, medians, spreads, ratios and the Markdown they are printed as.

use std::future::Future;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// Reads environment variable `name`, or `default` when it is unset or does not parse.
pub fn env_or<T: FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// Reads a comma-separated list of numbers from `name`, or `default`.
pub fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    let parsed: Vec<usize> = std::env::var(name)
        .unwrap_or_default()
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    if parsed.is_empty() {
        default.to_vec()
    } else {
        parsed
    }
}

/// The order in which `variants` variants take their turn in round `round`: rotated by one
/// each round, so that no variant always runs first (on a cold cache) or last.
pub fn turns(round: usize, variants: usize) -> impl Iterator<Item = usize> {
    (0..variants).map(move |turn| (round + turn) % variants)
}

/// The median and the range of one variant's rounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// The middle value (the mean of the two middle ones for an even count).
    pub median: f64,
    /// The smallest value.
    pub min: f64,
    /// The largest value.
    pub max: f64,
}

impl Summary {
    /// Summarizes `values`; `None` when there are none.
    pub fn of(values: &[f64]) -> Option<Summary> {
        if values.is_empty() {
            return None;
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let middle = sorted.len() / 2;
        let median = if sorted.len().is_multiple_of(2) {
            f64::midpoint(sorted[middle - 1], sorted[middle])
        } else {
            sorted[middle]
        };
        Some(Summary {
            median,
            min: sorted[0],
            max: sorted[sorted.len() - 1],
        })
    }

    /// `median (min–max)` with `decimals` decimals.
    pub fn cell(&self, decimals: usize) -> String {
        format!(
            "{:.decimals$} ({:.decimals$}–{:.decimals$})",
            self.median, self.min, self.max
        )
    }
}

/// A Markdown cell for an optional summary.
pub fn cell(summary: Option<Summary>, decimals: usize) -> String {
    summary.map_or_else(|| "-".to_owned(), |s| s.cell(decimals))
}

/// `ours / baseline` of two medians, as `0.97x`; `-` when either is missing.
pub fn ratio(ours: Option<Summary>, baseline: Option<Summary>) -> String {
    match (ours, baseline) {
        (Some(ours), Some(baseline)) if baseline.median > 0.0 => {
            format!("{:.2}x", ours.median / baseline.median)
        }
        _ => "-".to_owned(),
    }
}

/// `count` per second of `elapsed`.
// Counts here stay far below 2^52, where `f64` starts to round integers.
#[allow(clippy::cast_precision_loss)]
pub fn per_second(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

/// `elapsed` divided by `count`, in nanoseconds.
#[allow(clippy::cast_precision_loss)]
pub fn nanos_each(elapsed: Duration, count: u64) -> f64 {
    elapsed.as_nanos() as f64 / count.max(1) as f64
}

/// Runs `clients` tasks until `seconds` have passed; each gets its index and the deadline
/// and returns how much work it completed. Returns the work per second.
pub async fn throughput<F, Fut>(clients: usize, seconds: f64, client: F) -> f64
where
    F: Fn(usize, Instant) -> Fut,
    Fut: Future<Output = u64> + Send + 'static,
{
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = (0..clients)
        .map(|c| tokio::spawn(client(c, deadline)))
        .collect();
    let mut done = 0;
    for task in tasks {
        done += task.await.expect("a client task panicked");
    }
    per_second(done, started.elapsed())
}

/// A small, fast pseudo-random generator (`SplitMix64`): each client of a round draws the
/// same accounts whichever variant it drives.
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    /// A generator for client `client` in round `round`.
    pub fn new(round: usize, client: usize) -> Self {
        SplitMix((round as u64) << 32 ^ client as u64)
    }

    /// The next number in `0..bound`.
    pub fn below(&mut self, bound: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % bound
    }
}

/// Prints a Markdown table: a header row and the rows, each a list of cells.
pub fn table(header: &[&str], align_right_from: usize, rows: &[Vec<String>]) {
    println!("| {} |", header.join(" | "));
    let rule: Vec<&str> = (0..header.len())
        .map(|i| if i < align_right_from { "---" } else { "---:" })
        .collect();
    println!("|{}|", rule.join("|"));
    for row in rows {
        println!("| {} |", row.join(" | "));
    }
    println!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        let s = Summary::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let s = Summary::of(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 4.0));
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn every_variant_takes_every_turn() {
        let orders: Vec<Vec<usize>> = (0..3).map(|r| turns(r, 3).collect()).collect();
        assert_eq!(orders, [[0, 1, 2], [1, 2, 0], [2, 0, 1]]);
    }
}
