//! Recomputing cache values: the host's read-only database queries.

pub mod query;
