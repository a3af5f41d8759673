//! Runtime and pipeline configuration: one runtime file naming the shared
//! resources, and one TOML file per pipeline in `pipelines_dir`. `${NAME}` in
//! their strings is replaced by the environment variable NAME.

mod interpolate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::pipeline::config::PipelineConfig;
use crate::pipeline::reload::ReloadConfig;
use crate::plugin::SandboxConfig;
use crate::query::DatabaseConfig;
use crate::secret::SecretUrl;
use crate::sink::CacheConfig;
use crate::source::SourceConfig;

/// The runtime file, e.g. `evercache.toml`. Relative paths are relative to it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Directory of plugin components (`*.wasm`), e.g. "plugins".
    pub plugins_dir: PathBuf,
    /// Directory of pipeline files (`*.toml`), e.g. "pipelines".
    pub pipelines_dir: PathBuf,
    /// Postgres databases the plugins read, by name.
    #[serde(default)]
    pub databases: BTreeMap<String, DatabaseConfig>,
    /// Redis caches written to, by name.
    #[serde(default)]
    pub caches: BTreeMap<String, CacheConfig>,
    /// Change sources, by name.
    #[serde(default)]
    pub sources: BTreeMap<String, SourceConfig>,
    /// Limits for plugin calls.
    #[serde(default)]
    pub sandbox: SandboxConfig,
    /// The metrics, health and status page listener; none when absent.
    #[serde(default)]
    pub http: Option<crate::http::HttpConfig>,
    /// Watching `plugins_dir` and `pipelines_dir` for changes while running.
    #[serde(default)]
    pub reload: ReloadConfig,
    /// The read path served by `[http]` at `/v1/keys/{key}`.
    #[serde(default)]
    pub read: crate::read::ReadConfig,
}

/// A loaded and cross-checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The runtime file's path.
    pub path: PathBuf,
    /// The runtime file, with `plugins_dir` and `pipelines_dir` made absolute.
    pub runtime: RuntimeConfig,
    /// Pipelines by name (the file stem).
    pub pipelines: BTreeMap<String, PipelineConfig>,
}

/// A configuration problem, naming the file and, where known, the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file is not valid TOML or has unknown or mistyped fields.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line, column and field.
        message: String,
    },
    /// A `${NAME}` names an environment variable that is not set.
    #[error("{path}:{line}: environment variable `{name}` is not set (used as ${{{name}}})")]
    UnsetVariable {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// The variable.
        name: String,
    },
    /// A value that parses but is wrong, where its line is known.
    #[error("{path}: {}field `{field}`: {message}", line.map(|n| format!("line {n}, ")).unwrap_or_default())]
    InvalidAt {
        /// The file.
        path: PathBuf,
        /// Its 1-based line, when the field is written in the file.
        line: Option<usize>,
        /// The field, e.g. `mapper.key`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// Values that parse but do not fit together.
    #[error("{path}: field `{field}`: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The field.
        field: String,
        /// What is wrong.
        message: String,
    },
}

impl Config {
    /// Reads the runtime file and every pipeline file, and checks their references.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let mut runtime: RuntimeConfig = parse_file(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        runtime.plugins_dir = base.join(&runtime.plugins_dir);
        runtime.pipelines_dir = base.join(&runtime.pipelines_dir);
        let compile_cache = match &runtime.sandbox.compile_cache {
            Some(dir) => base.join(dir),
            None => runtime.plugins_dir.join(".compiled"),
        };
        runtime.sandbox.compile_cache = runtime.sandbox.cache_compiled.then_some(compile_cache);
        read_password_files(&mut runtime, path, base)?;
        let mut pipelines = BTreeMap::new();
        for file in toml_files(&runtime.pipelines_dir)? {
            let (name, pipeline) = load_pipeline(&runtime, &file)?;
            pipelines.insert(name, pipeline);
        }
        check_key_owners(&runtime.pipelines_dir, &pipelines)?;
        Ok(Self { path: path.to_owned(), runtime, pipelines })
    }
}

