//! Benchmark settings from the environment (`BENCH_*`), shared by every bench in `benches/`.
#![allow(dead_code)]

use anyhow::anyhow;

/// `name` parsed, or `default` when it is not set.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().map_err(|_| anyhow!("{name}={v:?} is not valid")),
        Err(_) => Ok(default),
    }
}

/// A comma-separated list of numbers in `name`, or `default` when it is not set.
pub fn env_list(name: &str, default: &str) -> anyhow::Result<Vec<usize>> {
    let raw = std::env::var(name).unwrap_or_else(|_| default.to_owned());
    raw.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().map_err(|_| anyhow!("{name}: {s:?} is not a number")))
        .collect()
}
