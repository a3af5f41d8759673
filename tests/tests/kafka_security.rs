//! Kafka over TLS and SASL for real, against Apache Kafka's own listeners (the
//! suite's shared broker): SSL with the broker's certificate signed by a
//! throwaway CA, SCRAM-SHA-256 and -512 over plain TCP and over TLS (users
//! added at format time, and more through Kafka's AlterUserScramCredentials).
//! The source trusts only the CA it is given (or, with an explicit opt-in,
//! none); a wrong password, mechanism or CA is refused with the reason.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Result, ensure};
use bytes::Bytes;
use evercache::source::KafkaConfig;
use evercache::source::kafka::client::conn::BrokerConn;
use evercache::source::kafka::client::produce::{OutRecord, produce};
use evercache::source::kafka::client::{Cluster, Settings};
use evercache::source::kafka::lag::consumer_lag;
use evercache_e2e::kafka::{Broker, read_records};
use evercache_test_kit::certs::make_ca;
use evercache_test_kit::kafka_broker::{SCRAM_PASSWORD, SCRAM_USER};
use kafka_protocol::messages::AlterUserScramCredentialsRequest;
use kafka_protocol::messages::alter_user_scram_credentials_request::ScramCredentialUpsertion;
use kafka_protocol::protocol::StrBytes;
use serde_json::json;

