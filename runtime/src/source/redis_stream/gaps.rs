//! Entries deleted before the group read them: `XINFO STREAM`'s
//! `max-deleted-entry-id` past the group's `last-delivered-id` means an entry
//! the group was owed was trimmed (`MAXLEN` on `XADD`, `XTRIM`, a retention
//! job) or deleted while evercache was away or behind (Redis 7's fields).

use std::collections::HashMap;

use redis::Value;

use super::id_key;
use super::reply::text;
use crate::redis_conn::RedisConn;

/// A gap in what one group read of one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Gap {
    pub stream: String,
    /// The group's position when the gap was found.
    pub last_delivered: String,
    /// The newest entry deleted.
    pub max_deleted: String,
    /// The oldest entry still in the stream.
    pub first_entry: Option<String>,
    /// How many entries the group never read, when Redis can tell.
    pub lost: Option<u64>,
    /// Where to move the group once the gap is recorded for repair, so it is
    /// not found again: `XGROUP SETID` to the id, with `ENTRIESREAD` when known.
    pub move_to: Option<(String, Option<u64>)>,
}

/// The id of a stream's oldest entry, from its `XINFO STREAM` reply.
pub(super) fn first_entry(info: &HashMap<String, Value>) -> Option<String> {
    match info.get("first-entry") {
        Some(Value::Array(entry)) => entry.first().cloned().map(|id| text(Some(id))),
        _ => None,
    }
}

/// Moves the group past a gap recorded for repair.
pub(super) async fn move_past(
    conn: &mut RedisConn,
    stream: &str,
    group: &str,
    to: &(String, Option<u64>),
) -> redis::RedisResult<()> {
    let mut setid = redis::cmd("XGROUP");
    setid.arg("SETID").arg(stream).arg(group).arg(&to.0);
    if let Some(read) = to.1 {
        setid.arg("ENTRIESREAD").arg(read);
    }
    setid.query_async(conn).await
}

impl std::fmt::Display for Gap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lost = self.lost.map_or("an unknown number of".to_owned(), |n| n.to_string());
        let up_to = if self.max_deleted.is_empty() { String::new() } else { format!(" (up to {})", self.max_deleted) };
        write!(
            f,
            "stream '{}': {lost} entries after {}{up_to} were deleted before the consumer group read them; the stream now starts at {}",
            self.stream,
            self.last_delivered,
            self.first_entry.as_deref().unwrap_or("(empty)")
        )
    }
}

/// Looks for a gap in what `group` read of `stream`; when no entry the group
/// has yet to read lies before the deleted ones, says where to move the group
/// past them ([`move_past`], once the gap is recorded).
pub(super) async fn find(conn: &mut RedisConn, stream: &str, group: &str) -> redis::RedisResult<Option<Gap>> {
    let info: HashMap<String, Value> = redis::cmd("XINFO").arg("STREAM").arg(stream).query_async(conn).await?;
    let max_deleted = text(info.get("max-deleted-entry-id").cloned());
    let groups: Vec<HashMap<String, Value>> = redis::cmd("XINFO").arg("GROUPS").arg(stream).query_async(conn).await?;
    let Some(ours) = groups.into_iter().find(|g| text(g.get("name").cloned()) == group) else { return Ok(None) };
    let last_delivered = text(ours.get("last-delivered-id").cloned());
    let first_entry = first_entry(&info);
    let number = |name: &str| match info.get(name).or(ours.get(name)) {
        Some(Value::Int(n)) => Some(*n as u64),
        _ => None,
    };
    let (added, length, read) = (number("entries-added"), number("length"), number("entries-read"));
    let deleted = !max_deleted.is_empty() && id_key(&max_deleted) > id_key(&last_delivered);
    // Trimming (`MAXLEN`, `XTRIM`) leaves `max-deleted-entry-id` alone (only
    // `XDEL` sets it): entries trimmed unread show in the counts, more added
    // than the group read and the stream still holds, every entry left unread.
    let left_unread = first_entry.as_deref().is_none_or(|first| id_key(first) > id_key(&last_delivered));
    let trimmed = left_unread
        && matches!((added, length, read), (Some(added), Some(length), Some(read)) if added.saturating_sub(read) > length);
    if !deleted && !trimmed {
        return Ok(None);
    }
    let trimmed_from_the_front =
        left_unread && first_entry.as_deref().is_none_or(|first| id_key(first) > id_key(&max_deleted));
    // Every entry left comes after the deleted ones: all of them are still to be read.
    let lost = match (added, length, read) {
        (Some(added), Some(length), Some(read)) if trimmed_from_the_front => {
            Some(added.saturating_sub(read).saturating_sub(length))
        }
        _ => None,
    };
    let move_to = trimmed_from_the_front.then(|| {
        let id = if deleted { max_deleted.clone() } else { last_delivered.clone() };
        (id, added.zip(length).map(|(added, length)| added.saturating_sub(length)))
    });
    // The newest entry trimmed is known only when none is left.
    let max_deleted = match (deleted, &first_entry) {
        (true, _) => max_deleted,
        (false, None) => text(info.get("last-generated-id").cloned()),
        (false, Some(_)) => String::new(),
    };
    Ok(Some(Gap { stream: stream.to_owned(), last_delivered, max_deleted, first_entry, lost, move_to }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_says_what_was_lost() {
        let gap = Gap {
            stream: "shop.public.item".into(),
            last_delivered: "5-0".into(),
            max_deleted: "9-0".into(),
            first_entry: Some("10-0".into()),
            lost: Some(4),
            move_to: None,
        };
        let said = gap.to_string();
        assert!(said.contains("4 entries after 5-0 (up to 9-0)"), "{said}");
        assert!(said.contains("starts at 10-0"), "{said}");
    }
}
