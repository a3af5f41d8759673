//! Getting a database ready for capture: `wal_level`, the publication, the
//! replication slot, and a replica identity check per table.

use pgwire_replication::{SslMode, TlsConfig};
use sqlx::{Connection, PgConnection, Row};

use super::PostgresCaptureConfig;
use crate::source::SourceError;

/// Connection parameters for the replication protocol, from the URL.
pub(super) struct Target {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub database: String,
    /// From `sslmode` (libpq's default, `prefer`), `sslrootcert`, `sslcert` and `sslkey`.
    pub tls: TlsConfig,
}

impl Target {
    /// Parses `postgres://user[:password]@host[:port]/database[?sslmode=…&sslrootcert=…&hostaddr=…]`.
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .ok_or("url must start with postgres://")?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let tls = tls_config(query)?;
        let (userinfo, hostpart) = rest.rsplit_once('@').ok_or("url needs a user: postgres://user@host/db")?;
        let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
        let (address, database) = hostpart.split_once('/').ok_or("url needs a database: postgres://user@host/db")?;
        let (host, port) = match address.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().map_err(|_| format!("bad port in url: {p}"))?),
            None => (address, 5432),
        };
        if user.is_empty() || host.is_empty() || database.is_empty() {
            return Err("url needs user, host and database: postgres://user@host:5432/db".to_owned());
        }
        let decode = |text: &str| percent_encoding::percent_decode_str(text).decode_utf8_lossy().into_owned();
        // libpq's `hostaddr`: connect there, and verify the certificate against the URL's host name.
        let mut tls = tls;
        let hostaddr = query.split('&').find_map(|pair| pair.strip_prefix("hostaddr=")).map(decode);
        let host = match hostaddr {
            Some(address) => {
                tls.sni_hostname = Some(host.to_owned());
                address
            }
            None => host.to_owned(),
        };
        Ok(Self { host, port, user: decode(user), password: decode(password), database: decode(database), tls })
    }
}

/// The replication connection's TLS from the URL's libpq parameters.
fn tls_config(query: &str) -> Result<TlsConfig, String> {
    let mut mode = SslMode::Prefer;
    let mut tls = TlsConfig::disabled();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_encoding::percent_decode_str(value).decode_utf8_lossy().into_owned();
        match key {
            "sslmode" => {
                mode = match value.as_str() {
                    "disable" => SslMode::Disable,
                    "allow" | "prefer" => SslMode::Prefer,
                    "require" => SslMode::Require,
                    "verify-ca" => SslMode::VerifyCa,
                    "verify-full" => SslMode::VerifyFull,
                    other => {
                        return Err(format!(
                            "sslmode {other:?} is not one of disable, prefer, require, verify-ca, verify-full"
                        ));
                    }
                }
            }
            "sslrootcert" => tls.ca_pem_path = Some(value.into()),
            "sslcert" => tls.client_cert_pem_path = Some(value.into()),
            "sslkey" => tls.client_key_pem_path = Some(value.into()),
            _ => {}
        }
    }
    tls.mode = mode;
    Ok(tls)
}

