#!/usr/bin/env bash
# Runs load scenarios against freshly started servers and prints one JSON line
# per scenario (see BENCHMARKS.md for what each figure means).
#
#   benches/run.sh embedded                  # every scenario, embedded default
#   benches/run.sh cluster 3                 # every scenario, 3 replicas on Postgres + Redis
#   benches/run.sh embedded ws-direct        # one scenario
#   REDIS_URL=redis+cluster://127.0.0.1:7500 benches/run.sh cluster 3 ws-cross
#                                            # on a Redis Cluster (deploy/redis-cluster.sh)
#   DATABASE_URL=postgres://postgres@127.0.0.1:6432 DATABASE_POOLER=transaction \
#     benches/run.sh cluster 1 http-offline  # through PgBouncer (deploy/pgbouncer.sh)
#
# Cluster runs need Postgres and Redis (DATABASE_URL base, default
# postgres://postgres@127.0.0.1:5432; REDIS_URL, default redis://127.0.0.1:6379);
# each run gets a fresh database. Server and Redis CPU are counted apart
# (Redis: every node's process, in all and each).
# SECCHAT_BIN runs another build of the server (an earlier commit's, to compare
# before and after on one machine); the default is this tree's release build.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-embedded}; shift || true
replicas=1
if [ "$mode" = cluster ]; then replicas=${1:-1}; shift || true; fi
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(ws-direct ws-direct-w2 ws-cross ws-direct-acked ws-direct-20k ws-broadcast ws-broadcast-64 ws-broadcast-paced ws-broadcast-paced-1k http-online http-offline login-storm conn-capacity conn-capacity-50k)
# DURATION shortens (or lengthens) every measured window: CI's benchmark job
# runs each scenario briefly, to print its figures in the log.
duration=${DURATION:-10}

# 50,000 connections need as many descriptors in the server and the generator
# (raising the hard limit needs CAP_SYS_RESOURCE; otherwise the soft limit goes
# up to it, and a scenario that needs more says so instead of running).
ulimit -n 120000 2>/dev/null || ulimit -n "$(ulimit -Hn)"

cargo build --release --quiet --bins
server=${SECCHAT_BIN:-$PWD/target/release/secchat}
work=$(mktemp -d)
trap 'kill $(cat "$work"/*.pid 2>/dev/null) 2>/dev/null || true; sleep 1; rm -rf "$work"' EXIT

# Every load comes from this one address, with up to 100 connections a user;
# http-offline leaves 2,000 unread messages in each mailbox. The rate limits
# stay on, at rates no scenario reaches, so that their cost is measured.
one_address="MAX_WS_PER_IP=1000000 MAX_WS_PER_USER=1000 MAILBOX_MAX_MESSAGES=1000000 MAILBOX_MAX_BYTES=1000000000"
unlimited="LOGIN_RATE_PER_IP=1000000/s REGISTER_RATE_PER_IP=1000000/s SEARCH_RATE_PER_USER=1000000/s OFFLINE_RATE_PER_SENDER=1000000/s WS_FRAME_RATE_PER_CONNECTION=1000000/s WS_FRAME_RATE_PER_USER=1000000/s INBOX_RATE_PER_USER=1000000/s CONTACT_RATE_PER_USER=1000000/s HEARTBEAT_RATE_PER_USER=1000000/s TURN_RATE_PER_USER=1000000/s KEY_CHANGE_RATE_PER_USER=1000000/s BROADCAST_FANOUT_PER_USER=4000000000/s LOGIN_FREE_FAILURES=1000000"
# The WebSocket scenarios share their users (see run() below), whose tokens
# must outlast the whole run.
lasting="TOKEN_TTL_SECS=86400"
urls=(); pids=()
for i in $(seq 1 "$replicas"); do
    port=$((19100 + i))
  if curl -fs -o /dev/null "http://127.0.0.1:$port/healthz"; then
    echo "port $port is taken by another server; stop it first" >&2; exit 1
  fi
  if [ "$mode" = cluster ]; then
    db=bench_$$
    [ "$i" -gt 1 ] || psql "${DATABASE_URL:-postgres://postgres@127.0.0.1:5432}/postgres" -qc "CREATE DATABASE $db" >/dev/null
    env DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432}/$db" \
        REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}" REDIS_PREFIX="bench$$" \
        JWT_SECRET=benchmark-secret-benchmark-secret-0123 RUST_LOG=warn $one_address $unlimited $lasting \
        "$server" --bind 127.0.0.1:$port > "$work/server$i.log" 2>&1 &
  else
        env -C "$work" RUST_LOG=warn $one_address $unlimited $lasting "$server" --bind 127.0.0.1:$port > "$work/server$i.log" 2>&1 &
  fi
  echo $! > "$work/server$i.pid"
  urls+=(--url "http://127.0.0.1:$port")
