//! `POST /v1/events` (SPEC §6): one event, `{"user": …, "text": …}` with an optional
//! `"id"` (idempotent publishing: a duplicate is answered with `"duplicate": true`), or a batch,
//! `{"events": [{"user": …, "text": …}, …]}` of 1 to 1000, published in order. A batch is
//! checked whole before anything is published: one bad entry answers `400` naming its
//! index (`events[3]: …`) and nothing is delivered. Bodies are read straight into these
//! types (no JSON tree), since a batch's cost per event is what the route is for.

use super::{AdminState, ApiError, MAX_BODY_BYTES};
use actix_web::error::JsonPayloadError;
use actix_web::http::header::{ContentType, CONTENT_LENGTH};
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::de::{Error as _, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;
use std::sync::Arc;
use tether_actors::hub::bus::{Publish, PublishError, PublishReceipt, MAX_BATCH_EVENTS};

/// The body: `user` and `text`, or `events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PublishBody {
    user: Option<String>,
    text: Option<String>,
    id: Option<String>,
    events: Option<Batch>,
}

/// One event, as an entry of a batch.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventBody {
    user: String,
    text: String,
    #[serde(default)]
    id: Option<String>,
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
        f.write_str("a list of {\"user\": …, \"text\": …, \"id\": … (optional)}")
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
                Ok(Some(EventBody { user, text, id })) => events.push(Publish { user, text, id }),
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
    /// Present (and `true`) only for an event whose id was accepted before.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    duplicate: bool,
    time: i64,
    user: &'a str,
}

/// Publishes one event or a batch; answers `202` with one answer per event.
pub async fn publish(
    state: web::Data<AdminState>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&request, payload)
        .await
        .map_err(ApiError::from_json)?;
    match body {
        PublishBody {
            user: None,
            text: None,
            id: None,
            events: Some(Batch(events)),
        } => publish_batch(&state, events).await,
        PublishBody {
            user: Some(user),
            text: Some(text),
            id,
            events: None,
        } => {
            let event = Publish {
                user: user.clone(),
                text,
                id,
            };
            let receipt = state
                .tether
                .publish_event(event)
                .await
                .map_err(publish_error)?;
            Ok(HttpResponse::Accepted().json(answer(&user, receipt)))
        }
        PublishBody {
            events: Some(_),
            id: Some(_),
            ..
        } => Err(not_expected(
            "a batch's ids go in its entries, not beside \"events\"",
        )),
        PublishBody {
            events: Some(_), ..
        } => Err(not_expected(
            "a body has either \"user\" and \"text\", or \"events\"",
        )),
        PublishBody { user: None, .. } => Err(not_expected("missing field `user`")),
        PublishBody { .. } => Err(not_expected("missing field `text`")),
    }
}

/// How much of a body past the limit is read and dropped before its `413`: a client that
/// writes its whole body before reading its answer (most HTTP clients do) then gets the
/// `413`, not a reset of a connection closed with its bytes unread. The body's 5 s
/// deadline bounds the time; a longer body is refused at once.
const DRAINED_PAST_LIMIT: usize = 1024 * 1024;

/// Reads and drops up to `at_most` more bytes of `payload`.
async fn drain(payload: &mut web::Payload, at_most: usize) {
    let mut drained = 0;
    while drained < at_most {
        match payload.next().await {
            Some(Ok(chunk)) => drained += chunk.len(),
            _ => return,
        }
    }
}

/// Reads the body as the JSON extractor the other routes use does (`MAX_BODY_BYTES`, a
/// `Content-Length` past it refused before reading, the same errors), but checks it is
/// UTF-8 once as a whole: read from bytes, serde_json checks every string on its own, keys
/// included, and those checks were a fifth of the route's instructions per event.
async fn read_body(
    request: &HttpRequest,
    mut payload: web::Payload,
) -> Result<PublishBody, JsonPayloadError> {
    let length = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|length| length.to_str().ok()?.parse::<usize>().ok());
    if let Some(length) = length.filter(|&length| length > MAX_BODY_BYTES) {
        if length <= DRAINED_PAST_LIMIT {
            drain(&mut payload, length).await;
        }
        return Err(JsonPayloadError::OverflowKnownLength {
            length,
            limit: MAX_BODY_BYTES,
        });
    }
    let mut body = web::BytesMut::with_capacity(length.unwrap_or(8192));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk?;
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            drain(&mut payload, DRAINED_PAST_LIMIT - body.len() - chunk.len()).await;
            return Err(JsonPayloadError::Overflow {
                limit: MAX_BODY_BYTES,
            });
        }
        body.extend_from_slice(&chunk);
    }
    match std::str::from_utf8(&body) {
        Ok(text) => serde_json::from_str(text),
        // serde_json names where the bytes stop being UTF-8.
        Err(_) => serde_json::from_slice(&body),
    }
    .map_err(JsonPayloadError::Deserialize)
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
    Ok(HttpResponse::Accepted()
        .content_type(ContentType::json())
        .body(batch_answer(&events, &receipts)))
}

