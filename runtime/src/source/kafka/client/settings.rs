//! The client's settings, read from the source's `properties` under Kafka's own
//! names (as librdkafka and the Java client spell them), so a Kafka user's
//! existing settings carry over.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::tls::ClientTlsFiles;

/// The properties the client understands, with their defaults.
pub const SUPPORTED: &[&str] = &[
    "client.id",
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "enable.ssl.certificate.verification",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "max.poll.interval.ms",
    "request.timeout.ms",
    "max.partition.fetch.bytes",
    "fetch.max.bytes",
    "isolation.level",
    "metadata.max.age.ms",
];

/// How the client connects and behaves in its group.
#[derive(Clone)]
pub struct Settings {
    /// `client.id`, sent with every request.
    pub client_id: String,
    /// The TLS configuration for `SSL` and `SASL_SSL`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Credentials for `SASL_PLAINTEXT` and `SASL_SSL`.
    pub sasl: Option<Sasl>,
    /// Longest wait for a broker's answer (a group join may wait longer: up to the rebalance timeout).
    pub request_timeout: Duration,
    /// Without a heartbeat for this long the coordinator drops the member.
    pub session_timeout: Duration,
    /// Time between heartbeats.
    pub heartbeat_interval: Duration,
    /// How long the coordinator waits for members to rejoin during a rebalance.
    pub rebalance_timeout: Duration,
    /// Skip records of aborted transactions and read only up to the last stable offset.
    pub read_committed: bool,
    /// Most bytes fetched per partition per request.
    pub partition_fetch_bytes: i32,
    /// Most bytes fetched per request.
    pub fetch_bytes: i32,
    /// How often topic patterns and partition counts are checked for changes.
    pub metadata_max_age: Duration,
}

/// SASL credentials.
#[derive(Clone)]
pub struct Sasl {
    /// The mechanism.
    pub mechanism: Mechanism,
    /// The user.
    pub username: String,
    /// The password; never printed.
    pub password: String,
}

/// The SASL mechanisms the client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// `PLAIN`: the password in the clear, so only over TLS in practice.
    Plain,
    /// `SCRAM-SHA-256`.
    ScramSha256,
    /// `SCRAM-SHA-512`.
    ScramSha512,
}

impl Mechanism {
    /// The name the broker knows it by.
    pub fn name(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("client_id", &self.client_id)
            .field("tls", &self.tls.is_some())
            .field("sasl", &self.sasl.as_ref().map(|s| (s.mechanism, &s.username, crate::secret::MASK)))
            .field("session_timeout", &self.session_timeout)
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// Reads `properties`; `password` (from `password_file`) overrides `sasl.password`.
    /// Errors name the property.
    pub fn from_properties(properties: &BTreeMap<String, String>, password: Option<&str>) -> Result<Self, String> {
        if let Some(unknown) = properties.keys().find(|k| !SUPPORTED.contains(&k.as_str())) {
            return Err(format!("unsupported Kafka property `{unknown}`; supported: {}", SUPPORTED.join(", ")));
        }
        let get = |key: &str| properties.get(key).map(String::as_str);
        let millis = |key: &str, default: u64| -> Result<Duration, String> {
            get(key)
                .map_or(Ok(default), |v| v.parse().map_err(|_| format!("`{key}` must be milliseconds, not {v:?}")))
                .map(Duration::from_millis)
        };
        let bytes = |key: &str, default: i32| -> Result<i32, String> {
            get(key).map_or(Ok(default), |v| {
                v.parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("`{key}` must be a positive byte count, not {v:?}"))
            })
        };
        let protocol = get("security.protocol").unwrap_or("plaintext").to_ascii_lowercase();
        let (use_tls, use_sasl) = match protocol.as_str() {
            "plaintext" => (false, false),
            "ssl" => (true, false),
            "sasl_plaintext" => (false, true),
            "sasl_ssl" => (true, true),
            other => {
                return Err(format!(
                    "`security.protocol` {other:?} is not one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"
                ));
            }
        };
        let tls_keys = ["ssl.ca.location", "ssl.certificate.location", "ssl.key.location"];
        if !use_tls && let Some(key) = tls_keys.iter().find(|k| get(k).is_some()) {
            return Err(format!("`{key}` needs `security.protocol` SSL or SASL_SSL"));
        }
        let tls = if use_tls {
            let files = ClientTlsFiles {
                ca_file: get("ssl.ca.location").map(PathBuf::from),
                client_cert: get("ssl.certificate.location").map(PathBuf::from),
                client_key: get("ssl.key.location").map(PathBuf::from),
                insecure: match get("enable.ssl.certificate.verification") {
                    None | Some("true") => false,
                    Some("false") => true,
                    Some(other) => {
                        return Err(format!(
                            "`enable.ssl.certificate.verification` must be true or false, not {other:?}"
                        ));
                    }
                },
            };
            Some(Arc::new(crate::tls::client_config(&files)?))
        } else {
            None
        };
        let sasl = if use_sasl {
            let mechanism = match get("sasl.mechanism").or(get("sasl.mechanisms")).unwrap_or("PLAIN") {
                "PLAIN" => Mechanism::Plain,
                "SCRAM-SHA-256" => Mechanism::ScramSha256,
                "SCRAM-SHA-512" => Mechanism::ScramSha512,
                other => {
                    return Err(format!(
                        "`sasl.mechanism` {other:?} is not one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"
                    ));
                }
            };
            let username = get("sasl.username").ok_or("SASL needs `sasl.username`")?.to_owned();
            let password = password
                .or(get("sasl.password"))
                .ok_or("SASL needs `sasl.password` or the source's `password_file`")?
                .to_owned();
            Some(Sasl { mechanism, username, password })
        } else {
            None
        };
        let settings = Self {
            client_id: get("client.id").unwrap_or("evercache").to_owned(),
            tls,
            sasl,
            request_timeout: millis("request.timeout.ms", 30_000)?,
            session_timeout: millis("session.timeout.ms", 45_000)?,
            heartbeat_interval: millis("heartbeat.interval.ms", 3_000)?,
            rebalance_timeout: millis("max.poll.interval.ms", 300_000)?,
            read_committed: match get("isolation.level").unwrap_or("read_committed") {
                "read_committed" => true,
                "read_uncommitted" => false,
                other => {
                    return Err(format!("`isolation.level` must be read_committed or read_uncommitted, not {other:?}"));
                }
            },
            partition_fetch_bytes: bytes("max.partition.fetch.bytes", 1 << 20)?,
            fetch_bytes: bytes("fetch.max.bytes", 50 << 20)?,
            metadata_max_age: millis("metadata.max.age.ms", 300_000)?,
        };
        if settings.heartbeat_interval >= settings.session_timeout {
            return Err("`heartbeat.interval.ms` must be below `session.timeout.ms`".to_owned());
        }
        Ok(settings)
    }

