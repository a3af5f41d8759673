//! A tiny HTTP client and Prometheus text reader for the runtime's `[http]` listener.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET path`: the status code and the body.
pub async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response.split_once("\r\n\r\n").context("no header end")?;
    let code = head.split(' ').nth(1).context("no status")?.parse()?;
    Ok((code, body.to_owned()))
}

/// The values of every sample `name{labels…}` (other labels free) in a Prometheus text page.
pub fn samples(page: &str, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let rest = series.strip_prefix(name)?;
            if !(rest.is_empty() || rest.starts_with('{')) {
                return None;
            }
            labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))).then(|| value.parse().ok())?
        })
        .collect()
}

/// The value of the first sample `name{labels…}`.
pub fn sample(page: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(page, name, labels).into_iter().next()
}
