//! Writing recomputed values to Redis behind a version guard, with freshness
//! metadata per key (see [`meta`] for the layout applications read).

pub mod debezium_stream;
pub mod meta;
pub mod redis_writer;

pub use meta::{KeyMeta, meta_key, read_meta};
pub use redis_writer::{
    CacheConfig, KeyAction, KeyVersion, KeyWrite, RedisCache, RedisWriter, SinkError, WriteReport, WriteSettings,
};
