-- The user Debezium Server's MariaDB connector reads with (run as root, after
-- ../mariadb/roles.sql). Idempotent; no password, for local development only.
-- The connector needs, on *.*: SELECT for the snapshot, RELOAD for its brief
-- FLUSH TABLES WITH READ LOCK, SHOW DATABASES, REPLICATION SLAVE to read the
-- binlog and BINLOG MONITOR (MariaDB's REPLICATION CLIENT) for its position.
create user if not exists 'debezium'@'%';
grant select, reload, show databases, replication slave, binlog monitor on *.* to 'debezium'@'%';
