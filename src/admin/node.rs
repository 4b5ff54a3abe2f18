//! `GET /v1/node`: the node at a glance, for the web console and for scripts — version,
//! uptime, the user store and the cluster link, and the live figures (connections by
//! transport, logins, events, password checks waiting) read from the same metrics
//! `/metrics` shows, so the two never disagree.
//!
//! Counters are totals since the start; a reader takes rates from two readings (the
//! console does, every 2 s).

use super::{AdminState, ApiError, UserAdmin};
use actix_web::{web, HttpResponse};
use serde_json::{json, Map, Value};

/// The answer of `GET /v1/node`.
pub async fn node(state: web::Data<AdminState>) -> Result<HttpResponse, ApiError> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &state.metrics)
        .map_err(|err| ApiError::internal(format!("cannot encode the metrics: {err}")))?;
    let metrics = Samples(&text);
    let users = match &state.users {
        UserAdmin::File(sync) => json!({
            "store": "file",
            "state": "ok",
            "count": sync.users().len(),
            "reloads_refused": metrics.sum("tether_users_reloads_total", Some(("result", "refused"))),
        }),
        UserAdmin::Database(database) => json!({
            "store": "postgresql",
            "state": if database.reachable() { "ok" } else { "unreachable" },
        }),
    };
    let cluster = state.tether.cluster_connected().map(|connected| {
        json!({
            "node": state.node_name,
            "state": if connected { "connected" } else { "unreachable" },
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
            "transports": metrics.by_label("tether_connections_by_transport", "transport"),
        },
        "logins": metrics.by_label("tether_logins_total", "result"),
        "events": {
            "published": metrics.sum("tether_events_published_total", None),
            "delivered": metrics.sum("tether_events_delivered_total", None),
        },
        "password_checks_waiting": metrics.sum("tether_password_check_queue_depth", None),
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
        tether_connections_by_transport{transport=\"tcp\"} 3\n\
        tether_connections_by_transport{transport=\"tls\"} 1\n\
        tether_connections_by_transport{transport=\"tcp\",worker=\"1\"} 2\n\
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
    fn groups_samples_by_a_label() {
        let samples = Samples(TEXT);
        assert_eq!(
            samples.by_label("tether_connections_by_transport", "transport"),
            json!({"tcp": 5, "tls": 1})
        );
        assert_eq!(samples.by_label("tether_absent", "transport"), json!({}));
    }
}
