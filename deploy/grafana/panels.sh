#!/usr/bin/env bash
# The dashboard against a real Prometheus: starts the server (embedded),
# Debian's Prometheus scraping it every second with the alert rules loaded,
# and the soak's clients (some abusive) for a short while; then evaluates
# every query of deploy/grafana/dashboards/secchat.json through Prometheus's
# API. Fails if a query does not evaluate, a panel shows no data, or the
# rules did not load. Prints the panel list with what each showed, as
# Markdown (deploy/grafana/PANELS.md is one such run).
#
#   deploy/grafana/panels.sh [SECONDS]          (default 30; PROFILE=release|debug)
set -euo pipefail
cd "$(dirname "$0")/../.."
duration=${1:-30}
profile=${PROFILE:-debug}
if ! command -v prometheus >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
if [ "$profile" = release ]; then cargo build --release --quiet --bins; else cargo build --quiet --bins; fi
bin=$PWD/target/$profile
work=$(mktemp -d)
cleanup() { kill $(cat "$work"/*.pid 2>/dev/null) 2>/dev/null || true; sleep 1; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port=$(free_port); prom_port=$(free_port)

env -C "$work" TRUSTED_PROXIES=127.0.0.1/32 RUST_LOG=warn MAILBOX_MAX_MESSAGES=50 WS_PING_SECS=10 \
  "$bin/secchat" --bind "127.0.0.1:$port" > "$work/server.log" 2>&1 &
echo $! > "$work/server.pid"
for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$port/readyz" && break; sleep 0.2; done

cat > "$work/prometheus.yml" <<YAML
global: {scrape_interval: 1s, evaluation_interval: 1s}
rule_files: [$PWD/deploy/prometheus/alerts.yml]
scrape_configs:
  - job_name: secchat
    static_configs: [{targets: ["127.0.0.1:$port"]}]
YAML
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
  --web.listen-address="127.0.0.1:$prom_port" --log.level=warn > "$work/prometheus.log" 2>&1 &
echo $! > "$work/prometheus.pid"
for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$prom_port/-/ready" && break; sleep 0.2; done

# The soak's own verdicts are benches/soak.sh's to test; here it is traffic.
"$bin/loadgen" soak --url "http://127.0.0.1:$port" --server-pid "$(cat "$work/server.pid")" \
  --duration "$duration" --clients 100 --mailbox-max-messages 50 --threads 2 > "$work/soak.json" \
  || echo "panels: the soak reported a failure (benches/soak.sh checks that); its traffic serves here" >&2
sleep 3 # three more scrapes after the last client left

python3 - "http://127.0.0.1:$prom_port" "$duration" <<'PY'
import json, sys, urllib.parse, urllib.request
prom, duration = sys.argv[1], sys.argv[2]
def api(path, **params):
    url = f"{prom}/api/v1/{path}?" + urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        return json.load(e)
failed = []
rules = api("rules")["data"]["groups"]
loaded = [r for g in rules for r in g["rules"]]
bad = [r["name"] for r in loaded if r.get("health") != "ok"]
if not loaded or bad:
    failed.append(f"alert rules: {len(loaded)} loaded, unhealthy: {bad}")
firing = sorted({r["name"] for r in loaded if r.get("state") != "inactive"})
dash = json.load(open("deploy/grafana/dashboards/secchat.json"))
def value(v):
    x = float(v)
    if x != x: return "NaN"
    return f"{x:.3g}"
print(f"Panels of deploy/grafana/dashboards/secchat.json as Prometheus evaluated them after a {duration} s soak")
print("(deploy/grafana/panels.sh: the embedded server, 100 clients, some abusive; instant queries, `$__rate_interval` = 1m).\n")
print("| row / panel | series: value at the end of the run |")
print("|---|---|")
for panel in dash["panels"]:
    if panel["type"] == "row":
        print(f"| **{panel['title']}** | |")
        continue
    shown = []
    for target in panel["targets"]:
        expr = target["expr"].replace("$__rate_interval", "1m").replace("$instance", ".*")
        answer = api("query", query=expr)
        if answer.get("status") != "success":
            failed.append(f"{panel['title']}: {expr}: {answer.get('error')}")
            continue
        for series in answer["data"]["result"]:
            labels = series["metric"]
            legend = target.get("legendFormat") or expr
            for k, v in labels.items():
                legend = legend.replace("{{" + k + "}}", v)
            legend = legend.replace(f"127.0.0.1:", "replica :")
            shown.append(f"{legend}: {value(series['value'][1])}")
    if not shown:
        failed.append(f"{panel['title']}: no data")
    print(f"| {panel['title']} | {'; '.join(shown) or 'no data'} |")
print(f"\nAlert rules loaded: {len(loaded)}, all healthy; pending or firing at the end: {', '.join(firing) or 'none'}.")
for line in failed:
    print("panels:", line, file=sys.stderr)
sys.exit(1 if failed else 0)
PY
