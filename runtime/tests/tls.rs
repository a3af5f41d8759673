//! TLS for real: a throwaway CA made with `openssl`, a Redis serving only TLS
//! (Debian's build has `--tls-port`), and the local Postgres (`ssl = on`).
//! A cache trusts the CA it is given and refuses a server signed by another;
//! skipping verification takes an explicit `#insecure`; a Redis that asks for
//! client certificates gets one. Postgres host queries and the replication
//! connection speak TLS with `sslmode` and refuse a server their `sslrootcert`
//! did not sign; MariaDB host queries and the binlog capture do the same with
//! `ssl_ca` (a MariaDB of the test's own, serving the test CA's certificate).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use evercache::query::DatabaseConfig;
use evercache::sink::CacheConfig;
use evercache::source::SourceConfig;
use evercache_test_kit::certs::make_ca;
use evercache_test_kit::{PG_URL, free_port};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A Redis serving only TLS with `good`'s certificate; `clients`: "no" or "yes".
fn tls_redis(dir: &Path, clients: &str) -> (Server, u16) {
    let port = free_port();
    let child = Command::new("redis-server")
        .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--tls-cert-file", "good-server.pem", "--tls-key-file", "good-server.key"])
        .args(["--tls-ca-cert-file", "good-ca.pem", "--tls-auth-clients", clients])
        .args(["--save", "", "--appendonly", "no"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server runs");
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(10), "redis-server did not listen for TLS");
        std::thread::sleep(Duration::from_millis(50));
    }
    (Server(child), port)
}

