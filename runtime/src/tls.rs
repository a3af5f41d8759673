//! One TLS stack for the whole binary: rustls with the ring provider, trusting
//! the system's roots (and `SSL_CERT_FILE`) unless a connection names its own CA.
//! Two providers are compiled in (a dependency brings aws-lc-rs), so rustls
//! cannot pick one by itself: [`init`] installs ring for the process before any
//! connection is made.

use std::path::{Path, PathBuf};
use std::sync::Once;

use serde::Deserialize;

use crate::secret::SecretUrl;

/// Installs the process-wide TLS provider; cheap and idempotent.
pub fn init() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Err means another provider was installed first, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// `tls` of a Redis connection (`rediss://`): a CA to trust instead of the
/// system's roots, and a client certificate for servers that ask for one. To
/// skip verification, opt in explicitly with `rediss://host:port/#insecure`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisTls {
    /// PEM file of the CA(s) that signed the server's certificate.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM file of the client certificate (with `client_key`).
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
}

impl RedisTls {
    /// Paths relative to `base` (the runtime file's directory).
    pub fn relative_to(&mut self, base: &Path) {
        for path in [&mut self.ca_file, &mut self.client_cert, &mut self.client_key].into_iter().flatten() {
            *path = base.join(&*path);
        }
    }
}

/// A Redis client for `url`, with the files of `tls` when given.
pub fn redis_client(url: &SecretUrl, tls: Option<&RedisTls>) -> Result<redis::Client, String> {
    init();
    match redis_certificates(tls)? {
        None => redis::Client::open(url.expose()).map_err(|e| e.to_string()),
        Some(certificates) => redis::Client::build_with_tls(url.expose(), certificates).map_err(|e| e.to_string()),
    }
}

/// The files of `tls` read, or `None` when it names none (the system's roots then).
pub fn redis_certificates(tls: Option<&RedisTls>) -> Result<Option<redis::TlsCertificates>, String> {
    let Some(tls) = tls.filter(|t| **t != RedisTls::default()) else {
        return Ok(None);
    };
    let read = |path: &Path| std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()));
    let client_tls = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig { client_cert: read(cert)?, client_key: read(key)? }),
        (None, None) => None,
        _ => return Err("tls: client_cert and client_key go together".to_owned()),
    };
    let root_cert = tls.ca_file.as_deref().map(read).transpose()?;
    Ok(Some(redis::TlsCertificates { client_tls, root_cert }))
}

/// MySQL/MariaDB connection options from a URL. Beside mysql_async's own
/// `require_ssl`, `verify_ca` and `verify_identity`, the URL may name a CA to
/// trust, `ssl_ca=/path/ca.pem` (implies `require_ssl`), and a client
/// certificate, `ssl_cert=…&ssl_key=…`, as the `mysql` client's options do.
pub fn mysql_opts(url: &str) -> Result<mysql_async::Opts, String> {
    init();
    let url = url.replacen("mariadb://", "mysql://", 1);
    let (base, query) = url.split_once('?').unwrap_or((&url, ""));
    let (mut ca, mut cert, mut key, mut rest) = (None, None, None, Vec::new());
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = || PathBuf::from(percent_encoding::percent_decode_str(value).decode_utf8_lossy().into_owned());
        match name {
            "ssl_ca" => ca = Some(value()),
            "ssl_cert" => cert = Some(value()),
            "ssl_key" => key = Some(value()),
            _ => rest.push(pair),
        }
    }
    let url = if rest.is_empty() { base.to_owned() } else { format!("{base}?{}", rest.join("&")) };
    let mut opts = mysql_async::Opts::from_url(&url).map_err(|e| e.to_string())?;
    // mysql_async would reopen a loopback connection on the server's own Unix
    // socket, bypassing a proxy or virtual IP behind the URL: after a failover
    // the connection would stay on the old server. The URL may still ask for it.
    if !rest.iter().any(|pair| pair.starts_with("prefer_socket")) {
        opts = mysql_async::OptsBuilder::from_opts(opts).prefer_socket(false).into();
    }
    if ca.is_none() && cert.is_none() {
        return Ok(opts);
    }
    let mut ssl = opts.ssl_opts().cloned().unwrap_or_default();
    if let Some(ca) = ca {
        ssl = ssl.with_root_certs(vec![ca.into()]);
    }
    match (cert, key) {
        (Some(cert), Some(key)) => {
            ssl = ssl.with_client_identity(Some(mysql_async::ClientIdentity::new(cert.into(), key.into())));
        }
        (None, None) => {}
        _ => return Err("ssl_cert and ssl_key go together".to_owned()),
    }
    Ok(mysql_async::OptsBuilder::from_opts(opts).ssl_opts(Some(ssl)).into())
}

/// What a rustls client trusts and presents: a CA file instead of the system's
/// roots, an optional client certificate, and whether to verify at all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTlsFiles {
    /// PEM file of the CA(s) that signed the server's certificate.
    pub ca_file: Option<PathBuf>,
    /// PEM file of the client certificate (with `client_key`).
    pub client_cert: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    pub client_key: Option<PathBuf>,
    /// Accept any server certificate; only by explicit opt-in.
    pub insecure: bool,
}

/// A rustls client configuration: the system's roots (which honour
/// `SSL_CERT_FILE`/`SSL_CERT_DIR`) unless `files` names a CA.
pub fn client_config(files: &ClientTlsFiles) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    init();
    let read_certs = |path: &Path| -> Result<Vec<CertificateDer<'static>>, String> {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("{} holds no PEM certificate", path.display()));
        }
        Ok(certs)
    };
    let builder = rustls::ClientConfig::builder();
    let builder = if files.insecure {
        builder.dangerous().with_custom_certificate_verifier(std::sync::Arc::new(insecure::AcceptAny::new()))
    } else {
        let mut roots = rustls::RootCertStore::empty();
        match &files.ca_file {
            Some(ca) => {
                for cert in read_certs(ca)? {
                    roots.add(cert).map_err(|e| format!("{}: {e}", ca.display()))?;
                }
            }
            None => {
                let native = rustls_native_certs::load_native_certs();
                let (added, _ignored) = roots.add_parsable_certificates(native.certs);
                if added == 0 {
                    return Err(format!("no trusted root certificates found on this system: {:?}", native.errors));
                }
            }
        }
        builder.with_root_certificates(roots)
    };
    match (&files.client_cert, &files.client_key) {
        (Some(cert), Some(key)) => {
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("cannot read a private key from {}: {e}", key.display()))?;
            builder.with_client_auth_cert(read_certs(cert)?, key).map_err(|e| format!("client certificate: {e}"))
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err("a client certificate and its key go together".to_owned()),
    }
}

mod insecure {
    use rustls::DigitallySignedStruct;
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

    /// Accepts any certificate but still checks the handshake's signatures, so
    /// the connection is encrypted, just not authenticated.
    #[derive(Debug)]
    pub struct AcceptAny(CryptoProvider);

    impl AcceptAny {
        pub fn new() -> Self {
            Self(rustls::crypto::ring::default_provider())
        }
    }

    impl ServerCertVerifier for AcceptAny {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
}
