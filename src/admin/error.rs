//! Errors of the admin API: a status and a reason, answered as `{"error": "<reason>"}`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use std::fmt;

/// A failed request.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    status: StatusCode,
    /// What went wrong, for the person reading the answer.
    reason: String,
}

impl ApiError {
    /// `400`: the request is malformed or names something invalid.
    pub fn bad_request(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, reason)
    }

    /// `401`: the token is missing or wrong.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong token: send Authorization: Bearer <admin.token>",
        )
    }

    /// `404`: no such user or route.
    pub fn not_found(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, reason)
    }

    /// `405`: the route exists, but not with this method.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "this route does not take this method (see docs/admin-api.md)",
        )
    }

    /// `408`: the body did not arrive in time; the connection is closed.
    pub fn request_timeout(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::REQUEST_TIMEOUT, reason)
    }

    /// `409`: the request cannot be done in the current state (an invalid user store, such as a hand-broken users file).
    pub fn conflict(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, reason)
    }

    /// `500`: the server could not do it; the log has the details.
    pub fn internal(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, reason)
    }

    /// `503`: the protocol server is restarting a component; try again.
    pub fn unavailable(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, reason)
    }

    /// `504`: the outcome is unknown (the cluster's broker stopped answering after the
    /// event was sent); retry with the event's id.
    pub fn outcome_unknown(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, reason)
    }

    fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.into(),
        }
    }

    /// A body that could not be read as the route's JSON.
    pub fn from_json(err: actix_web::error::JsonPayloadError) -> Self {
        use actix_web::error::JsonPayloadError;
        match err {
            JsonPayloadError::Overflow { limit }
            | JsonPayloadError::OverflowKnownLength { limit, .. } => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is larger than {limit} bytes"),
            ),
            JsonPayloadError::Payload(err) if super::body_deadline::is_body_timeout(&err) => {
                Self::request_timeout(err.to_string())
            }
            JsonPayloadError::Deserialize(err) => {
                Self::bad_request(format!("the body is not the expected JSON: {err}"))
            }
            other => Self::bad_request(format!("cannot read the body: {other}")),
        }
    }

    /// A query string that could not be read as the route's parameters.
    pub fn from_query(err: actix_web::error::QueryPayloadError) -> Self {
        Self::bad_request(format!("bad query: {err}"))
    }

    /// A path segment that could not be decoded.
    pub fn from_path(err: actix_web::error::PathError) -> Self {
        Self::bad_request(format!("bad path: {err}"))
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if self.status == StatusCode::UNAUTHORIZED {
            response.insert_header(("WWW-Authenticate", "Bearer"));
        }
        if self.status == StatusCode::REQUEST_TIMEOUT {
            // The rest of the body may still come: the connection cannot be reused.
            response.force_close();
        }
        response.json(serde_json::json!({ "error": self.reason }))
    }
}
