//! The on-disk compile cache: a second load of the same component (a restart
//! or a reload of an unchanged file) deserializes instead of compiling, a
//! corrupt entry costs only a recompile, and an entry others could have
//! written is never loaded.

use anyhow::Result;
use evercache::plugin::{PluginEngine, PluginInstance, SandboxConfig, load_file};
use evercache_e2e::{init_logging, plugins_dir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_components_are_not_recompiled() -> Result<()> {
    init_logging();
    let dir = std::env::temp_dir().join(format!("evercache-compile-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let component = plugins_dir().join("testkit.wasm");
    let engine = PluginEngine::new(SandboxConfig::default())?.with_compile_cache(&dir);

    let first = load_file(&engine, &component).await?;
    assert!(!first.from_cache, "nothing cached yet");
    let entries: Vec<_> = std::fs::read_dir(&dir)?.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    assert_eq!(entries.len(), 1, "one artifact: {entries:?}");
    let name = entries[0].file_name().unwrap_or_default().to_string_lossy().into_owned();
    assert!(name.starts_with(&first.version) && name.ends_with(".cwasm"), "keyed by content hash: {name}");

    // A new engine with the same configuration, as after a restart.
    let engine = PluginEngine::new(SandboxConfig::default())?.with_compile_cache(&dir);
    let second = load_file(&engine, &component).await?;
    assert!(second.from_cache, "taken from the cache");
    assert_eq!(second.version, first.version);
    let config = vec![("key_prefix".to_owned(), "cache".to_owned())];
    let mut instance = PluginInstance::new(&engine, second, "cache-test", None, config);
    instance.init().await?;

    std::fs::write(&entries[0], b"not an artifact")?;
    let third = load_file(&engine, &component).await?;
    assert!(!third.from_cache, "a corrupt entry is recompiled");
    let fourth = load_file(&engine, &component).await?;
    assert!(fourth.from_cache, "and rewritten");

    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &std::path::Path| std::fs::metadata(path).map(|m| m.permissions().mode() & 0o777);
    assert_eq!(mode(&dir)?, 0o700, "the cache directory is private to the runtime's user");
    assert_eq!(mode(&entries[0])?, 0o600, "and so is each artifact");
    std::fs::set_permissions(&entries[0], std::fs::Permissions::from_mode(0o666))?;
    let fifth = load_file(&engine, &component).await?;
    assert!(!fifth.from_cache, "an artifact others may write is recompiled, never loaded");
    assert_eq!(mode(&entries[0])?, 0o600, "and replaced by a private one");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))?;
    let sixth = load_file(&engine, &component).await?;
    assert!(!sixth.from_cache, "nor from a directory others may write");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
