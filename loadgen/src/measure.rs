//! Latency histograms and the server's CPU time and memory, read from /proc.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// Microsecond latencies up to a minute.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

pub fn record(h: &mut Histogram<u64>, latency: Duration) {
    let _ = h.record((latency.as_micros() as u64).clamp(1, 60_000_000));
}

/// `{p50, p90, p99, max}` in milliseconds.
pub fn summary(h: &Histogram<u64>) -> Value {
    let ms = |us: u64| (us as f64 / 1000.0 * 1000.0).round() / 1000.0;
    json!({
        "count": h.len(),
        "p50_ms": ms(h.value_at_quantile(0.50)),
        "p90_ms": ms(h.value_at_quantile(0.90)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "max_ms": ms(h.max()),
    })
}

/// User plus system CPU time of the processes, in seconds (clock ticks of 10 ms).
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            // Fields after the parenthesised command name; utime and stime are 14 and 15.
            let rest = &stat[stat.rfind(')')? + 2..];
            let fields: Vec<&str> = rest.split(' ').collect();
            let ticks: f64 =
                fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
            Some(ticks / 100.0)
        })
        .sum()
}

/// Resident memory of the processes, in bytes.
pub fn rss_bytes(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kb * 1024)
        })
        .sum()
}

/// A measured window: wall time and the servers' CPU time over it, and that
/// of each Redis process.
pub struct Window {
    started: Instant,
    cpu_at_start: f64,
    pids: Vec<u32>,
    redis_at_start: Vec<(u32, f64)>,
}

impl Window {
    pub fn start(common: &crate::Common) -> Self {
        Self {
            started: Instant::now(),
            cpu_at_start: cpu_seconds(&common.server_pids),
            pids: common.server_pids.clone(),
            redis_at_start: common
                .redis_pids
                .iter()
                .map(|pid| (*pid, cpu_seconds(&[*pid])))
                .collect(),
        }
    }

    /// Redis CPU microseconds per unit of work over the window so far: in all,
    /// and per process (null without Redis pids).
    pub fn redis_us_per(&self, units: u64) -> Value {
        if self.redis_at_start.is_empty() {
            return Value::Null;
        }
        let each: Vec<f64> = self
            .redis_at_start
            .iter()
            .map(|(pid, at_start)| cpu_seconds(&[*pid]) - at_start)
            .collect();
        json!({
            "all": cpu_us_per(Some(each.iter().sum()), units),
            "by_process": each.iter().map(|cpu| cpu_us_per(Some(*cpu), units)).collect::<Vec<_>>(),
        })
    }

    /// `(wall seconds, server CPU seconds or None without pids)`.
    pub fn finish(&self) -> (f64, Option<f64>) {
        let wall = self.started.elapsed().as_secs_f64();
        let cpu = (!self.pids.is_empty()).then(|| cpu_seconds(&self.pids) - self.cpu_at_start);
        (wall, cpu)
    }
}

/// Server CPU microseconds per unit of work, rounded to 0.01.
pub fn cpu_us_per(cpu: Option<f64>, units: u64) -> Value {
    match cpu {
        Some(cpu) if units > 0 => json!((cpu * 1e6 / units as f64 * 100.0).round() / 100.0),
        _ => Value::Null,
    }
}

pub fn rate(count: u64, seconds: f64) -> f64 {
    (count as f64 / seconds.max(1e-9)).round()
}
