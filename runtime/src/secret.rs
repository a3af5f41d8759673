//! Connection URLs carry passwords. A [`SecretUrl`] never shows its password:
//! its `Debug` masks it and it has no `Display`, so it cannot be formatted
//! into a log line, an error or a status page by accident; code that connects
//! asks for the full text with [`SecretUrl::expose`]. A password may also come
//! from a file (`password_file`), as container secrets are mounted.

use std::path::Path;

use serde::Deserialize;

/// What replaces a password wherever a URL is shown.
pub const MASK: &str = "***";

/// A connection URL that may hold a password.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL with its password, for connecting; never for showing.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with its password masked, for showing.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }

    /// The password in the URL, if any (percent-decoded), so messages that
    /// might echo it can be scrubbed.
    pub fn password(&self) -> Option<String> {
        let parsed = url::Url::parse(&self.0).ok()?;
        let password = parsed.password()?;
        Some(percent_encoding::percent_decode_str(password).decode_utf8_lossy().into_owned())
    }

    /// The URL with its password replaced by the contents of `file` (without
    /// the trailing newline editors and secret mounts leave).
    pub fn with_password_file(&self, file: &Path) -> Result<Self, String> {
        let password = read_password_file(file)?;
        let password = password.as_str();
        let mut parsed = url::Url::parse(&self.0).map_err(|e| format!("the url is not a URL: {e}"))?;
        parsed.set_password(Some(password)).map_err(|()| "this url cannot hold a password".to_owned())?;
        Ok(Self(parsed.to_string()))
    }

    /// Whether the URL is blank.
    pub fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }
}

/// The password in `file`, without the trailing newline editors and secret mounts leave.
pub fn read_password_file(file: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_owned())
}

impl From<&str> for SecretUrl {
    fn from(url: &str) -> Self {
        Self(url.to_owned())
    }
}

impl From<String> for SecretUrl {
    fn from(url: String) -> Self {
        Self(url)
    }
}

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

/// `scheme://user:password@host…` → `scheme://user:***@host…`, for every URL in `text`.
pub fn redact_url(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let authority_end = tail.find(['/', '?', '#', ' ', '"', '\'']).unwrap_or(tail.len());
        let authority = &tail[..authority_end];
        match (authority.rfind('@'), authority.find(':')) {
            (Some(at_sign), Some(colon)) if colon < at_sign => {
                out.push_str(&authority[..colon + 1]);
                out.push_str(MASK);
                out.push_str(&authority[at_sign..]);
            }
            _ => out.push_str(authority),
        }
        rest = &tail[authority_end..];
    }
    out.push_str(rest);
    out
}

/// `text` with every occurrence of `secret` masked (for driver messages that echo it).
pub fn scrub(text: &str, secret: Option<&str>) -> String {
    match secret.filter(|s| !s.is_empty()) {
        Some(secret) => redact_url(&text.replace(secret, MASK)),
        None => redact_url(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked_in_debug_and_text() {
        let url = SecretUrl::new("postgres://app:s3cr%40t@db:5432/shop?sslmode=require");
        assert_eq!(format!("{url:?}"), "\"postgres://app:***@db:5432/shop?sslmode=require\"");
        assert_eq!(url.password().as_deref(), Some("s3cr@t"));
        assert_eq!(
            redact_url("redis://:pw@cache:6379/0 and mysql://root@h:3306 and rediss://u:p@x"),
            "redis://:***@cache:6379/0 and mysql://root@h:3306 and rediss://u:***@x"
        );
        assert_eq!(scrub("auth failed for s3cr@t", Some("s3cr@t")), "auth failed for ***");
    }

    #[test]
    fn a_password_file_sets_the_password() {
        let file = std::env::temp_dir().join(format!("evercache-secret-{}", std::process::id()));
        std::fs::write(&file, "p@ss:w/rd\n").unwrap();
        let url = SecretUrl::new("postgres://app@db/shop").with_password_file(&file).unwrap();
        assert_eq!(url.password().as_deref(), Some("p@ss:w/rd"));
        assert_eq!(url.expose(), "postgres://app:p%40ss%3Aw%2Frd@db/shop");
        let redis = SecretUrl::new("redis://cache:6379").with_password_file(&file).unwrap();
        assert_eq!(redis.redacted(), "redis://:***@cache:6379");
        std::fs::remove_file(file).unwrap();
    }
}
