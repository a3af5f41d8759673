#!/usr/bin/env bash
# Makes sure Redis (127.0.0.1:6379), PostgreSQL (127.0.0.1:5432, user postgres,
# trust auth, database "test") and MariaDB (127.0.0.1:3306, root without a
# password, database "test", binlog on for the built-in capture) are reachable:
# uses running ones, starts installed ones, or installs them with apt-get.
# Idempotent; safe to run any time.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
APT_UPDATED=""

say() { echo "dev-services: $*"; }
apt_install() {
  if [ -z "$APT_UPDATED" ]; then $SUDO apt-get update -qq; APT_UPDATED=1; fi
  say "installing $*"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}
wait_for() {
  local what=$1 check=$2
  for _ in $(seq 1 50); do
    if eval "$check"; then return 0; fi
    sleep 0.2
  done
  say "ERROR: $what did not come up"; return 1
}

redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }
if redis_up; then
  say "redis: running"
else
  command -v redis-server >/dev/null || apt_install redis-server redis-tools
  say "redis: starting"
  $SUDO redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /tmp --logfile /tmp/evercache-redis.log
  wait_for redis redis_up
fi

pg_up() { pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; }
if pg_up; then
  say "postgres: running"
else
  if ! ls -d /etc/postgresql/*/main >/dev/null 2>&1; then
    apt_install postgresql postgresql-client
  fi
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  say "postgres: starting cluster $version/main"
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start
  wait_for postgres pg_up
fi

psql_ok() { psql -h 127.0.0.1 -U postgres -d postgres -tAc 'select 1' >/dev/null 2>&1; }
if ! psql_ok; then
  # A fresh Debian cluster asks for passwords on TCP; the tests log in as
  # postgres without one, so trust loopback connections for local development.
  hba=$($SUDO -u postgres psql -tAc 'show hba_file' 2>/dev/null || su postgres -c "psql -tAc 'show hba_file'")
  say "postgres: trusting 127.0.0.1 and ::1 in $hba (local development only)"
  $SUDO sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
  $SUDO -u postgres psql -tAc 'select pg_reload_conf()' >/dev/null 2>&1 || su postgres -c "psql -tAc 'select pg_reload_conf()'" >/dev/null
  wait_for "postgres trust login" psql_ok
fi

# evercache's built-in capture reads the WAL through logical replication.
if [ "$(psql -h 127.0.0.1 -U postgres -d postgres -tAc 'show wal_level')" != "logical" ]; then
  version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
  say "postgres: setting wal_level = logical and restarting the local cluster $version/main (needed by the built-in capture)"
  psql -h 127.0.0.1 -U postgres -d postgres -qc "alter system set wal_level = logical"
  if [ -n "$version" ]; then
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main restart
  else
    say "ERROR: cannot find the local cluster to restart; restart Postgres yourself"; exit 1
  fi
  wait_for "postgres restart" psql_ok
fi

if [ "$(psql -h 127.0.0.1 -U postgres -d postgres -tAc "select 1 from pg_database where datname = 'test'")" != "1" ]; then
  say "postgres: creating database test"
  psql -h 127.0.0.1 -U postgres -d postgres -qc 'create database test'
fi
mariadb_sql() { mysql -h 127.0.0.1 -P 3306 -u root --connect-timeout=5 --batch --skip-column-names -e "$1" 2>/dev/null; }
mariadb_up() { mariadb_sql 'select 1' | grep -q 1; }
# Alive on its socket: a fresh install lets root in only there, not over TCP yet.
mariadb_alive() { $SUDO mysqladmin ping >/dev/null 2>&1; }
mariadb_start() {
  # No service manager here: mariadbd runs detached, as the packaged one does.
  $SUDO mkdir -p /run/mysqld && $SUDO chown mysql:mysql /run/mysqld
  $SUDO setsid /usr/sbin/mariadbd --user=mysql </dev/null >/dev/null 2>&1 &
  wait_for mariadb mariadb_alive
}
if mariadb_up; then
  say "mariadb: running"
else
  if [ ! -x /usr/sbin/mariadbd ]; then
    apt_install mariadb-server mariadb-client
  fi
  if ! mariadb_alive; then
    say "mariadb: starting"
    mariadb_start
  fi
  if ! mariadb_up; then
    # A fresh Debian install lets root in only through the socket, and the server
    # names a loopback client 'localhost'; let root in there without a password
    # as well (local development only).
    say "mariadb: letting root log in over loopback without a password (local development only)"
    $SUDO mysql -u root -e "alter user 'root'@'localhost' identified via unix_socket or mysql_native_password using password('');
      create user if not exists 'root'@'127.0.0.1'; grant all on *.* to 'root'@'127.0.0.1' with grant option"
    wait_for "mariadb root login" mariadb_up
  fi
fi

# The built-in MySQL capture reads the binlog: row events with full images and
# column names, and a server id. The server reads these only at start.
if [ "$(mariadb_sql "select concat(@@log_bin + 0, @@binlog_format, @@binlog_row_image, @@binlog_row_metadata)")" != "1ROWFULLFULL" ]; then
  conf_dir=/etc/mysql/mariadb.conf.d
  say "mariadb: turning the binlog on (ROW, full images and metadata) in $conf_dir/90-evercache-binlog.cnf and restarting it once"
  $SUDO mkdir -p "$conf_dir"
  printf '[mysqld]\nlog_bin = mariadb-bin\nbinlog_format = ROW\nbinlog_row_image = FULL\nbinlog_row_metadata = FULL\nserver_id = 1\nexpire_logs_days = 7\n' \
    | $SUDO tee "$conf_dir/90-evercache-binlog.cnf" >/dev/null
  if ! grep -qE "^\s*!includedir\s+$conf_dir/?\s*$" /etc/mysql/my.cnf; then
    echo "!includedir $conf_dir/" | $SUDO tee -a /etc/mysql/my.cnf >/dev/null
  fi
  mysqladmin -h 127.0.0.1 -u root shutdown
  for _ in $(seq 1 100); do pgrep -x mariadbd >/dev/null || break; sleep 0.2; done
  mariadb_start
  if [ "$(mariadb_sql "select @@log_bin")" != "1" ]; then
    say "ERROR: mariadb did not turn its binlog on; see /etc/mysql/my.cnf"; exit 1
  fi
fi

if [ "$(mariadb_sql "select count(*) from mysql.user where user = 'evercache_repl'")" != "1" ]; then
  say "mariadb: creating the replication user evercache_repl (password evercache; local development only)"
  mariadb_sql "create user if not exists 'evercache_repl'@'%' identified by 'evercache';
    grant replication slave, binlog monitor, select, reload on *.* to 'evercache_repl'@'%'"
fi
mariadb_sql "create database if not exists test"
say "ready: redis://127.0.0.1:6379, postgres://postgres@127.0.0.1:5432/test and mysql://root@127.0.0.1:3306/test"
