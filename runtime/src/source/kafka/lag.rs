//! Consumer-group lag of a Kafka source, read from the brokers: per topic, the
//! sum over partitions of the high watermark minus the group's committed offset
//! (the low watermark where nothing is committed yet).

use std::sync::Arc;

use super::KafkaConfig;
use super::client::fetch::{EARLIEST, LATEST, list_offsets};
use super::client::group::Membership;
use super::client::{Cluster, TopicPartition};
use super::subscription::Subscription;

/// Lag per subscribed topic, in messages, without joining the group.
pub async fn consumer_lag(config: &KafkaConfig) -> Result<Vec<(String, u64)>, String> {
    let settings = config.settings()?;
    let mut cluster = Cluster::new(&config.brokers, Arc::new(settings));
    let mut subscription = Subscription::new(&config.topics)?;
    let topics = subscription.resolve(&mut cluster).await.map_err(|e| format!("metadata: {e}"))?;
    let partitions: Vec<TopicPartition> = topics
        .iter()
        .flat_map(|t| cluster.topics().get(t).into_iter().flat_map(move |p| p.keys().map(move |p| (t.clone(), *p))))
        .collect();
    let mut lags: Vec<(String, u64)> = topics.into_iter().map(|t| (t, 0)).collect();
    if partitions.is_empty() {
        return Ok(lags);
    }
    let committed = Membership::new(&config.group)
        .committed(&mut cluster, &partitions)
        .await
        .map_err(|e| format!("committed offsets: {e}"))?;
    // The high watermark (read_uncommitted), as the lag is defined.
    let high = list_offsets(&mut cluster, &partitions, LATEST, false).await;
    let high = high.map_err(|e| format!("end offsets: {e}"))?;
    let low = list_offsets(&mut cluster, &partitions, EARLIEST, false).await;
    let low = low.map_err(|e| format!("start offsets: {e}"))?;
    for tp in &partitions {
        let done = committed.get(tp).copied().filter(|c| *c >= 0).or_else(|| low.get(tp).copied()).unwrap_or(0);
        let end = high.get(tp).copied().unwrap_or(done);
        if let Some((_, lag)) = lags.iter_mut().find(|(t, _)| *t == tp.0) {
            *lag += (end - done).max(0) as u64;
        }
    }
    Ok(lags)
}
