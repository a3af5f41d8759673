//! STUB until merge: Debezium envelope decoding.
use super::ChangeEvent;

pub enum Decoded {
    Change(ChangeEvent),
    Skip(SkipReason),
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    Tombstone,
}
impl SkipReason {
    pub fn as_str(&self) -> &'static str {
        "tombstone"
    }
}
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("x")]
    X,
}
pub fn decode_stream_entry(_stream: &str, _fields: &[(String, String)]) -> Result<Decoded, DecodeError> {
    Err(DecodeError::X)
}
