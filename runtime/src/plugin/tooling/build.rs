//! `evercache plugin build [PATH]`: builds a plugin crate for `wasm32-wasip2`
//! (installing the target when missing) and copies the component into the
//! plugins directory, atomically, so a watching runtime reloads it once.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

const TARGET: &str = "wasm32-wasip2";

/// What to build and where to put it.
pub struct BuildOptions {
    /// The plugin crate (or workspace) directory.
    pub path: PathBuf,
    /// The plugins directory the components are copied into.
    pub out: PathBuf,
}

/// Builds in release mode and returns the components copied into `out`.
pub fn build(options: &BuildOptions) -> Result<Vec<PathBuf>> {
    ensure_target()?;
    let manifest = options.path.join("Cargo.toml");
    if !manifest.exists() {
        bail!("no Cargo.toml in {}; pass the plugin crate's directory", options.path.display());
    }
    let output = Command::new("cargo")
        .args(["build", "--release", "--target", TARGET, "--message-format=json-render-diagnostics", "--manifest-path"])
        .arg(&manifest)
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo")?;
    if !output.status.success() {
        bail!("cargo build failed for {} (see the compiler output above)", manifest.display());
    }
    let mut wasm = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if message["reason"] != "compiler-artifact" {
            continue;
        }
        for file in message["filenames"].as_array().into_iter().flatten().filter_map(|f| f.as_str()) {
            if file.ends_with(".wasm") {
                wasm.push(PathBuf::from(file));
            }
        }
    }
    if wasm.is_empty() {
        bail!("cargo built no .wasm component; the crate needs `[lib] crate-type = [\"cdylib\"]`");
    }
    std::fs::create_dir_all(&options.out).with_context(|| format!("creating {}", options.out.display()))?;
    wasm.iter().map(|file| install(file, &options.out)).collect()
}

/// Copies next to the destination, then renames over it: readers never see half a file.
fn install(file: &Path, out: &Path) -> Result<PathBuf> {
    let name = file.file_name().context("artifact without a file name")?;
    let dest = out.join(name);
    if std::fs::read(&dest).ok() == Some(std::fs::read(file)?) {
        return Ok(dest);
    }
    let tmp = out.join(format!(".{}.tmp", name.to_string_lossy()));
    std::fs::copy(file, &tmp).with_context(|| format!("copying {} to {}", file.display(), tmp.display()))?;
    std::fs::rename(&tmp, &dest).with_context(|| format!("moving {} into place", dest.display()))?;
    Ok(dest)
}

fn ensure_target() -> Result<()> {
    let installed = Command::new("rustup").args(["target", "list", "--installed"]).output();
    match installed {
        Ok(out) if String::from_utf8_lossy(&out.stdout).lines().any(|l| l.trim() == TARGET) => Ok(()),
        Ok(_) => {
            eprintln!("installing the {TARGET} target (rustup target add {TARGET})");
            let status = Command::new("rustup").args(["target", "add", TARGET]).status().context("running rustup")?;
            if !status.success() {
                bail!("`rustup target add {TARGET}` failed");
            }
            Ok(())
        }
        // Without rustup the toolchain may still have the target; cargo will say if not.
        Err(_) => Ok(()),
    }
}
