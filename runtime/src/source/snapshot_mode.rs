//! Whether a built-in capture reads the existing rows before it streams.

/// Whether to read existing rows on first start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SnapshotMode {
    /// Read every existing row once, on first start (or when the last snapshot
    /// did not finish): Postgres when its slot is new, MySQL when no position is stored.
    #[default]
    Initial,
    /// Only stream changes made from now on.
    Never,
}