/// Refuses two pipelines whose key patterns a key could match both: the read
/// path (`GET /v1/keys/{key}`) would not know which one recomputes it.
pub fn check_key_owners(dir: &Path, pipelines: &BTreeMap<String, PipelineConfig>) -> Result<(), ConfigError> {
    let owned: Vec<_> = pipelines.iter().flat_map(|(name, p)| p.key_patterns.iter().map(move |k| (name, k))).collect();
    for (i, (name, pattern)) in owned.iter().enumerate() {
        for (other_name, other_pattern) in &owned[..i] {
            if name != other_name && pattern.overlaps(other_pattern) {
                return Err(ConfigError::Invalid {
                    path: dir.join(format!("{name}.toml")),
                    field: "key_patterns".to_owned(),
                    message: format!(
                        "\"{pattern}\" overlaps \"{other_pattern}\" of pipeline '{other_name}': \
                         a key matching both would have two owners"
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Puts each `password_file`'s contents into its URL, so the password never
/// has to be written in the file itself.
fn read_password_files(runtime: &mut RuntimeConfig, path: &Path, base: &Path) -> Result<(), ConfigError> {
    let apply = |field: String, url: &mut SecretUrl, file: &Option<PathBuf>| match file {
        Some(file) => {
            *url = url.with_password_file(&base.join(file)).map_err(|message| ConfigError::Invalid {
                path: path.to_owned(),
                field,
                message,
            })?;
            Ok::<_, ConfigError>(())
        }
        None => Ok(()),
    };
    for (name, database) in &mut runtime.databases {
        apply(format!("databases.{name}.password_file"), &mut database.url, &database.password_file)?;
    }
    for (name, cache) in &mut runtime.caches {
        apply(format!("caches.{name}.password_file"), &mut cache.url, &cache.password_file)?;
        if let Some(tls) = &mut cache.tls {
            tls.relative_to(base);
        }
    }
    for (name, source) in &mut runtime.sources {
        let field = format!("sources.{name}.password_file");
        match source {
            SourceConfig::RedisStream(c) => {
                apply(field, &mut c.url, &c.password_file)?;
                if let Some(tls) = &mut c.tls {
                    tls.relative_to(base);
                }
            }
            SourceConfig::Postgres(c) => apply(field, &mut c.url, &c.password_file)?,
            SourceConfig::MySql(c) => apply(field, &mut c.url, &c.password_file)?,
            #[cfg(feature = "kafka")]
            SourceConfig::Kafka(c) => {
                c.relative_to(base);
                // Reads the CA, key and password files now, so a mistake is named at load.
                c.settings().map_err(|message| ConfigError::Invalid {
                    path: path.to_owned(),
                    field: format!("sources.{name}.properties"),
                    message,
                })?;
            }
        }
    }
    Ok(())
}

/// Reads and checks one pipeline file against the runtime file; the pipeline
/// is named after the file stem.
pub fn load_pipeline(runtime: &RuntimeConfig, file: &Path) -> Result<(String, PipelineConfig), ConfigError> {
    let mut pipeline: PipelineConfig = parse_file(file)?;
    pipeline.adopt_mapper().map_err(|(table, key, message)| ConfigError::InvalidAt {
        path: file.to_owned(),
        line: line_of(file, table, key),
        field: if table.is_empty() { key.to_owned() } else { format!("{table}.{key}") },
        message,
    })?;
    check_pipeline(runtime, file, &pipeline)?;
    let name = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    Ok((name, pipeline))
}

/// Parses one TOML file into `T`, naming the file in errors.
pub fn parse_file<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.to_owned(), source })?;
    let text = interpolate::interpolate(&text, |name| std::env::var(name).ok())
        .map_err(|unset| ConfigError::UnsetVariable { path: path.to_owned(), line: unset.line, name: unset.name })?;
    toml::from_str(&text)
        .map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string().trim_end().to_owned() })
}

/// The 1-based line of `key = …` inside `[table]` of the TOML file at `path`,
/// for errors found after parsing (the database's catalogue disagreeing).
pub fn line_of(path: &Path, table: &str, key: &str) -> Option<usize> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut inside = table.is_empty();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.starts_with('[') {
            inside = line.trim_start_matches('[').trim_end_matches(']').trim() == table;
        } else if inside && line.split('=').next().is_some_and(|name| name.trim() == key) {
            return Some(index + 1);
        }
    }
    None
}

