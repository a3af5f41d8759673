//! The built-in row mapper (`[mapper]`, no plugin) against real Redis,
//! Postgres and MariaDB: a row under its key as a hash or JSON, read from the
//! database rather than the event, deleted with its row, composite keys, the
//! read path through its template's keys, and a hot-reloaded pipeline file.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use evercache_e2e::debezium::{next_lsn, pg_change};
use evercache_e2e::http::get;
use evercache_e2e::mariadb::{MariaDb, server_id};
use evercache_e2e::{REDIS_URL, Running, RuntimeToml, TestEnv, wait_json, wait_until};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

fn mapper_pipeline(env: &TestEnv, table: &str, mapper: &str) -> String {
    format!(
        "source = \"events\"\ndatabase = \"db\"\ncache = \"main\"\ntables = [\"{p}.{table}\"]\n\n[mapper]\n{mapper}\n",
        p = env.prefix
    )
}

async fn send(
    env: &mut TestEnv,
    table: &str,
    op: &str,
    key: Value,
    before: Option<Value>,
    after: Option<Value>,
) -> Result<()> {
    let change = pg_change(op, &env.prefix, table, before, after, next_lsn());
    env.xadd_compact(&env.stream(table), &key.to_string(), &change.to_string()).await?;
    Ok(())
}

async fn wait_hash(env: &TestEnv, key: &str, expected: Value) -> Result<()> {
    wait_until(&format!("{key} == {expected}"), WAIT, || {
        let (env, key, expected) = (env, key.to_owned(), expected.clone());
        async move { Ok(env.clone_redis_hash(&key).await? == expected) }
    })
    .await
    .map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapper_stores_rows_from_the_database_and_follows_its_file() -> Result<()> {
    let mut env = TestEnv::new("mapper_pg").await?;
    let p = env.prefix.clone();
    env.sql(
        "create table users (id bigint primary key, name text, email text, note text);
         insert into users values (1, 'Ann', 'ann@x', null), (2, 'Bob', 'bob@x', 'hi');
         create table member (org_id int, user_id bigint, role text, primary key (org_id, user_id));
         insert into member values (10, 1, 'owner')",
    )
    .await?;
    let streams = [env.stream("users"), env.stream("member")];
    let runtime = env.runtime_toml(&streams, "[http]\nlisten = \"127.0.0.1:0\"\n[reload]\ndebounce = \"50ms\"\n");
    let users = mapper_pipeline(
        &env,
        "users",
        &format!(
            "key = \"{p}:user:{{id}}\"\ntype = \"hash\"\nexclude = [\"note\"]\nrename = {{ email = \"mail\" }}\nttl = \"1h\""
        ),
    );
    let members = mapper_pipeline(&env, "member", &format!("key = \"{p}:member:{{org_id}}:{{user_id}}\""));
    let config = env.config(&runtime, &[("users", &users), ("members", &members)])?;
    let running = Running::start(config).await?;

    // The event's image is stale: the mapper stores the row as the database has it.
    env.sql("update users set name = 'Ann B' where id = 1").await?;
    send(&mut env, "users", "u", json!({"id": 1}), None, Some(json!({"id": 1, "name": "stale", "email": "x"}))).await?;
    let user1 = format!("{p}:user:1");
    wait_hash(&env, &user1, json!({"id": "1", "name": "Ann B", "mail": "ann@x"})).await?;
    let mut redis = env.redis.clone();
    let ttl: i64 = redis::cmd("TTL").arg(&user1).query_async(&mut redis).await?;
    ensure!((3500..=3600).contains(&ttl), "the mapper's ttl: {ttl}");

    // Composite keys, JSON values with nulls kept.
    send(&mut env, "member", "c", json!({"org_id": 10, "user_id": 1}), None, Some(json!({"org_id": 10, "user_id": 1})))
        .await?;
    let member = format!("{p}:member:10:1");
    wait_json(&env.redis, &member, Some(json!({"org_id": 10, "user_id": 1, "role": "owner"})), WAIT).await?;

    // A delete carrying only the key removes the key.
    env.sql("delete from member").await?;
    send(&mut env, "member", "d", json!({"org_id": 10, "user_id": 1}), Some(json!({"org_id": 10, "user_id": 1})), None)
        .await?;
    wait_json(&env.redis, &member, None, WAIT).await?;

    // The read path owns the template's keys: a miss is filled by the mapper.
    let addr = running.http.context("no listener")?;
    let (code, body) = get(addr, &format!("/v1/keys/{p}:user:2")).await?;
    let body: Value = serde_json::from_str(&body)?;
    ensure!(code == 200 && body["value"] == json!({"id": "2", "name": "Bob", "mail": "bob@x"}), "{code}: {body}");
    let (code, body) = get(addr, &format!("/v1/keys/{p}:user:3")).await?;
    ensure!(code == 404 && body.contains("\"deleted\":true"), "a key without a row: {code} {body}");

    // A changed pipeline file takes effect without a restart.
    let narrower =
        mapper_pipeline(&env, "users", &format!("key = \"{p}:user:{{id}}\"\ntype = \"hash\"\ncolumns = [\"name\"]"));
    std::fs::write(env.dir.join("pipelines/users.toml.tmp"), narrower)?;
    std::fs::rename(env.dir.join("pipelines/users.toml.tmp"), env.dir.join("pipelines/users.toml"))?;
    wait_until("the reloaded mapper stores only the name", WAIT, || {
        let (env, user1) = (&env, &user1);
        async move {
            let change = pg_change("u", &env.prefix, "users", None, Some(json!({"id": 1})), next_lsn());
            let mut redis = env.redis.clone();
            redis::cmd("XADD")
                .arg(env.stream("users"))
                .arg("*")
                .arg(json!({"id": 1}).to_string())
                .arg(change.to_string())
                .query_async::<String>(&mut redis)
                .await?;
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok(env.clone_redis_hash(user1).await? == json!({"name": "Ann B"}))
        }
    })
    .await?;
    ensure!(env.dead_letters(&env.stream("users")).await?.is_empty(), "no dead letters");
    running.stop().await?;
    env.clear_redis().await
}

/// MariaDB's binlog through the built-in capture into a mapper keyed by a
/// composite primary key: the snapshot, an update and a delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapper_follows_mariadb_rows_by_composite_keys_through_the_binlog() -> Result<()> {
    let env = TestEnv::new("mapper_maria").await?;
    let maria = MariaDb::new(&env.prefix).await?;
    let p = env.prefix.clone();
    maria
        .sql(
            "create table member (org_id int, user_id varchar(20), role varchar(20), since datetime, \
             primary key (org_id, user_id));
             insert into member values (10, 'u1', 'owner', '2026-01-02 03:04:05'), (10, 'u2', null, null)",
        )
        .await?;
    let runtime = RuntimeToml::new()
        .database("db", &maria.url())
        .cache("main", REDIS_URL.as_str())
        .mysql_capture("events", &[format!("{p}.member")], server_id(&p), &p, REDIS_URL.as_str())
        .build();
    let pipeline =
        mapper_pipeline(&env, "member", &format!("key = \"{p}:member:{{org_id}}:{{user_id}}\"\ntype = \"hash\""));
    let config = env.config(&runtime, &[("members", &pipeline)])?;
    let running = Running::start(config).await?;
    let (u1, u2) = (format!("{p}:member:10:u1"), format!("{p}:member:10:u2"));
    wait_hash(&env, &u1, json!({"org_id": "10", "user_id": "u1", "role": "owner", "since": "2026-01-02T03:04:05"}))
        .await?;
    wait_hash(&env, &u2, json!({"org_id": "10", "user_id": "u2"})).await?;
    maria.sql("update member set role = 'admin' where user_id = 'u2'").await?;
    wait_hash(&env, &u2, json!({"org_id": "10", "user_id": "u2", "role": "admin"})).await?;
    maria.sql("delete from member where user_id = 'u1'").await?;
    wait_hash(&env, &u1, json!({})).await?;
    running.stop().await?;
    let mut env = env;
    env.clear_redis().await?;
    maria.drop_database().await
}

