#!/usr/bin/env bash
# A local PgBouncer (Debian's) in transaction pooling mode in front of a
# Postgres server, for trying secchat behind a pooler and for the tests that
# need one (TEST_PGBOUNCER_URL).
#
#   deploy/pgbouncer.sh start   # start it; prints the URL to put a database name after
#   deploy/pgbouncer.sh stop
#
# Replicas then run with DATABASE_URL=<that URL>/<database> and
# DATABASE_POOLER=transaction (README, "Postgres behind PgBouncer").
#
# Settings (environment): STATE_DIR (.pgbouncer), PORT (6432), POSTGRES_HOST
# (127.0.0.1), POSTGRES_PORT (5432), POSTGRES_USER (postgres), POOL_SIZE (4:
# server connections per database, shared by every client in turn),
# MAX_SERVER_CONNECTIONS (24: to Postgres in all, whatever the databases;
# idle ones close after 5 s, so that many databases tried one after another
# do not hold Postgres's connections).
# Any database name is passed through to the server, as POSTGRES_USER, with
# no password asked (auth_type = any): for this machine only; a real
# deployment authenticates clients (auth_type = scram-sha-256 with an
# auth_file or auth_query).
set -euo pipefail
cd "$(dirname "$0")/.."

NAME=pgbouncer
STATE_DIR=$(mkdir -p "${STATE_DIR:-.pgbouncer}" && cd "${STATE_DIR:-.pgbouncer}" && pwd)
PORT=${PORT:-6432}
POSTGRES_HOST=${POSTGRES_HOST:-127.0.0.1}
POSTGRES_PORT=${POSTGRES_PORT:-5432}
POSTGRES_USER=${POSTGRES_USER:-postgres}
POOL_SIZE=${POOL_SIZE:-4}
MAX_SERVER_CONNECTIONS=${MAX_SERVER_CONNECTIONS:-24}

url() { echo "postgres://$POSTGRES_USER@127.0.0.1:$PORT"; }

start() {
  command -v pgbouncer >/dev/null || { log "pgbouncer is not installed (apt-get install pgbouncer)"; exit 1; }
  if [ -f "$STATE_DIR/pgbouncer.pid" ] && kill -0 "$(cat "$STATE_DIR/pgbouncer.pid")" 2>/dev/null; then
    url; return # running already
  fi
  cat > "$STATE_DIR/pgbouncer.ini" <<CONF
[databases]
* = host=$POSTGRES_HOST port=$POSTGRES_PORT user=$POSTGRES_USER

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PORT
unix_socket_dir =
auth_type = any
pool_mode = transaction
default_pool_size = $POOL_SIZE
max_user_connections = $MAX_SERVER_CONNECTIONS
server_idle_timeout = 5
max_client_conn = 2000
; sqlx sends it at startup; PgBouncer 1.18 refuses parameters it does not know.
ignore_startup_parameters = extra_float_digits
logfile = $STATE_DIR/pgbouncer.log
pidfile = $STATE_DIR/pgbouncer.pid
CONF
  # PgBouncer refuses to run as root.
  if [ "$(id -u)" = 0 ]; then
    chown -R postgres "$STATE_DIR"
    runuser -u postgres -- pgbouncer -d "$STATE_DIR/pgbouncer.ini"
  else
    pgbouncer -d "$STATE_DIR/pgbouncer.ini"
  fi
  wait_for "PgBouncer to answer" pg_isready -q -h 127.0.0.1 -p "$PORT"
  url
}

# shellcheck source=deploy/local-services.sh
. deploy/local-services.sh
