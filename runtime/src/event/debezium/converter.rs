//! Recognising bytes another Kafka Connect converter wrote, so the dead
//! letter names it instead of a JSON parser's complaint.

/// Names the serialisation of bytes that are not JSON but a known other
/// converter's, as seen through a lossy UTF-8 decoding: the Confluent wire format
/// (a zero magic byte, then a 4-byte big-endian schema id) of Avro, Protobuf and
/// JSON Schema converters, and Kafka Connect's `StringConverter` rendering of a
/// struct (`Struct{id=1}`).
pub(super) fn other_converter(text: &str) -> Option<String> {
    let mut chars = text.chars();
    if chars.next() == Some('\0') {
        let id: Option<Vec<u32>> = chars.take(4).map(|c| (c as u32 <= 0x7f).then_some(c as u32)).collect();
        let id = match id {
            Some(bytes) if bytes.len() == 4 => bytes.iter().fold(0u32, |id, b| id << 8 | b).to_string(),
            _ => "unreadable".to_owned(),
        };
        return Some(format!(
            "the Confluent wire format (magic byte 0, schema id {id}), as Avro, Protobuf or JSON Schema \
             converters with a schema registry write it"
        ));
    }
    if text.starts_with("Struct{") {
        return Some(format!(
            "text `{}`, as Kafka Connect's StringConverter renders a struct",
            text.chars().take(60).collect::<String>()
        ));
    }
    None
}
