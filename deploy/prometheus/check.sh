#!/usr/bin/env bash
# Checks the alerts: the rules file is valid (promtool check rules), every
# alert has unit tests that make it fire (promtool test rules, series in,
# alerts out) and a runbook entry in docs/OPERATIONS.md, and the
# PrometheusRule in k8s/ holds the very same groups.
#
#   deploy/prometheus/check.sh [PYTHON]
#
# PYTHON (default python3) must have PyYAML (yamllint's venv has it).
# promtool is Debian's `prometheus` package; installed here if missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${1:-python3}
if ! command -v promtool >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
promtool check rules deploy/prometheus/alerts.yml
promtool check config deploy/prometheus/prometheus.yml
(cd deploy/prometheus && promtool test rules alerts.test.yml)
"$python" - <<'PY'
import sys, yaml
rules = yaml.safe_load(open("deploy/prometheus/alerts.yml"))
operator = yaml.safe_load(open("k8s/prometheusrule.yaml"))
tests = yaml.safe_load(open("deploy/prometheus/alerts.test.yml"))
runbook = open("docs/OPERATIONS.md").read()
failed = []
if operator["spec"] != rules:
    failed.append("k8s/prometheusrule.yaml's spec differs from deploy/prometheus/alerts.yml")
fired = {case["alertname"] for test in tests["tests"] for case in test["alert_rule_test"] if case.get("exp_alerts")}
quiet = {case["alertname"] for test in tests["tests"] for case in test["alert_rule_test"] if not case.get("exp_alerts")}
for group in rules["groups"]:
    for rule in group["rules"]:
        name = rule["alert"]
        if name not in fired:
            failed.append(f"{name}: no test makes it fire")
        if name not in quiet:
            failed.append(f"{name}: no test where it stays quiet")
        if f"### {name}\n" not in runbook:
            failed.append(f"{name}: no '### {name}' in docs/OPERATIONS.md")
        if rule["annotations"].get("runbook_url") != f"docs/OPERATIONS.md#{name.lower()}":
            failed.append(f"{name}: its runbook_url is not docs/OPERATIONS.md#{name.lower()}")
for line in failed:
    print("alerts:", line, file=sys.stderr)
sys.exit(1 if failed else 0)
PY
echo "alerts: every rule checked, tested, in the runbook and in the PrometheusRule"
