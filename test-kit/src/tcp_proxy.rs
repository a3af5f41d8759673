//! A TCP proxy on a port of its own that forwards to a target the test can
//! switch, as a virtual IP or a DNS name does when a replica is promoted: the
//! client keeps one address while the server behind it changes. Switching cuts
//! every open connection, as the old primary going away would.

use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::free_port;

pub struct TcpProxy {
    pub port: u16,
    /// The target and a generation number bumped on every switch.
    target: watch::Sender<(u16, u64)>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// A proxy on a free loopback port forwarding to `127.0.0.1:target_port`.
    /// Needs a Tokio runtime; forwarding runs on it.
    pub async fn start(target_port: u16) -> Self {
        let port = free_port();
        let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind the proxy's port");
        let (target, watch) = watch::channel((target_port, 0));
        let task = tokio::spawn(accept(listener, watch));
        Self { port, target, task }
    }

    /// Forwards new connections to `target_port` and cuts the open ones.
    pub fn switch_to(&self, target_port: u16) {
        self.target.send_modify(|(port, generation)| {
            *port = target_port;
            *generation += 1;
        });
    }

    /// Cuts the open connections; new ones go to the same target.
    pub fn cut(&self) {
        self.target.send_modify(|(_, generation)| *generation += 1);
    }

    /// `url` (`scheme://user@127.0.0.1:port/...`) with its port replaced by the proxy's.
    pub fn url(&self, url: &str) -> String {
        let (head, rest) = url.rsplit_once(':').expect("a URL with a port");
        let tail = rest.find(|c: char| !c.is_ascii_digit()).map_or("", |i| &rest[i..]);
        format!("{head}:{}{tail}", self.port)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

async fn accept(listener: TcpListener, watch: watch::Receiver<(u16, u64)>) {
    while let Ok((client, _)) = listener.accept().await {
        let mut watch = watch.clone();
        let (port, generation) = *watch.borrow_and_update();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).await else { return };
            let (mut client, mut server) = (client, server);
            let cut = async {
                while watch.changed().await.is_ok() {
                    if watch.borrow().1 != generation {
                        return;
                    }
                }
            };
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                _ = cut => {}
            }
        });
    }
}
