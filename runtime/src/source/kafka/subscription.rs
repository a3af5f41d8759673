//! Which topics the group member subscribes to: the named ones plus those
//! matching `^` patterns, re-checked every `metadata.max.age.ms` so a new
//! matching topic or added partitions lead to a rebalance.

use std::time::Duration;

use tokio::time::Instant;

use super::client::{Cluster, KafkaError};

/// The configured topics and what they matched at the last join.
pub struct Subscription {
    names: Vec<String>,
    patterns: Vec<regex::Regex>,
    joined_with: Vec<(String, usize)>,
    checked: Instant,
}

impl Subscription {
    /// Reads `topics`; an entry starting with `^` is a regular expression.
    pub fn new(topics: &[String]) -> Result<Self, String> {
        let (patterns, names): (Vec<&String>, Vec<&String>) = topics.iter().partition(|t| t.starts_with('^'));
        let patterns = patterns
            .into_iter()
            .map(|p| regex::Regex::new(p).map_err(|e| format!("topic pattern {p}: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            names: names.into_iter().cloned().collect(),
            patterns,
            joined_with: Vec::new(),
            checked: Instant::now(),
        })
    }

    /// True when the topics should be looked at again.
    pub fn due(&self, every: Duration) -> bool {
        self.checked.elapsed() >= every
    }

    /// The topics to subscribe to now, remembered for [`Self::changed`].
    pub async fn resolve(&mut self, cluster: &mut Cluster) -> Result<Vec<String>, KafkaError> {
        self.joined_with = self.matched(cluster).await?;
        Ok(self.joined_with.iter().map(|(topic, _)| topic.clone()).collect())
    }

    /// True when the matched topics or their partition counts changed since the last join.
    pub async fn changed(&mut self, cluster: &mut Cluster) -> Result<bool, KafkaError> {
        let now = self.matched(cluster).await?;
        if now != self.joined_with {
            tracing::info!(before = ?self.joined_with, now = ?now, "subscribed topics changed; rejoining the group");
            return Ok(true);
        }
        Ok(false)
    }

    async fn matched(&mut self, cluster: &mut Cluster) -> Result<Vec<(String, usize)>, KafkaError> {
        self.checked = Instant::now();
        if self.patterns.is_empty() {
            cluster.refresh(Some(&self.names), false).await?;
        } else {
            cluster.refresh(None, false).await?;
        }
        let mut topics: Vec<String> = self.names.clone();
        topics.extend(cluster.topics().keys().filter(|t| self.patterns.iter().any(|p| p.is_match(t))).cloned());
        topics.sort();
        topics.dedup();
        Ok(topics
            .into_iter()
            .map(|t| {
                let partitions = cluster.topics().get(&t).map_or(0, |p| p.len());
                (t, partitions)
            })
            .collect())
    }
}
