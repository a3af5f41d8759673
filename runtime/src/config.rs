//! Runtime and pipeline configuration.