/// Checks and creates what capture needs but the slot; safe to run on every
/// start. Returns the slot's confirmed position, `None` when it is missing.
pub(super) async fn prepare(name: &str, config: &PostgresCaptureConfig) -> Result<Option<u64>, SourceError> {
    let bad = |message: String| SourceError::BadConfig { source_name: name.to_owned(), message };
    let failed = |operation: &'static str| {
        move |e: sqlx::Error| SourceError::Unavailable {
            source_name: name.to_owned(),
            operation,
            message: e.to_string(),
        }
    };
    for ident in [&config.publication, &config.slot] {
        if !ident.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') || ident.is_empty() {
            return Err(bad(format!("publication and slot names must match [a-z0-9_]+, got {ident:?}")));
        }
    }
    let tables = config
        .tables
        .iter()
        .map(|t| match t.split_once('.') {
            Some((s, n)) if !s.is_empty() && !n.is_empty() => Ok((s.to_owned(), n.to_owned())),
            _ => Err(bad(format!("table {t:?} is not \"schema.table\""))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut conn = PgConnection::connect(config.url.expose()).await.map_err(failed("connect"))?;

    let wal_level: String =
        sqlx::query_scalar("show wal_level").fetch_one(&mut conn).await.map_err(failed("show wal_level"))?;
    if wal_level != "logical" {
        return Err(bad(format!(
            "wal_level is '{wal_level}', capture needs 'logical': run `ALTER SYSTEM SET wal_level = logical` \
             and restart Postgres (scripts/dev-services.sh does both for a local cluster)"
        )));
    }

    let quoted: Vec<String> = tables.iter().map(|(s, t)| format!("\"{s}\".\"{t}\"")).collect();
    let exists: Option<i32> = sqlx::query_scalar("select 1 from pg_publication where pubname = $1")
        .bind(&config.publication)
        .fetch_optional(&mut conn)
        .await
        .map_err(failed("read publications"))?;
    if exists.is_none() {
        let sql = format!("create publication {} for table {}", config.publication, quoted.join(", "));
        sqlx::query(&sql).execute(&mut conn).await.map_err(failed("create publication"))?;
        tracing::info!(source = %name, publication = %config.publication, "publication created");
    } else {
        for ((schema, table), quoted) in tables.iter().zip(&quoted) {
            let member: Option<i32> = sqlx::query_scalar(
                "select 1 from pg_publication_tables where pubname = $1 and schemaname = $2 and tablename = $3",
            )
            .bind(&config.publication)
            .bind(schema)
            .bind(table)
            .fetch_optional(&mut conn)
            .await
            .map_err(failed("read publication tables"))?;
            if member.is_none() {
                let sql = format!("alter publication {} add table {quoted}", config.publication);
                sqlx::query(&sql).execute(&mut conn).await.map_err(failed("alter publication"))?;
            }
        }
    }

    for (schema, table) in &tables {
        let row = sqlx::query(
            "select c.relreplident::text as identity,
                    exists (select 1 from pg_index i where i.indrelid = c.oid and i.indisprimary) as has_pk
             from pg_class c join pg_namespace n on n.oid = c.relnamespace
             where n.nspname = $1 and c.relname = $2",
        )
        .bind(schema)
        .bind(table)
        .fetch_optional(&mut conn)
        .await
        .map_err(failed("read replica identity"))?
        .ok_or_else(|| bad(format!("table {schema}.{table} does not exist")))?;
        let identity: String = row.try_get("identity").unwrap_or_default();
        let has_pk: bool = row.try_get("has_pk").unwrap_or(false);
        if identity == "n" || (identity == "d" && !has_pk) {
            tracing::warn!(source = %name, table = %format!("{schema}.{table}"),
                "table has no replica identity key: its updates and deletes carry no key; \
                 add a primary key or ALTER TABLE … REPLICA IDENTITY FULL");
        }
    }

    let slot: Option<(String, Option<String>)> =
        sqlx::query_as("select plugin::text, confirmed_flush_lsn::text from pg_replication_slots where slot_name = $1")
            .bind(&config.slot)
            .fetch_optional(&mut conn)
            .await
            .map_err(failed("read replication slots"))?;
    match slot {
        Some((plugin, lsn)) if plugin == "pgoutput" => Ok(Some(parse_lsn(lsn))),
        Some((plugin, _)) => Err(bad(format!("slot {} uses plugin {plugin}, not pgoutput", config.slot))),
        None => Ok(None),
    }
}

/// Creates the slot; returns its consistent point.
pub(super) async fn create_slot(name: &str, config: &PostgresCaptureConfig) -> Result<u64, SourceError> {
    let failed = |operation: &'static str, e: sqlx::Error| SourceError::Unavailable {
        source_name: name.to_owned(),
        operation,
        message: e.to_string(),
    };
    let mut conn = PgConnection::connect(config.url.expose()).await.map_err(|e| failed("connect", e))?;
    let lsn: Option<String> =
        sqlx::query_scalar("select lsn::text from pg_create_logical_replication_slot($1, 'pgoutput')")
            .bind(&config.slot)
            .fetch_one(&mut conn)
            .await
            .map_err(|e| failed("create replication slot", e))?;
    tracing::info!(source = %name, slot = %config.slot, "replication slot created");
    Ok(parse_lsn(lsn))
}

fn parse_lsn(lsn: Option<String>) -> u64 {
    lsn.as_deref().and_then(crate::event::position::parse_pg_lsn).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let t = Target::parse("postgres://cap:pw@db.local:6543/shop?sslmode=disable").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.user.as_str(), t.password.as_str(), t.database.as_str()),
            ("db.local", 6543, "cap", "pw", "shop")
        );
        let t = Target::parse("postgres://postgres@127.0.0.1/test").unwrap();
        assert_eq!((t.port, t.password.as_str()), (5432, ""));
        assert!(Target::parse("mysql://x@y/z").is_err());
        assert!(Target::parse("postgres://127.0.0.1/test").is_err());
    }
}
