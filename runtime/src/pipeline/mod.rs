//! Pipelines: route events by table, plan keys with the plugin, recompute,
//! write with the version guard, then acknowledge; retry, isolate or
//! dead-letter failures. Each pipeline writes its batches in order on a worker
//! of its own; the source's batches are settled in read order.

mod attempt;
pub mod build;
pub mod commits;
pub mod config;
mod failure;
mod finish;
pub mod key_pattern;
pub mod key_plan;
mod ledger;
pub mod losses;
mod owned_keys;
mod plan_ahead;
mod ranks;
pub mod reload;
pub mod repair;
mod replay;
mod runner;
mod running;
mod staging;
pub mod stats;
pub mod visibility;
mod watermarks;
mod worker;

pub use config::{OnChange, PipelineConfig};
pub use failure::{ApplyError, Interrupted};
pub use key_pattern::KeyPattern;
pub use losses::{Loss, LossSender};
pub use plan_ahead::Planning;
pub use repair::{RepairError, RepairKey, RepairReport};
pub use runner::SourceRunner;
pub use running::Pipeline;
