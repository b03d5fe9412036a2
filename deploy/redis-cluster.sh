#!/usr/bin/env bash
# A local Redis Cluster from Debian's redis-server: three masters and three
# replicas made with `redis-cli --cluster create`, for trying secchat's
# Cluster topology and for running the cluster test suite on it.
#
#   deploy/redis-cluster.sh start   # start everything; prints the REDIS_URL
#   deploy/redis-cluster.sh stop
#
# Settings (environment): STATE_DIR (.redis-cluster), BASE_PORT (7500: the
# nodes on 7500-7505; redis-cli makes the first three masters).
set -euo pipefail
cd "$(dirname "$0")/.."

STATE_DIR=$(mkdir -p "${STATE_DIR:-.redis-cluster}" && cd "${STATE_DIR:-.redis-cluster}" && pwd)
BASE_PORT=${BASE_PORT:-7500}
ports=($(seq "$BASE_PORT" $((BASE_PORT + 5))))

start() {
  require_redis
  for port in "${ports[@]}"; do
    # A fresh cluster every time: old node tables would name nodes gone.
    rm -f "$STATE_DIR/nodes-$port.conf"
    # A node is failed after 2 s without answers; its replica takes over then.
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$STATE_DIR" \
      --cluster-enabled yes --cluster-config-file "nodes-$port.conf" --cluster-node-timeout 2000 \
      --daemonize yes --pidfile "$STATE_DIR/redis-$port.pid" --logfile "$STATE_DIR/redis-$port.log"
  done
  for port in "${ports[@]}"; do wait_for "node $port" redis-cli -p "$port" ping; done
  redis-cli --cluster create $(printf '127.0.0.1:%s ' "${ports[@]}") --cluster-replicas 1 --cluster-yes >&2
  for port in "${ports[@]}"; do
    wait_for "node $port to see the whole cluster" sh -c \
      "redis-cli -p $port cluster info | grep -q cluster_state:ok && redis-cli -p $port cluster nodes | grep -c connected | grep -qx 6"
  done
  # Replicas in sync, so that a master killed at once fails over.
  for port in "${ports[@]}"; do
    wait_for "node $port's replication" sh -c \
      "redis-cli -p $port info replication | grep -q role:master || redis-cli -p $port info replication | grep -q master_link_status:up"
  done
  local hosts
  hosts=$(printf '127.0.0.1:%s,' "${ports[@]:0:3}")
  echo "redis+cluster://${hosts%,}"
}

NAME=redis-cluster
. deploy/local-services.sh
