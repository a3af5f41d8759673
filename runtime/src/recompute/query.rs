//! The host `query` function.
