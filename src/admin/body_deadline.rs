//! A deadline for a request's body. actix-web bounds the time a client takes to send a
//! request head (`client_request_timeout`) but not its body: a client that sends the head
//! and then trickles or stalls the body would hold its connection, and a handler waiting
//! for the body, for as long as it likes. Here the body stream ends with a timed-out error
//! once [`BODY_TIMEOUT`] has passed since the head arrived, whatever has come by then; the
//! route's extractor fails, and the answer is `408` with the connection closed.

use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::middleware::Next;
use actix_web::web::Bytes;
use actix_web::HttpMessage;
use futures_util::{Stream, StreamExt};
use std::pin::Pin;
use std::time::Duration;

/// How long a request body may take to arrive in full, counted from its head. A body is
/// at most 64 KiB, which a backend sends in milliseconds; five seconds leave room for a
/// slow link and let a test wait the deadline out.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(5);

/// Middleware: puts [`BODY_TIMEOUT`] on the request's body.
pub async fn limit_body_time(
    mut request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let deadline = tokio::time::Instant::now() + BODY_TIMEOUT;
    let body = request.take_payload();
    // The deadline is fixed: a body trickled a byte at a time runs into it as surely as one
    // that stalls.
    let bounded = futures_util::stream::unfold(Some(body), move |body| async move {
        let mut body = body?;
        match tokio::time::timeout_at(deadline, body.next()).await {
            Ok(Some(chunk)) => Some((chunk, Some(body))),
            Ok(None) => None,
            Err(_) => Some((Err(PayloadError::Io(timed_out())), None)),
        }
    });
    let bounded: Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>> = Box::pin(bounded);
    request.set_payload(Payload::Stream { payload: bounded });
    next.call(request).await
}

/// The error a body stream ends with at its deadline; see [`is_body_timeout`].
fn timed_out() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!(
            "the body did not arrive within {} s",
            BODY_TIMEOUT.as_secs()
        ),
    )
}

/// Whether a body could not be read because its deadline passed.
pub fn is_body_timeout(err: &PayloadError) -> bool {
    matches!(err, PayloadError::Io(err) if err.kind() == std::io::ErrorKind::TimedOut)
}
