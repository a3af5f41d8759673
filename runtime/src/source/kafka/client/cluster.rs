//! The brokers: where each one is, a connection to each (opened when first
//! needed, dropped when it fails), and which broker leads each partition.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{MetadataRequest, TopicName};
use kafka_protocol::protocol::{Request, StrBytes};

use super::KafkaError;
use super::conn::BrokerConn;
use super::settings::Settings;

/// Partition → leader broker of one topic.
pub type Partitions = BTreeMap<i32, i32>;

/// What the client knows of the cluster.
pub struct Cluster {
    settings: Arc<Settings>,
    bootstrap: Vec<String>,
    brokers: HashMap<i32, String>,
    conns: HashMap<i32, BrokerConn>,
    topics: BTreeMap<String, Partitions>,
}

impl Cluster {
    /// A cluster reached through `brokers` ("host:port,host:port"); nothing is connected yet.
    pub fn new(brokers: &str, settings: Arc<Settings>) -> Self {
        let bootstrap = brokers.split(',').map(str::trim).filter(|b| !b.is_empty()).map(str::to_owned).collect();
        Self { settings, bootstrap, brokers: HashMap::new(), conns: HashMap::new(), topics: BTreeMap::new() }
    }

    /// The client's settings.
    pub fn settings(&self) -> &Arc<Settings> {
        &self.settings
    }

    /// Topics and their partitions' leaders, as of the last [`Self::refresh`].
    pub fn topics(&self) -> &BTreeMap<String, Partitions> {
        &self.topics
    }

    /// The leader of a partition, as last known.
    pub fn leader(&self, topic: &str, partition: i32) -> Option<i32> {
        self.topics.get(topic)?.get(&partition).copied().filter(|leader| *leader >= 0)
    }

    /// Notes where broker `node` is (a coordinator may be named before metadata lists it).
    pub fn learn_broker(&mut self, node: i32, host: &str, port: i32) {
        let address = format!("{host}:{port}");
        if self.brokers.get(&node) != Some(&address) {
            self.conns.remove(&node);
            self.brokers.insert(node, address);
        }
    }

    /// Reads metadata of `topics` (every topic when `None`) from any broker that
    /// answers, bootstrap brokers last. Topics the brokers do not know are left out.
    pub async fn refresh(&mut self, topics: Option<&[String]>, allow_create: bool) -> Result<(), KafkaError> {
        let mut request = MetadataRequest::default();
        request.allow_auto_topic_creation = allow_create;
        request.topics = topics.map(|topics| {
            topics
                .iter()
                .map(|t| {
                    let mut topic = MetadataRequestTopic::default();
                    topic.name = Some(TopicName(StrBytes::from_string(t.clone())));
                    topic
                })
                .collect()
        });
        let candidates = self.nodes();
        let mut last_error = KafkaError::Protocol("no brokers configured".to_owned());
        for node in candidates {
            let answer = match self.call(node, &request, 9).await {
                Ok(answer) => answer,
                Err(e) => {
                    last_error = e;
                    continue;
                }
            };
            for broker in &answer.brokers {
                self.learn_broker(broker.node_id.0, broker.host.as_str(), broker.port);
            }
            let complete = topics.is_none();
            if complete {
                self.topics.clear();
            }
            for topic in answer.topics {
                let Some(name) = topic.name.map(|n| n.0.to_string()) else { continue };
                match ResponseError::try_from_code(topic.error_code) {
                    None => {
                        let partitions = topic.partitions.iter().map(|p| (p.partition_index, p.leader_id.0)).collect();
                        self.topics.insert(name, partitions);
                    }
                    Some(_) => {
                        self.topics.remove(&name);
                    }
                }
            }
            return Ok(());
        }
        Err(last_error)
    }

    /// Sends `request` to broker `node` (a bootstrap broker when negative) at the
    /// highest common version up to `ours`. A failed connection is dropped, so
    /// the next call reconnects.
    pub async fn call<R: Request>(&mut self, node: i32, request: &R, ours: i16) -> Result<R::Response, KafkaError> {
        self.call_waiting(node, request, ours, Duration::ZERO).await.map(|(answer, _)| answer)
    }

    /// Like [`Self::call`] for a request the broker may hold for `server_wait`;
    /// also returns the version used.
    pub async fn call_waiting<R: Request>(
        &mut self,
        node: i32,
        request: &R,
        ours: i16,
        server_wait: Duration,
    ) -> Result<(R::Response, i16), KafkaError> {
        let result = match self.conn(node).await {
            Ok(conn) => conn.request_waiting(request, ours, server_wait).await,
            Err(e) => Err(e),
        };
        if matches!(result, Err(KafkaError::Io { .. } | KafkaError::Protocol(_))) {
            self.conns.remove(&node);
        }
        result
    }

    async fn conn(&mut self, node: i32) -> Result<&mut BrokerConn, KafkaError> {
        if self.conns.get(&node).is_some_and(BrokerConn::expiring) {
            self.conns.remove(&node);
        }
        if !self.conns.contains_key(&node) {
            let address = self.address(node)?;
            let conn = BrokerConn::connect(&address, &self.settings).await?;
            self.conns.insert(node, conn);
        }
        Ok(self.conns.get_mut(&node).expect("inserted above"))
    }

    /// Every broker to try: connected ones first, then other known ones, then
    /// the bootstrap list (as negative ids).
    pub fn nodes(&self) -> Vec<i32> {
        let mut nodes: Vec<i32> = self.conns.keys().copied().collect();
        let mut known: Vec<i32> = self.brokers.keys().filter(|n| !self.conns.contains_key(n)).copied().collect();
        known.sort();
        nodes.extend(known);
        nodes.extend((0..self.bootstrap.len() as i32).map(|i| -1 - i));
        nodes
    }

    /// `host:port` of broker `node`.
    pub fn address(&self, node: i32) -> Result<String, KafkaError> {
        if node < 0 {
            return self
                .bootstrap
                .get((-1 - node) as usize)
                .cloned()
                .ok_or_else(|| KafkaError::Protocol(format!("no bootstrap broker {node}")));
        }
        self.brokers.get(&node).cloned().ok_or_else(|| KafkaError::Protocol(format!("broker {node} is not known")))
    }

    /// Forgets a topic's partitions, so the next use reads fresh metadata.
    pub fn forget_topic(&mut self, topic: &str) {
        self.topics.remove(topic);
    }

    /// Closes every connection; the next call reconnects.
    pub fn disconnect(&mut self) {
        self.conns.clear();
    }
}