/// In `invalidate` mode the mapper's keys are deleted, not recomputed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidating_mapper_deletes_the_rows_keys() -> Result<()> {
    let mut env = TestEnv::new("mapper_inval").await?;
    let p = env.prefix.clone();
    env.sql("create table users (id bigint primary key, name text)").await?;
    let pipeline = format!(
        "on_change = \"invalidate\"\n{}",
        mapper_pipeline(&env, "users", &format!("key = \"{p}:user:{{id}}\""))
    );
    let config = env.config(&env.runtime_toml(&[env.stream("users")], ""), &[("users", &pipeline)])?;
    let running = Running::start(config).await?;
    let key = format!("{p}:user:5");
    let mut redis = env.redis.clone();
    redis::cmd("SET").arg(&key).arg("cached by the application").query_async::<()>(&mut redis).await?;
    send(&mut env, "users", "u", json!({"id": 5}), None, Some(json!({"id": 5, "name": "x"}))).await?;
    wait_json(&env.redis, &key, None, WAIT).await?;
    running.stop().await?;
    env.clear_redis().await
}

/// `examples/user-profiles` as shipped (its schema, seed and `[mapper]`), in
/// the test's own schema and key prefix, through the built-in capture.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_profiles_example_keeps_one_hash_per_user_through_the_capture() -> Result<()> {
    let env = TestEnv::new("mapper_profiles").await?;
    env.drop_capture().await?;
    let p = env.prefix.clone();
    let example = evercache_e2e::repo_root().join("examples/user-profiles");
    let read = |file: &str| std::fs::read_to_string(example.join(file));
    env.sql(&read("schema.sql")?).await?;
    env.sql(&read("seed.sql")?).await?;
    let pipeline = read("pipelines/users.toml")?
        .replace("source = \"changes\"", "source = \"events\"")
        .replace("database = \"profiles\"", "database = \"db\"")
        .replace("\"public.users\"", &format!("\"{p}.users\""))
        .replace("key = \"user:{id}\"", &format!("key = \"{p}:user:{{id}}\""));
    ensure!(pipeline.contains(&format!("{p}:user:{{id}}")), "the example's key template changed: {pipeline}");
    let runtime = RuntimeToml::new()
        .database("db", evercache_e2e::PG_URL)
        .cache("main", REDIS_URL.as_str())
        .postgres_capture("events", evercache_e2e::PG_URL, &[format!("{p}.users")], &p, REDIS_URL.as_str())
        .build();
    let config = env.config(&runtime, &[("users", &pipeline)])?;
    let running = Running::start(config).await?;

    // The initial snapshot fills every user; a null email is left out of the hash.
    wait_hash(&env, &format!("{p}:user:1042"), json!({"name": "Alice", "email": "alice@example.com", "plan": "free"}))
        .await?;
    wait_hash(&env, &format!("{p}:user:1044"), json!({"name": "Carol", "plan": "free"})).await?;
    let mut redis = env.redis.clone();
    let ttl: i64 = redis::cmd("TTL").arg(format!("{p}:user:1042")).query_async(&mut redis).await?;
    ensure!((86_000..=86_400).contains(&ttl), "the example's 24h safety TTL: {ttl}");

    // The application's writes, in plain SQL.
    env.sql("update users set plan = 'pro', updated_at = now() where id = 1042").await?;
    wait_hash(&env, &format!("{p}:user:1042"), json!({"name": "Alice", "email": "alice@example.com", "plan": "pro"}))
        .await?;
    env.sql("insert into users (name, email, plan) values ('Dave', 'dave@example.com', 'free')").await?;
    wait_hash(&env, &format!("{p}:user:2001"), json!({"name": "Dave", "email": "dave@example.com", "plan": "free"}))
        .await?;
    env.sql("delete from users where id = 1043").await?;
    wait_until("user 1043's hash is deleted", WAIT, || async {
        Ok(env.clone_redis_hash(&format!("{p}:user:1043")).await? == json!({}))
    })
    .await?;
    running.stop().await?;
    env.drop_capture().await
}

