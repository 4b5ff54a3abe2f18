//! The bottom layer: small utilities that import nothing else of the crate — read buffers,
//! the event clock, log excerpts, the server-wide output budget and the metrics (with the
//! label enums they count by).

pub mod buffers;
pub mod clock;
pub mod excerpt;
pub(crate) mod failure_log;
pub mod metrics;
pub(crate) mod output_budget;
pub(crate) mod priority;