/// A topic of this test run's own on the shared broker.
fn topic(tag: &str) -> String {
    format!("t{}_{tag}.public.item", std::process::id())
}

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join("evercache-kafka-tls").join(format!("{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    make_ca(&dir, "wrong");
    dir
}

fn config(brokers: &str, topic: &str, group: &str, properties: &[(&str, &str)]) -> Result<KafkaConfig> {
    let mut props: BTreeMap<&str, &str> = properties.iter().copied().collect();
    props.insert("session.timeout.ms", "10000");
    Ok(serde_json::from_value(json!({
        "brokers": brokers,
        "topics": [topic],
        "group": format!("{group}{}", std::process::id()),
        "batch_size": 100,
        "block": "200ms",
        "properties": props,
    }))?)
}

/// Produces `count` records with values `<tag>-<n>` through the client with `config`'s settings.
async fn produce_values(config: &KafkaConfig, tag: &str, count: usize) -> Result<()> {
    let settings = config.settings().map_err(anyhow::Error::msg)?;
    let mut cluster = Cluster::new(&config.brokers, Arc::new(settings));
    let records: Vec<OutRecord> = (0..count)
        .map(|n| OutRecord {
            key: Some(Bytes::from(format!("{{\"id\":{n}}}"))),
            value: Some(Bytes::from(format!("{tag}-{n}"))),
            headers: Vec::new(),
            partition_hint: n as u32,
        })
        .collect();
    produce(&mut cluster, &config.topics[0], &records).await?;
    Ok(())
}

/// Reads `count` records through the source and returns their values, sorted.
async fn read_values(config: &KafkaConfig, count: usize) -> Result<Vec<String>> {
    let records = read_records(config, "secure", count).await?;
    let mut values: Vec<String> =
        records.iter().filter_map(|r| r.fields().iter().find(|(f, _)| f == "value").map(|(_, v)| v.clone())).collect();
    values.sort();
    Ok(values)
}

fn expected(tag: &str, count: usize) -> Vec<String> {
    let mut values: Vec<String> = (0..count).map(|n| format!("{tag}-{n}")).collect();
    values.sort();
    values
}

/// The first read's error, which must exist.
async fn first_read_error(config: &KafkaConfig) -> String {
    match config.build("refused").await {
        Err(e) => e.to_string(),
        Ok(mut source) => match source.next_batch().await {
            Err(e) => e.to_string(),
            Ok(batch) => panic!("the read succeeded with {} records", batch.len()),
        },
    }
}

fn path(dir: &Path, file: &str) -> String {
    dir.join(file).to_string_lossy().into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_over_tls_trusts_its_ca_and_refuses_others() -> Result<()> {
    let dir = scratch("tls");
    let broker = Broker::shared()?;
    let topic = topic("tls");
    broker.create_topic(&topic, 2).await?;
    let tls = broker.kafka().ssl_address();

    let ca = broker.kafka().ca_pem().to_string_lossy().into_owned();
    let trusted = config(&tls, &topic, "tls", &[("security.protocol", "SSL"), ("ssl.ca.location", &ca)])?;
    produce_values(&trusted, "tls", 6).await?;
    assert_eq!(read_values(&trusted, 6).await?, expected("tls", 6));
    let lag = consumer_lag(&trusted).await.map_err(anyhow::Error::msg)?;
    assert_eq!(lag, vec![(topic.clone(), 0)], "the group's commits went over TLS too");

    let wrong = path(&dir, "wrong-ca.pem");
    let error = first_read_error(&config(
        &tls,
        &topic,
        "tls-wrong",
        &[("security.protocol", "SSL"), ("ssl.ca.location", &wrong)],
    )?)
    .await;
    assert!(error.contains("TLS handshake failed") && error.contains("UnknownIssuer"), "{error}");
    let error = first_read_error(&config(&tls, &topic, "tls-system", &[("security.protocol", "SSL")])?).await;
    assert!(error.contains("UnknownIssuer"), "the system's roots do not know the test CA: {error}");
    let error = first_read_error(&config(&tls, &topic, "tls-plain", &[])?).await;
    assert!(error.contains("failed") || error.contains(&tls), "plain TCP to a TLS port fails: {error}");

    let insecure = config(
        &tls,
        &topic,
        "tls-insecure",
        &[("security.protocol", "SSL"), ("enable.ssl.certificate.verification", "false")],
    )?;
    assert_eq!(read_values(&insecure, 6).await?, expected("tls", 6), "verification off by explicit opt-in");
    Ok(())
}

/// Creates a SCRAM user through Kafka's AlterUserScramCredentials (mechanism 1
/// is SHA-256, 2 is SHA-512); the broker stores the derived keys.
async fn create_scram_user(address: &str, user: &str, password: &str, mechanism: i8) -> Result<()> {
    let settings = Settings::from_properties(&BTreeMap::new(), None).map_err(anyhow::Error::msg)?;
    let mut conn = BrokerConn::connect(address, &settings).await?;
    let (algorithm, length) = match mechanism {
        1 => (ring::pbkdf2::PBKDF2_HMAC_SHA256, 32),
        _ => (ring::pbkdf2::PBKDF2_HMAC_SHA512, 64),
    };
    let salt = format!("salt-of-{user}").into_bytes();
    let iterations = 4096;
    let mut salted = vec![0u8; length];
    ring::pbkdf2::derive(
        algorithm,
        std::num::NonZeroU32::new(iterations).unwrap(),
        &salt,
        password.as_bytes(),
        &mut salted,
    );
    let mut upsertion = ScramCredentialUpsertion::default();
    upsertion.name = StrBytes::from_string(user.to_owned());
    upsertion.mechanism = mechanism;
    upsertion.iterations = iterations as i32;
    upsertion.salt = Bytes::from(salt);
    upsertion.salted_password = Bytes::from(salted);
    let mut request = AlterUserScramCredentialsRequest::default();
    request.upsertions = vec![upsertion];
    let (answer, _) = conn.request(&request, 0).await?;
    for result in answer.results {
        ensure!(result.error_code == 0, "creating {user}: error {} {:?}", result.error_code, result.error_message);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_sasl_scram_over_plain_tcp_and_tls() -> Result<()> {
    let dir = scratch("sasl");
    let broker = Broker::shared()?;
    let topic = topic("sasl");
    broker.create_topic(&topic, 2).await?;
    // A user of this run's own, added the way an operator would, beside the one made at format time.
    let user = format!("cdc{}", std::process::id());
    create_scram_user(&broker.address(), &user, "s3cret-256", 1).await?;
    let address = broker.kafka().sasl_address();
    let sasl = |group: &str, mechanism: &str, user: &str, password: &str| {
        config(
            &address,
            &topic,
            group,
            &[
                ("security.protocol", "SASL_PLAINTEXT"),
                ("sasl.mechanism", mechanism),
                ("sasl.username", user),
                ("sasl.password", password),
            ],
        )
    };
    let scram512 = sasl("sasl-512", "SCRAM-SHA-512", SCRAM_USER, SCRAM_PASSWORD)?;
    produce_values(&scram512, "sasl", 5).await?;
    assert_eq!(read_values(&scram512, 5).await?, expected("sasl", 5));
    // A user added a moment ago may take the controller's metadata a moment to reach the broker.
    let scram256 = sasl("sasl-256", "SCRAM-SHA-256", &user, "s3cret-256")?;
    let mut attempts = 0;
    let values = loop {
        match read_values(&scram256, 5).await {
            Ok(values) => break values,
            Err(e) if attempts < 20 && e.to_string().contains("SASL authentication failed") => attempts += 1,
            Err(e) => return Err(e),
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(values, expected("sasl", 5));

    let error = first_read_error(&sasl("sasl-bad", "SCRAM-SHA-512", SCRAM_USER, "not-the-password")?).await;
    assert!(error.contains("SASL authentication failed"), "{error}");
    assert!(!error.contains("not-the-password"), "the password never appears in errors: {error}");
    let error = first_read_error(&sasl("sasl-plain", "PLAIN", SCRAM_USER, SCRAM_PASSWORD)?).await;
    assert!(error.contains(&address) && !error.contains(SCRAM_PASSWORD), "{error}");
    assert!(error.contains("PLAIN") || error.contains("mechanism"), "the refusal names the mechanism: {error}");

    // SASL_SSL: SCRAM over the broker's TLS listener, the password from a file.
    let password_file = dir.join("kafka-password");
    std::fs::write(&password_file, format!("{SCRAM_PASSWORD}\n"))?;
    let ca = broker.kafka().ca_pem().to_string_lossy().into_owned();
    let mut over_tls = config(
        &broker.kafka().sasl_ssl_address(),
        &topic,
        "sasl-ssl",
        &[
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", SCRAM_USER),
            ("ssl.ca.location", &ca),
        ],
    )?;
    over_tls.password_file = Some(password_file);
    produce_values(&over_tls, "sasl-ssl", 4).await?;
    let values = read_values(&over_tls, 9).await?;
    let mut want = expected("sasl", 5);
    want.extend(expected("sasl-ssl", 4));
    want.sort();
    assert_eq!(values, want);
    ensure!(!format!("{over_tls:?}").contains(SCRAM_PASSWORD), "Debug shows no password");
    Ok(())
}