done
for i in $(seq 1 "$replicas"); do
  for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$((19100 + i))/readyz" && break; sleep 0.2; done
    pids+=(--server-pid "$(cat "$work/server$i.pid")")
done
# The Redis processes, as Redis itself names them: the one node, or every
# node of a cluster (replicas of a shard relay its sharded messages too).
redis_pids() {
  local url=${REDIS_URL:-redis://127.0.0.1:6379} nodes
  case $url in
    redis+cluster://*)
      nodes=${url#redis+cluster://}; nodes=${nodes%%,*}
      nodes=$(redis-cli -h "${nodes%:*}" -p "${nodes#*:}" cluster nodes | awk '{ split($2, a, "@"); print a[1] }') ;;
    redis+sentinel://*)
      # The master and its replicas, as the first sentinel names them (the
      # sentinels themselves do nothing per message).
      local rest=${url#redis+sentinel://} sentinel name
      rest=${rest#*@}; sentinel=${rest%%[,/]*}; name=${rest##*/}
      nodes=$({
        redis-cli -h "${sentinel%:*}" -p "${sentinel#*:}" sentinel get-master-addr-by-name "$name" | paste -sd:
        redis-cli -h "${sentinel%:*}" -p "${sentinel#*:}" sentinel replicas "$name" | awk 'p == "name" { print } { p = $0 }'
      }) ;;
    *) nodes=$(url=${url#redis://}; echo "${url%%/*}") ;;
  esac
  for node in $nodes; do
    redis-cli -h "${node%:*}" -p "${node#*:}" info server | tr -d '\r' | sed -n 's/^process_id://p'
  done
}
if [ "$mode" = cluster ]; then
  for pid in $(redis_pids); do pids+=(--redis-pid "$pid"); done
fi

# The login storm and the idle connections are measured over half the window.
half=$(awk "BEGIN { print $duration / 2 }")
# The WebSocket scenarios of one role (the ws-direct family's pairs, the
# broadcasts' listeners, the idle connections' users) are registered once and
# reused by the next (two password hashes a user were most of CI's benchmark
# step); the HTTP scenarios change their users (log them out, fill their
# mailboxes), so each has its own.
run() {
  local users=(--prefix "r$RANDOM")
  case $1 in ws-*|conn-*) users=(--prefix "r$$" --accounts "$work/accounts") ;; esac
  target/release/loadgen "$@" "${urls[@]}" "${pids[@]}" "${users[@]}"
}
# conn-capacity for $1 connections, or a line saying why it cannot run here.
capacity() {
  local needed=$(( $1 + 200 ))  # the generator holds every one
  if [ "$(ulimit -n)" -lt "$needed" ]; then
    echo "{\"scenario\": \"conn-capacity\", \"connections\": $1, \"skipped\": \"the file limit is $(ulimit -n) (hard $(ulimit -Hn)); $needed needed\"}"
    return
  fi
  run conn-capacity --connections "$1" --users $(( $1 / 100 )) --duration "$half"
}
for scenario in "${scenarios[@]}"; do
  case "$scenario" in
    ws-direct) run ws-direct --connections 1000 --window 8 --duration "$duration" ;;
    # The speed round's figure: a smaller window, so more wake-ups a message.
    ws-direct-w2) run ws-direct --connections 1000 --window 2 --duration "$duration" ;;
    # Every message crosses replicas (partners sit on neighbouring replicas).
    ws-cross) run ws-direct --connections 200 --window 2 --duration "$duration" ;;
    ws-direct-acked) run ws-direct --connections 1000 --window 8 --acknowledged --duration "$duration" ;;
    ws-direct-20k) run ws-direct --connections 1000 --rate 20000 --duration "$duration" ;;
    ws-broadcast) run ws-broadcast --connections 1000 --window 8 --duration "$duration" ;;
    ws-broadcast-64) run ws-broadcast --connections 1000 --window 64 --duration "$duration" ;;
    # Paced, as a busy channel is: CPU per delivery and fan-out latency.
    ws-broadcast-paced) run ws-broadcast --connections 201 --rate 400 --duration "$duration" ;;
    ws-broadcast-paced-1k) run ws-broadcast --connections 1001 --rate 400 --duration "$duration" ;;
    http-online) run http-online --contacts 200 --concurrency 32 --duration "$duration" ;;
    http-offline) run http-offline --messages 20000 --concurrency 256 --duration "$duration" ;;
    login-storm) run login-storm --concurrency 16 --duration "$half" ;;
    conn-capacity) capacity 10000 ;;
    conn-capacity-50k) capacity 50000 ;;
    *) echo "unknown scenario $scenario" >&2; exit 2 ;;
  esac
done
