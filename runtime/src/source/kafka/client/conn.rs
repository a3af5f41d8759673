//! One connection to one broker: TCP or TLS, the API versions both sides speak,
//! SASL authentication, and one request at a time with its answer.

use std::collections::HashMap;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::settings::Settings;
use super::{KafkaError, sasl};

/// Largest answer accepted; a fetch is bounded by `fetch.max.bytes` well below it.
const MAX_FRAME: usize = 256 << 20;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An authenticated connection to a broker.
pub struct BrokerConn {
    address: String,
    stream: Box<dyn Io>,
    versions: HashMap<i16, (i16, i16)>,
    correlation: i32,
    client_id: StrBytes,
    request_timeout: Duration,
    /// When the broker ends the SASL session (KIP-368); reconnecting before then
    /// authenticates again instead of having a request cut off.
    expires_at: Option<tokio::time::Instant>,
}

impl BrokerConn {
    /// Connects to `address` (`host:port`), negotiates versions and authenticates.
    pub async fn connect(address: &str, settings: &Settings) -> Result<Self, KafkaError> {
        let io = |message: String| KafkaError::Io { address: address.to_owned(), message };
        let connect = async {
            let tcp = TcpStream::connect(address).await.map_err(|e| io(format!("connect failed: {e}")))?;
            let _ = tcp.set_nodelay(true);
            let stream: Box<dyn Io> = match &settings.tls {
                None => Box::new(tcp),
                Some(config) => {
                    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
                    let host = host.trim_start_matches('[').trim_end_matches(']');
                    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                        .map_err(|e| io(format!("not a TLS server name: {e}")))?;
                    let tls = tokio_rustls::TlsConnector::from(config.clone())
                        .connect(name, tcp)
                        .await
                        .map_err(|e| io(format!("TLS handshake failed: {e}")))?;
                    Box::new(tls)
                }
            };
            let mut conn = Self {
                address: address.to_owned(),
                stream,
                versions: HashMap::new(),
                correlation: 0,
                client_id: StrBytes::from_string(settings.client_id.clone()),
                request_timeout: settings.request_timeout,
                expires_at: None,
            };
            let answer: ApiVersionsResponse = conn.send(&ApiVersionsRequest::default(), 0, None).await?;
            if answer.error_code != 0 {
                return Err(io(format!("ApiVersions answered error {}", answer.error_code)));
            }
            conn.versions = answer.api_keys.iter().map(|k| (k.api_key, (k.min_version, k.max_version))).collect();
            if let Some(credentials) = &settings.sasl {
                sasl::authenticate(&mut conn, credentials).await?;
            }
            Ok(conn)
        };
        match tokio::time::timeout(settings.request_timeout, connect).await {
            Ok(result) => result,
            Err(_) => Err(io(format!("no connection within {:?}", settings.request_timeout))),
        }
    }

    /// Notes that the broker ends this connection's session after `lifetime`.
    pub fn expire_after(&mut self, lifetime: Duration) {
        // Reconnect at 80 % of the lifetime, leaving room for a request in flight.
        self.expires_at = Some(tokio::time::Instant::now() + lifetime.mul_f64(0.8));
    }

    /// True when the session is about to end and the connection should be replaced.
    pub fn expiring(&self) -> bool {
        self.expires_at.is_some_and(|at| tokio::time::Instant::now() >= at)
    }

    /// `host:port` of the broker.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The highest version of `R` both sides speak, at most `ours`.
    pub fn version<R: Request>(&self, ours: i16) -> Result<i16, KafkaError> {
        let (min, max) = self.versions.get(&R::KEY).copied().unwrap_or((R::VERSIONS.min, R::VERSIONS.max));
        let version = ours.min(max).min(R::VERSIONS.max);
        if version < min.max(R::VERSIONS.min) {
            return Err(KafkaError::Protocol(format!(
                "{}: the broker speaks API {} versions {min}..={max}, this client at most {ours}",
                self.address,
                R::KEY
            )));
        }
        Ok(version)
    }

    /// Sends `request` at the highest common version up to `ours` and reads its answer.
    pub async fn request<R: Request>(&mut self, request: &R, ours: i16) -> Result<(R::Response, i16), KafkaError> {
        let version = self.version::<R>(ours)?;
        Ok((self.send(request, version, None).await?, version))
    }

    /// Like [`Self::request`], for a request the broker may hold for `server_wait`.
    pub async fn request_waiting<R: Request>(
        &mut self,
        request: &R,
        ours: i16,
        server_wait: Duration,
    ) -> Result<(R::Response, i16), KafkaError> {
        let version = self.version::<R>(ours)?;
        Ok((self.send(request, version, Some(server_wait)).await?, version))
    }

    async fn send<R: Request>(
        &mut self,
        request: &R,
        version: i16,
        server_wait: Option<Duration>,
    ) -> Result<R::Response, KafkaError> {
        self.correlation = self.correlation.wrapping_add(1);
        let mut header = RequestHeader::default();
        header.request_api_key = R::KEY;
        header.request_api_version = version;
        header.correlation_id = self.correlation;
        header.client_id = Some(self.client_id.clone());
        let mut frame = BytesMut::with_capacity(64);
        frame.put_i32(0);
        let encoded =
            header.encode(&mut frame, R::header_version(version)).and_then(|()| request.encode(&mut frame, version));
        encoded.map_err(|e| KafkaError::Protocol(format!("encoding API {} v{version}: {e}", R::KEY)))?;
        let length = (frame.len() - 4) as i32;
        frame[..4].copy_from_slice(&length.to_be_bytes());
        let deadline = self.request_timeout + server_wait.unwrap_or_default();
        let mut body = match tokio::time::timeout(deadline, self.exchange(&frame)).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(KafkaError::Io {
                    address: self.address.clone(),
                    message: format!("no answer to API {} within {deadline:?}", R::KEY),
                });
            }
        };
        let decode_error = |e: anyhow::Error| KafkaError::Protocol(format!("decoding API {} v{version}: {e}", R::KEY));
        let answer_header =
            ResponseHeader::decode(&mut body, R::Response::header_version(version)).map_err(decode_error)?;
        if answer_header.correlation_id != self.correlation {
            return Err(KafkaError::Io {
                address: self.address.clone(),
                message: format!("answer {} to request {}", answer_header.correlation_id, self.correlation),
            });
        }
        R::Response::decode(&mut body, version).map_err(decode_error)
    }

    async fn exchange(&mut self, frame: &[u8]) -> Result<Bytes, KafkaError> {
        let io = |e: std::io::Error| KafkaError::Io { address: self.address.clone(), message: e.to_string() };
        self.stream.write_all(frame).await.map_err(io)?;
        self.stream.flush().await.map_err(io)?;
        let length = self.stream.read_i32().await.map_err(io)?;
        let length = usize::try_from(length).ok().filter(|n| *n <= MAX_FRAME).ok_or_else(|| KafkaError::Io {
            address: self.address.clone(),
            message: format!("answer of {length} bytes"),
        })?;
        let mut body = BytesMut::zeroed(length);
        self.stream.read_exact(&mut body).await.map_err(io)?;
        Ok(body.freeze())
    }
}

/// The next `i32` of `buf` when it holds one.
pub fn peek_i32(buf: &[u8], at: usize) -> Option<i32> {
    let mut slice = buf.get(at..at + 4)?;
    Some(slice.get_i32())
}
