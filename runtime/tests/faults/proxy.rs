//! A TCP proxy that can turn into a black hole: it stops forwarding in both
//! directions but keeps every socket open (no FIN, no RST), the way a broken
//! network path or a stuck firewall behaves. Forwarding resumes where it
//! stopped when the hole is closed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A running proxy on a free loopback port.
pub struct Proxy {
    pub port: u16,
    hole: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Forwards every connection made to `port` to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let hole = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let hole = hole.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let hole = hole.clone();
                    tokio::spawn(async move {
                        // A connection made during the black hole waits for the hole to close.
                        while hole.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        let Ok(server) = TcpStream::connect(target).await else { return };
                        let (client_read, client_write) = client.into_split();
                        let (server_read, server_write) = server.into_split();
                        tokio::join!(
                            pump(client_read, server_write, hole.clone()),
                            pump(server_read, client_write, hole.clone())
                        );
                    });
                }
            }
        });
        Self { port, hole, task }
    }

    /// Stops (true) or resumes (false) forwarding on every connection.
    pub fn black_hole(&self, on: bool) {
        self.hole.store(on, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to` until either side closes, pausing while the hole is open.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, hole: Arc<AtomicBool>) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        if hole.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        // Bounded, so a black hole opened while waiting here takes effect soon.
        let read = match tokio::time::timeout(Duration::from_millis(50), from.read(&mut buffer)).await {
            Err(_) => continue,
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => n,
        };
        while hole.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
