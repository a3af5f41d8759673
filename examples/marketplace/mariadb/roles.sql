-- Users for the MariaDB marketplace example (run as root). Idempotent; no
-- passwords, for local development only.
--   evercache_ro       what plugins query with: SELECT only
--   evercache_capture  what the built-in capture reads the binlog with
--   marketplace_writer the "legacy" application: plain DML, knows nothing of the cache
create user if not exists 'evercache_ro'@'%';
grant select on marketplace.* to 'evercache_ro'@'%';
create user if not exists 'evercache_capture'@'%';
grant replication slave, binlog monitor on *.* to 'evercache_capture'@'%';
grant select on marketplace.* to 'evercache_capture'@'%';
create user if not exists 'marketplace_writer'@'%';
grant select, insert, update, delete on marketplace.* to 'marketplace_writer'@'%';
