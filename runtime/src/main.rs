//! The `evercache` command line: `run` and `check`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use evercache::config::Config;
use evercache::runtime::Runtime;
use tokio_util::sync::CancellationToken;

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

#[derive(Subcommand)]
enum Command {
    /// Run every pipeline until SIGINT or SIGTERM, then drain and exit.
    Run {
        /// The runtime file, e.g. evercache.toml.
        #[arg(long, short, env = "EVERCACHE_CONFIG")]
        config: PathBuf,
    },
    /// Validate the configuration and load and init every plugin, then exit.
    Check {
        /// The runtime file, e.g. evercache.toml.
        #[arg(long, short, env = "EVERCACHE_CONFIG")]
        config: PathBuf,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Check { config } => {
            let config = Config::load(&config)?;
            let runtime = Runtime::build(config).await.context("check failed")?;
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
        Command::Run { config } => {
            let config = Config::load(&config)?;
            let runtime = Runtime::build(config).await.context("startup failed")?;
            let shutdown = CancellationToken::new();
            tokio::spawn(watch_signals(shutdown.clone()));
            runtime.run(shutdown).await?;
            tracing::info!("stopped");
            Ok(())
        }
    }
}

/// First SIGINT/SIGTERM drains; a second one aborts at once.
async fn watch_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::info!("shutdown requested; draining in-flight batches (signal again to abort)");
    shutdown.cancel();
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::warn!("second signal; aborting without draining");
    std::process::exit(130);
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
