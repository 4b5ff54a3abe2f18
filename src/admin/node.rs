//! `GET /v1/node`: the node at a glance, for the web console and for scripts — version,
//! uptime, the user store and the cluster link, and the live figures (connections by
//! transport, logins, events, password checks waiting) read from the same metrics
//! `/metrics` shows, so the two never disagree.
//!
//! Counters are totals since the start. [`History`] samples the figures every
//! [`SAMPLE_INTERVAL`] and keeps the last [`HISTORY_LEN`] samples, so a page opened now
//! draws the last minutes at once.

use super::{AdminState, ApiError};
use actix_web::{web, HttpResponse};
use prometheus_client::registry::Registry;
use serde_json::{json, Map, Value};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// How often [`History`] samples the figures.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(2);
/// Samples [`History`] keeps: 5 minutes.
const HISTORY_LEN: usize = 150;

/// One reading of the figures the history keeps.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    connections: u64,
    logins: u64,
    events: u64,
    checks_waiting: u64,
}

impl Sample {
    fn read(metrics: &Samples<'_>, at: Instant) -> Self {
        Self {
            at,
            connections: metrics.sum("tether_connections_open", None),
            logins: metrics.sum("tether_logins_total", None),
            events: metrics.sum("tether_events_published_total", None),
            checks_waiting: metrics.sum("tether_password_check_queue_depth", None),
        }
    }
}

/// The figures of the last minutes that `GET /v1/node` shows: one sample every 2 s, the
/// last 5 minutes kept.
#[derive(Debug, Default)]
pub struct History(Mutex<VecDeque<Sample>>);

impl History {
    fn push(&self, sample: Sample) {
        let mut samples = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if samples.len() == HISTORY_LEN {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// The history as JSON, oldest first: the gauges as read, the counters as rates per
    /// second between a sample and the one before (so one entry fewer than samples).
    fn to_json(&self) -> Value {
        let samples = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut connections = Vec::new();
        let mut logins = Vec::new();
        let mut events = Vec::new();
        let mut checks = Vec::new();
        for (before, after) in samples.iter().zip(samples.iter().skip(1)) {
            let seconds = after.at.duration_since(before.at).as_secs_f64();
            let rate = |from: u64, to: u64| {
                if seconds > 0.0 && to >= from {
                    ((to - from) as f64 / seconds * 100.0).round() / 100.0
                } else {
                    0.0
                }
            };
            connections.push(json!(after.connections));
            logins.push(json!(rate(before.logins, after.logins)));
            events.push(json!(rate(before.events, after.events)));
            checks.push(json!(after.checks_waiting));
        }
        json!({
            "interval_seconds": SAMPLE_INTERVAL.as_secs(),
            "connections": connections,
            "logins_per_second": logins,
            "events_per_second": events,
            "password_checks_waiting": checks,
        })
    }
}

/// Samples the metrics of `state` into its history every 2 s (the first sample now) until
/// the admin API's state is dropped. Runs on the current actix System.
pub fn keep_history(state: Weak<AdminState>) {
    actix_rt::spawn(async move {
        let mut ticks = actix_rt::time::interval(SAMPLE_INTERVAL);
        loop {
            ticks.tick().await;
            let Some(state) = state.upgrade() else {
                return;
            };
            if let Some(text) = encoded(&state.metrics) {
                state
                    .history
                    .push(Sample::read(&Samples(&text), Instant::now()));
            }
        }
    });
}

/// The metrics as OpenMetrics text; `None` (logged) when they cannot be encoded.
fn encoded(metrics: &Arc<Registry>) -> Option<String> {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, metrics) {
        Ok(()) => Some(text),
        Err(err) => {
            log::error!("admin API: cannot encode the metrics: {err}");
            None
        }
    }
}

/// The answer of `GET /v1/node`.
pub async fn node(state: web::Data<AdminState>) -> Result<HttpResponse, ApiError> {
    let text = encoded(&state.metrics)
        .ok_or_else(|| ApiError::internal("cannot encode the metrics (see the log)"))?;
    let metrics = Samples(&text);
    let store = &state.users;
    let reachable = store.reachable() != Some(false);
    let mut users = Map::new();
    users.insert("store".to_owned(), json!(store.kind()));
    users.insert(
        "state".to_owned(),
        json!(if reachable { "ok" } else { "unreachable" }),
    );
    users.extend(store.figures());
    let cluster = state.tether.cluster_connected().map(|connected| {
        json!({
            "node": state.node_name,
            "state": if connected { "connected" } else { "unreachable" },
            "nodes": state.tether.cluster_live_nodes(),
        })
    });
    let body = json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.started.elapsed().as_secs(),
        "users": users,
        "cluster": cluster,
        "connections": {
            "open": metrics.sum("tether_connections_open", None),
            "bound": metrics.sum("tether_connections_bound", None),
            "transports": metrics.by_label("tether_transport_connections_open", "transport"),
        },
        "logins": metrics.by_label("tether_logins_total", "result"),
        "events": {
            "published": metrics.sum("tether_events_published_total", None),
            "delivered": metrics.sum("tether_events_delivered_total", None),
        },
        "password_checks_waiting": metrics.sum("tether_password_check_queue_depth", None),
        "history": state.history.to_json(),
    });
    Ok(HttpResponse::Ok().json(body))
}

