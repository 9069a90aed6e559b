//! Load mode (`--calls N --concurrency C`): latency percentiles across every answered turn of
//! every call, and failures by kind.

use std::collections::BTreeMap;

use serde::Serialize;

/// Latency percentiles in ms (nearest rank).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Percentiles {
    /// Turns measured.
    pub count: usize,
    pub p50: u64,
    pub p95: u64,
    pub p99: u64,
    pub max: u64,
}

/// The nearest-rank percentile `p` (0 < p <= 100) of sorted `values`: the smallest value with at
/// least p % of the values at or below it.
pub fn nearest_rank(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted.get(rank.min(sorted.len()) - 1).copied()
}

/// Percentiles of `latencies`; `None` when there are none.
pub fn percentiles(latencies: &[u64]) -> Option<Percentiles> {
    let mut sorted = latencies.to_vec();
    sorted.sort_unstable();
    Some(Percentiles {
        count: sorted.len(),
        p50: nearest_rank(&sorted, 50.0)?,
        p95: nearest_rank(&sorted, 95.0)?,
        p99: nearest_rank(&sorted, 99.0)?,
        max: *sorted.last()?,
    })
}

/// What a whole run adds up to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub calls: usize,
    pub passed: usize,
    pub failed: usize,
    /// `busy`, `rejected`, `unreachable`, `timeout`, `auth_failed`, `media` for calls that did
    /// not connect or finish; `expectation` for connected calls with a failed expectation.
    pub failures_by_kind: BTreeMap<String, usize>,
    /// End of caller speech to the agent's first audio, across all answered turns.
    pub latency_ms: Option<Percentiles>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        assert_eq!(percentiles(&[]), None);
        let one = percentiles(&[42]).unwrap();
        assert_eq!((one.p50, one.p95, one.p99, one.max, one.count), (42, 42, 42, 42, 1));
        // 1..=100: p50 is the 50th value, p95 the 95th, p99 the 99th.
        let values: Vec<u64> = (1..=100).rev().collect();
        let p = percentiles(&values).unwrap();
        assert_eq!((p.p50, p.p95, p.p99, p.max), (50, 95, 99, 100));
        // 20 values: p95 is rank 19, p99 rank 20.
        let values: Vec<u64> = (1..=20).map(|v| v * 10).collect();
        let p = percentiles(&values).unwrap();
        assert_eq!((p.p50, p.p95, p.p99), (100, 190, 200));
        assert_eq!(nearest_rank(&[1, 2, 3], 0.0), Some(1));
    }
}
