-- The row Debezium's heartbeat.action.query updates: with a publication of
-- the captured tables only, Postgres sends the connector nothing while they are
-- quiet, so without a change of its own the slot would keep all WAL since.
-- Unqualified names: runs in the current search_path, like ../schema.sql.
create table if not exists debezium_heartbeat (
    id integer primary key,
    ts timestamptz not null
);
insert into debezium_heartbeat (id, ts) values (1, now()) on conflict (id) do nothing;
