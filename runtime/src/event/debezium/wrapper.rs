//! Finding the payload of a JsonConverter `{"schema":…,"payload":…}` wrapper
//! without parsing the schema. The schema is most of an entry's bytes (about
//! 2.2 KB of a 2.7 KB update of a three-column table) and nothing reads it, so
//! it is skipped by matching brackets 64 bytes at a time (the JSONSki way:
//! bit masks of quotes and brackets, strings masked out by a prefix XOR).
//! The payload found is still parsed in full; any other shape is left to it.

use wide::u8x16;

/// The schema and payload texts of `{"schema":{…},"payload":…}` as Debezium
/// writes it (schema first, no spaces between the keys); `None` for any other shape.
pub(super) fn parts(text: &str) -> Option<(&str, &str)> {
    let rest = text.trim_start().strip_prefix(r#"{"schema":"#)?;
    let end = container_end(rest.as_bytes())?;
    let payload = rest[end..].strip_prefix(r#","payload":"#)?.trim_end().strip_suffix('}')?;
    Some((&rest[..end], payload))
}

/// The index just past the object or array that starts at `bytes[0]`, with
/// brackets inside strings (escaped quotes included) ignored; `None` when it
/// does not start with one or does not close.
fn container_end(bytes: &[u8]) -> Option<usize> {
    if !matches!(bytes.first(), Some(b'{' | b'[')) {
        return None;
    }
    let mut scan = Scan { depth: 0, in_string: false, escaped: false };
    for (index, block) in bytes.chunks(64).enumerate() {
        let end = match <&[u8; 64]>::try_from(block) {
            Ok(full) => scan.block(full),
            Err(_) => scan.bytes(block),
        };
        if let Some(end) = end {
            return Some(index * 64 + end);
        }
    }
    None
}

/// Where a scan stands between blocks.
struct Scan {
    /// Brackets open.
    depth: u64,
    /// The previous block ended inside a string.
    in_string: bool,
    /// The previous block ended on an escaping backslash.
    escaped: bool,
}

impl Scan {
    /// The end within `block`, if the container closes in it.
    fn block(&mut self, block: &[u8; 64]) -> Option<usize> {
        let [backslashes, quotes, opens, closes] = masks(block);
        // Escapes are rare outside row values; a block with one goes byte by byte.
        if backslashes != 0 || self.escaped {
            return self.bytes(block);
        }
        let in_string = prefix_xor(quotes) ^ if self.in_string { u64::MAX } else { 0 };
        self.in_string = in_string >> 63 == 1;
        let opens = opens & !in_string;
        let mut closes = closes & !in_string;
        let mut closed = 0;
        while closes != 0 {
            let close = closes & closes.wrapping_neg();
            closed += 1;
            if self.depth + u64::from((opens & (close - 1)).count_ones()) == closed {
                return Some(close.trailing_zeros() as usize + 1);
            }
            closes &= closes - 1;
        }
        self.depth = self.depth + u64::from(opens.count_ones()) - closed;
        None
    }

    /// The same, byte by byte.
    fn bytes(&mut self, block: &[u8]) -> Option<usize> {
        for (index, &byte) in block.iter().enumerate() {
            if self.escaped {
                self.escaped = false;
            } else if self.in_string {
                match byte {
                    b'\\' => self.escaped = true,
                    b'"' => self.in_string = false,
                    _ => {}
                }
            } else {
                match byte {
                    b'"' => self.in_string = true,
                    b'{' | b'[' => self.depth += 1,
                    b'}' | b']' => {
                        self.depth = self.depth.checked_sub(1)?;
                        if self.depth == 0 {
                            return Some(index + 1);
                        }
                    }
                    _ => {}
                }
            }
        }
        None
    }
}

/// Bit `i` set where byte `i` of `block` is a backslash, a quote, an opening
/// bracket or a closing bracket, in that order.
fn masks(block: &[u8; 64]) -> [u64; 4] {
    let mut masks = [0u64; 4];
    for (part, bytes) in block.chunks_exact(16).enumerate() {
        let lanes = u8x16::new(bytes.try_into().expect("chunks of 16"));
        let mask = |byte: u8| u64::from(lanes.cmp_eq(u8x16::splat(byte)).move_mask() as u16) << (part * 16);
        masks[0] |= mask(b'\\');
        masks[1] |= mask(b'"');
        masks[2] |= mask(b'{') | mask(b'[');
        masks[3] |= mask(b'}') | mask(b']');
    }
    masks
}

/// Bit `i` set when an odd number of bits `0..=i` are: inside a string, given
/// the quotes' bits.
fn prefix_xor(mut bits: u64) -> u64 {
    for shift in [1, 2, 4, 8, 16, 32] {
        bits ^= bits << shift;
    }
    bits
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn payload(text: &str) -> Option<&str> {
        parts(text).map(|(_, payload)| payload)
    }

    /// The reference: serde's own end of the first value.
    fn serde_end(text: &str) -> Option<usize> {
        let mut stream = serde_json::Deserializer::from_str(text).into_iter::<&RawValue>();
        stream.next()?.ok()?;
        Some(stream.byte_offset())
    }

    #[test]
    fn finds_the_payload_of_a_wrapper() {
        let schema = r#"{"type":"struct","fields":[{"type":"int64","optional":false,"field":"id"}],"optional":false,"name":"k"}"#;
        let wrapped = format!(r#"{{"schema":{schema},"payload":{{"id":7}}}}"#);
        assert_eq!(parts(&wrapped), Some((schema, r#"{"id":7}"#)));
        assert_eq!(payload(&format!(r#" {{"schema":{schema},"payload":null}} "#)), Some("null"));
        assert_eq!(payload(r#"{"schema":null,"payload":{"id":7}}"#), None, "a null schema is left to serde");
        assert_eq!(payload(r#"{"payload":{"id":7},"schema":{}}"#), None, "other orders are left to serde");
        assert_eq!(payload(r#"{"schema":{"a":"}"},"payload":1}"#), Some("1"));
        assert_eq!(payload(r#"{"schema":{"a":"}"#), None, "unclosed");
        assert_eq!(payload(r#"{"id":7}"#), None);
    }

    #[test]
    fn brackets_in_strings_and_escapes_do_not_count() {
        for text in [
            r#"{"a":"{[}]"}"#,
            r#"{"a":"\"}"}"#,
            r#"{"a":"\\"}"#,
            r#"{"a":"\\\"}\\"}"#,
            r#"[{"a":[1,2,{"b":"]"}]},"x"]"#,
            r#"{}"#,
            r#"[]"#,
        ] {
            assert_eq!(container_end(text.as_bytes()), Some(text.len()), "{text}");
            assert_eq!(container_end(format!("{text},\"rest\"").as_bytes()), Some(text.len()), "{text}");
        }
        assert_eq!(container_end(br#""a""#), None);
        assert_eq!(container_end(br#"{"a":1"#), None);
    }

    #[test]
    fn agrees_with_serde_across_block_boundaries() {
        // Strings and escapes of every length put each kind of byte on every
        // position of a 64-byte block, and across the edge between two.
        let pieces =
            [r#""x""#, r#""\"""#, r#""\\""#, r#""{[""#, r#""]}""#, "1", "[2,3]", r#"{"k":"v"}"#, r#""\\\"\\""#];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..3_000 {
            let mut text = String::from("{");
            let fields = (seed % 40) as usize;
            for field in 0..fields {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let pad = "y".repeat((seed % 70) as usize);
                let value = pieces[(seed >> 8) as usize % pieces.len()];
                if field > 0 {
                    text.push(',');
                }
                text.push_str(&format!(r#""{pad}{field}":{value}"#));
            }
            text.push('}');
            let expected = serde_end(&text);
            assert_eq!(expected, Some(text.len()), "the generator writes valid JSON: {text}");
            assert_eq!(container_end(text.as_bytes()), expected, "{text}");
            let cut = &text[..text.len() - 1];
            assert_eq!(container_end(cut.as_bytes()), None, "{cut}");
        }
    }
}