    /// The wait allowed for a request that blocks on the broker for `server_wait`.
    pub fn deadline_for(&self, server_wait: Duration) -> Duration {
        self.request_timeout + server_wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn defaults_are_plaintext_read_committed() {
        let settings = Settings::from_properties(&BTreeMap::new(), None).unwrap();
        assert!(settings.tls.is_none() && settings.sasl.is_none() && settings.read_committed);
        assert_eq!(settings.session_timeout, Duration::from_secs(45));
    }

    #[test]
    fn sasl_settings_are_read_and_the_password_file_wins() {
        let p = props(&[
            ("security.protocol", "SASL_PLAINTEXT"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", "cdc"),
            ("sasl.password", "inline"),
        ]);
        let settings = Settings::from_properties(&p, Some("from-file")).unwrap();
        let sasl = settings.sasl.as_ref().unwrap();
        assert_eq!(
            (sasl.mechanism, sasl.username.as_str(), sasl.password.as_str()),
            (Mechanism::ScramSha512, "cdc", "from-file")
        );
        assert!(!format!("{settings:?}").contains("from-file"), "the password never reaches Debug");
    }

    #[test]
    fn mistakes_are_named() {
        let err = |pairs: &[(&str, &str)]| Settings::from_properties(&props(pairs), None).unwrap_err();
        assert!(err(&[("fetch.wait.max.ms", "10")]).contains("unsupported Kafka property `fetch.wait.max.ms`"));
        assert!(err(&[("security.protocol", "tls")]).contains("security.protocol"));
        assert!(err(&[("ssl.ca.location", "/ca.pem")]).contains("needs `security.protocol` SSL"));
        assert!(err(&[("security.protocol", "SASL_PLAINTEXT"), ("sasl.username", "u")]).contains("sasl.password"));
        assert!(err(&[("security.protocol", "SASL_PLAINTEXT"), ("sasl.mechanism", "GSSAPI")]).contains("GSSAPI"));
        assert!(err(&[("session.timeout.ms", "ten")]).contains("session.timeout.ms"));
        assert!(
            err(&[("security.protocol", "SSL"), ("ssl.ca.location", "/nonexistent/ca.pem")])
                .contains("/nonexistent/ca.pem")
        );
    }
}
