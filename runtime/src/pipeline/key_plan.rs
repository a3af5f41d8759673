//! Key planning: the keys a batch touches, each once, with the newest source
//! position among the events that touched it.

use std::collections::HashMap;

use crate::event::{ChangeEvent, Op};
use crate::sink::{KeyVersion, VersionKind};

/// The deduplicated keys of one batch, in first-seen order.
#[derive(Debug, Default)]
pub struct KeyPlan {
    keys: Vec<String>,
    /// Each key's version: the newest event that touched it (`read_at_ms`
    /// is stamped when its value is read).
    versions: HashMap<String, KeyVersion>,
    named: usize,
}

impl KeyPlan {
    /// Records that `event` touches `key`.
    pub fn add(&mut self, key: String, event: &ChangeEvent) {
        let kind = if event.op == Op::SnapshotRead { VersionKind::Snapshot } else { VersionKind::Change };
        self.named += 1;
        match self.versions.get_mut(&key) {
            Some(version) => {
                // A key is a snapshot fill only when every event naming it was,
                // and a change's version comes from changes alone: a snapshot
                // read's position may rank above a change streamed after it.
                let first_change = kind == VersionKind::Change && version.kind == VersionKind::Snapshot;
                if first_change || (kind == version.kind && event.position > version.position) {
                    version.position.clone_from(&event.position);
                    version.committed_at_ms = event.committed_at_ms;
                }
                if kind == VersionKind::Change {
                    version.kind = VersionKind::Change;
                }
            }
            None => {
                self.versions.insert(
                    key.clone(),
                    KeyVersion {
                        position: event.position.clone(),
                        kind,
                        committed_at_ms: event.committed_at_ms,
                        read_at_ms: 0,
                    },
                );
                self.keys.push(key);
            }
        }
    }

    /// The keys, each once, in the order first seen.
    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    /// The version planned for `key`.
    pub fn version(&self, key: &str) -> Option<&KeyVersion> {
        self.versions.get(key)
    }

    /// How many distinct keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// How many keys the events named, duplicates included.
    pub fn named(&self) -> usize {
        self.named
    }

    /// True when no event touched any key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(op: Op, position: &str, committed_at_ms: u64) -> ChangeEvent {
        ChangeEvent {
            op,
            source: "s".into(),
            schema: Some("public".into()),
            table: "t".into(),
            key: "{}".into(),
            before: None,
            after: None,
            position: position.into(),
            committed_at_ms,
        }
    }

    #[test]
    fn keeps_each_key_once_with_the_highest_position() {
        let mut plan = KeyPlan::default();
        plan.add("a".into(), &event(Op::Update, "pg:2", 20));
        plan.add("b".into(), &event(Op::Update, "pg:1", 10));
        plan.add("a".into(), &event(Op::Update, "pg:1", 10));
        plan.add("a".into(), &event(Op::Update, "pg:3", 30));
        assert_eq!(plan.keys(), ["a", "b"]);
        let a = plan.version("a").unwrap();
        assert_eq!((a.position.as_str(), a.committed_at_ms), ("pg:3", 30));
    }

    #[test]
    fn a_change_takes_its_version_from_changes_only() {
        let mut plan = KeyPlan::default();
        plan.add("a".into(), &event(Op::SnapshotRead, "pg:5", 50));
        plan.add("a".into(), &event(Op::Update, "pg:3", 30));
        plan.add("a".into(), &event(Op::SnapshotRead, "pg:6", 60));
        let a = plan.version("a").unwrap();
        assert_eq!((a.kind, a.position.as_str(), a.committed_at_ms), (VersionKind::Change, "pg:3", 30));
        plan.add("b".into(), &event(Op::SnapshotRead, "pg:5", 50));
        plan.add("b".into(), &event(Op::SnapshotRead, "pg:6", 60));
        assert_eq!(plan.version("b").unwrap().position, "pg:6");
    }

    #[test]
    fn snapshot_only_when_every_event_was_a_snapshot_read() {
        let mut plan = KeyPlan::default();
        plan.add("a".into(), &event(Op::SnapshotRead, "pg:1", 1));
        plan.add("b".into(), &event(Op::SnapshotRead, "pg:1", 1));
        plan.add("b".into(), &event(Op::Update, "pg:2", 2));
        assert_eq!(plan.version("a").unwrap().kind, VersionKind::Snapshot);
        assert_eq!(plan.version("b").unwrap().kind, VersionKind::Change);
    }
}
