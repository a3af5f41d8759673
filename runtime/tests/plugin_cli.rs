//! `evercache plugin new|build|test` as an author runs them: scaffold a crate,
//! build it into a component, and run it against real Postgres without Redis.

use std::process::{Command, Output};

use serde_json::{Value, json};

use evercache_test_kit::{PG_URL, repo_root};

fn psql(sql: &str) {
    let out = Command::new("psql")
        .args([PG_URL, "-v", "ON_ERROR_STOP=1", "-qc", sql])
        .output()
        .expect("psql runs; start the services with: bash scripts/dev-services.sh");
    assert!(out.status.success(), "psql failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn mariadb(sql: &str) {
    let out = Command::new("mysql")
        .args(["-h", "127.0.0.1", "-P", "3306", "-u", "root", "-e", sql])
        .output()
        .expect("the mysql client runs; start the services with: bash scripts/dev-services.sh");
    assert!(out.status.success(), "mysql failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn evercache(args: &[&str]) -> Output {
    // The example plugins' target dir: with their lock file the scaffold reuses
    // their compiled dependencies instead of building its own.
    Command::new(env!("CARGO_BIN_EXE_evercache"))
        .args(args)
        .env("CARGO_TARGET_DIR", repo_root().join("target"))
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn new_build_and_test_a_plugin() {
    let schema = format!("cli_plugin_{}", std::process::id());
    let dir = std::env::temp_dir().join("evercache-cli-tests").join(&schema);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let krate = dir.join("demo-cache");
    let plugins = dir.join("plugins");
    let (krate_arg, plugins_arg) = (krate.to_str().unwrap(), plugins.to_str().unwrap());

    let out = evercache(&["plugin", "new", "demo-cache", "--dir", krate_arg]);
    assert!(out.status.success(), "plugin new: {}", text(&out.stderr));
    for file in ["Cargo.toml", "src/lib.rs", "fixtures/events.jsonl", "README.md"] {
        assert!(krate.join(file).exists(), "scaffold has {file}");
    }

    std::fs::copy(repo_root().join("plugins/Cargo.lock"), krate.join("Cargo.lock")).unwrap();
    let out = evercache(&["plugin", "build", krate_arg, "--out", plugins_arg]);
    // Not an example plugin: keep it out of what build-plugins.sh copies to target/plugins.
    let _ = std::fs::remove_file(repo_root().join("target/wasm32-wasip2/release/demo_cache.wasm"));
    assert!(out.status.success(), "plugin build: {}", text(&out.stderr));
    let wasm = plugins.join("demo_cache.wasm");
    assert!(wasm.exists(), "component copied into the plugins directory: {}", text(&out.stdout));

    psql(&format!(
        "drop schema if exists {schema} cascade; create schema {schema};
         create table {schema}.item (id bigint primary key, name text);
         insert into {schema}.item values (1, 'first'), (2, 'second');"
    ));
    let events = krate.join("fixtures/events.jsonl");
    let args = |schema: &str| {
        vec![
            "plugin".to_owned(),
            "test".to_owned(),
            wasm.display().to_string(),
            "--events".to_owned(),
            events.display().to_string(),
            "--database".to_owned(),
            PG_URL.to_owned(),
            "--set".to_owned(),
            format!("schema={schema}"),
        ]
    };
    let ok = args(&schema);
    let out = evercache(&ok.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "plugin test: {}", text(&out.stderr));
    let lines: Vec<Value> = text(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3, "one report per event: {lines:?}");
    assert_eq!(lines[0]["keys"], json!(["item:1"]));
    assert_eq!(lines[0]["outcomes"][0]["entry"], json!({"json": {"id": 1, "name": "first"}}));
    assert_eq!(lines[2]["op"], "delete");
    assert_eq!(lines[2]["outcomes"][0]["outcome"], "delete", "row 3 is not in the table");

    let missing = args(&format!("{schema}_missing"));
    let out = evercache(&missing.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!out.status.success(), "failing events fail the command");
    let first: Value = serde_json::from_str(text(&out.stdout).lines().next().unwrap()).unwrap();
    let error = first["error"].as_str().unwrap();
    assert!(error.starts_with("plugin demo_cache@"), "names the plugin: {error}");
    assert!(error.contains("`recompute` returned an error"), "names the call: {error}");
    assert!(error.contains("does not exist"), "carries the database's message: {error}");
    psql(&format!("drop schema {schema} cascade"));

    // The same plugin on MariaDB, with `?` placeholders (`dialect=mysql`).
    mariadb(&format!(
        "drop database if exists {schema}; create database {schema};
         create table {schema}.item (id bigint primary key, name text);
         insert into {schema}.item values (1, 'first'), (2, 'second');"
    ));
    let mut on_mariadb = args(&schema);
    on_mariadb[6] = "mysql://root@127.0.0.1:3306/test".to_owned();
    on_mariadb.extend(["--set".to_owned(), "dialect=mysql".to_owned()]);
    let out = evercache(&on_mariadb.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "plugin test on MariaDB: {}", text(&out.stderr));
    let lines: Vec<Value> = text(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0]["outcomes"][0]["entry"], json!({"json": {"id": 1, "name": "first"}}));
    assert_eq!(lines[2]["outcomes"][0]["outcome"], "delete", "row 3 is not in the table");
    mariadb(&format!("drop database {schema}"));
}
