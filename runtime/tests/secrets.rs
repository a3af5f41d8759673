//! Secrets stay out of the files and out of everything evercache shows:
//! `${NAME}` and `password_file` fill in the URLs' passwords, and none of them
//! appears in `check`, `run`'s logs (debug level, with a capture whose password
//! the server refuses, retried meanwhile), a failed start, `status`, `/metrics`,
//! `/ready`, `/health`, the status page or the configuration's `Debug` output.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use evercache::config::Config;
use evercache_test_kit::{PG_URL, REDIS_URL, RuntimeToml, free_port};

const PG_SECRET: &str = "pg-Secret-7731";
const STREAM_SECRET: &str = "stream-Secret-5519";
const MYSQL_SECRET: &str = "my-Secret-4242";
const CACHE_SECRET: &str = "cache-Secret-8080";
const KAFKA_SECRET: &str = "kafka-Secret-1234";
const SECRETS: [&str; 5] = [PG_SECRET, STREAM_SECRET, MYSQL_SECRET, CACHE_SECRET, KAFKA_SECRET];
/// A Redis ACL user of this test's, whose passwords are the stream's and the cache's secrets.
const USER: &str = "evercache_secrets_test";

/// Creates (or resets) the Redis user, so connections really authenticate with the secrets.
fn redis_user() {
    let client = redis::Client::open(REDIS_URL.as_str()).unwrap();
    let mut conn = client.get_connection().unwrap();
    redis::cmd("ACL")
        .arg("SETUSER")
        .arg(USER)
        .arg("reset")
        .arg("on")
        .arg(format!(">{STREAM_SECRET}"))
        .arg(format!(">{CACHE_SECRET}"))
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .exec(&mut conn)
        .unwrap();
}

fn assert_no_secret(what: &str, text: &str) {
    for secret in SECRETS {
        assert!(!text.contains(secret), "{what} shows the secret {secret}:\n{text}");
    }
}

fn evercache(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_evercache"));
    command
        .env("EC_TEST_PG_PASSWORD", PG_SECRET)
        .env("EC_TEST_STREAM_PASSWORD", STREAM_SECRET)
        .env("EC_TEST_CACHE_PASSWORD", CACHE_SECRET)
        .env("EC_TEST_KAFKA_PASSWORD", KAFKA_SECRET)
        .env("RUST_LOG", "debug")
        .current_dir(dir);
    command
}

fn pipeline(source: &str, name: &str) -> String {
    format!(
        "source = \"{source}\"\ndatabase = \"db\"\ncache = \"main\"\nplugin = \"testkit\"\ntables = [\"{name}.item\"]\n\
         [config]\nschema = \"{name}\"\nkey_prefix = \"{name}:item\"\n"
    )
}

/// A runtime file whose every password comes from the environment or a file;
/// with `binlog`, a MySQL capture whose password (from a file) is refused.
fn write_config(dir: &Path, cache_url: &str, http_port: u16, binlog: bool) -> PathBuf {
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::create_dir_all(dir.join("pipelines")).unwrap();
    std::fs::write(dir.join("mysql.secret"), format!("{MYSQL_SECRET}\n")).unwrap();
    let pg = PG_URL.replacen("postgres://postgres@", "postgres://postgres:${EC_TEST_PG_PASSWORD}@", 1);
    assert_ne!(pg, PG_URL, "PG_URL names the postgres user");
    let mut runtime = RuntimeToml::new()
        .http(http_port)
        .line("probe_interval = \"200ms\"\nstuck_after = \"1s\"")
        .database("db", &pg)
        .cache("main", cache_url)
        .redis_stream(
            "events",
            &format!("redis://{USER}:${{EC_TEST_STREAM_PASSWORD}}@127.0.0.1:6379"),
            &[format!("{name}.s")],
            &name,
        );
    if binlog {
        runtime = runtime
            .mysql_capture("binlog", &[format!("{name}.item")], 31_337, &name, REDIS_URL.as_str())
            .line("password_file = \"mysql.secret\"\nsnapshot = \"never\"");
        std::fs::write(dir.join("pipelines/captured.toml"), pipeline("binlog", &name)).unwrap();
    }
    if binlog && cfg!(feature = "kafka") {
        runtime = runtime
            .section("sources.kafka")
            .line(&format!("type = \"kafka\"\nbrokers = \"127.0.0.1:1\"\ntopics = [\"{name}.t\"]"))
            .line(
                "properties = { \"security.protocol\" = \"SASL_PLAINTEXT\", \"sasl.mechanism\" = \"SCRAM-SHA-512\", \"sasl.username\" = \"cdc\", \"sasl.password\" = \"${EC_TEST_KAFKA_PASSWORD}\", \"request.timeout.ms\" = \"1000\" }",
            );
    }
    std::fs::write(dir.join("evercache.toml"), runtime.build()).unwrap();
    std::fs::write(dir.join("pipelines/streamed.toml"), pipeline("events", &name)).unwrap();
    dir.join("evercache.toml")
}

