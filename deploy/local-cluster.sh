#!/usr/bin/env bash
# A local cluster without Docker: three replicas of the release binary behind
# nginx, on Postgres and Redis, all from Debian's packages.
#
#   deploy/local-cluster.sh start    # build, start everything, print the address
#   deploy/local-cluster.sh stop     # stop the replicas (SIGTERM) and nginx
#   deploy/local-cluster.sh check    # write the nginx configuration and test it (nginx -t)
#
# Settings (environment): LB_PORT (8000), BASE_PORT (8001: replicas on 8001-8003),
# REPLICAS (3), STATE_DIR (.local-cluster), SECCHAT_BIN (default: cargo build --release),
# DATABASE_URL (postgres://postgres@127.0.0.1:5432/secchat), REDIS_URL
# (redis://127.0.0.1:6379), REDIS_PREFIX (secchat), JWT_SECRET (generated once
# into STATE_DIR), REDIS_TOPOLOGY (single; sentinel or cluster start a Redis
# Sentinel set or a Redis Cluster of their own with deploy/redis-sentinel.sh or
# deploy/redis-cluster.sh, in place of REDIS_URL, from REDIS_BASE_PORT: 7400
# or 7500), DATABASE_VIA (postgres;
# pgbouncer puts deploy/pgbouncer.sh in transaction mode between the replicas
# and DATABASE_URL's server).
#
#   REDIS_TOPOLOGY=cluster DATABASE_VIA=pgbouncer deploy/local-cluster.sh start
set -euo pipefail
cd "$(dirname "$0")/.."

LB_PORT=${LB_PORT:-8000}
BASE_PORT=${BASE_PORT:-8001}
REPLICAS=${REPLICAS:-3}
STATE_DIR=$(mkdir -p "${STATE_DIR:-.local-cluster}" && cd "${STATE_DIR:-.local-cluster}" && pwd)
DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/secchat}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
REDIS_PREFIX=${REDIS_PREFIX:-secchat}
REDIS_TOPOLOGY=${REDIS_TOPOLOGY:-single}
DATABASE_VIA=${DATABASE_VIA:-postgres}
DATABASE_POOLER=none

log() { printf 'local-cluster: %s\n' "$*" >&2; }

ensure_package() { # command package
  command -v "$1" >/dev/null 2>&1 && return
  log "installing $2"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}

