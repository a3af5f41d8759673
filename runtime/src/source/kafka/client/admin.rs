//! Topic administration an operator or a test needs around a source: create a
//! topic with its partitions and settings. Sent to any broker; a KRaft broker
//! forwards it to the controller.

use std::time::Duration;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::{CreateTopicsRequest, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::{Cluster, KafkaError};

/// Creates `topic` with `partitions` partitions (replication factor: the
/// broker's default) and topic-level `configs` such as `cleanup.policy`.
/// A topic that exists already is not an error.
pub async fn create_topic(
    cluster: &mut Cluster,
    topic: &str,
    partitions: i32,
    configs: &[(&str, &str)],
) -> Result<(), KafkaError> {
    let mut creatable = CreatableTopic::default();
    creatable.name = TopicName(StrBytes::from_string(topic.to_owned()));
    creatable.num_partitions = partitions;
    creatable.replication_factor = -1;
    creatable.configs = configs
        .iter()
        .map(|(name, value)| {
            let mut config = CreatableTopicConfig::default();
            config.name = StrBytes::from_string((*name).to_owned());
            config.value = Some(StrBytes::from_string((*value).to_owned()));
            config
        })
        .collect();
    let mut request = CreateTopicsRequest::default();
    request.topics = vec![creatable];
    request.timeout_ms = 10_000;
    let mut last_error = KafkaError::Protocol("no brokers configured".to_owned());
    for node in cluster.nodes() {
        let answer = match cluster.call_waiting(node, &request, 5, Duration::from_secs(10)).await {
            Ok((answer, _)) => answer,
            Err(e) => {
                last_error = e;
                continue;
            }
        };
        for result in answer.topics {
            match ResponseError::try_from_code(result.error_code) {
                None | Some(ResponseError::TopicAlreadyExists) => {}
                Some(error) => return Err(KafkaError::api("CreateTopics", error).context(topic)),
            }
        }
        cluster.forget_topic(topic);
        return Ok(());
    }
    Err(last_error)
}