fn toml_files(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let entries = std::fs::read_dir(dir).map_err(|source| ConfigError::Io { path: dir.to_owned(), source })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    Ok(files)
}

fn check_pipeline(runtime: &RuntimeConfig, file: &Path, pipeline: &PipelineConfig) -> Result<(), ConfigError> {
    let invalid =
        |field: &str, message: String| ConfigError::Invalid { path: file.to_owned(), field: field.to_owned(), message };
    let known = |names: Vec<&String>| names.into_iter().map(String::as_str).collect::<Vec<_>>().join(", ");
    if !runtime.sources.contains_key(&pipeline.source) {
        return Err(invalid(
            "source",
            format!("no [sources.{}]; known: {}", pipeline.source, known(runtime.sources.keys().collect())),
        ));
    }
    if !runtime.caches.contains_key(&pipeline.cache) {
        return Err(invalid(
            "cache",
            format!("no [caches.{}]; known: {}", pipeline.cache, known(runtime.caches.keys().collect())),
        ));
    }
    if let Some(database) = &pipeline.database
        && !runtime.databases.contains_key(database)
    {
        return Err(invalid(
            "database",
            format!("no [databases.{database}]; known: {}", known(runtime.databases.keys().collect())),
        ));
    }
    if pipeline.tables.is_empty() {
        return Err(invalid("tables", "list at least one \"schema.table\"".to_owned()));
    }
    for table in &pipeline.tables {
        let parts: Vec<&str> = table.split('.').collect();
        if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) {
            return Err(invalid("tables", format!("\"{table}\" is not of the form \"schema.table\"")));
        }
    }
    if pipeline.max_attempts == 0 {
        return Err(invalid("max_attempts", "must be at least 1".to_owned()));
    }
    if pipeline.recompute_batch == 0 {
        return Err(invalid("recompute_batch", "must be at least 1".to_owned()));
    }
    if pipeline.max_batch_keys == 0 {
        return Err(invalid("max_batch_keys", "must be at least 1".to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, runtime: &str, pipeline: &str) -> PathBuf {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir.join("pipelines")).unwrap();
        std::fs::write(dir.join("evercache.toml"), runtime).unwrap();
        std::fs::write(dir.join("pipelines/p.toml"), pipeline).unwrap();
        dir.join("evercache.toml")
    }

    const RUNTIME: &str = r#"
plugins_dir = "plugins"
pipelines_dir = "pipelines"
[databases.shop]
url = "postgres://ro@127.0.0.1/shop"
[caches.main]
url = "redis://127.0.0.1:6379"
[sources.shop]
type = "redis-stream"
url = "redis://127.0.0.1:6379"
streams = ["shop.public.product"]
"#;

    fn dir(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("evercache-config-{name}-{}", std::process::id()))
    }

    #[test]
    fn loads_runtime_and_pipelines_with_defaults() {
        let pipeline = "source = \"shop\"\ndatabase = \"shop\"\ncache = \"main\"\nplugin = \"p\"\ntables = [\"public.product\"]\nttl = \"24h\"\n[config]\nkey_prefix = \"product\"\nlimit = 5\n";
        let config = Config::load(&write(&dir("ok"), RUNTIME, pipeline)).unwrap();
        let p = &config.pipelines["p"];
        assert_eq!(p.ttl, Some(std::time::Duration::from_secs(86_400)));
        assert_eq!(p.max_attempts, 5);
        assert_eq!(p.on_change, crate::pipeline::OnChange::Recompute);
        assert_eq!(p.plugin_config(), vec![("key_prefix".into(), "product".into()), ("limit".into(), "5".into())]);
        assert!(config.runtime.plugins_dir.ends_with("plugins"));
        assert!(
            config.runtime.plugins_dir.is_absolute() || config.runtime.plugins_dir.starts_with(std::env::temp_dir())
        );
    }

    #[test]
    fn unknown_fields_name_the_file_line_and_field() {
        let runtime = format!("plugin_dir = \"x\"{RUNTIME}");
        let err = Config::load(&write(&dir("unknown"), &runtime, "")).unwrap_err().to_string();
        assert!(err.contains("evercache.toml"), "{err}");
        assert!(err.contains("line 1,"), "{err}");
        assert!(err.contains("unknown field `plugin_dir`"), "{err}");
    }

    #[test]
    fn dangling_references_name_the_pipeline_file_and_field() {
        let pipeline = "source = \"nope\"\ncache = \"main\"\nplugin = \"p\"\ntables = [\"public.product\"]\n";
        let err = Config::load(&write(&dir("dangling"), RUNTIME, pipeline)).unwrap_err().to_string();
        assert!(err.contains("pipelines/p.toml: field `source`: no [sources.nope]; known: shop"), "{err}");
        let pipeline = "source = \"shop\"\ncache = \"main\"\nplugin = \"p\"\ntables = [\"product\"]\n";
        let err = Config::load(&write(&dir("table"), RUNTIME, pipeline)).unwrap_err().to_string();
        assert!(err.contains("field `tables`"), "{err}");
    }

    #[test]
    fn a_mapper_replaces_the_plugin_and_owns_its_template_keys() {
        let head = "source = \"shop\"\ndatabase = \"shop\"\ncache = \"main\"\ntables = [\"public.users\"]\n";
        let config =
            Config::load(&write(&dir("mapper"), RUNTIME, &format!("{head}[mapper]\nkey = \"user:{{id}}\"\n"))).unwrap();
        let p = &config.pipelines["p"];
        assert_eq!(p.plugin, crate::plugin::mapper::MAPPER_PLUGIN);
        assert_eq!(p.key_patterns.iter().map(ToString::to_string).collect::<Vec<_>>(), ["user:*"]);
        let cases = [
            ("", "field `plugin`: name a plugin, or declare the keys with [mapper]"),
            ("plugin = \"p\"\n[mapper]\nkey = \"user:{id}\"\n", "either a plugin or a [mapper], not both"),
            ("[mapper]\nkey = \"user\"\n", "line 6, field `mapper.key`: key template \"user\" names no column"),
            ("[mapper]\nkey = \"u:{id}\"\ntype = \"string\"\n", "stores one column"),
            ("[mapper]\nkey = \"u:{id}\"\nkye = 1\n", "unknown field `kye`"),
        ];
        for (tail, expected) in cases {
            let err =
                Config::load(&write(&dir("mapper_bad"), RUNTIME, &format!("{head}{tail}"))).unwrap_err().to_string();
            assert!(err.contains(expected), "{tail}: {err}");
        }
    }

    #[test]
    fn overlapping_key_patterns_are_refused_naming_both() {
        let d = dir("owners");
        let body =
            "source = \"shop\"\ndatabase = \"shop\"\ncache = \"main\"\nplugin = \"p\"\ntables = [\"public.product\"]\n";
        let path = write(&d, RUNTIME, &format!("{body}key_patterns = [\"product:*\"]\n"));
        std::fs::write(d.join("pipelines/q.toml"), format!("{body}key_patterns = [\"category:*\", \"*:42\"]\n"))
            .unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("pipelines/q.toml: field `key_patterns`"), "{err}");
        assert!(err.contains("\"*:42\" overlaps \"product:*\" of pipeline 'p'"), "{err}");
        std::fs::write(d.join("pipelines/q.toml"), format!("{body}key_patterns = [\"category:*\"]\n")).unwrap();
        let config = Config::load(&path).unwrap();
        assert!(config.pipelines["q"].key_patterns[0].matches("category:1"));
        std::fs::write(d.join("pipelines/q.toml"), format!("{body}key_patterns = [\"\"]\n")).unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("a key pattern cannot be empty"), "{err}");
    }
}
