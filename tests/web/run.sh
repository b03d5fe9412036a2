#!/usr/bin/env bash
# The web messenger's browser tests: Playwright (playwright-core from npm)
# driving Debian's Chromium, never a downloaded browser.
#
#   tests/web/run.sh [embedded|cluster|nat|all]     (default: all)
#
# embedded: the server's embedded default (SQLite, in-process fan-out),
#           direct links on loopback included.
# cluster:  three replicas behind nginx (deploy/local-cluster.sh) on Postgres
#           (TEST_DATABASE_URL; each run makes its own database) and Redis
#           (TEST_REDIS_URL; each run its own key prefix).
# nat:      direct links across NATs, through coturn, and a tampering
#           signalling path, in network namespaces (root; skipped, saying
#           why, where the machine does not allow them).
# The server is target/debug/secchat (built here) unless SECCHAT_BIN names
# another. Screenshots of the main screens land in target/web-artifacts/.
set -euo pipefail
cd "$(dirname "$0")/../.."
which=${1:-all}

# Chromium, and a CJK font so that the screenshots show Chinese text as text.
packages=(chromium fonts-wqy-microhei)
# The NAT lab: namespaces and veth (iproute2), the routers' NAT (nftables),
# Debian's coturn, and curl to ask the server inside the lab.
case $which in nat|all) packages+=(iproute2 nftables coturn curl) ;; esac
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [ -z "${SECCHAT_BIN:-}" ]; then
  cargo build --quiet --bin secchat
fi
(cd tests/web && npm ci --no-audit --no-fund --silent)

# The messenger's JavaScript type-checks (tsc --checkJs --strict, JSDoc types).
(cd tests/web && npx tsc -p tsconfig.json)

# The published test vectors are what the browser's code produces.
node tests/web/make-vectors.mjs
git diff --exit-code -- docs/e2e-vectors.json

suite() { node --test --test-concurrency=1 --test-timeout=600000 "$@"; }
embedded=(tests/web/messenger.test.mjs tests/web/sessions.test.mjs tests/web/direct.test.mjs)
case $which in
  embedded) suite "${embedded[@]}" ;;
  cluster) suite tests/web/cluster.test.mjs ;;
  nat) suite tests/web/nat.test.mjs ;;
  all) suite "${embedded[@]}" tests/web/cluster.test.mjs tests/web/nat.test.mjs ;;
  *) echo "usage: $0 [embedded|cluster|nat|all]" >&2; exit 2 ;;
esac
