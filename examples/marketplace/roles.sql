-- Roles and publication for the marketplace example (run as a superuser in the
-- marketplace database, after schema.sql). Idempotent.
--   evercache_ro       what plugins query with: read-only
--   evercache_capture  what the built-in capture streams with: REPLICATION + SELECT
--   marketplace_writer the "legacy" application: plain DML, knows nothing of the cache
do $$ begin
  if not exists (select from pg_roles where rolname = 'evercache_ro') then create role evercache_ro login; end if;
  if not exists (select from pg_roles where rolname = 'evercache_capture') then create role evercache_capture login replication; end if;
  if not exists (select from pg_roles where rolname = 'marketplace_writer') then create role marketplace_writer login; end if;
end $$;
grant usage on schema public to evercache_ro, evercache_capture, marketplace_writer;
grant select on all tables in schema public to evercache_ro, evercache_capture;
alter role evercache_ro set default_transaction_read_only = on;
grant select, insert, update, delete on all tables in schema public to marketplace_writer;
-- Publishing needs table ownership, so the admin creates it for the capture role.
do $$ begin
  if not exists (select from pg_publication where pubname = 'evercache') then
    create publication evercache for table specialist, session;
  end if;
end $$;