/// The samples of an OpenMetrics text, as the server writes it: `name{labels} value`
/// lines (label values are the server's own, without spaces or quotes inside).
struct Samples<'a>(&'a str);

impl<'a> Samples<'a> {
    /// Every sample line: its name, its label text (between the braces; empty without)
    /// and its value. Comment lines and lines that do not parse are skipped.
    fn lines(&self) -> impl Iterator<Item = (&'a str, &'a str, u64)> {
        self.0.lines().filter_map(|line| {
            if line.starts_with('#') {
                return None;
            }
            let (series, value) = line.rsplit_once(' ')?;
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            // Gauges and counters of whole things; a float form ("1.0") is read too.
            let value = value.parse::<f64>().ok()?;
            (value.is_finite() && value >= 0.0).then_some((name, labels, value as u64))
        })
    }

    /// The sum of `name`'s samples, of those with the label `(key, value)` when given.
    fn sum(&self, name: &str, label: Option<(&str, &str)>) -> u64 {
        self.lines()
            .filter(|(found, labels, _)| {
                *found == name
                    && label.is_none_or(|(key, value)| label_of(labels, key) == Some(value))
            })
            .map(|(_, _, value)| value)
            .sum()
    }

    /// `name`'s samples summed by the value of their label `key`, as a JSON object
    /// (samples without that label are left out).
    fn by_label(&self, name: &str, key: &str) -> Value {
        let mut sums = Map::new();
        for (_, labels, value) in self.lines().filter(|(found, _, _)| *found == name) {
            if let Some(label) = label_of(labels, key) {
                let sum = sums.entry(label).or_insert(json!(0));
                *sum = json!(sum.as_u64().unwrap_or(0) + value);
            }
        }
        Value::Object(sums)
    }
}

/// The value of label `key` in a label text such as `result="valid",worker="0"`.
fn label_of<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    labels.split(',').find_map(|pair| {
        let (found, value) = pair.split_once('=')?;
        (found.trim() == key).then(|| value.trim().trim_matches('"'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP tether_logins Logins by result\n\
        # TYPE tether_logins counter\n\
        tether_logins_total{result=\"valid\"} 3\n\
        tether_logins_total{result=\"invalid\"} 1\n\
        tether_connections_open 4\n\
        tether_transport_connections_open{transport=\"tcp\"} 3\n\
        tether_transport_connections_open{transport=\"tls\"} 1\n\
        tether_transport_connections_open{transport=\"tcp\",worker=\"1\"} 2\n\
        tether_password_check_queue_depth 2.0\n\
        garbage\n\
        tether_broken{ 5\n\
        # EOF\n";

    #[test]
    fn sums_samples_by_name_and_label() {
        let samples = Samples(TEXT);
        assert_eq!(samples.sum("tether_connections_open", None), 4);
        assert_eq!(samples.sum("tether_logins_total", None), 4);
        assert_eq!(
            samples.sum("tether_logins_total", Some(("result", "valid"))),
            3
        );
        assert_eq!(samples.sum("tether_password_check_queue_depth", None), 2);
        assert_eq!(samples.sum("tether_absent", None), 0);
    }

    #[test]
    fn history_keeps_the_last_samples_and_turns_counters_into_rates() {
        let history = History::default();
        let start = Instant::now();
        let sample = |n: u64| Sample {
            at: start + SAMPLE_INTERVAL * n as u32,
            connections: n,
            logins: 4 * n,
            events: 10 * n,
            checks_waiting: 1,
        };
        assert_eq!(history.to_json()["connections"], json!([]));
        for n in 0..(HISTORY_LEN as u64 + 5) {
            history.push(sample(n));
        }
        let json = history.to_json();
        let connections = json["connections"].as_array().unwrap();
        assert_eq!(connections.len(), HISTORY_LEN - 1);
        assert_eq!(connections.last(), Some(&json!(HISTORY_LEN as u64 + 4)));
        // Samples 0 to 4 were dropped; the first entry is the rate from sample 5 to 6.
        assert_eq!(connections[0], json!(6));
        assert_eq!(json["logins_per_second"][0], json!(2.0));
        assert_eq!(json["events_per_second"][0], json!(5.0));
        assert_eq!(json["password_checks_waiting"][0], json!(1));
        assert_eq!(json["interval_seconds"], json!(2));
        // A counter that went back (a restart of what counts) is no negative rate.
        let history = History::default();
        history.push(sample(3));
        history.push(Sample {
            at: start + SAMPLE_INTERVAL * 4,
            ..sample(1)
        });
        assert_eq!(history.to_json()["events_per_second"], json!([0.0]));
    }

    #[test]
    fn groups_samples_by_a_label() {
        let samples = Samples(TEXT);
        assert_eq!(
            samples.by_label("tether_transport_connections_open", "transport"),
            json!({"tcp": 5, "tls": 1})
        );
        assert_eq!(samples.by_label("tether_absent", "transport"), json!({}));
    }
}