/// `from = "event"`: the event's after-image is stored with no database round
/// trip. The pipeline's database role may not even read the table, so a value
/// that arrives can only have come from the event; an update that changes the
/// key column moves the value, and a delete deletes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapper_from_the_event_stores_row_images_without_a_query() -> Result<()> {
    let env = TestEnv::new("mapper_image").await?;
    env.drop_capture().await?;
    let p = env.prefix.clone();
    let role = format!("{p}_noread");
    env.sql(&format!(
        "create table users (id bigint primary key, name text, email text);
         insert into users values (1, 'Ann', 'ann@x');
         drop role if exists {role}; create role {role} login"
    ))
    .await?;
    let blind_url = evercache_e2e::PG_URL.replace("postgres@", &format!("{role}@"));
    let mut blind = <sqlx::PgConnection as sqlx::Connection>::connect(&blind_url).await?;
    let refused = sqlx::query(&format!("select * from {p}.users")).execute(&mut blind).await;
    ensure!(refused.is_err(), "the pipeline's role cannot read the table");
    let pipeline =
        mapper_pipeline(&env, "users", &format!("key = \"{p}:user:{{id}}\"\nfrom = \"event\"\nexclude = [\"email\"]"));
    let runtime = RuntimeToml::new()
        .database("db", &blind_url)
        .cache("main", REDIS_URL.as_str())
        .postgres_capture("events", evercache_e2e::PG_URL, &[format!("{p}.users")], &p, REDIS_URL.as_str())
        .build();
    let running = Running::start(env.config(&runtime, &[("users", &pipeline)])?).await?;
    let key = |id: i64| format!("{p}:user:{id}");

    wait_json(&env.redis, &key(1), Some(json!({"id": 1, "name": "Ann"})), WAIT).await?;
    env.sql("update users set name = 'Anne' where id = 1; insert into users values (2, 'Bob', 'bob@x')").await?;
    wait_json(&env.redis, &key(1), Some(json!({"id": 1, "name": "Anne"})), WAIT).await?;
    wait_json(&env.redis, &key(2), Some(json!({"id": 2, "name": "Bob"})), WAIT).await?;
    // The row moves to another key: the old one is deleted with it.
    env.sql("alter table users replica identity full; update users set id = 3 where id = 2").await?;
    wait_json(&env.redis, &key(3), Some(json!({"id": 3, "name": "Bob"})), WAIT).await?;
    wait_json(&env.redis, &key(2), None, WAIT).await?;
    env.sql("delete from users where id = 1").await?;
    wait_json(&env.redis, &key(1), None, WAIT).await?;

    running.stop().await?;
    sqlx::Connection::close(blind).await?;
    env.drop_capture().await?;
    env.sql(&format!("drop table users; drop role {role}")).await
}
