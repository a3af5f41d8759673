//! Writing recomputed values to Redis.

pub mod redis_writer;

pub use redis_writer::{
    CacheConfig, KeyAction, KeyVersion, KeyWrite, RedisCache, RedisWriter, SinkError, WriteReport,
    WriteSettings,
};