/// The answer for a batch, `{"events":[{"connections":…,"time":…,"user":…},…]}`: the
/// bytes serializing a list of [`EventAnswer`] gives, written here directly, since
/// serde_json writes every key of every event through its string escaper (a third of the
/// route's instructions per event).
fn batch_answer(events: &[Publish], receipts: &[PublishReceipt]) -> Vec<u8> {
    let size: usize = events.iter().map(|event| event.user.len() + 64).sum();
    let mut body = Vec::with_capacity(size + 16);
    body.extend_from_slice(b"{\"events\":[");
    let mut number = itoa::Buffer::new();
    for (index, (event, receipt)) in events.iter().zip(receipts).enumerate() {
        if index > 0 {
            body.push(b',');
        }
        body.extend_from_slice(b"{\"connections\":");
        body.extend_from_slice(number.format(receipt.connections).as_bytes());
        if receipt.duplicate {
            body.extend_from_slice(b",\"duplicate\":true");
        }
        body.extend_from_slice(b",\"time\":");
        body.extend_from_slice(number.format(receipt.time).as_bytes());
        body.extend_from_slice(b",\"user\":");
        json_string(&event.user, &mut body);
        body.push(b'}');
    }
    body.extend_from_slice(b"]}");
    body
}

/// Appends `text` as a JSON string: as it is between quotes when nothing in it needs an
/// escape (a user name has no control character), else as serde_json escapes it.
fn json_string(text: &str, out: &mut Vec<u8>) {
    if text
        .bytes()
        .all(|byte| byte >= 0x20 && byte != b'"' && byte != b'\\')
    {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else {
        // Its only error is the writer's, and a `Vec` takes every write.
        let _ = serde_json::to_writer(&mut *out, text);
    }
}

fn answer(user: &str, receipt: PublishReceipt) -> EventAnswer<'_> {
    EventAnswer {
        connections: receipt.connections,
        duplicate: receipt.duplicate,
        time: receipt.time,
        user,
    }
}

fn not_expected(reason: &str) -> ApiError {
    ApiError::bad_request(format!("the body is not the expected JSON: {reason}"))
}

/// `503` while the bus restarts or the cluster's broker is unreachable (nothing was
/// sent); `504` when the broker stopped answering after an event was sent (its outcome is
/// unknown); `400` for an event (or batch) that is not valid.
pub fn publish_error(err: PublishError) -> ApiError {
    match err {
        PublishError::Unavailable | PublishError::ClusterUnreachable => {
            ApiError::unavailable(err.to_string())
        }
        PublishError::OutcomeUnknown => ApiError::outcome_unknown(err.to_string()),
        other => ApiError::bad_request(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_answer_is_the_json_serde_writes_for_every_kind_of_user() {
        let users = [
            "alice",
            "with \"quotes\" and \\ backslash",
            "ünïcødé ✓ 😀",
            "del\u{7f}",
            "control\u{1}\n",
            "",
        ];
        let events: Vec<Publish> = users.iter().map(|user| Publish::new(*user, "x")).collect();
        let receipts: Vec<PublishReceipt> = (0..users.len())
            .map(|index| PublishReceipt {
                time: i64::MAX - index as i64 * 1_000_003,
                connections: index * 7919,
                duplicate: index % 2 == 1,
            })
            .collect();
        let answers: Vec<EventAnswer<'_>> = events
            .iter()
            .zip(receipts.iter().copied())
            .map(|(event, receipt)| answer(&event.user, receipt))
            .collect();
        let expected =
            serde_json::to_vec(&serde_json::json!({ "events": answers })).expect("serializable");
        assert_eq!(
            String::from_utf8_lossy(&batch_answer(&events, &receipts)),
            String::from_utf8_lossy(&expected)
        );
        let one = batch_answer(&events[..1], &receipts[..1]);
        assert_eq!(
            one,
            br#"{"events":[{"connections":0,"time":9223372036854775807,"user":"alice"}]}"#
        );
    }
}
