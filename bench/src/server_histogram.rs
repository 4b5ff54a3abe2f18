//! tether's own delivery latency, `tether_event_delivery_seconds` in `/metrics`: read
//! before and after a run, the difference is the run's histogram, summed over workers.
//! Percentiles are interpolated within a bucket, as Prometheus' `histogram_quantile` does.

use crate::http::HttpClient;
use crate::Fallible;
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// The metric's name, as its bucket series start.
const BUCKET_SERIES: &str = "tether_event_delivery_seconds_bucket{";

/// Cumulative counts per bucket upper bound (seconds; `f64::INFINITY` for `+Inf`),
/// summed over every worker's series.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeliveryHistogram {
    /// (upper bound, events at or below it), ascending.
    buckets: Vec<(f64, f64)>,
}

impl DeliveryHistogram {
    /// Reads the histogram from the server's `/metrics`, on a connection of its own (a
    /// kept-alive one would have idled out during a run).
    pub async fn scrape(admin: SocketAddr, token: Option<String>) -> Fallible<Self> {
        let response = HttpClient::new(admin, token).get("/metrics").await?;
        if response.status != 200 {
            return Err(format!("GET /metrics answered {}", response.status));
        }
        let text = String::from_utf8_lossy(&response.body);
        let histogram = Self::parse(&text);
        if histogram.buckets.is_empty() {
            return Err(
                "GET /metrics has no tether_event_delivery_seconds (tether too old?)".into(),
            );
        }
        Ok(histogram)
    }

    /// The buckets of every `tether_event_delivery_seconds` series in `text`, summed.
    fn parse(text: &str) -> Self {
        // Keyed by the bound's bits: the bounds are the same for every worker.
        let mut sums: BTreeMap<u64, f64> = BTreeMap::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(BUCKET_SERIES) else {
                continue;
            };
            let Some((labels, value)) = rest.split_once("} ") else {
                continue;
            };
            let bound = labels
                .split(',')
                .find_map(|label| label.strip_prefix("le=\""))
                .map(|bound| bound.trim_end_matches('"'))
                .and_then(|bound| match bound {
                    "+Inf" => Some(f64::INFINITY),
                    finite => finite.parse::<f64>().ok(),
                });
            let count = value
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok());
            if let (Some(bound), Some(count)) = (bound, count) {
                *sums.entry(bound.to_bits()).or_default() += count;
            }
        }
        let mut buckets: Vec<(f64, f64)> = sums
            .into_iter()
            .map(|(bits, count)| (f64::from_bits(bits), count))
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Self { buckets }
    }

    /// What was added since `earlier`.
    pub fn since(&self, earlier: &Self) -> Self {
        let buckets = self
            .buckets
            .iter()
            .map(|&(bound, count)| {
                let before = earlier
                    .buckets
                    .iter()
                    .find(|(earlier_bound, _)| *earlier_bound == bound)
                    .map_or(0.0, |&(_, count)| count);
                (bound, count - before)
            })
            .collect();
        Self { buckets }
    }

    /// Events counted.
    pub fn count(&self) -> f64 {
        self.buckets.last().map_or(0.0, |&(_, count)| count)
    }

    /// The `q` quantile (0..=1) in µs; `None` when empty. In the `+Inf` bucket it is the
    /// largest finite bound.
    pub fn quantile_us(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut lower = (0.0, 0.0);
        for &(bound, count) in &self.buckets {
            if count >= rank {
                if bound.is_infinite() {
                    return Some(lower.0 * 1e6);
                }
                let share = if count > lower.1 {
                    (rank - lower.1) / (count - lower.1)
                } else {
                    1.0
                };
                return Some((lower.0 + (bound - lower.0) * share) * 1e6);
            }
            lower = (bound, count);
        }
        Some(lower.0 * 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = "\
# TYPE tether_event_delivery_seconds histogram
tether_event_delivery_seconds_sum{worker=\"0\"} 0.5
tether_event_delivery_seconds_count{worker=\"0\"} 4
tether_event_delivery_seconds_bucket{le=\"0.00001\",worker=\"0\"} 0
tether_event_delivery_seconds_bucket{le=\"0.00002\",worker=\"0\"} 2
tether_event_delivery_seconds_bucket{le=\"0.00004\",worker=\"0\"} 4
tether_event_delivery_seconds_bucket{le=\"+Inf\",worker=\"0\"} 4
tether_event_delivery_seconds_bucket{le=\"0.00001\",worker=\"1\"} 0
tether_event_delivery_seconds_bucket{le=\"0.00002\",worker=\"1\"} 0
tether_event_delivery_seconds_bucket{le=\"0.00004\",worker=\"1\"} 4
tether_event_delivery_seconds_bucket{le=\"+Inf\",worker=\"1\"} 4
tether_events_published_total 8
";

    #[test]
    fn worker_series_are_summed_and_quantiles_interpolated_within_a_bucket() {
        let histogram = DeliveryHistogram::parse(METRICS);
        assert_eq!(histogram.count(), 8.0);
        // Two of eight at or below 20 µs, all eight at or below 40 µs.
        let median = histogram.quantile_us(0.5).expect("not empty");
        assert!((median - 26.666).abs() < 0.01, "{median}");
        let nothing = histogram.since(&histogram);
        assert_eq!(nothing.count(), 0.0);
        assert_eq!(nothing.quantile_us(0.99), None);
    }
}
