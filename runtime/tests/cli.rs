//! The `evercache` binary as users run it: `check` on good and bad files, and
//! `run` draining its in-flight batch and exiting 0 on SIGTERM.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use evercache_test_kit::{PG_URL, REDIS_URL, RuntimeToml, drop_released_slot};

fn psql(sql: &str) {
    let out = Command::new("psql")
        .args([PG_URL, "-v", "ON_ERROR_STOP=1", "-qc", sql])
        .output()
        .expect("psql runs; start the services with: bash scripts/dev-services.sh");
    assert!(out.status.success(), "psql failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Writes a runtime file and one testkit pipeline for schema/stream `name`.
fn write_config(name: &str, pipeline_extra: &str) -> PathBuf {
    let dir = std::env::temp_dir().join("evercache-cli-tests").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("pipelines")).unwrap();
    let runtime = RuntimeToml::new()
        .database("db", PG_URL)
        .cache("main", REDIS_URL.as_str())
        .redis_stream("events", REDIS_URL.as_str(), &[format!("{name}.stream")], name)
        .line("batch_size = 50")
        .line("max_batch_entries = 50  # no read-ahead past one batch: SIGTERM lands with entries still unread")
        .build();
    std::fs::write(dir.join("evercache.toml"), runtime).unwrap();
    let pipeline = format!(
        r#"source = "events"
database = "db"
cache = "main"
plugin = "testkit"
tables = ["{name}.item"]
{pipeline_extra}
[config]
schema = "{name}"
key_prefix = "{name}:item"
"#
    );
    std::fs::write(dir.join("pipelines/items.toml"), pipeline).unwrap();
    dir.join("evercache.toml")
}

/// Kills a spawned runtime if the test fails before it stops it.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = Command::new("kill").args(["-KILL", &self.0.to_string()]).status();
        }
    }
}

fn evercache(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_evercache")).args(args).output().unwrap()
}

