-- Roles and publication for the user-profiles example (run as a superuser in
-- the profiles database, after schema.sql). Idempotent.
--   evercache_ro       what the mapper reads rows with: read-only
--   evercache_capture  what the built-in capture streams with: REPLICATION + SELECT
--   profiles_writer    the application: plain DML, knows nothing of the cache
do $$ begin
  if not exists (select from pg_roles where rolname = 'evercache_ro') then create role evercache_ro login; end if;
  if not exists (select from pg_roles where rolname = 'evercache_capture') then create role evercache_capture login replication; end if;
  if not exists (select from pg_roles where rolname = 'profiles_writer') then create role profiles_writer login; end if;
end $$;
grant usage on schema public to evercache_ro, evercache_capture, profiles_writer;
grant select on all tables in schema public to evercache_ro, evercache_capture;
alter role evercache_ro set default_transaction_read_only = on;
grant select, insert, update, delete on all tables in schema public to profiles_writer;
grant usage on all sequences in schema public to profiles_writer;
do $$ begin
  if not exists (select from pg_publication where pubname = 'evercache_profiles') then
    create publication evercache_profiles for table users;
  end if;
end $$;