fn cache(url: &str, tls: &str) -> CacheConfig {
    toml::from_str(&format!("url = \"{url}\"\nresponse_timeout = \"3s\"\n{tls}")).unwrap()
}

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join("evercache-tls").join(format!("{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    make_ca(&dir, "good");
    make_ca(&dir, "wrong");
    dir
}

#[tokio::test]
async fn redis_over_tls_trusts_its_ca_and_refuses_others() {
    let dir = scratch("redis");
    let file = |name: &str| dir.join(name).display().to_string();
    let (_server, port) = tls_redis(&dir, "no");
    let url = format!("rediss://127.0.0.1:{port}");
    let trusted = cache(&url, &format!("tls = {{ ca_file = \"{}\" }}", file("good-ca.pem")));
    let cache_ok = trusted.build("main").await.expect("a cache trusting the server's CA connects");
    cache_ok.check_writable(Duration::from_secs(3)).await.expect("and writes over TLS");

    let wrong = cache(&url, &format!("tls = {{ ca_file = \"{}\" }}", file("wrong-ca.pem")));
    let refused = wrong.build("main").await.err().expect("a server signed by another CA is refused").to_string();
    assert!(refused.to_lowercase().contains("certificate") || refused.contains("UnknownIssuer"), "{refused}");
    let system_roots = cache(&url, "").build("main").await;
    assert!(system_roots.is_err(), "the system's roots do not know the test CA");
    let insecure = cache(&format!("{url}/#insecure"), "").build("main").await;
    assert!(insecure.is_ok(), "verification is skipped only when asked: {:?}", insecure.err());

    let (_server, port) = tls_redis(&dir, "yes");
    let url = format!("rediss://127.0.0.1:{port}");
    let ca = format!("ca_file = \"{}\"", file("good-ca.pem"));
    let without = cache(&url, &format!("tls = {{ {ca} }}")).build("main").await;
    assert!(without.is_err(), "a Redis that asks for a client certificate refuses a client without one");
    let with = format!(
        "tls = {{ {ca}, client_cert = \"{}\", client_key = \"{}\" }}",
        file("good-client.pem"),
        file("good-client.key")
    );
    cache(&url, &with).build("main").await.expect("a client certificate signed by the CA is accepted");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The rows a host query through `url` returns, as their `Debug` text.
async fn query_text(url: &str, sql: &str) -> Result<String, String> {
    let config: DatabaseConfig = toml::from_str(&format!("url = \"{url}\"")).unwrap();
    let runner = config.build("db").map_err(|e| e.to_string())?;
    let rows = runner.query(sql, &[]).await.map_err(|e| e.to_string())?;
    Ok(format!("{rows:?}"))
}

/// Whether a host query through `url` runs on a TLS connection.
async fn ssl_in_use(url: &str) -> Result<bool, String> {
    let rows = query_text(url, "select ssl from pg_stat_ssl where pid = pg_backend_pid()").await?;
    Ok(rows.contains("Boolean(true)"))
}

#[tokio::test]
async fn postgres_queries_and_replication_speak_tls_and_check_the_server() {
    let dir = scratch("postgres");
    let require = format!("{PG_URL}?sslmode=require");
    assert_eq!(ssl_in_use(&require).await, Ok(true), "sslmode=require encrypts host queries");
    assert_eq!(ssl_in_use(&format!("{PG_URL}?sslmode=disable")).await, Ok(false));
    let wrong_ca = format!("{PG_URL}?sslmode=verify-full&sslrootcert={}", dir.join("wrong-ca.pem").display());
    let refused = ssl_in_use(&wrong_ca).await.expect_err("a server the root certificate did not sign is refused");
    assert!(refused.to_lowercase().contains("certificate") || refused.contains("UnknownIssuer"), "{refused}");

    // The replication connection, through the capture's own connect path.
    let name = format!("tls_{}", std::process::id());
    let capture = |url: &str| -> SourceConfig {
        toml::from_str(&format!(
            "type = \"postgres\"\nurl = \"{url}\"\ntables = [\"public.evercache_tls_probe\"]\npublication = \"{name}\"\n\
             slot = \"{name}\"\nsnapshot = \"never\"\ndead_letter_url = \"redis://127.0.0.1:6379\""
        ))
        .unwrap()
    };
    let setup = std::process::Command::new("psql")
        .args([PG_URL, "-qc", "create table if not exists public.evercache_tls_probe (id int primary key)"])
        .status()
        .unwrap();
    assert!(setup.success());
    let by_name = wrong_ca.replacen("@127.0.0.1:", "@localhost:", 1) + "&hostaddr=127.0.0.1";
    let refused = capture(&by_name).build("tls").await.err().expect("the replication connection checks the CA");
    let refused = refused.to_string();
    assert!(refused.contains("certificate") && !refused.contains("IP address"), "{refused}");
    let source = capture(&require).build("tls").await.expect("the replication connection speaks TLS");
    let out = std::process::Command::new("psql")
        .args([
            PG_URL,
            "-tAc",
            "select s.ssl from pg_stat_replication r join pg_stat_ssl s using (pid) \
             where r.application_name = 'evercache-tls'",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "t", "the walsender's connection is encrypted");
    let mut source = source;
    source.close().await;
    evercache_test_kit::drop_released_slot(&name);
    let _ = Command::new("psql").args([PG_URL, "-qc", &format!("drop publication if exists {name}")]).status();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A host query's `Ssl_cipher` through `url` (empty: not encrypted).
async fn mysql_cipher(url: &str) -> Result<String, String> {
    query_text(url, "select variable_value from information_schema.session_status where variable_name = 'SSL_CIPHER'")
        .await
}

#[tokio::test]
async fn mariadb_queries_and_the_binlog_capture_speak_tls_and_check_the_server() {
    let dir = scratch("mariadb");
    for file in ["good-server.key", "good-server.pem", "good-ca.pem"] {
        let _ = Command::new("chmod").args(["644", dir.join(file).to_str().unwrap()]).status();
    }
    let file = |name: &str| dir.join(name).display().to_string();
    let server = evercache_test_kit::mariadb_server::MariaDbServer::start_with(
        &dir,
        &[
            &format!("--ssl-cert={}", file("good-server.pem")),
            &format!("--ssl-key={}", file("good-server.key")),
            &format!("--ssl-ca={}", file("good-ca.pem")),
        ],
    );
    let trusted = format!("{}/mysql?ssl_ca={}", server.url(), file("good-ca.pem"));
    let cipher = mysql_cipher(&trusted).await.expect("a client trusting the server's CA connects");
    assert!(cipher.contains("Text(\"TLS_"), "a TLS 1.3 cipher: {cipher}");
    let plain = mysql_cipher(&format!("{}/mysql", server.url())).await.unwrap();
    assert!(plain.contains("Text(\"\")"), "no TLS unless asked: {plain}");
    let wrong = format!("{}/mysql?ssl_ca={}", server.url(), file("wrong-ca.pem"));
    let refused = mysql_cipher(&wrong).await.expect_err("a server the CA did not sign is refused");
    assert!(refused.to_lowercase().contains("certificate") || refused.contains("UnknownIssuer"), "{refused}");

    let capture = |url: &str| -> SourceConfig {
        toml::from_str(&format!(
            "type = \"mysql\"\nurl = \"{url}\"\ntables = [\"mysql.user\"]\nserver_id = 99\nsnapshot = \"never\"\n\
             position_key = \"evercache-tls-test:{}\"\ndead_letter_url = \"redis://127.0.0.1:6379\"",
            std::process::id()
        ))
        .unwrap()
    };
    let refused = capture(&wrong).build("tls").await.err().expect("the binlog capture checks the CA");
    assert!(refused.to_string().to_lowercase().contains("certificate"), "{refused}");
    capture(&trusted).build("tls").await.expect("the binlog capture connects over TLS");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn postgres_verify_full_accepts_a_server_its_ca_signed() {
    let dir = scratch("pgverify");
    let pg_dir = dir.join("pg");
    let (cert, key) = (pg_dir.join("good-server.pem"), pg_dir.join("good-server.key"));
    let options = [
        "-c ssl=on".to_owned(),
        format!("-c ssl_cert_file={}", cert.display()),
        format!("-c ssl_key_file={}", key.display()),
    ];
    let options: Vec<&str> = options.iter().map(String::as_str).collect();
    let cluster = evercache_test_kit::pg_cluster::PgCluster::start_with(
        &dir,
        &options,
        &[&dir.join("good-server.pem"), &dir.join("good-server.key")],
    );
    let verified = format!("{}?sslmode=verify-full&sslrootcert={}", cluster.url(), dir.join("good-ca.pem").display());
    assert_eq!(ssl_in_use(&verified).await, Ok(true), "verify-full against the CA that signed the server");

    // The replication connection verifies a host name, so the URL names the
    // certificate's `localhost` and connects to `hostaddr`, as libpq does.
    let by_name = verified.replacen("@127.0.0.1:", "@localhost:", 1) + "&hostaddr=127.0.0.1";
    assert_eq!(ssl_in_use(&by_name).await, Ok(true), "host queries take the same URL");
    let capture: SourceConfig = toml::from_str(&format!(
        "type = \"postgres\"\nurl = \"{by_name}\"\ntables = [\"public.probe\"]\npublication = \"tls_verify\"\n\
         slot = \"tls_verify\"\nsnapshot = \"never\"\ndead_letter_url = \"redis://127.0.0.1:6379\""
    ))
    .unwrap();
    let status =
        Command::new("psql").args([&cluster.url(), "-qc", "create table public.probe (id int primary key)"]).status();
    assert!(status.is_ok_and(|s| s.success()));
    let source = capture.build("tls").await.expect("the replication connection verifies the server and connects");
    let out = Command::new("psql")
        .args([
            &cluster.url(),
            "-tAc",
            "select s.ssl from pg_stat_replication r join pg_stat_ssl s using (pid) \
             where r.application_name = 'evercache-tls'",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "t", "the walsender's connection is encrypted");
    drop(source);
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}
