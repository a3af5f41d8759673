//! How far a MySQL capture is behind the binlog's head, read from the server
//! and the stored position, so `evercache status` works while `run` is down.

use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use super::position::{BinlogPosition, StoredState};

/// Bytes of binlog after the stored position, and seconds since the last
/// change before it was committed (0 when nothing is behind).
pub async fn binlog_lag(url: &str, stored: Option<&str>) -> Result<(u64, f64), String> {
    let state: Option<StoredState> = match stored {
        Some(text) => Some(serde_json::from_str(text).map_err(|e| format!("stored position: {e}"))?),
        None => None,
    };
    let opts = crate::tls::mysql_opts(url)?;
    let mut conn = Conn::new(opts).await.map_err(|e| e.to_string())?;
    let logs: Vec<mysql_async::Row> = conn.query("SHOW BINARY LOGS").await.map_err(|e| e.to_string())?;
    let _ = conn.disconnect().await;
    let files: Vec<(String, u64)> =
        logs.iter().filter_map(|row| Some((row.get::<String, _>(0)?, row.get::<u64, _>(1)?))).collect();
    let Some(state) = state else {
        // Nothing stored yet: everything from the first file on is ahead.
        return Ok((files.iter().map(|(_, size)| size).sum(), 0.0));
    };
    let bytes = bytes_after(&files, &state.position);
    let seconds = if bytes > 0 && state.committed_at_ms > 0 {
        (crate::clock::now_ms().saturating_sub(state.committed_at_ms)) as f64 / 1000.0
    } else {
        0.0
    };
    Ok((bytes, seconds))
}

/// Bytes in `files` (name, size) after `position`.
fn bytes_after(files: &[(String, u64)], position: &BinlogPosition) -> u64 {
    let here = position.ordinal();
    files
        .iter()
        .map(|(name, size)| {
            let at = BinlogPosition { file: name.clone(), pos: 0, gtid: None, gtids: None }.ordinal().0;
            match at.cmp(&here.0) {
                std::cmp::Ordering::Less => 0,
                std::cmp::Ordering::Equal => size.saturating_sub(here.1),
                std::cmp::Ordering::Greater => *size,
            }
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_rest_of_the_file_and_every_later_one() {
        let files = vec![("b.000001".to_owned(), 1000), ("b.000002".to_owned(), 500), ("b.000003".to_owned(), 300)];
        let at = BinlogPosition { file: "b.000002".into(), pos: 400, gtid: None, gtids: None };
        assert_eq!(bytes_after(&files, &at), 100 + 300);
        let end = BinlogPosition { file: "b.000003".into(), pos: 300, gtid: None, gtids: None };
        assert_eq!(bytes_after(&files, &end), 0);
    }
}
