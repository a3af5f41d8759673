//! Sources of change records.