ensure_services() {
  ensure_package pg_ctlcluster postgresql
  ensure_package redis-server redis-server
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    log "starting Postgres"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start
    for _ in $(seq 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
  fi
  # One local node only: a Sentinel set or a cluster is started apart
  # (REDIS_TOPOLOGY) or already there.
  if [[ $REDIS_URL == redis://* ]] && ! redis-cli -u "$REDIS_URL" ping >/dev/null 2>&1; then
    log "starting Redis"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
    for _ in $(seq 30); do redis-cli -u "$REDIS_URL" ping >/dev/null 2>&1 && break; sleep 1; done
  fi
  # The database itself, if the URL names one that does not exist yet.
  local db=${DATABASE_URL##*/}; db=${db%%\?*}
  local server=${DATABASE_URL%/*}/postgres
  if ! psql "$DATABASE_URL" -qtAc 'SELECT 1' >/dev/null 2>&1; then
    log "creating database $db"
    psql "$server" -qc "CREATE DATABASE \"$db\"" >/dev/null
  fi
}

write_nginx_config() {
  mkdir -p "$STATE_DIR/nginx"
  {
    echo "upstream secchat {"
    for i in $(seq 0 $((REPLICAS - 1))); do
      echo "    server 127.0.0.1:$((BASE_PORT + i)) max_fails=1 fail_timeout=5s;"
    done
    echo "    keepalive 32;"
    echo "}"
  } > "$STATE_DIR/nginx/upstream.conf"
  sed "s/listen 80;/listen 127.0.0.1:$LB_PORT;/" deploy/nginx/secchat.conf > "$STATE_DIR/nginx/secchat.conf"
  cat > "$STATE_DIR/nginx/nginx.conf" <<CONF
worker_processes 1;
pid $STATE_DIR/nginx/nginx.pid;
error_log $STATE_DIR/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log $STATE_DIR/nginx/access.log;
    client_body_temp_path $STATE_DIR/nginx/body;
    proxy_temp_path $STATE_DIR/nginx/proxy;
    fastcgi_temp_path $STATE_DIR/nginx/fastcgi;
    uwsgi_temp_path $STATE_DIR/nginx/uwsgi;
    scgi_temp_path $STATE_DIR/nginx/scgi;
    include $STATE_DIR/nginx/upstream.conf;
    include $STATE_DIR/nginx/secchat.conf;
}
CONF
}

check() {
  ensure_package nginx nginx
  write_nginx_config
  nginx -t -p "$STATE_DIR/nginx" -c "$STATE_DIR/nginx/nginx.conf"
}

start() {
  ensure_package nginx nginx
  ensure_services
  if [ -z "${SECCHAT_BIN:-}" ]; then
    cargo build --release --quiet -p secchat
    SECCHAT_BIN=target/release/secchat
  fi
  if [ -z "${JWT_SECRET:-}" ]; then
    [ -f "$STATE_DIR/jwt-secret" ] || (umask 077 && head -c 48 /dev/urandom | base64 -w0 > "$STATE_DIR/jwt-secret")
    JWT_SECRET=$(cat "$STATE_DIR/jwt-secret")
  fi
  case $REDIS_TOPOLOGY in
    single) ;;
    sentinel | cluster)
      # Their own ports (REDIS_BASE_PORT), not the replicas' BASE_PORT.
      local redis_base=${REDIS_BASE_PORT:-$([ "$REDIS_TOPOLOGY" = sentinel ] && echo 7400 || echo 7500)}
      REDIS_URL=$(STATE_DIR="$STATE_DIR/redis-$REDIS_TOPOLOGY" BASE_PORT=$redis_base \
        "deploy/redis-$REDIS_TOPOLOGY.sh" start)
      log "Redis ($REDIS_TOPOLOGY): $REDIS_URL" ;;
    *) log "REDIS_TOPOLOGY must be single, sentinel or cluster"; exit 2 ;;
  esac
  case $DATABASE_VIA in
    postgres) ;;
    pgbouncer)
      ensure_package pgbouncer pgbouncer
      local server=${DATABASE_URL%/*}
      local pgbouncer
      pgbouncer=$(STATE_DIR="$STATE_DIR/pgbouncer" POSTGRES_HOST=$(host_of "$server") \
        POSTGRES_PORT=$(port_of "$server") deploy/pgbouncer.sh start)
      DATABASE_URL=$pgbouncer/${DATABASE_URL##*/}
      DATABASE_POOLER=transaction
      log "Postgres through PgBouncer: $DATABASE_URL" ;;
    *) log "DATABASE_VIA must be postgres or pgbouncer"; exit 2 ;;
  esac
  for i in $(seq 0 $((REPLICAS - 1))); do
    port=$((BASE_PORT + i))
    log "replica $((i + 1)) on 127.0.0.1:$port"
    BIND=127.0.0.1:$port DATABASE_URL=$DATABASE_URL DATABASE_POOLER=$DATABASE_POOLER \
      REDIS_URL=$REDIS_URL REDIS_PREFIX=$REDIS_PREFIX \
      JWT_SECRET=$JWT_SECRET TRUSTED_PROXIES=127.0.0.1/32 LOG_FORMAT=json \
      nohup "$SECCHAT_BIN" > "$STATE_DIR/replica-$((i + 1)).log" 2>&1 &
    echo $! > "$STATE_DIR/replica-$((i + 1)).pid"
  done
  for i in $(seq 0 $((REPLICAS - 1))); do
    wait_for "http://127.0.0.1:$((BASE_PORT + i))/readyz"
  done
  write_nginx_config
  nginx -p "$STATE_DIR/nginx" -c "$STATE_DIR/nginx/nginx.conf"
  wait_for "http://127.0.0.1:$LB_PORT/readyz"
  log "ready at http://127.0.0.1:$LB_PORT (logs in $STATE_DIR)"
}

# The host and port of postgres://user@host:port (5432 when it names none).
host_of() { local hp=${1##*@}; hp=${hp#*://}; echo "${hp%%:*}"; }
port_of() { local hp=${1##*@}; hp=${hp#*://}; [[ $hp == *:* ]] && echo "${hp##*:}" || echo 5432; }

# Generous: on a busy machine a replica may take a while to reach its
# backends. What the replicas logged is shown when one never does.
wait_for() {
  for _ in $(seq 300); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return
    sleep 0.2
  done
  log "$1 did not become ready"
  tail -n 5 "$STATE_DIR"/replica-*.log >&2 || true
  exit 1
}

stop() {
  if [ -f "$STATE_DIR/nginx/nginx.pid" ]; then
    nginx -p "$STATE_DIR/nginx" -c "$STATE_DIR/nginx/nginx.conf" -s quit 2>/dev/null || true
  fi
  for pidfile in "$STATE_DIR"/replica-*.pid; do
    [ -f "$pidfile" ] || continue
    kill -TERM "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
  done
  wait 2>/dev/null || true
  for topology in sentinel cluster; do
    [ -d "$STATE_DIR/redis-$topology" ] && STATE_DIR="$STATE_DIR/redis-$topology" "deploy/redis-$topology.sh" stop
  done
  [ -d "$STATE_DIR/pgbouncer" ] && STATE_DIR="$STATE_DIR/pgbouncer" deploy/pgbouncer.sh stop
  log "stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  check) check ;;
  *) echo "usage: $0 start|stop|check" >&2; exit 2 ;;
esac
