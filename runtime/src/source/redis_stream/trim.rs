//! Trimming of acknowledged entries: `XTRIM MINID` up to the oldest entry some
//! consumer group of the stream still needs (pending, or not yet delivered), so
//! no group, ours or another application's, ever loses an entry it has not read.

use std::collections::HashMap;

use crate::redis_conn::RedisConn;
use redis::Value;

use super::entry_id;
use super::reply::text;

/// What one group still needs of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct GroupState {
    /// Entries delivered to the group but not acknowledged.
    pub pending: u64,
    /// The oldest of those, when `pending > 0`.
    pub oldest_pending: Option<String>,
    /// The last entry delivered to the group ("0-0" when none).
    pub last_delivered: String,
}

/// The `MINID` below which every group has read and acknowledged every entry, or
/// `None` when there is nothing safe to trim.
pub(super) fn safe_min_id(groups: &[GroupState]) -> Option<String> {
    let mut bound: Option<(u64, u64)> = None;
    for group in groups {
        let needed = match (&group.oldest_pending, group.pending) {
            (Some(oldest), n) if n > 0 => entry_id(oldest)?,
            // Everything up to the last delivered entry was acknowledged.
            _ => successor(entry_id(&group.last_delivered)?),
        };
        bound = Some(bound.map_or(needed, |b: (u64, u64)| b.min(needed)));
    }
    bound.filter(|b| *b > (0, 1)).map(|(ms, seq)| format!("{ms}-{seq}"))
}

fn successor((ms, seq): (u64, u64)) -> (u64, u64) {
    if seq == u64::MAX { (ms + 1, 0) } else { (ms, seq + 1) }
}

/// Reads every group's state of `stream` and trims what all of them are done
/// with. Returns how many entries were removed.
pub(super) async fn trim_acknowledged(conn: &mut RedisConn, stream: &str) -> redis::RedisResult<u64> {
    let groups: Vec<HashMap<String, Value>> = redis::cmd("XINFO").arg("GROUPS").arg(stream).query_async(conn).await?;
    let mut states = Vec::with_capacity(groups.len());
    for group in groups {
        let name = text(group.get("name").cloned());
        let pending = match group.get("pending") {
            Some(Value::Int(n)) => *n as u64,
            _ => 0,
        };
        let oldest_pending = if pending > 0 {
            // Summary form: [count, smallest id, greatest id, consumers].
            let summary: Vec<Value> = redis::cmd("XPENDING").arg(stream).arg(&name).query_async(conn).await?;
            summary.get(1).cloned().map(|v| text(Some(v)))
        } else {
            None
        };
        let last_delivered = text(group.get("last-delivered-id").cloned());
        states.push(GroupState { pending, oldest_pending, last_delivered });
    }
    match safe_min_id(&states) {
        Some(min_id) => redis::cmd("XTRIM").arg(stream).arg("MINID").arg(&min_id).query_async(conn).await,
        None => Ok(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(pending: u64, oldest: Option<&str>, last: &str) -> GroupState {
        GroupState { pending, oldest_pending: oldest.map(str::to_owned), last_delivered: last.to_owned() }
    }

    #[test]
    fn never_trims_what_any_group_still_needs() {
        // Ours has acknowledged everything up to 10-0; another group still holds 4-2.
        let groups = [group(0, None, "10-0"), group(3, Some("4-2"), "9-0")];
        assert_eq!(safe_min_id(&groups).as_deref(), Some("4-2"));
        // A group that has not been delivered 6-0 yet keeps it.
        let groups = [group(0, None, "10-0"), group(0, None, "5-7")];
        assert_eq!(safe_min_id(&groups).as_deref(), Some("5-8"));
        // A group that read nothing keeps everything.
        assert_eq!(safe_min_id(&[group(0, None, "10-0"), group(0, None, "0-0")]), None);
        assert_eq!(safe_min_id(&[]), None);
    }
}
