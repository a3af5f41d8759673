//! `${NAME}` in the strings of a runtime or pipeline file, replaced by the
//! environment variable NAME before the file is read, as Vector does, so
//! secrets stay out of the files. Only string values are touched (a value is
//! re-encoded as a TOML string, so any character in a secret is safe), `$${`
//! writes a literal `${`, and an unset variable is an error naming the file,
//! line and variable.

use std::ops::Range;

use toml::de::{DeTable, DeValue};

/// What went wrong replacing variables in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsetVariable {
    /// 1-based line of the string that names it.
    pub line: usize,
    /// The variable's name.
    pub name: String,
}

/// `text` with every `${NAME}` in its strings replaced by `lookup(NAME)`.
/// Text that is not valid TOML is returned unchanged, for the parser to report.
pub fn interpolate(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, UnsetVariable> {
    if !text.contains("${") {
        return Ok(text.to_owned());
    }
    let Ok(table) = DeTable::parse(text) else { return Ok(text.to_owned()) };
    let mut strings = Vec::new();
    collect_strings(table.get_ref(), &mut strings);
    strings.sort_by_key(|(span, _)| span.start);
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (span, value) in strings {
        if !value.contains("${") || span.start < at {
            continue;
        }
        let line = text[..span.start].matches('\n').count() + 1;
        let replaced = replace(&value, &lookup).map_err(|name| UnsetVariable { line, name })?;
        out.push_str(&text[at..span.start]);
        out.push_str(&toml::Value::String(replaced).to_string());
        at = span.end;
    }
    out.push_str(&text[at..]);
    Ok(out)
}

fn collect_strings(table: &DeTable<'_>, out: &mut Vec<(Range<usize>, String)>) {
    for value in table.values() {
        collect_value(value, out);
    }
}

fn collect_value(value: &toml::Spanned<DeValue<'_>>, out: &mut Vec<(Range<usize>, String)>) {
    match value.get_ref() {
        DeValue::String(text) => out.push((value.span(), text.to_string())),
        DeValue::Array(items) => items.iter().for_each(|item| collect_value(item, out)),
        DeValue::Table(table) => collect_strings(table, out),
        _ => {}
    }
}

/// One string's variables replaced; `Err(name)` for the first unset one.
fn replace(value: &str, lookup: &impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        let tail = &rest[start..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(name) = tail.strip_prefix("${").and_then(|t| t.split_once('}')).map(|(n, _)| n)
            && is_name(name)
        {
            out.push_str(&lookup(name).ok_or_else(|| name.to_owned())?);
            rest = &tail[2 + name.len() + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "PG_PASSWORD" => Some(r#"p"a\ss'word"#.to_owned()),
            "HOST" => Some("db.internal".to_owned()),
            _ => None,
        }
    }

    #[test]
    fn replaces_variables_in_strings_only_and_keeps_any_character_safe() {
        let text = "# ${NOT_A_STRING}\n[databases.main]\nurl = \"postgres://app:${PG_PASSWORD}@${HOST}/shop\"\n\
                    tables = ['${HOST}', \"x\"]\nquery = \"select $1, $$body$$, $${HOST}\"\nsize = 3\n";
        let out = interpolate(text, env).unwrap();
        let value: toml::Table = toml::from_str(&out).unwrap();
        let main = &value["databases"]["main"];
        assert_eq!(main["url"].as_str(), Some(r#"postgres://app:p"a\ss'word@db.internal/shop"#));
        assert_eq!(main["tables"][0].as_str(), Some("db.internal"));
        assert_eq!(main["query"].as_str(), Some("select $1, $$body$$, ${HOST}"));
        assert!(out.starts_with("# ${NOT_A_STRING}\n"), "comments are left alone");
        assert_eq!(out.lines().count(), text.lines().count(), "lines stay where they were");
    }

    #[test]
    fn an_unset_variable_names_its_line() {
        let text = "a = 1\n\n[caches.main]\nurl = \"redis://:${REDIS_PASSWORD}@cache:6379\"\n";
        assert_eq!(interpolate(text, env), Err(UnsetVariable { line: 4, name: "REDIS_PASSWORD".into() }));
    }

    #[test]
    fn files_without_variables_or_not_toml_pass_through() {
        assert_eq!(interpolate("a = \"$1 ${\"", env).unwrap(), "a = \"$1 ${\"");
        assert_eq!(interpolate("a = [${", env).unwrap(), "a = [${");
    }
}
