//! A key template such as `order:{customer_id}:{id}`: rendered from a row's
//! columns, and read back from a key into the columns' values.

use serde_json::{Map, Value};

/// A parsed key template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTemplate {
    text: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Column(String),
}

impl KeyTemplate {
    /// Parses `text`: `{column}` names a column, `{{` and `}}` are literal
    /// braces. Two columns must be separated by literal text, so a key can be
    /// read back; a column value may not contain the literal that follows it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    let mut closed = false;
                    for c in chars.by_ref() {
                        if c == '}' {
                            closed = true;
                            break;
                        }
                        name.push(c);
                    }
                    if !closed || name.trim().is_empty() || name.contains('{') {
                        return Err(format!(
                            "key template \"{text}\": a `{{` must be followed by a column name and `}}`"
                        ));
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    } else if matches!(parts.last(), Some(Part::Column(_))) {
                        return Err(format!(
                            "key template \"{text}\": columns {{{}}} and {{{name}}} need text between them to be told apart",
                            parts.last().map(|p| if let Part::Column(c) = p { c.as_str() } else { "" }).unwrap_or("")
                        ));
                    }
                    parts.push(Part::Column(name.trim().to_owned()));
                }
                '}' => return Err(format!("key template \"{text}\": a lone `}}` (write `}}}}` for a brace)")),
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        if !parts.iter().any(|p| matches!(p, Part::Column(_))) {
            return Err(format!("key template \"{text}\" names no column, so every row would share one key"));
        }
        Ok(Self { text: text.to_owned(), parts })
    }

    /// The template as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The columns it names, in order, each once.
    pub fn columns(&self) -> Vec<&str> {
        let mut columns: Vec<&str> = Vec::new();
        for part in &self.parts {
            if let Part::Column(name) = part
                && !columns.contains(&name.as_str())
            {
                columns.push(name);
            }
        }
        columns
    }

    /// The Redis glob of every key it renders, e.g. `order:*:*`, for the
    /// pipeline's `key_patterns`.
    pub fn pattern(&self) -> String {
        self.parts
            .iter()
            .map(|part| match part {
                Part::Column(_) => "*".to_owned(),
                Part::Literal(text) => text.chars().fold(String::new(), |mut out, c| {
                    if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                        out.push('\\');
                    }
                    out.push(c);
                    out
                }),
            })
            .collect()
    }

    /// The key of `row`; `Err` names a column the row lacks or holds null in.
    pub fn render(&self, row: &Map<String, Value>) -> Result<String, String> {
        let mut key = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => key.push_str(text),
                Part::Column(name) => match row.get(name) {
                    None => return Err(format!("the row has no column `{name}` for key template \"{}\"", self.text)),
                    Some(Value::Null) => {
                        return Err(format!("column `{name}` is null, so key template \"{}\" has no key", self.text));
                    }
                    Some(value) => key.push_str(&text_of(value)),
                },
            }
        }
        Ok(key)
    }

    /// The columns' values (as text) a key was rendered from; `None` when the
    /// key does not have the template's shape.
    pub fn values(&self, key: &str) -> Option<Vec<(String, String)>> {
        let mut rest = key;
        let mut values: Vec<(String, String)> = Vec::new();
        for (index, part) in self.parts.iter().enumerate() {
            match part {
                Part::Literal(text) => rest = rest.strip_prefix(text.as_str())?,
                Part::Column(name) => {
                    let end = match self.parts.get(index + 1) {
                        Some(Part::Literal(next)) => rest.find(next.as_str())?,
                        _ => rest.len(),
                    };
                    let value = &rest[..end];
                    if let Some((_, seen)) = values.iter().find(|(n, _)| n == name) {
                        if seen != value {
                            return None;
                        }
                    } else {
                        values.push((name.clone(), value.to_owned()));
                    }
                    rest = &rest[end..];
                }
            }
        }
        rest.is_empty().then_some(values)
    }
}

/// A column value as it appears in a key: text as it is, anything else as JSON.
pub fn text_of(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn renders_and_reads_back_composite_keys() {
        let template = KeyTemplate::parse("order:{customer_id}:{id}").unwrap();
        assert_eq!(template.columns(), ["customer_id", "id"]);
        assert_eq!(template.pattern(), "order:*:*");
        let key = template.render(&row(json!({"customer_id": 7, "id": "a-1", "x": null}))).unwrap();
        assert_eq!(key, "order:7:a-1");
        assert_eq!(
            template.values(&key),
            Some(vec![("customer_id".to_owned(), "7".to_owned()), ("id".to_owned(), "a-1".to_owned())])
        );
        assert_eq!(template.values("order:7"), None);
        assert_eq!(template.values("user:7:1"), None);
    }

    #[test]
    fn braces_escape_and_globs_are_quoted() {
        let template = KeyTemplate::parse("{{user*}}:{id}").unwrap();
        assert_eq!(template.render(&row(json!({"id": 1}))).unwrap(), "{user*}:1");
        assert_eq!(template.pattern(), "{user\\*}:*");
        assert_eq!(template.values("{user*}:1"), Some(vec![("id".to_owned(), "1".to_owned())]));
    }

    #[test]
    fn refuses_what_cannot_be_read_back_or_rendered() {
        assert!(KeyTemplate::parse("user").unwrap_err().contains("names no column"));
        assert!(KeyTemplate::parse("{a}{b}").unwrap_err().contains("need text between them"));
        assert!(KeyTemplate::parse("user:{id").is_err());
        assert!(KeyTemplate::parse("user:}").unwrap_err().contains("lone"));
        let template = KeyTemplate::parse("user:{id}").unwrap();
        assert!(template.render(&row(json!({"id": null}))).unwrap_err().contains("is null"));
        assert!(template.render(&row(json!({"name": "x"}))).unwrap_err().contains("no column `id`"));
    }
}