#[test]
fn check_loads_and_inits_plugins() {
    let name = format!("cli_check_{}", std::process::id());
    let config = write_config(&name, "");
    let out = evercache(&["check", "--config", config.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("testkit@"), "{stdout}");
    assert!(stdout.contains("1 pipeline(s) initialised: items"), "{stdout}");
}

fn redis_cli(args: &[&str]) -> String {
    let out = Command::new("redis-cli").args(["-u", REDIS_URL.as_str()]).args(args).output().unwrap();
    assert!(out.status.success(), "redis-cli {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn resync_repairs_wrong_values_in_place_and_keeps_their_version() {
    let name = format!("cli_resync_{}", std::process::id());
    psql(&format!(
        "drop schema if exists {name} cascade; create schema {name};
         create table {name}.item (id bigint primary key, name text, version bigint);
         insert into {name}.item values (1, 'row', 7)"
    ));
    let config = write_config(&name, "");
    let (right, gone) = (format!("{name}:item:1"), format!("{name}:item:2"));
    // Wrong values at pg:5: a bug in an earlier plugin, or a manual SET.
    for key in [&right, &gone] {
        redis_cli(&["SET", key, "wrong"]);
        redis_cli(&["HSET", &format!("{{{key}}}:meta"), "pos", "pg:5", "deleted", "0", "writes", "1"]);
    }
    let out =
        evercache(&["resync", "--config", config.to_str().unwrap(), "--pipeline", "items", "--keys", &right, &gone]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("2 key(s) through 'items': 1 stored, 1 deleted, 0 left to a change"), "{stdout}");
    assert_eq!(redis_cli(&["GET", &right]), r#"{"id":1,"name":"row","version":7}"#);
    assert_eq!(redis_cli(&["HGET", &format!("{{{right}}}:meta"), "pos"]), "pg:5", "the version is kept");
    assert_eq!(redis_cli(&["HGET", &format!("{{{right}}}:meta"), "writes"]), "2");
    assert_eq!(redis_cli(&["EXISTS", &gone]), "0");
    assert_eq!(redis_cli(&["HGET", &format!("{{{gone}}}:meta"), "deleted"]), "1");

    let out = evercache(&["resync", "--config", config.to_str().unwrap(), "--pipeline", "nope", "--keys", &right]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("no pipeline 'nope'; known: items"), "{stderr}");

    // --all finds the keys by reading the table; key 4 has no value yet, key 5 a wrong one.
    psql(&format!("insert into {name}.item select g, 'row', 1 from generate_series(3, 5) g"));
    redis_cli(&["SET", &format!("{name}:item:5"), "wrong"]);
    let out = evercache(&[
        "resync",
        "--config",
        config.to_str().unwrap(),
        "--pipeline",
        "items",
        "--all",
        "--page-size",
        "2",
    ]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("4 rows of 1 table(s), 4 keys: 4 stored, 0 deleted"), "{stdout}");
    assert!(stderr.contains(&format!("resync: {name}.item (1/1): 2 rows, 2 keys")), "progress per page: {stderr}");
    for id in [4, 5] {
        assert_eq!(
            redis_cli(&["GET", &format!("{name}:item:{id}")]),
            format!(r#"{{"id":{id},"name":"row","version":1}}"#)
        );
    }
    assert_eq!(redis_cli(&["EXISTS", "evercache:resync:items"]), "0", "no progress is left behind");

    // One --all per pipeline at a time: a held lease refuses a second run.
    let lease = "{evercache:resync:items}:lease";
    redis_cli(&["SET", lease, "host-b, pid 7, started 2026-12-04T10:00:00Z", "PX", "60000"]);
    let all = ["resync", "--config", config.to_str().unwrap(), "--pipeline", "items", "--all", "--page-size", "1"];
    let out = evercache(&all);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "another `resync --all` of pipeline 'items' is running (host-b, pid 7, started 2026-12-04T10:00:00Z)"
        ),
        "{stderr}"
    );
    redis_cli(&["DEL", lease]);

    // SIGINT stops it after the page in hand: progress kept, lease let go.
    // The table then holds rows 1 and 3..=20000.
    psql(&format!("insert into {name}.item select g, 'row', 1 from generate_series(6, 20000) g"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_evercache")).args(all).stderr(Stdio::piped()).spawn().unwrap();
    let _guard = KillOnDrop(child.id());
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("resync: ") {
        line.clear();
        assert!(std::io::BufRead::read_line(&mut stderr, &mut line).unwrap() > 0, "no progress line");
    }
    Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert!(!child.wait().unwrap().success(), "{rest}");
    assert!(rest.contains("stopped; its progress is saved: run it again to go on"), "{rest}");
    assert!(rest.contains("stopped on request"), "{rest}");
    assert_eq!(redis_cli(&["EXISTS", lease]), "0", "the lease is let go");
    assert_eq!(redis_cli(&["EXISTS", "evercache:resync:items"]), "1", "the progress is kept");
    let out = evercache(&["resync", "--config", config.to_str().unwrap(), "--pipeline", "items", "--all"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("'items' (resumed): 19999 rows"), "{stdout}");
    redis_cli(&[
        "EVAL",
        &format!("for _, k in ipairs(redis.call('KEYS', '*{name}:item:*')) do redis.call('DEL', k) end"),
        "0",
    ]);
    psql(&format!("drop schema {name} cascade"));
}

#[test]
fn check_validates_a_mapper_against_the_tables_real_columns() {
    let name = format!("cli_mapper_{}", std::process::id());
    psql(&format!(
        "drop schema if exists {name} cascade; create schema {name};
         create table {name}.users (id bigint primary key, name text, email text)"
    ));
    let config = write_config(&name, "");
    let pipeline = |columns: &str| {
        format!(
            "source = \"events\"\ndatabase = \"db\"\ncache = \"main\"\ntables = [\"{name}.users\"]\n\n[mapper]\n\
             key = \"{name}:user:{{id}}\"\ntype = \"hash\"\ncolumns = {columns}\n"
        )
    };
    let file = config.parent().unwrap().join("pipelines/items.toml");
    std::fs::write(&file, pipeline(r#"["id", "nmae"]"#)).unwrap();
    let out = evercache(&["check", "--config", config.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!(
            "pipelines/items.toml: line 9, field `mapper.columns`: table {name}.users has no column `nmae`; it has: id, name, email"
        )),
        "{stderr}"
    );
    std::fs::write(&file, pipeline(r#"["id", "name"]"#)).unwrap();
    let out = evercache(&["check", "--config", config.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    psql(&format!("drop schema {name} cascade"));
}

#[test]
fn check_names_the_file_line_and_field_of_a_mistake() {
    let name = format!("cli_bad_{}", std::process::id());
    let config = write_config(&name, "on_chnage = \"invalidate\"");
    let out = evercache(&["check", "--config", config.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("pipelines/items.toml"), "{stderr}");
    assert!(stderr.contains("line 6"), "{stderr}");
    assert!(stderr.contains("unknown field `on_chnage`"), "{stderr}");
}

#[test]
fn run_drains_on_sigterm_and_resumes_on_restart() {
    let name = format!("cli_run_{}", std::process::id());
    let stream = format!("{name}.stream");
    psql(&format!(
        "drop schema if exists {name} cascade; create schema {name};
         create table {name}.item (id bigint primary key, name text, version bigint);
         insert into {name}.item select g, 'n' || g, 1 from generate_series(1, 500) g;"
    ));
    let redis = redis::Client::open(REDIS_URL.as_str()).unwrap();
    let mut conn = redis.get_connection().unwrap();
    let _: () = redis::cmd("DEL").arg(&stream).query(&mut conn).unwrap();
    for id in 1..=500u64 {
        let value = format!(
            r#"{{"before":null,"after":{{"id":{id}}},"source":{{"connector":"postgresql","name":"t","ts_ms":1700000000000,"db":"test","schema":"{name}","table":"item","sequence":"[\"{c}\",\"{l}\"]","lsn":{l}}},"op":"c","ts_ms":1700000000000}}"#,
            c = 1000 + id,
            l = 1000 + id
        );
        let _: String = redis::cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg(format!(r#"{{"id":{id}}}"#))
            .arg(value)
            .query(&mut conn)
            .unwrap();
    }
    let config = write_config(&name, "");
    let child = Command::new(env!("CARGO_BIN_EXE_evercache"))
        .args(["run", "--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _guard = KillOnDrop(child.id());
    let first_key = format!("{name}:item:1");
    let start = Instant::now();
    while redis::cmd("EXISTS").arg(&first_key).query::<i64>(&mut conn).unwrap() == 0 {
        assert!(start.elapsed() < Duration::from_secs(30), "runtime never wrote {first_key}");
        std::thread::sleep(Duration::from_millis(5));
    }
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "exit 0 after draining: {}", String::from_utf8_lossy(&output.stderr));
    let pending: Vec<redis::Value> = redis::cmd("XPENDING").arg(&stream).arg("evercache").query(&mut conn).unwrap();
    assert_eq!(pending.first(), Some(&redis::Value::Int(0)), "every delivered entry was acked before exit");

    // Whatever was not read yet is picked up by the next run.
    let mut child = Command::new(env!("CARGO_BIN_EXE_evercache"))
        .args(["run", "--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard2 = KillOnDrop(child.id());
    let start = Instant::now();
    let pattern = format!("{name}:item:*");
    loop {
        let mut cursor = 0u64;
        let mut count = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query(&mut conn)
                .unwrap();
            count += keys.iter().filter(|k| !k.ends_with(":meta")).count();
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        if count == 500 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "only {count} of 500 keys after restart");
        std::thread::sleep(Duration::from_millis(50));
    }
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(child.wait().unwrap().success());
    psql(&format!("drop schema {name} cascade"));
}

#[test]
fn capture_to_redis_stream_runs_until_sigterm() {
    let name = format!("cli_capture_{}", std::process::id());
    psql(&format!(
        "select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name = '{name}';
         drop publication if exists {name}; drop schema if exists {name} cascade; create schema {name};
         create table {name}.item (id bigint primary key, name text, version bigint);"
    ));
    let config = write_config(&name, "");
    let source = format!(
        "[sources.pg]\ntype = \"postgres\"\nurl = \"{PG_URL}\"\ntables = [\"{name}.item\"]\npublication = \"{name}\"\nslot = \"{name}\"\nsnapshot = \"never\"\ntopic_prefix = \"{name}\"\ndead_letter_url = \"{REDIS_URL}\"\n"
    );
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&source);
    std::fs::write(&config, text).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_evercache"))
        .args([
            "capture",
            "--config",
            config.to_str().unwrap(),
            "--source",
            "pg",
            "--to",
            "redis-stream",
            "--redis-url",
            REDIS_URL.as_str(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _guard = KillOnDrop(child.id());
    let stream = format!("{name}.{name}.item");
    let mut conn = redis::Client::open(REDIS_URL.as_str()).unwrap().get_connection().unwrap();
    let _: () = redis::cmd("DEL").arg(&stream).query(&mut conn).unwrap();
    // The slot exists once the command runs; wait for it, then write.
    let start = Instant::now();
    loop {
        let out = Command::new("psql")
            .args([
                PG_URL,
                "-tAc",
                &format!("select count(*) from pg_replication_slots where slot_name = '{name}' and active"),
            ])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).trim() == "1" {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "capture never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    psql(&format!("insert into {name}.item values (1, 'one', 1)"));
    while redis::cmd("XLEN").arg(&stream).query::<u64>(&mut conn).unwrap() < 1 {
        assert!(start.elapsed() < Duration::from_secs(30), "nothing reached {stream}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(child.wait().unwrap().success(), "capture exits 0 on SIGTERM");
    let entries: redis::streams::StreamRangeReply =
        redis::cmd("XRANGE").arg(&stream).arg("-").arg("+").query(&mut conn).unwrap();
    let (field, value) = entries.ids[0]
        .map
        .iter()
        .next()
        .map(|(k, v)| (k.clone(), redis::from_redis_value::<String>(v.clone()).unwrap()))
        .unwrap();
    assert_eq!(field, r#"{"id":1}"#);
    let decoded = evercache::event::debezium::decode_stream_entry(&stream, &[(field, value)]).unwrap();
    assert!(
        matches!(decoded, evercache::event::debezium::Decoded::Change(ref e) if e.op == evercache::event::Op::Create),
        "{decoded:?}"
    );
    let _: () = redis::cmd("DEL").arg(&stream).query(&mut conn).unwrap();
    drop_released_slot(&name);
    psql(&format!("drop publication {name}; drop schema {name} cascade;"));
}

/// Runs `evercache run` until `done` holds, then stops it with SIGTERM.
fn run_until(config: &Path, what: &str, mut done: impl FnMut() -> bool) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_evercache"))
        .args(["run", "--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = KillOnDrop(child.id());
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(30), "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(child.wait().unwrap().success());
}

#[test]
fn dlq_list_shows_dead_letters_and_replay_reinjects_them_after_a_fix() {
    let name = format!("cli_dlq_{}", std::process::id());
    let stream = format!("{name}.stream");
    psql(&format!(
        "drop schema if exists {name} cascade; create schema {name};
         create table {name}.item (id bigint primary key, name text, version bigint);
         insert into {name}.item select g, 'n' || g, 1 from generate_series(1, 3) g;"
    ));
    let mut conn = redis::Client::open(REDIS_URL.as_str()).unwrap().get_connection().unwrap();
    let dlq = format!("{stream}:dlq");
    let _: () = redis::cmd("DEL").arg(&stream).arg(&dlq).query(&mut conn).unwrap();
    for id in 1..=3u64 {
        let value = format!(
            r#"{{"before":null,"after":{{"id":{id}}},"source":{{"connector":"postgresql","name":"t","ts_ms":1700000000000,"db":"test","schema":"{name}","table":"item","sequence":"[\"{id}\",\"{id}\"]","lsn":{id}}},"op":"c","ts_ms":1700000000000}}"#
        );
        let _: String = redis::cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg(format!(r#"{{"id":{id}}}"#))
            .arg(value)
            .query(&mut conn)
            .unwrap();
    }
    // A plugin bug for row 2, then the fix.
    let config = write_config(&name, "max_attempts = 1\nretry_backoff = \"10ms\"");
    let pipeline = config.with_file_name("pipelines/items.toml");
    let fixed = std::fs::read_to_string(&pipeline).unwrap();
    std::fs::write(&pipeline, format!("{fixed}fail_ids = \"2\"\n")).unwrap();
    run_until(&config, "row 2 dead-lettered, rows 1 and 3 written", || {
        let written: i64 =
            redis::cmd("EXISTS").arg(format!("{name}:item:1")).arg(format!("{name}:item:3")).query(&mut conn).unwrap();
        let letters: i64 = redis::cmd("XLEN").arg(&dlq).query(&mut conn).unwrap();
        written == 2 && letters == 1
    });

    let listed = evercache(&["dlq", "list", "--config", config.to_str().unwrap()]);
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&listed.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let letter = &lines[0];
    assert_eq!(letter["dlq"], dlq.as_str());
    assert_eq!(letter["stream"], stream.as_str());
    assert_eq!(letter["pipeline"], "items");
    assert!(letter["error"].as_str().unwrap().contains("configured failure for id 2"), "{letter}");
    assert_eq!(letter["fields"][0][0], r#"{"id":2}"#, "the original record's fields: {letter}");

    std::fs::write(&pipeline, fixed).unwrap();
    let replayed = evercache(&["dlq", "replay", "--config", config.to_str().unwrap()]);
    assert!(replayed.status.success(), "{}", String::from_utf8_lossy(&replayed.stderr));
    assert!(String::from_utf8_lossy(&replayed.stdout).contains("1 dead letter(s) replayed"));
    let letters: i64 = redis::cmd("XLEN").arg(&dlq).query(&mut conn).unwrap();
    assert_eq!(letters, 0, "replayed letters leave the dead-letter stream");
    run_until(&config, "the replayed row 2 is written", || {
        redis::cmd("EXISTS").arg(format!("{name}:item:2")).query::<i64>(&mut conn).unwrap() == 1
    });
    let _: () = redis::cmd("DEL").arg(&stream).arg(&dlq).query(&mut conn).unwrap();
    psql(&format!("drop schema {name} cascade"));
}
