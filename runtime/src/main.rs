//! The `evercache` command line: `run`, `check`, `status`, `capture`, `dlq` and `plugin`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use evercache::config::Config;
use evercache::plugin::tooling;
use evercache::read::resync_all::ResyncAllOptions;
use evercache::runtime::Runtime;
use evercache::source::forward::{DebeziumStreamWriter, forward};
use evercache::source::{SourceConfig, read_dead_letters, replay_dead_letter};
use tokio_util::sync::CancellationToken;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "evercache", version, about = "Keeps Redis caches correct from the database's change log")]
struct Cli {
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum CaptureTarget {
    RedisStream,
}

#[derive(Subcommand)]
enum Command {
    /// Run every pipeline until SIGINT or SIGTERM, then drain and exit.
    Run {
        /// The runtime file, e.g. evercache.toml.
        #[arg(long, short, env = "EVERCACHE_CONFIG")]
        config: PathBuf,
    },
    /// Capture a Postgres or MySQL source's changes into Redis Streams in Debezium
    /// Server's format (compact layout, `<prefix>.<schema>.<table>`), for other consumers.
    Capture {
        /// The runtime file naming the `type = "postgres"` or `type = "mysql"` source.
        #[arg(long, short, env = "EVERCACHE_CONFIG")]
        config: PathBuf,
        /// Which source, when the file has several.
        #[arg(long)]
        source: Option<String>,
        /// Where to write; only `redis-stream` for now.
        #[arg(long, value_enum, default_value_t = CaptureTarget::RedisStream)]
        to: CaptureTarget,
        /// Redis to write the streams to.
        #[arg(long, default_value = "redis://127.0.0.1:6379")]
        redis_url: String,
        /// Wrap keys and values in `{"schema":…,"payload":…}` like `schemas.enable=true`.
        #[arg(long)]
        schemas: bool,
    },
    /// Inspect or re-inject dead letters.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Print each pipeline's lag, pending entries, dead letters, freshness and
    /// the caches' memory, read from Redis and Postgres (works while `run` is down).
    Status {
        /// The runtime file, e.g. evercache.toml.
        #[arg(long, short, env = "EVERCACHE_CONFIG")]
        config: PathBuf,
    },
    /// Recompute keys through a pipeline and repair their cached values, even
    /// wrong ones; a change written meanwhile is never overwritten.
    Resync {
        /// The runtime file, e.g. evercache.toml.
        #[arg(long, short, env = "EVERCACHE_CONFIG")]
        config: PathBuf,
        /// The pipeline whose plugin recomputes the keys.
        #[arg(long)]
        pipeline: String,
        /// The cache keys to repair.
        #[arg(long, num_args = 1.., required_unless_present = "all", conflicts_with = "all")]
        keys: Vec<String>,
        /// Every key of the pipeline's tables: reads each table page by page and
        /// asks the plugin's `keys` about every row. Progress is saved after
        /// every page; run the same command again to go on after an interruption.
        #[arg(long)]
        all: bool,
        /// With --all: rows read per page.
        #[arg(long, default_value_t = 1000, requires = "all")]
        page_size: usize,
        /// With --all: start over instead of going on from saved progress.
        #[arg(long, requires = "all")]
        restart: bool,
    },
    /// Validate the configuration and load and init every plugin, then exit.
    Check {
        /// The runtime file, e.g. evercache.toml.
        #[arg(long, short, env = "EVERCACHE_CONFIG")]
        config: PathBuf,
    },
    /// Write, build and try plugins.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Scaffold a plugin crate (Cargo.toml, src/lib.rs, a fixture events file, a test).
    New {
        /// Crate name, e.g. product-cache.
        name: String,
        /// Where to create it (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The evercache-plugin-sdk directory (default: the one this binary was built from).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Build a plugin crate for wasm32-wasip2 and copy the component into the plugins directory.
    Build {
        /// The plugin crate's directory.
        #[arg(default_value = ".")]
        path: PathBuf,
        /// The plugins directory (default: the runtime file's plugins_dir with --config, else ./plugins).
        #[arg(long)]
        out: Option<PathBuf>,
        /// A runtime file whose plugins_dir receives the component.
        #[arg(long, short, env = "EVERCACHE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Run init, keys and recompute for every event of a file against a real
    /// database (no Redis) and print the keys and outcomes as JSON lines.
    Test {
        /// The .wasm component.
        plugin: PathBuf,
        /// Debezium change events, one JSON envelope per line.
        #[arg(long)]
        events: PathBuf,
        /// Postgres URL the plugin's queries run on.
        #[arg(long)]
        database: String,
        /// A `[config]` entry handed to init, KEY=VALUE (repeatable).
        #[arg(long = "set", value_parser = parse_pair)]
        set: Vec<(String, String)>,
        /// A pipeline file whose `[config]` and `call_timeout` to use.
        #[arg(long)]
        pipeline: Option<PathBuf>,
    },
}

fn parse_pair(text: &str) -> Result<(String, String), String> {
    text.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(|| format!("`{text}` is not KEY=VALUE"))
}

#[derive(Subcommand)]
enum DlqAction {
    /// Print dead letters as JSON lines: origin, pipeline, attempts, error and the original fields.
    List {
        /// The runtime file, e.g. evercache.toml.
        #[arg(long, short, env = "EVERCACHE_CONFIG")]
        config: PathBuf,
        /// Only this `[sources.<name>]`.
        #[arg(long)]
        source: Option<String>,
        /// Most letters printed per dead-letter stream.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Re-inject dead letters into the stream they came from (after a fix) and
    /// remove them from the dead-letter stream. Redis Streams sources only.
    Replay {
        /// The runtime file, e.g. evercache.toml.
        #[arg(long, short, env = "EVERCACHE_CONFIG")]
        config: PathBuf,
        /// Only this `[sources.<name>]`.
        #[arg(long)]
        source: Option<String>,
        /// Dead-letter entry ids to replay; all when none are given.
        ids: Vec<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    evercache::tls::init();
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Check { config } => {
            let config = Config::load(&config)?;
            let runtime = Runtime::build(config.clone()).await.context("check failed")?;
            check_mappers(&config).await?;
            let mut plugins: Vec<String> = runtime.plugins().values().map(|p| p.label()).collect();
            plugins.sort();
            println!("ok: {} plugin(s) loaded: {}", plugins.len(), plugins.join(", "));
            println!(
                "ok: {} pipeline(s) initialised: {}",
                runtime.pipeline_names().len(),
                runtime.pipeline_names().join(", ")
            );
            Ok(())
        }
        Command::Resync { config, pipeline, keys, all, page_size, restart } => {
            let config = Config::load(&config)?;
            let runtime = Runtime::build(config).await.context("resync failed")?;
            let found = runtime.pipeline(&pipeline);
            let running = found
                .with_context(|| format!("no pipeline '{pipeline}'; known: {}", runtime.pipeline_names().join(", ")))?;
            if all {
                return resync_all(&running, ResyncAllOptions { page_size, restart }).await;
            }
            let report = evercache::read::resync::resync_keys(&running, &keys, |done, so_far| {
                eprintln!(
                    "resync: {done}/{} keys, {} stored, {} deleted",
                    keys.len(),
                    so_far.written.applied,
                    so_far.written.deleted
                );
            })
            .await?;
            println!(
                "resync: {} key(s) through '{pipeline}': {} stored, {} deleted, {} left to a change written meanwhile, {} kept by the plugin",
                keys.len(),
                report.written.applied,
                report.written.deleted,
                report.written.stale,
                report.kept
            );
            Ok(())
        }
        Command::Capture { config, source, to: CaptureTarget::RedisStream, redis_url, schemas } => {
            let config = Config::load(&config)?;
            let (name, capture) = config
                .runtime
                .sources
                .iter()
                .filter(|(name, _)| source.as_ref().is_none_or(|s| s == *name))
                .find(|(_, s)| matches!(s, SourceConfig::Postgres(_) | SourceConfig::MySql(_)))
                .map(|(name, s)| (name.clone(), s.clone()))
                .context("no `type = \"postgres\"` or `type = \"mysql\"` source (with that name) in the config")?;
            let shutdown = CancellationToken::new();
            watch_signals(shutdown.clone(), "draining in-flight batches");
            let mut capture = capture.build(&name).await?;
            let mut writer = DebeziumStreamWriter::connect(&redis_url, schemas).await.context("connecting to Redis")?;
            let written = forward(&mut capture, &mut writer, &shutdown).await;
            tracing::info!(source = %name, written, "capture stopped");
            Ok(())
        }
        Command::Dlq { action } => dlq(action).await,
        Command::Status { config } => {
            let config = Config::load(&config)?;
            print!("{}", evercache::status::report(&config).await?);
            Ok(())
        }
        Command::Plugin { command } => plugin_command(command).await,
        Command::Run { config } => {
            let config = Config::load(&config)?;
            let shutdown = CancellationToken::new();
            watch_signals(shutdown.clone(), "draining in-flight batches");
            let runtime = tokio::select! {
                built = Runtime::build(config) => built.context("startup failed")?,
                _ = shutdown.cancelled() => {
                    tracing::info!("stopped during startup");
                    return Ok(());
                }
            };
            runtime.run(shutdown).await?;
            tracing::info!("stopped");
            Ok(())
        }
    }
}

async fn dlq(action: DlqAction) -> anyhow::Result<()> {
    let (config, only, limit, ids, replay) = match action {
        DlqAction::List { config, source, limit } => (config, source, limit, Vec::new(), false),
        DlqAction::Replay { config, source, ids } => (config, source, usize::MAX, ids, true),
    };
    let config = Config::load(&config)?;
    let mut replayed = 0;
    for (name, source) in &config.runtime.sources {
        if only.as_ref().is_some_and(|s| s != name) {
            continue;
        }
        let (target, streams) =
            source.dead_letter_streams(name).map_err(anyhow::Error::msg).with_context(|| format!("source '{name}'"))?;
        if replay && !matches!(source, SourceConfig::RedisStream(_)) {
            anyhow::bail!(
                "source '{name}': only Redis Streams dead letters can be replayed (a capture cannot re-read its log); fix the cause and touch the rows, or `dlq list` them"
            );
        }
        let mut conn = target
            .connect(std::time::Duration::from_secs(10))
            .await
            .with_context(|| format!("source '{name}': connecting to Redis"))?;
        for dlq in streams {
            let (mut after, mut listed) = (None::<String>, 0);
            while listed < limit {
                let page = read_dead_letters(&mut conn, &dlq, after.as_deref(), 500.min(limit - listed))
                    .await
                    .with_context(|| format!("reading {dlq}"))?;
                let Some(last) = page.last() else { break };
                after = Some(last.id.clone());
                listed += page.len();
                for letter in page {
                    if !replay {
                        println!("{}", serde_json::to_string(&letter)?);
                    } else if ids.is_empty() || ids.contains(&letter.id) {
                        let id = replay_dead_letter(&mut conn, &letter)
                            .await
                            .with_context(|| format!("replaying {} from {dlq}", letter.id))?;
                        println!("replayed {dlq} {} -> {} {id}", letter.id, letter.stream);
                        replayed += 1;
                    }
                }
            }
        }
    }
    if replay {
        println!("{replayed} dead letter(s) replayed");
    }
    Ok(())
}

async fn plugin_command(command: PluginCommand) -> anyhow::Result<()> {
    match command {
        PluginCommand::New { name, dir, sdk } => {
            let dir = tooling::scaffold(&tooling::ScaffoldOptions { name, dir, sdk })?;
            println!("created {}; next: cd {} && evercache plugin build", dir.display(), dir.display());
        }
        PluginCommand::Build { path, out, config } => {
            let out = match (out, config) {
                (Some(out), _) => out,
                (None, Some(config)) => Config::load(&config)?.runtime.plugins_dir,
                (None, None) => PathBuf::from("plugins"),
            };
            for component in tooling::build(&tooling::BuildOptions { path, out })? {
                println!("built {}", component.display());
            }
        }
        PluginCommand::Test { plugin, events, database, set, pipeline } => {
            let mut config = Vec::new();
            let mut sandbox = evercache::plugin::SandboxConfig::default();
            if let Some(file) = pipeline {
                let pipeline: evercache::pipeline::PipelineConfig = evercache::config::parse_file(&file)?;
                config = pipeline.plugin_config();
                sandbox.call_timeout = pipeline.call_timeout.unwrap_or(sandbox.call_timeout);
            }
            for (key, value) in set {
                config.retain(|(k, _)| *k != key);
                config.push((key, value));
            }
            let options = tooling::ExerciseOptions { plugin, events, database, config, sandbox };
            let failed = tooling::exercise(&options, &mut std::io::stdout().lock()).await?;
            if failed > 0 {
                anyhow::bail!("{failed} event(s) failed; see the \"error\" fields above");
            }
        }
    }
    Ok(())
}

/// Installs the SIGINT/SIGTERM handlers before returning, so a signal during
/// startup is not fatal: the first one cancels `shutdown` (drain), a second
/// one aborts at once.
fn watch_signals(shutdown: CancellationToken, draining: &'static str) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::spawn(async move {
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::info!("shutdown requested; {draining} (signal again to abort)");
        shutdown.cancel();
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::warn!("second signal; aborting without draining");
        std::process::exit(130);
    });
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only for a terminal: a log redirected to a file stays plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// `resync --all`, printing progress per page and a summary; failed rows or
/// keys make it exit non-zero after everything else is done.
async fn resync_all(pipeline: &evercache::pipeline::Pipeline, options: ResyncAllOptions) -> anyhow::Result<()> {
    let name = pipeline.name().to_owned();
    let started = std::time::Instant::now();
    let stop = CancellationToken::new();
    watch_signals(stop.clone(), "stopping after the page in hand, its progress saved");
    let done = evercache::read::resync_all::resync_all(pipeline, options, &stop, |state| {
        eprintln!(
            "resync{}: {} ({}/{}): {} rows, {} keys: {} stored, {} deleted, {} left to a change",
            if state.resumed { " (resumed)" } else { "" },
            state.current_table().unwrap_or("-"),
            state.table + 1,
            state.tables.len(),
            state.rows,
            state.keys,
            state.stored,
            state.deleted,
            state.left_to_changes
        );
    })
    .await
    .with_context(|| format!("resync --all of '{name}' stopped; its progress is saved: run it again to go on"))?;
    println!(
        "resync --all: '{name}'{}: {} rows of {} table(s), {} keys: {} stored, {} deleted, {} left to a change written meanwhile, {} kept by the plugin, {} rows and {} keys failed, in {:.1}s",
        if done.resumed { " (resumed)" } else { "" },
        done.rows,
        done.tables.len(),
        done.keys,
        done.stored,
        done.deleted,
        done.left_to_changes,
        done.kept,
        done.failed_rows,
        done.failed_keys,
        started.elapsed().as_secs_f64()
    );
    if done.failed_rows + done.failed_keys > 0 {
        anyhow::bail!("{} rows and {} keys failed (their errors are logged above)", done.failed_rows, done.failed_keys);
    }
    Ok(())
}

/// Checks every `[mapper]` against its table's real columns, naming the
/// file, line and field of a mistake.
async fn check_mappers(config: &Config) -> anyhow::Result<()> {
    for (name, pipeline) in &config.pipelines {
        let Some(mapper) = &pipeline.mapper else { continue };
        let database =
            match pipeline.database.as_deref().and_then(|db| config.runtime.databases.get(db).map(|c| (db, c))) {
                Some((db, database)) => Some(database.build(db)?),
                None => None,
            };
        let table = pipeline.tables.first().map(String::as_str).unwrap_or_default();
        let timeout = pipeline.call_timeout.unwrap_or(config.runtime.sandbox.call_timeout);
        let mapper_check = evercache::plugin::mapper::RowMapper::new(mapper, table, database, timeout)
            .map_err(|message| anyhow::anyhow!("pipeline '{name}': {message}"))?;
        if let Err((field, message)) = mapper_check.check().await {
            let path = config.runtime.pipelines_dir.join(format!("{name}.toml"));
            let line =
                evercache::config::line_of(&path, "mapper", field).map(|n| format!("line {n}, ")).unwrap_or_default();
            anyhow::bail!("{}: {line}field `mapper.{field}`: {message}", path.display());
        }
    }
    Ok(())
}
