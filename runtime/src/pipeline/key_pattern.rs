//! Key patterns: which cache keys a pipeline owns, e.g. `product:*`. `*`
//! matches any run of characters (none too), `?` exactly one, `\` makes the
//! next character literal; everything else matches itself.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Deserializer};

/// One element of a pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    /// Any run of characters.
    Star,
    /// Exactly one character.
    One,
    /// This character.
    Literal(char),
}

/// A glob over cache keys.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyPattern {
    text: String,
    tokens: Vec<Token>,
}

impl KeyPattern {
    /// Parses `text`; an empty pattern or a trailing `\` is refused.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("a key pattern cannot be empty".to_owned());
        }
        let mut tokens = Vec::new();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            tokens.push(match c {
                // Consecutive stars match what one does.
                '*' if tokens.last() == Some(&Token::Star) => continue,
                '*' => Token::Star,
                '?' => Token::One,
                '\\' => match chars.next() {
                    Some(escaped) => Token::Literal(escaped),
                    None => return Err(format!("key pattern \"{text}\" ends in a lone '\\'")),
                },
                other => Token::Literal(other),
            });
        }
        Ok(Self { text: text.to_owned(), tokens })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Does `key` match?
    pub fn matches(&self, key: &str) -> bool {
        let key: Vec<char> = key.chars().collect();
        let (mut t, mut k) = (0, 0);
        // The last star and where its match started: backtracking to it is enough.
        let mut star: Option<(usize, usize)> = None;
        while k < key.len() {
            match self.tokens.get(t) {
                Some(Token::Star) => {
                    star = Some((t, k));
                    t += 1;
                }
                Some(Token::One) => (t, k) = (t + 1, k + 1),
                Some(Token::Literal(c)) if *c == key[k] => (t, k) = (t + 1, k + 1),
                _ => match star {
                    Some((star_t, star_k)) => {
                        star = Some((star_t, star_k + 1));
                        (t, k) = (star_t + 1, star_k + 1);
                    }
                    None => return false,
                },
            }
        }
        self.tokens[t..].iter().all(|token| *token == Token::Star)
    }

    /// Is there a key both patterns match?
    pub fn overlaps(&self, other: &KeyPattern) -> bool {
        overlap(&self.tokens, &other.tokens, 0, 0, &mut HashMap::new())
    }

    /// The pattern in Redis's glob syntax, for `SCAN … MATCH`.
    pub fn redis_glob(&self) -> String {
        let mut glob = String::new();
        for token in &self.tokens {
            match token {
                Token::Star => glob.push('*'),
                Token::One => glob.push('?'),
                Token::Literal(c) => {
                    if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                        glob.push('\\');
                    }
                    glob.push(*c);
                }
            }
        }
        glob
    }
}

/// Can `a[i..]` and `b[j..]` match one string? Each step consumes one
/// character from both, or lets a star match nothing.
fn overlap(a: &[Token], b: &[Token], i: usize, j: usize, seen: &mut HashMap<(usize, usize), bool>) -> bool {
    if let Some(known) = seen.get(&(i, j)) {
        return *known;
    }
    let answer = (i == a.len() && j == b.len())
        || (a.get(i) == Some(&Token::Star) && overlap(a, b, i + 1, j, seen))
        || (b.get(j) == Some(&Token::Star) && overlap(a, b, i, j + 1, seen))
        || match (a.get(i), b.get(j)) {
            // Two stars consuming a character together is no different from both matching nothing.
            (Some(Token::Star), Some(Token::Star)) | (None, _) | (_, None) => false,
            (Some(x), Some(y)) => {
                let compatible = match (x, y) {
                    (Token::Literal(p), Token::Literal(q)) => p == q,
                    _ => true,
                };
                let next_i = if *x == Token::Star { i } else { i + 1 };
                let next_j = if *y == Token::Star { j } else { j + 1 };
                compatible && overlap(a, b, next_i, next_j, seen)
            }
        };
    seen.insert((i, j), answer);
    answer
}

impl fmt::Debug for KeyPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.text)
    }
}

impl fmt::Display for KeyPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for KeyPattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        KeyPattern::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> KeyPattern {
        KeyPattern::parse(text).unwrap()
    }

    #[test]
    fn matches_stars_single_characters_and_escapes() {
        assert!(p("product:*").matches("product:42"));
        assert!(p("product:*").matches("product:"));
        assert!(!p("product:*").matches("products:1"));
        assert!(p("a*b*c").matches("axxbyyc"));
        assert!(p("a*b*c").matches("abbc"));
        assert!(!p("a*b*c").matches("acb"));
        assert!(p("user:?").matches("user:7"));
        assert!(!p("user:?").matches("user:77"));
        assert!(p(r"odd\*:*").matches("odd*:1"));
        assert!(!p(r"odd\*:*").matches("oddx:1"));
        assert!(p("*").matches(""));
        assert!(p("spé:*").matches("spé:ü"));
        assert!(KeyPattern::parse("").is_err());
        assert!(KeyPattern::parse(r"x\").is_err());
    }

    #[test]
    fn overlaps_when_some_key_matches_both() {
        let overlapping = [
            ("product:*", "product:*"),
            ("product:*", "*:42"),
            ("product:*", "prod*"),
            ("a?c", "*b*"),
            ("specialist:*", "specialist:??"),
            ("*", "anything"),
        ];
        for (a, b) in overlapping {
            assert!(p(a).overlaps(&p(b)), "{a} / {b}");
            assert!(p(b).overlaps(&p(a)), "{b} / {a}");
        }
        let apart = [
            ("product:*", "category:*"),
            ("product:?", "product:??"),
            ("a*z", "b*"),
            ("user:*:profile", "user:*:orders"),
            ("x", "y"),
        ];
        for (a, b) in apart {
            assert!(!p(a).overlaps(&p(b)), "{a} / {b}");
            assert!(!p(b).overlaps(&p(a)), "{b} / {a}");
        }
    }

    #[test]
    fn redis_glob_escapes_redis_wildcards_written_literally() {
        assert_eq!(p("product:*").redis_glob(), "product:*");
        assert_eq!(p(r"a\*[b]?").redis_glob(), r"a\*\[b\]?");
    }
}
