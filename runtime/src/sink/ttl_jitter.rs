//! A random share added to each key's TTL, so keys written together (one
//! batch, one snapshot page, one hot burst) do not all expire in the same
//! second and send their misses to the database at once.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// How much longer than its TTL a key may live: `0.1` (up to a tenth of the
/// TTL more) or a duration such as `"5m"`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TtlJitter {
    /// A share of the TTL, from 0 to 1.
    Fraction(f64),
    /// A fixed span, whatever the TTL.
    Span(Duration),
}

impl TtlJitter {
    /// `ttl_ms` plus a uniform random share of the jitter; 0 (no TTL) stays 0.
    pub fn apply(&self, ttl_ms: u64) -> u64 {
        if ttl_ms == 0 {
            return 0;
        }
        let most = match *self {
            Self::Fraction(share) => (ttl_ms as f64 * share) as u64,
            Self::Span(span) => span.as_millis() as u64,
        };
        ttl_ms + fastrand::u64(0..=most)
    }
}

impl<'de> Deserialize<'de> for TtlJitter {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Share(f64),
            Text(String),
        }
        match Written::deserialize(deserializer)? {
            Written::Share(share) if (0.0..=1.0).contains(&share) => Ok(Self::Fraction(share)),
            Written::Share(share) => {
                Err(serde::de::Error::custom(format!("ttl_jitter {share} must be a share from 0 to 1, or a duration")))
            }
            Written::Text(text) => humantime::parse_duration(&text)
                .map(Self::Span)
                .map_err(|e| serde::de::Error::custom(format!("ttl_jitter \"{text}\": {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Holder {
        ttl_jitter: TtlJitter,
    }

    fn parse(text: &str) -> Result<TtlJitter, toml::de::Error> {
        toml::from_str::<Holder>(text).map(|h| h.ttl_jitter)
    }

    #[test]
    fn a_share_or_a_duration() {
        assert_eq!(parse("ttl_jitter = 0.1").unwrap(), TtlJitter::Fraction(0.1));
        assert_eq!(parse("ttl_jitter = \"5m\"").unwrap(), TtlJitter::Span(Duration::from_secs(300)));
        assert!(parse("ttl_jitter = 1.5").unwrap_err().to_string().contains("from 0 to 1"));
        assert!(parse("ttl_jitter = \"soon\"").is_err());
    }

    #[test]
    fn adds_up_to_the_jitter_and_spreads() {
        let jitter = TtlJitter::Fraction(0.1);
        let ttls: Vec<u64> = (0..1000).map(|_| jitter.apply(100_000)).collect();
        assert!(ttls.iter().all(|t| (100_000..=110_000).contains(t)));
        assert!(ttls.iter().max().unwrap() - ttls.iter().min().unwrap() > 9_000, "spread over the range");
        assert_eq!(jitter.apply(0), 0, "no TTL stays none");
        assert!((60_000..=65_000).contains(&TtlJitter::Span(Duration::from_secs(5)).apply(60_000)));
    }
}
