//! `evercache plugin new NAME`: a plugin crate that builds and tests out of the box.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// What to scaffold.
pub struct ScaffoldOptions {
    /// Crate name, e.g. "product-cache"; the component is named with underscores.
    pub name: String,
    /// Directory to create the crate in (default: `./<name>`).
    pub dir: Option<PathBuf>,
    /// Path of `evercache-plugin-sdk` (default: the SDK this binary was built with).
    pub sdk: Option<PathBuf>,
}

const LIB_RS: &str = r##"//! {{name}}: caches `<schema>.<table>` rows as JSON under `<key_prefix>:<id>`.

use std::collections::HashMap;

use evercache_plugin_sdk::{Config, Event, Outcome, Plugin, PluginError, export_plugin, query};
use serde_json::json;

pub struct {{type}} {
    key_prefix: String,
    sql: String,
}

impl Plugin for {{type}} {
    fn init(config: &Config) -> Result<Self, PluginError> {
        let schema = config.identifier("schema", "public")?;
        let table = config.identifier("table", "item")?;
        // Placeholders are the database's own: `$1` on Postgres; `?` on MySQL and
        // MariaDB, where a list parameter arrives as a JSON array text.
        let sql = match config.get_or("dialect", "postgres") {
            "mysql" => format!(
                "select id, name from {schema}.{table} \
                 where id in (select v from json_table(?, '$[*]' columns (v bigint path '$')) ids)"
            ),
            _ => format!("select id, name from {schema}.{table} where id = any($1)"),
        };
        Ok(Self { key_prefix: config.get_or("key_prefix", "item").to_owned(), sql })
    }

    fn keys(&self, event: &Event) -> Result<Vec<String>, PluginError> {
        let id: i64 = event.row_field("id")?;
        Ok(vec![format!("{}:{id}", self.key_prefix)])
    }

    fn recompute(&self, keys: &[String]) -> Result<Vec<Outcome>, PluginError> {
        let ids = keys
            .iter()
            .map(|key| key.rsplit(':').next().and_then(|id| id.parse::<i64>().ok()))
            .collect::<Option<Vec<i64>>>()
            .ok_or_else(|| PluginError::bad_event("key without a numeric id"))?;
        let mut rows = HashMap::new();
        for row in query!(&self.sql, ids)?.iter() {
            let id: i64 = row.get("id")?;
            rows.insert(id, json!({ "id": id, "name": row.get::<Option<String>>("name")? }));
        }
        ids.iter().map(|id| rows.get(id).map_or(Ok(Outcome::delete()), Outcome::json)).collect()
    }
}

export_plugin!({{type}});

#[cfg(test)]
mod tests {
    use evercache_plugin_sdk::{ChangeEvent, Op};

    use super::*;

    fn event(after: &str) -> Event {
        Event::from(ChangeEvent {
            op: Op::Create,
            source: "shop".into(),
            schema: Some("public".into()),
            table: "item".into(),
            key: r#"{"id":1}"#.into(),
            before: None,
            after: Some(after.into()),
            position: String::new(),
            committed_at_ms: 0,
        })
    }

    #[test]
    fn keys_name_the_row() {
        let plugin = {{type}} { key_prefix: "item".into(), sql: String::new() };
        assert_eq!(plugin.keys(&event(r#"{"id":7,"name":"x"}"#)).unwrap(), vec!["item:7"]);
    }
}
"##;

const CARGO_TOML: &str = r#"[package]
name = "{{name}}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
evercache-plugin-sdk = { path = "{{sdk}}" }
serde_json = "1"

[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
strip = "debuginfo"

# A crate of its own; remove this table to make it a member of a workspace.
[workspace]
"#;

const EVENTS: &str = r#"{"before":null,"after":{"id":1,"name":"first"},"source":{"connector":"postgresql","name":"shop","db":"shop","schema":"public","table":"item","sequence":"[\"100\",\"120\"]","lsn":120,"ts_ms":1700000000000},"op":"c","ts_ms":1700000000100}
{"before":null,"after":{"id":2,"name":"second"},"source":{"connector":"postgresql","name":"shop","db":"shop","schema":"public","table":"item","sequence":"[\"200\",\"220\"]","lsn":220,"ts_ms":1700000001000},"op":"u","ts_ms":1700000001100}
{"before":{"id":3},"after":null,"source":{"connector":"postgresql","name":"shop","db":"shop","schema":"public","table":"item","sequence":"[\"300\",\"320\"]","lsn":320,"ts_ms":1700000002000},"op":"d","ts_ms":1700000002100}
"#;

const README: &str = r#"# {{name}}

An evercache plugin. Edit `src/lib.rs`, then:

```sh
cargo test                                   # unit tests on the host
evercache plugin build                       # → plugins/{{file}}.wasm (wasm32-wasip2 component)
evercache plugin test plugins/{{file}}.wasm --events fixtures/events.jsonl \
    --database postgres://user@127.0.0.1:5432/shop --set schema=public --set table=item
# MySQL or MariaDB: the schema is the database, and the query uses `?`
evercache plugin test plugins/{{file}}.wasm --events fixtures/events.jsonl \
    --database mysql://user@127.0.0.1:3306/shop --set dialect=mysql --set schema=shop --set table=item
```

`fixtures/events.jsonl` holds Debezium change events, one per line.
"#;

/// Writes the crate; refuses to overwrite an existing directory.
pub fn scaffold(options: &ScaffoldOptions) -> Result<PathBuf> {
    let name = options.name.as_str();
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        bail!("plugin name `{name}` must be letters, digits, `-` or `_`");
    }
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        bail!("plugin name `{name}` must start with a letter");
    }
    let dir = options.dir.clone().unwrap_or_else(|| PathBuf::from(name));
    if dir.exists() {
        bail!("{} already exists", dir.display());
    }
    let sdk = match &options.sdk {
        Some(sdk) => sdk.clone(),
        None => default_sdk()?,
    };
    let sdk = std::fs::canonicalize(&sdk).with_context(|| format!("SDK not found at {}", sdk.display()))?;
    let file = name.replace('-', "_");
    let type_name: String =
        file.split('_').filter(|p| !p.is_empty()).map(|p| p[..1].to_ascii_uppercase() + &p[1..]).collect();
    let fill = |template: &str| {
        template
            .replace("{{name}}", name)
            .replace("{{file}}", &file)
            .replace("{{type}}", &type_name)
            .replace("{{sdk}}", &sdk.display().to_string())
    };
    write(&dir.join("Cargo.toml"), &fill(CARGO_TOML))?;
    write(&dir.join("src/lib.rs"), &fill(LIB_RS))?;
    write(&dir.join("fixtures/events.jsonl"), EVENTS)?;
    write(&dir.join("README.md"), &fill(README))?;
    write(&dir.join(".gitignore"), "/target\n/plugins\n")?;
    Ok(dir)
}

/// The SDK next to the runtime's sources, when this binary was built from the repository.
fn default_sdk() -> Result<PathBuf> {
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin-sdk");
    if sdk.join("Cargo.toml").exists() {
        return Ok(sdk);
    }
    bail!("cannot find evercache-plugin-sdk; pass --sdk PATH (the repository's plugin-sdk directory)")
}

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
