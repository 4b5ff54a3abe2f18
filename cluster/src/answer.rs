//! Every answer from Redis is bounded in time: past [`ANSWER_TIMEOUT`] the connection counts
//! as lost, whatever was asked.

use std::time::Duration;

/// How long any answer from Redis may take before the connection counts as lost.
pub(crate) const ANSWER_TIMEOUT: Duration = Duration::from_secs(3);

/// `request`, failing after [`ANSWER_TIMEOUT`].
pub(crate) async fn bounded<T>(
    request: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(ANSWER_TIMEOUT, request).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err(format!("no answer within {ANSWER_TIMEOUT:?}")),
    }
}
