//! The admin token: when `admin.token` is set, every route but `/healthz` and the web
//! console's files needs `Authorization: Bearer <token>`, compared in constant time.

use super::{AdminState, ApiError};
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, ResponseError};
use subtle::ConstantTimeEq;
use tether_actors::util::excerpt::Excerpt;

/// The one API route open without a token.
const OPEN_ROUTE: &str = "/healthz";

/// Whether `path` is served without the token: `/healthz`, and the web console's own
/// files (which hold no data; the page asks for the token to call the API). With
/// `admin.console` off those paths are not mounted and answer `404`.
fn is_open(path: &str) -> bool {
    path == OPEN_ROUTE || super::console::is_console_path(path)
}

/// Lets a request through when it carries the token (or none is configured).
pub async fn require_token(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let expected = request
        .app_data::<web::Data<AdminState>>()
        .and_then(|state| state.token.clone());
    let allowed = match &expected {
        None => true,
        Some(_) if is_open(request.path()) => true,
        Some(token) => presented_token(&request)
            .is_some_and(|presented| bool::from(presented.as_bytes().ct_eq(token.as_bytes()))),
    };
    if allowed {
        return Ok(next.call(request).await?.map_into_left_body());
    }
    log::warn!(
        "admin API: {} {} from {}: missing or wrong token",
        request.method(),
        Excerpt(request.path().as_bytes()),
        request
            .peer_addr()
            .map_or_else(|| "?".to_string(), |addr| addr.to_string())
    );
    let response = ApiError::unauthorized().error_response();
    Ok(request.into_response(response).map_into_right_body())
}

/// The token of an `Authorization: Bearer <token>` header.
fn presented_token(request: &ServiceRequest) -> Option<&str> {
    let header = request.headers().get("Authorization")?.to_str().ok()?;
    let (scheme, token) = header.split_once(' ')?;
    scheme.eq_ignore_ascii_case("Bearer").then(|| token.trim())
}
