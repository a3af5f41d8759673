//! Writing recomputed values to Redis.

pub mod redis_writer;
