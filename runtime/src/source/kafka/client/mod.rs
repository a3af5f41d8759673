//! A Kafka client in Rust over the one rustls stack: connections with TLS and
//! SASL (`conn`, `sasl`), cluster metadata (`cluster`), consumer-group
//! membership (`group`, `assign`), fetching (`fetch`), producing (`produce`)
//! and creating topics (`admin`).
//! The wire format is the `kafka-protocol` crate's.

pub mod admin;
pub mod assign;
pub mod cluster;
pub mod conn;
pub mod fetch;
pub mod group;
pub mod heartbeat;
pub mod produce;
pub mod records;
pub mod sasl;
pub mod settings;

use kafka_protocol::ResponseError;

pub use assign::TopicPartition;
pub use cluster::Cluster;
pub use settings::Settings;

/// What a Kafka call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// The connection failed or the broker did not answer in time.
    #[error("{address}: {message}")]
    Io {
        /// `host:port`.
        address: String,
        /// What happened.
        message: String,
    },
    /// The broker answered with an error code.
    #[error("{api}{}: {error} ({})", context.as_deref().map(|c| format!(" {c}")).unwrap_or_default(), error.code())]
    Api {
        /// The request.
        api: &'static str,
        /// The broker's error.
        error: ResponseError,
        /// What it was about, e.g. the topic.
        context: Option<String>,
    },
    /// Authentication failed.
    #[error("{address}: SASL authentication failed: {message}")]
    Auth {
        /// `host:port`.
        address: String,
        /// Why.
        message: String,
    },
    /// A message could not be encoded or decoded, or the brokers cannot serve a request.
    #[error("{0}")]
    Protocol(String),
}

impl KafkaError {
    /// A broker's error answer to `api`.
    pub fn api(api: &'static str, error: ResponseError) -> Self {
        Self::Api { api, error, context: None }
    }

    /// Names what a broker error was about.
    pub fn context(self, about: &str) -> Self {
        match self {
            Self::Api { api, error, .. } => Self::Api { api, error, context: Some(about.to_owned()) },
            other => other,
        }
    }
}
