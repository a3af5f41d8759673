//! Debezium envelope decoding.
