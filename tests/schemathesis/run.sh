#!/usr/bin/env bash
# Property-based fuzzing of the whole HTTP API from its own OpenAPI document,
# with schemathesis (from PyPI), against a real server: no 5xx, and every
# answer matches the documented status codes, headers and schemas.
#
#   tests/schemathesis/run.sh [SERVER_BINARY] [EXTRA SCHEMATHESIS ARGS...]
#
# The backend is the embedded default unless DATABASE_URL (and REDIS_URL) are
# set; JWT_SECRET is set here. RATE_LIMITS=off: the fuzzer signs up and logs in
# far more often than one address may. COMMON_PASSWORD_CHECK=off: a list of
# refused passwords is beyond what a schema says, and the fuzzer's favourite
# passwords ("00000000") are on it; tests/api covers the check. Longer runs: SCHEMATHESIS_MAX_EXAMPLES.
set -euo pipefail
cd "$(dirname "$0")/../.."
server=${1:-target/debug/secchat}; shift || true
st=${SCHEMATHESIS:-schemathesis}
work=$(mktemp -d)
trap 'kill "$(cat "$work/pid" 2>/dev/null)" 2>/dev/null || true; rm -rf "$work"' EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"
env -C "$work" RATE_LIMITS=off COMMON_PASSWORD_CHECK=off JWT_SECRET=schemathesis-secret-schemathesis-0123 \
    REDIS_PREFIX="schemathesis-$$" \
    DATABASE_URL="${DATABASE_URL:-sqlite://$work/fuzz.db}" RUST_LOG=warn \
    "$OLDPWD/$server" --bind "127.0.0.1:$port" > "$work/server.log" 2>&1 &
echo $! > "$work/pid"
for _ in $(seq 100); do curl -fs -o /dev/null "$base/readyz" && break; sleep 0.1; done

# A user whose token authorises the operations that need one (id 1), and the
# user the document's examples name (bob, id 2), so that requests reach past
# "not found".
for name in fuzzer bob; do
  curl -fsS -o /dev/null "$base/users/" -H 'Content-Type: application/json' \
    -d "{\"username\": \"$name\", \"email\": \"$name@example.com\", \"password\": \"$name-password\", \"public_key\": \"pk\"}"
done
token=$(curl -fsS "$base/token" -d 'username=fuzzer&password=fuzzer-password' |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])')

status=0
# `--checks all` turns on what the configuration file turns off: the checks
# it disables (and why) are named again here.
skipped=ensure_resource_availability
"$st" --config-file tests/schemathesis/schemathesis.toml run "$base/openapi.json" \
  --checks all --exclude-checks "$skipped" \
  --header "Authorization: Bearer $token" \
  --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-30}" \
  --workers 2 \
  --seed "${SCHEMATHESIS_SEED:-1}" \
  --request-timeout 10 \
  --exclude-path-regex '^/logout' \
  "$@" || status=$?
# Logging out (one token, or all of them) ends the token the run above used:
# last, on its own.
"$st" --config-file tests/schemathesis/schemathesis.toml run "$base/openapi.json" \
  --checks all --exclude-checks "$skipped" --header "Authorization: Bearer $token" --include-path-regex '^/logout' \
  --max-examples 5 --seed "${SCHEMATHESIS_SEED:-1}" "$@" || status=$?
if grep -E "panicked|internal error" "$work/server.log"; then
  echo "the server logged a panic or an internal error" >&2
  status=1
fi
exit $status
