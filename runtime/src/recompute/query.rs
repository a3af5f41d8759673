//! STUB until merge: the host `query` function.
use std::time::Duration;

use crate::plugin::bindings::{DbValue, Rows};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    pub url: String,
    #[serde(default, with = "humantime_serde")]
    pub statement_timeout: Option<Duration>,
}
impl DatabaseConfig {
    pub fn build(&self, name: &str) -> Result<QueryRunner, QueryError> {
        Ok(QueryRunner { name: name.to_owned() })
    }
}
#[derive(Clone)]
pub struct QueryRunner {
    name: String,
}
impl QueryRunner {
    pub async fn query(&self, _sql: &str, _params: &[DbValue]) -> Result<Rows, QueryError> {
        Err(QueryError::Unavailable { database: self.name.clone(), message: "stub".into() })
    }
    pub async fn ping(&self) -> Result<(), QueryError> {
        Ok(())
    }
    pub fn name(&self) -> &str {
        &self.name
    }
}
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("database '{database}' unavailable: {message}")]
    Unavailable { database: String, message: String },
}
impl QueryError {
    pub fn is_transient(&self) -> bool {
        true
    }
}
