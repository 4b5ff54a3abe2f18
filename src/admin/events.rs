//! `POST /v1/events` (SPEC §6): one event, `{"user": …, "text": …}`, or a batch,
//! `{"events": [{"user": …, "text": …}, …]}` of 1 to 1000, published in order. A batch is
//! checked whole before anything is published: one bad entry answers `400` naming its
//! index (`events[3]: …`) and nothing is delivered. Bodies are read straight into these
//! types (no JSON tree), since a batch's cost per event is what the route is for.

use super::{AdminState, ApiError};
use actix_web::{web, HttpResponse};
use serde::de::{Error as _, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;
use std::sync::Arc;
use tether_actors::bus::{Publish, PublishError, PublishReceipt, MAX_BATCH_EVENTS};

/// The body: `user` and `text`, or `events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PublishBody {
    user: Option<String>,
    text: Option<String>,
    events: Option<Batch>,
}

/// One event, as an entry of a batch.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventBody {
    user: String,
    text: String,
}

/// A batch's entries; an entry that is not an [`EventBody`] fails the body naming its
/// index.
#[derive(Debug)]
struct Batch(Vec<Publish>);

impl<'de> Deserialize<'de> for Batch {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_seq(BatchVisitor)
    }
}

struct BatchVisitor;

impl<'de> Visitor<'de> for BatchVisitor {
    type Value = Batch;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of {\"user\": …, \"text\": …}")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Batch, A::Error> {
        let mut events = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_BATCH_EVENTS));
        loop {
            let index = events.len();
            if index == MAX_BATCH_EVENTS {
                // One more is too many: count them for the answer, keeping none.
                let mut total = index;
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    total += 1;
                }
                if total > index {
                    return Err(A::Error::custom(PublishError::BatchSize { events: total }));
                }
                return Ok(Batch(events));
            }
            match seq.next_element::<EventBody>() {
                Ok(Some(EventBody { user, text })) => events.push(Publish { user, text }),
                Ok(None) => return Ok(Batch(events)),
                Err(err) => return Err(A::Error::custom(format!("events[{index}]: {err}"))),
            }
        }
    }
}

/// The answer for one published event; keys in alphabetical order, as `json!` writes
/// them elsewhere.
#[derive(Debug, Serialize)]
struct EventAnswer<'a> {
    connections: usize,
    time: i64,
    user: &'a str,
}

/// The answer for a batch.
#[derive(Debug, Serialize)]
struct BatchAnswer<'a> {
    events: Vec<EventAnswer<'a>>,
}

/// Publishes one event or a batch; answers `202` with one answer per event.
pub async fn publish(
    state: web::Data<AdminState>,
    body: web::Json<PublishBody>,
) -> Result<HttpResponse, ApiError> {
    match body.into_inner() {
        PublishBody {
            user: None,
            text: None,
            events: Some(Batch(events)),
        } => publish_batch(&state, events).await,
        PublishBody {
            user: Some(user),
            text: Some(text),
            events: None,
        } => {
            let receipt = state
                .tether
                .publish(user.clone(), text)
                .await
                .map_err(publish_error)?;
            Ok(HttpResponse::Accepted().json(answer(&user, receipt)))
        }
        PublishBody {
            events: Some(_), ..
        } => Err(not_expected(
            "a body has either \"user\" and \"text\", or \"events\"",
        )),
        PublishBody { user: None, .. } => Err(not_expected("missing field `user`")),
        PublishBody { .. } => Err(not_expected("missing field `text`")),
    }
}

async fn publish_batch(state: &AdminState, events: Vec<Publish>) -> Result<HttpResponse, ApiError> {
    if !(1..=MAX_BATCH_EVENTS).contains(&events.len()) {
        return Err(publish_error(PublishError::BatchSize {
            events: events.len(),
        }));
    }
    let events: Arc<[Publish]> = events.into();
    let receipts = state
        .tether
        .publish_batch(Arc::clone(&events))
        .await
        .map_err(publish_error)?;
    let events = events
        .iter()
        .zip(receipts)
        .map(|(event, receipt)| answer(&event.user, receipt))
        .collect();
    Ok(HttpResponse::Accepted().json(BatchAnswer { events }))
}

fn answer(user: &str, receipt: PublishReceipt) -> EventAnswer<'_> {
    EventAnswer {
        connections: receipt.connections,
        time: receipt.time,
        user,
    }
}

fn not_expected(reason: &str) -> ApiError {
    ApiError::bad_request(format!("the body is not the expected JSON: {reason}"))
}

/// `503` while the bus restarts or the cluster's broker is unreachable; `400` for an
/// event (or batch) that is not valid.
pub fn publish_error(err: PublishError) -> ApiError {
    match err {
        PublishError::Unavailable | PublishError::ClusterUnreachable => {
            ApiError::unavailable(err.to_string())
        }
        other => ApiError::bad_request(other.to_string()),
    }
}
