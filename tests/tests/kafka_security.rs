//! Kafka over TLS and SASL for real. The test broker (tansu 0.6) serves plain
//! TCP only, so TLS comes from a rustls front of the test kit, whose
//! certificates a throwaway `openssl` CA signed; SCRAM credentials live in
//! tansu's Postgres storage (a database of the test's own), created through
//! Kafka's own AlterUserScramCredentials before the broker is restarted with
//! `--authentication`. The source trusts only the CA it is given (or, with an
//! explicit opt-in, none), and authenticates with SCRAM-SHA-256 and -512 over
//! plain TCP and over TLS; a wrong password or CA is refused with the reason.

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
use evercache_e2e::kafka::{TansuDatabase, read_records};
use evercache_test_kit::certs::make_ca;
use evercache_test_kit::free_port;
use evercache_test_kit::tansu::{Tansu, TansuOptions};
use evercache_test_kit::tls_front::TlsFront;
use kafka_protocol::messages::AlterUserScramCredentialsRequest;
use kafka_protocol::messages::alter_user_scram_credentials_request::ScramCredentialUpsertion;
use kafka_protocol::protocol::StrBytes;
use serde_json::json;

const TOPIC: &str = "shop.public.item";

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join("evercache-kafka-tls").join(format!("{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    make_ca(&dir, "good");
    make_ca(&dir, "wrong");
    dir
}

fn config(brokers: &str, group: &str, properties: &[(&str, &str)]) -> Result<KafkaConfig> {
    let mut props: BTreeMap<&str, &str> = properties.iter().copied().collect();
    props.insert("session.timeout.ms", "10000");
    Ok(serde_json::from_value(json!({
        "brokers": brokers,
        "topics": [TOPIC],
        "group": group,
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
    produce(&mut cluster, TOPIC, &records).await?;
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
    let broker_port = free_port();
    let front = TlsFront::start(&dir.join("good-server.pem"), &dir.join("good-server.key"), broker_port).await?;
    let advertised = format!("localhost:{}", front.port());
    let broker = Tansu::start_with(&TansuOptions {
        port: Some(broker_port),
        advertised: Some(advertised.clone()),
        ..TansuOptions::default()
    })?;
    broker.create_topic(TOPIC, 2)?;

    let ca = path(&dir, "good-ca.pem");
    let trusted = config(&advertised, "tls", &[("security.protocol", "SSL"), ("ssl.ca.location", &ca)])?;
    produce_values(&trusted, "tls", 6).await?;
    assert_eq!(read_values(&trusted, 6).await?, expected("tls", 6));
    let lag = consumer_lag(&trusted).await.map_err(anyhow::Error::msg)?;
    assert_eq!(lag, vec![(TOPIC.to_owned(), 0)], "the group's commits went over TLS too");

    let wrong = path(&dir, "wrong-ca.pem");
    let error = first_read_error(&config(
        &advertised,
        "tls-wrong",
        &[("security.protocol", "SSL"), ("ssl.ca.location", &wrong)],
    )?)
    .await;
    assert!(error.contains("TLS handshake failed") && error.contains("UnknownIssuer"), "{error}");
    let error = first_read_error(&config(&advertised, "tls-system", &[("security.protocol", "SSL")])?).await;
    assert!(error.contains("UnknownIssuer"), "the system's roots do not know the test CA: {error}");
    let error = first_read_error(&config(&advertised, "tls-plain", &[])?).await;
    assert!(error.contains("fetch failed") || error.contains("failed"), "plain TCP to a TLS port fails: {error}");

    let insecure = config(
        &advertised,
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
    let database = TansuDatabase::create(&format!("evercache_tansu_{}", std::process::id())).await?;
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let options = TansuOptions { port: Some(port), storage: Some(database.storage_url()), ..TansuOptions::default() };
    let open_broker = Tansu::start_with(&options)?;
    open_broker.create_topic(TOPIC, 2)?;
    create_scram_user(&address, "cdc", "s3cret-512", 2).await?;
    create_scram_user(&address, "cdc256", "s3cret-256", 1).await?;
    drop(open_broker);

    let secured = Tansu::start_with(&TansuOptions { authentication: true, ..options.clone() })?;
    let sasl = |group: &str, mechanism: &str, user: &str, password: &str| {
        config(
            &address,
            group,
            &[
                ("security.protocol", "SASL_PLAINTEXT"),
                ("sasl.mechanism", mechanism),
                ("sasl.username", user),
                ("sasl.password", password),
            ],
        )
    };
    let scram512 = sasl("sasl-512", "SCRAM-SHA-512", "cdc", "s3cret-512")?;
    produce_values(&scram512, "sasl", 5).await?;
    assert_eq!(read_values(&scram512, 5).await?, expected("sasl", 5));
    let scram256 = sasl("sasl-256", "SCRAM-SHA-256", "cdc256", "s3cret-256")?;
    assert_eq!(read_values(&scram256, 5).await?, expected("sasl", 5));

    let error = first_read_error(&sasl("sasl-bad", "SCRAM-SHA-512", "cdc", "not-the-password")?).await;
    assert!(error.contains("SASL authentication failed"), "{error}");
    assert!(!error.contains("not-the-password"), "the password never appears in errors: {error}");
    // tansu offers SCRAM only; asked for PLAIN it closes the connection instead of
    // answering UnsupportedSaslMechanism, so the refusal shows as a dropped connection.
    let error = first_read_error(&sasl("sasl-plain", "PLAIN", "cdc", "s3cret-512")?).await;
    assert!(error.contains(&address) && !error.contains("s3cret"), "{error}");
    drop(secured);

    // SASL_SSL: the same broker behind the TLS front, told to advertise the front.
    let front = TlsFront::start(&dir.join("good-server.pem"), &dir.join("good-server.key"), port).await?;
    let advertised = format!("localhost:{}", front.port());
    let _secured = Tansu::start_with(&TansuOptions {
        authentication: true,
        advertised: Some(advertised.clone()),
        ..options.clone()
    })?;
    let password_file = dir.join("kafka-password");
    std::fs::write(&password_file, "s3cret-512\n")?;
    let mut over_tls = config(
        &advertised,
        "sasl-ssl",
        &[
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", "cdc"),
            ("ssl.ca.location", &path(&dir, "good-ca.pem")),
        ],
    )?;
    over_tls.password_file = Some(password_file);
    produce_values(&over_tls, "sasl-ssl", 4).await?;
    let values = read_values(&over_tls, 9).await?;
    let mut want = expected("sasl", 5);
    want.extend(expected("sasl-ssl", 4));
    want.sort();
    assert_eq!(values, want);
    ensure!(!format!("{over_tls:?}").contains("s3cret"), "Debug shows no password");
    Ok(())
}
