#!/usr/bin/env bash
# A local Redis Sentinel set from Debian's redis-server: a master, a replica
# and three sentinels (quorum 2), for trying secchat's Sentinel topology and
# for running the cluster test suite on it.
#
#   deploy/redis-sentinel.sh start   # start everything; prints the REDIS_URL
#   deploy/redis-sentinel.sh stop
#
# Settings (environment): STATE_DIR (.redis-sentinel), BASE_PORT (7400: the
# master, 7401 the replica, 7402-7404 the sentinels), MASTER_NAME (secchat).
set -euo pipefail
cd "$(dirname "$0")/.."

STATE_DIR=$(mkdir -p "${STATE_DIR:-.redis-sentinel}" && cd "${STATE_DIR:-.redis-sentinel}" && pwd)
BASE_PORT=${BASE_PORT:-7400}
MASTER_NAME=${MASTER_NAME:-secchat}
master=$BASE_PORT
replica=$((BASE_PORT + 1))
sentinels=($((BASE_PORT + 2)) $((BASE_PORT + 3)) $((BASE_PORT + 4)))

node() { # port [extra args...]
  local port=$1; shift
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$STATE_DIR" \
    --daemonize yes --pidfile "$STATE_DIR/redis-$port.pid" --logfile "$STATE_DIR/redis-$port.log" "$@"
}

start() {
  require_redis
  node "$master"
  node "$replica" --replicaof 127.0.0.1 "$master"
  wait_for "the replica to follow the master" \
    sh -c "redis-cli -p $replica info replication | grep -q master_link_status:up"
  for port in "${sentinels[@]}"; do
    cat > "$STATE_DIR/sentinel-$port.conf" <<CONF
port $port
bind 127.0.0.1
dir $STATE_DIR
daemonize yes
pidfile $STATE_DIR/sentinel-$port.pid
logfile $STATE_DIR/sentinel-$port.log
sentinel monitor $MASTER_NAME 127.0.0.1 $master 2
sentinel down-after-milliseconds $MASTER_NAME 1000
sentinel failover-timeout $MASTER_NAME 5000
sentinel parallel-syncs $MASTER_NAME 1
CONF
    redis-server "$STATE_DIR/sentinel-$port.conf" --sentinel
  done
  # A failover needs the sentinels to know the replica and one another.
  for port in "${sentinels[@]}"; do
    wait_for "sentinel $port to see the replica and the other sentinels" sh -c \
      "redis-cli -p $port sentinel master $MASTER_NAME | tr '\n' ' ' | grep -q 'num-slaves 1 .*num-other-sentinels 2 '"
  done
  local hosts
  hosts=$(printf '127.0.0.1:%s,' "${sentinels[@]}")
  echo "redis+sentinel://${hosts%,}/$MASTER_NAME"
}

NAME=redis-sentinel
. deploy/local-services.sh
