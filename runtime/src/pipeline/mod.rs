//! Pipelines: route events by table, plan keys with the plugin, recompute,
//! write with the version guard, then acknowledge; retry or dead-letter failures.

mod batch;
pub mod config;
mod execute;
mod ledger;
pub mod plan;
mod planning;
mod runner;
mod staging;
pub mod stats;
mod worker;

pub use batch::{ApplyError, Failure, Interrupted, Pipeline, now_ms};
pub use config::{OnChange, PipelineConfig};
pub use planning::Planning;
pub use runner::SourceRunner;