fn http_get(port: u16, path: &str) -> String {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join("evercache-secrets").join(format!("{name}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn no_secret_is_shown_anywhere() {
    redis_user();
    let dir = scratch("secrets");
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    let port = free_port();
    let cache_url = format!("redis://{USER}:${{EC_TEST_CACHE_PASSWORD}}@127.0.0.1:6379");
    let config = write_config(&dir, &cache_url, port, true);

    // The passwords reach the URLs.
    for (name, value) in [
        ("EC_TEST_PG_PASSWORD", PG_SECRET),
        ("EC_TEST_STREAM_PASSWORD", STREAM_SECRET),
        ("EC_TEST_KAFKA_PASSWORD", KAFKA_SECRET),
        ("EC_TEST_CACHE_PASSWORD", CACHE_SECRET),
    ] {
        // SAFETY: set before any thread of this test reads the environment.
        unsafe { std::env::set_var(name, value) };
    }
    let loaded = Config::load(&config).unwrap();
    assert_eq!(loaded.runtime.databases["db"].url.password().as_deref(), Some(PG_SECRET));
    let evercache::source::SourceConfig::MySql(binlog) = &loaded.runtime.sources["binlog"] else { panic!() };
    assert_eq!(binlog.url.password().as_deref(), Some(MYSQL_SECRET));
    assert_eq!(loaded.runtime.caches["main"].url.password().as_deref(), Some(CACHE_SECRET));
    assert_no_secret("the configuration's Debug output", &format!("{loaded:?}"));

    let check = evercache(&dir).args(["check", "--config", config.to_str().unwrap()]).output().unwrap();
    assert_no_secret(
        "check",
        &format!("{}{}", String::from_utf8_lossy(&check.stdout), String::from_utf8_lossy(&check.stderr)),
    );

    let log = std::fs::File::create(dir.join("run.log")).unwrap();
    let mut run = evercache(&dir)
        .args(["run", "--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    // Until the source, authenticated with its password, has made its group.
    let client = redis::Client::open(REDIS_URL.as_str()).unwrap();
    let mut redis = client.get_connection().unwrap();
    let start = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let groups: redis::RedisResult<redis::Value> =
            redis::cmd("XINFO").arg("GROUPS").arg(format!("{name}.s")).query(&mut redis);
        if groups.is_ok_and(|g| format!("{g:?}").contains("evercache"))
            && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "the run did not start within 60s; see {}", dir.display());
    }
    // And until the capture, whose password the server refuses, is reported.
    let ready = loop {
        let ready = http_get(port, "/ready");
        if ready.contains("Access denied") {
            break ready;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "the refused capture is not reported: {ready}");
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_no_secret("/ready", &ready);
    for path in ["/metrics", "/health", "/", "/rows", "/api/status"] {
        assert_no_secret(path, &http_get(port, path));
    }
    let status = evercache(&dir).args(["status", "--config", config.to_str().unwrap()]).output().unwrap();
    assert_no_secret(
        "status",
        &format!("{}{}", String::from_utf8_lossy(&status.stdout), String::from_utf8_lossy(&status.stderr)),
    );
    let _ = Command::new("kill").args(["-TERM", &run.id().to_string()]).status();
    let _ = run.wait();
    let logs = std::fs::read_to_string(dir.join("run.log")).unwrap();
    assert!(logs.contains("DEBUG"), "the run logged at debug level");
    assert_no_secret("run's log", &logs);
    redis::cmd("DEL").arg(format!("{name}.s")).exec(&mut redis).unwrap();

    // A start that fails (a cache that cannot be reached) says what failed, without the password.
    let cache_url = "redis://:${EC_TEST_CACHE_PASSWORD}@127.0.0.1:1";
    let cache = write_config(&scratch("secrets_cache"), cache_url, free_port(), false);
    let mut run = evercache(cache.parent().unwrap());
    let failed = run.args(["run", "--config", cache.to_str().unwrap()]).output().unwrap();
    assert!(!failed.status.success());
    let output = format!("{}{}", String::from_utf8_lossy(&failed.stdout), String::from_utf8_lossy(&failed.stderr));
    assert!(output.contains("main"), "{output}");
    assert_no_secret("a failed start", &output);
    for config in [&config, &cache] {
        let _ = std::fs::remove_dir_all(config.parent().unwrap());
    }
}
