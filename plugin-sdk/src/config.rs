//! The pipeline's `[config]` table, as `init` receives it.

use std::str::FromStr;

use crate::PluginError;

/// Configuration values by name, all as strings (numbers and booleans in their
/// TOML form).
#[derive(Debug, Clone, Default)]
pub struct Config {
    pairs: Vec<(String, String)>,
}

impl Config {
    /// Wraps the pairs `init` received.
    pub fn new(pairs: Vec<(String, String)>) -> Self {
        Self { pairs }
    }

    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The value of `name`, or `default`.
    pub fn get_or<'a>(&'a self, name: &str, default: &'a str) -> &'a str {
        self.get(name).unwrap_or(default)
    }

    /// The value of `name`, or an error naming it.
    pub fn require(&self, name: &str) -> Result<&str, PluginError> {
        self.get(name).ok_or_else(|| PluginError::other(format!("missing config value `{name}`")))
    }

    /// The value of `name` parsed as `T`; `None` when unset.
    pub fn parse<T: FromStr>(&self, name: &str) -> Result<Option<T>, PluginError>
    where
        T::Err: std::fmt::Display,
    {
        self.get(name)
            .map(|v| v.parse::<T>().map_err(|e| PluginError::other(format!("config `{name}` = {v:?}: {e}"))))
            .transpose()
    }

    /// A comma-separated list (`"1, 2,3"` → `[1, 2, 3]`); empty when unset.
    pub fn list<T: FromStr>(&self, name: &str) -> Result<Vec<T>, PluginError>
    where
        T::Err: std::fmt::Display,
    {
        let Some(value) = self.get(name) else { return Ok(Vec::new()) };
        value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<T>().map_err(|e| PluginError::other(format!("config `{name}`: {s:?}: {e}"))))
            .collect()
    }

    /// A SQL identifier (`[a-z_][a-z0-9_]*`), safe to splice into statements.
    pub fn identifier(&self, name: &str, default: &str) -> Result<String, PluginError> {
        let value = self.get_or(name, default);
        let mut chars = value.chars();
        let valid = chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if valid {
            Ok(value.to_owned())
        } else {
            Err(PluginError::other(format!("config `{name}` = {value:?} is not a plain SQL identifier")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_access() {
        let config = Config::new(vec![
            ("prefix".into(), "p".into()),
            ("n".into(), "5".into()),
            ("ids".into(), "1, 2,3".into()),
            ("schema".into(), "Bad-Name".into()),
        ]);
        assert_eq!(config.get("prefix"), Some("p"));
        assert_eq!(config.get_or("missing", "d"), "d");
        assert!(config.require("missing").is_err());
        assert_eq!(config.parse::<u32>("n").unwrap(), Some(5));
        assert!(config.parse::<u32>("prefix").is_err());
        assert_eq!(config.list::<i64>("ids").unwrap(), vec![1, 2, 3]);
        assert!(config.list::<i64>("missing").unwrap().is_empty());
        assert_eq!(config.identifier("missing", "public").unwrap(), "public");
        assert!(config.identifier("schema", "public").is_err());
    }
}
