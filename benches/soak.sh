#!/usr/bin/env bash
# The soak (loadgen soak): clients connecting, sending and leaving at random
# for a while, some of them abusive, against a freshly started server with
# every limit at its default. Exits non-zero unless every accepted message
# arrived exactly once, every abuse met its refusal, and the server's memory
# came back near its baseline.
#
#   benches/soak.sh                       # embedded, 300 clients, 5 minutes (release build)
#   benches/soak.sh cluster 600 300       # Postgres + Redis, 600 s, 300 clients
#   PROFILE=debug benches/soak.sh embedded 30 200   # CI's short version
#
# Cluster runs need Postgres and Redis (DATABASE_URL base, default
# postgres://postgres@127.0.0.1:5432; REDIS_URL, default redis://127.0.0.1:6379).
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-embedded}
duration=${2:-300}
clients=${3:-300}
profile=${PROFILE:-release}
if [ "$profile" = release ]; then
  cargo build --release --quiet --bins
else
  cargo build --quiet --bins
fi
bin=target/$profile
work=$(mktemp -d)
cleanup() {
  kill $(cat "$work"/*.pid 2>/dev/null) 2>/dev/null || true
  sleep 1
  [ -z "${db:-}" ] || psql "$base/postgres" -qc "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# Each client speaks from an address of its own, through "this proxy".
# Small mailboxes, so that a lurker that never acknowledges meets its quota;
# pings every 10 s, so that a lurker's silent WebSocket is let go within the
# round (two silent intervals after the first ping) rather than 90 s later.
mailbox_max_messages=50
settings=(TRUSTED_PROXIES=127.0.0.1/32 RUST_LOG=warn MAILBOX_MAX_MESSAGES=$mailbox_max_messages
          WS_PING_SECS=10)
if [ "$mode" = cluster ]; then
  base=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432}
  db=soak_$$
  psql "$base/postgres" -qc "CREATE DATABASE $db" >/dev/null
  settings+=(DATABASE_URL="$base/$db" REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
             REDIS_PREFIX="soak$$" JWT_SECRET=soak-secret-soak-secret-soak-secret-0)
fi
env -C "$work" "${settings[@]}" "$PWD/$bin/secchat" --bind "127.0.0.1:$port" > "$work/server.log" 2>&1 &
echo $! > "$work/server.pid"
for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$port/readyz" && break; sleep 0.2; done

status=0
"$bin/loadgen" soak --url "http://127.0.0.1:$port" --server-pid "$(cat "$work/server.pid")" \
  --duration "$duration" --clients "$clients" --mailbox-max-messages "$mailbox_max_messages" \
  --threads 2 || status=$?
if grep -E "panicked|internal error" "$work/server.log"; then
  echo "the server logged a panic or an internal error" >&2
  status=1
fi
exit $status
