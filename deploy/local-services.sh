# What deploy/redis-sentinel.sh, deploy/redis-cluster.sh and deploy/pgbouncer.sh
# share: sourced by them after they set NAME (for messages) and STATE_DIR, it
# runs the command their first argument names (their own `start`, or `stop`).

log() { printf '%s: %s\n' "$NAME" "$*" >&2; }

wait_for() { # description command...
  local what=$1; shift
  for _ in $(seq 300); do "$@" >/dev/null 2>&1 && return; sleep 0.1; done
  log "timed out waiting for $what"; exit 1
}

require_redis() {
  command -v redis-server >/dev/null || { log "redis-server is not installed (apt-get install redis-server)"; exit 1; }
}

# Every process started under STATE_DIR, by its pid file.
stop() {
  for pidfile in "$STATE_DIR"/*.pid; do
    [ -f "$pidfile" ] || continue
    kill "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
  done
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
