//! What the tool reads about the machine and the server: a process's resident memory, the
//! kernel's TCP socket memory, and latency histograms.

use crate::Fallible;
use hdrhistogram::Histogram;
use std::sync::{Arc, Mutex};

/// Resident set size of process `pid` in KiB, from `/proc/PID/status` (`VmRSS`).
pub fn rss_kib(pid: u32) -> Fallible<u64> {
    let path = format!("/proc/{pid}/status");
    let status =
        std::fs::read_to_string(&path).map_err(|err| format!("cannot read {path}: {err}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("{path} has no readable VmRSS line"))
}

/// CPU time a process has used so far, in seconds.
#[derive(Debug, Clone, Copy)]
pub struct CpuTimes {
    /// In user space.
    pub user: f64,
    /// In the kernel.
    pub system: f64,
}

impl std::ops::Sub for CpuTimes {
    type Output = CpuTimes;

    fn sub(self, earlier: CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user - earlier.user,
            system: self.system - earlier.system,
        }
    }
}

/// CPU time process `pid` has used so far (all threads), user and kernel apart, from
/// `/proc/PID/stat` (ticks of USER_HZ, which Linux fixes at 100 for `/proc`).
pub fn cpu_times(pid: u32) -> Fallible<CpuTimes> {
    let path = format!("/proc/{pid}/stat");
    let stat =
        std::fs::read_to_string(&path).map_err(|err| format!("cannot read {path}: {err}"))?;
    // Fields after the command name, which ends with the last ')': state is field 3, utime
    // and stime are 14 and 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|field| field.parse::<u64>().ok())
    };
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => Ok(CpuTimes {
            user: user as f64 / 100.0,
            system: system as f64 / 100.0,
        }),
        _ => Err(format!("{path} has no readable utime/stime")),
    }
}

/// The kernel's TCP figures from `/proc/net/sockstat`, machine-wide.
#[derive(Debug, Clone, Copy, Default)]
pub struct SockStat {
    /// Sockets in use.
    pub inuse: u64,
    /// Sockets in TIME_WAIT.
    pub time_wait: u64,
    /// Memory held by TCP socket buffers, in KiB (the file counts pages).
    pub mem_kib: u64,
}

/// Reads `/proc/net/sockstat`.
pub fn sockstat() -> Fallible<SockStat> {
    let text = std::fs::read_to_string("/proc/net/sockstat")
        .map_err(|err| format!("cannot read /proc/net/sockstat: {err}"))?;
    let line = text
        .lines()
        .find(|line| line.starts_with("TCP:"))
        .ok_or("no TCP line in /proc/net/sockstat")?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let field = |name: &str| -> u64 {
        words
            .iter()
            .position(|word| *word == name)
            .and_then(|at| words.get(at + 1))
            .and_then(|value| value.parse().ok())
            .unwrap_or(0)
    };
    Ok(SockStat {
        inuse: field("inuse"),
        time_wait: field("tw"),
        mem_kib: field("mem") * 4,
    })
}

/// Latencies in nanoseconds, 1 ns to 100 s, three significant digits.
pub fn new_histogram() -> Histogram<u64> {
    #[allow(
        clippy::expect_used,
        reason = "the bounds are constants that new_with_bounds accepts"
    )]
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("constant histogram bounds are valid")
}

/// A histogram shared by many connections; each records into a local batch first.
pub type SharedHistogram = Arc<Mutex<Histogram<u64>>>;

/// Samples kept by one connection before they go into the shared histogram.
const BATCH: usize = 512;

/// One connection's pending samples for a [`SharedHistogram`].
pub struct Recorder {
    /// Where the samples end up.
    shared: SharedHistogram,
    /// Samples not yet added.
    pending: Vec<u64>,
}

impl Recorder {
    /// A recorder adding to `shared`.
    pub fn new(shared: &SharedHistogram) -> Self {
        Self {
            shared: Arc::clone(shared),
            pending: Vec::with_capacity(BATCH),
        }
    }

    /// Records one latency in nanoseconds.
    pub fn record(&mut self, nanos: u64) {
        self.pending.push(nanos.max(1));
        if self.pending.len() >= BATCH {
            self.flush();
        }
    }

    /// Adds the pending samples to the shared histogram.
    pub fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        // A poisoned lock only means another connection panicked mid-record; the counts
        // are still usable.
        let mut histogram = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        for &nanos in &self.pending {
            histogram.saturating_record(nanos);
        }
        self.pending.clear();
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.flush();
    }
}

/// p50, p99, p99.9 and max of a histogram, in microseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Percentiles {
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest sample.
    pub max_us: f64,
    /// Number of samples.
    pub count: u64,
}

impl Percentiles {
    /// Reads the percentiles of `histogram` (recorded in nanoseconds).
    pub fn of(histogram: &Histogram<u64>) -> Self {
        let us = |nanos: u64| nanos as f64 / 1000.0;
        Self {
            p50_us: us(histogram.value_at_quantile(0.50)),
            p99_us: us(histogram.value_at_quantile(0.99)),
            p999_us: us(histogram.value_at_quantile(0.999)),
            max_us: us(histogram.max()),
            count: histogram.len(),
        }
    }

    /// Reads the percentiles of a shared histogram.
    pub fn of_shared(histogram: &SharedHistogram) -> Self {
        Self::of(&histogram.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_rss_is_readable() {
        assert!(rss_kib(std::process::id()).unwrap() > 0);
    }

    #[test]
    fn sockstat_is_readable() {
        sockstat().unwrap();
    }
}
