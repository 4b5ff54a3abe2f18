//! `POST /v1/events` (SPEC §6): one event, `{"user": …, "text": …}`, or a batch,
//! `{"events": [{"user": …, "text": …}, …]}` of 1 to 1000, published in order. A batch is
//! checked whole before anything is published: one bad entry answers `400` naming its
//! index (`events[3]: …`) and nothing is delivered.

use super::{AdminState, ApiError};
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};
use tether_actors::bus::{Publish, PublishError, PublishReceipt, MAX_BATCH_EVENTS};

/// One event, alone or as an entry of a batch.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventBody {
    user: String,
    text: String,
}

/// A batch: its entries are read one by one, so an error can name its index.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    events: Vec<Value>,
}

/// Publishes one event or a batch; answers `202` with one answer per event.
pub async fn publish(
    state: web::Data<AdminState>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    if body.get("events").is_some() {
        return publish_batch(&state, body).await;
    }
    let EventBody { user, text } = serde_json::from_value(body).map_err(not_expected)?;
    let receipt = state
        .tether
        .publish(user.clone(), text)
        .await
        .map_err(publish_error)?;
    Ok(HttpResponse::Accepted().json(answer(&user, receipt)))
}

async fn publish_batch(state: &AdminState, body: Value) -> Result<HttpResponse, ApiError> {
    let BatchBody { events } = serde_json::from_value(body).map_err(not_expected)?;
    if !(1..=MAX_BATCH_EVENTS).contains(&events.len()) {
        return Err(publish_error(PublishError::BatchSize {
            events: events.len(),
        }));
    }
    let events = events
        .into_iter()
        .enumerate()
        .map(|(index, entry)| {
            let EventBody { user, text } = serde_json::from_value(entry).map_err(|err| {
                ApiError::bad_request(format!("events[{index}]: not the expected JSON: {err}"))
            })?;
            Ok(Publish { user, text })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let users: Vec<String> = events.iter().map(|event| event.user.clone()).collect();
    let receipts = state
        .tether
        .publish_batch(events)
        .await
        .map_err(publish_error)?;
    let answers: Vec<Value> = users
        .iter()
        .zip(receipts)
        .map(|(user, receipt)| answer(user, receipt))
        .collect();
    Ok(HttpResponse::Accepted().json(json!({ "events": answers })))
}

/// The answer for one published event.
fn answer(user: &str, receipt: PublishReceipt) -> Value {
    json!({
        "user": user,
        "time": receipt.time,
        "connections": receipt.connections,
    })
}

fn not_expected(err: serde_json::Error) -> ApiError {
    ApiError::bad_request(format!("the body is not the expected JSON: {err}"))
}

/// `503` while the bus restarts; `400` for an event (or batch) that is not valid.
pub fn publish_error(err: PublishError) -> ApiError {
    match err {
        PublishError::Unavailable => ApiError::unavailable(err.to_string()),
        other => ApiError::bad_request(other.to_string()),
    }
}
