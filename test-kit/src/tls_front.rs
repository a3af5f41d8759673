//! A TLS front for a plain-TCP server: accepts TLS on a loopback port with a
//! given certificate and forwards the decrypted bytes to the server. The test
//! broker (tansu 0.6) parses `--cert`/`--key` but serves plain TCP only, so its
//! TLS tests put this in front of it.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};

/// A running front, stopped on drop.
pub struct TlsFront {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl TlsFront {
    /// Serves TLS with `cert`/`key` (PEM files) on a free port, forwarding to
    /// `127.0.0.1:upstream`. Call from within a Tokio runtime.
    pub async fn start(cert: &Path, key: &Path, upstream: u16) -> Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(cert)?.collect::<Result<_, _>>().context("reading the certificate")?;
        let key = PrivateKeyDer::from_pem_file(key).context("reading the key")?;
        let config = rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(certs, key)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let port = crate::free_port();
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // A client that fails the handshake (e.g. it distrusts the certificate) is just dropped.
                    let Ok(mut tls) = acceptor.accept(client).await else { return };
                    let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)).await else { return };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut server).await;
                });
            }
        });
        Ok(Self { port, task })
    }

    /// The TLS port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}
