//! Writing recomputed values to Redis behind a version guard, with freshness
//! metadata per key (see [`meta`] for the layout applications read).

pub mod cache;
pub mod durability;
pub mod error;
pub mod eviction;
pub mod meta;
pub mod redis_writer;
pub mod ttl_jitter;
pub mod watermark;
mod watermark_start;

pub use cache::{CacheConfig, RedisCache};
pub use error::SinkError;
pub use meta::{KeyMeta, companion_key, meta_key, read_meta};
pub use redis_writer::{KeyAction, KeyVersion, KeyWrite, RedisWriter, VersionKind, WriteReport, WriteSettings};
pub use ttl_jitter::TtlJitter;
pub use watermark::{Advanced, Lost, Watermark};
