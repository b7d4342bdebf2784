#!/usr/bin/env bash
# Checks the operations assets in deploy/: the Prometheus rules (syntax and unit tests),
# the example Prometheus config, and the Grafana dashboard's queries (they must parse as
# PromQL). Works from any directory. Needs promtool, which it installs with apt-get
# (Debian's `prometheus` package) when it is missing, and python3 (standard library only).
# It also installs the package when the `prometheus` server binary is missing, because
# the end-to-end test in tests/observability runs one (scripts/test.sh calls this first).
#
# It never starts a Prometheus server, and if installing the package starts one (as
# Debian's maintainer scripts may), it stops that server again.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source "$ROOT/scripts/apt-install.sh"

RULES="deploy/prometheus/rules/charge-point-gateway.rules.yml"
RULE_TESTS="deploy/prometheus/rules/charge-point-gateway.rules.test.yml"
CONFIG="deploy/prometheus/prometheus.yml"
DASHBOARD="deploy/grafana/charge-point-gateway.json"

section() {
    printf '\n==> %s\n' "$*"
}

# PIDs of running Prometheus servers (exact process name), one per line.
prometheus_pids() {
    pgrep -x prometheus 2>/dev/null | sort || true
}

install_promtool() {
    local before
    before="$(prometheus_pids)"

    local status=0
    apt_install prometheus || status=$?

    # Whatever the package started anyway: stop it (the service if systemd runs it,
    # otherwise the new processes themselves, by PID).
    local after started
    after="$(prometheus_pids)"
    started="$(comm -13 <(printf '%s\n' "$before") <(printf '%s\n' "$after") | grep -v '^$' || true)"
    if [[ -n "$started" ]]; then
        echo "the prometheus package started a server; stopping it"
        if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
            $APT_SUDO systemctl stop prometheus.service || true
            $APT_SUDO systemctl disable prometheus.service >/dev/null 2>&1 || true
        fi
        local pid
        for pid in $started; do
            if kill -0 "$pid" 2>/dev/null; then
                $APT_SUDO kill "$pid" || true
            fi
        done
    fi

    if [[ "$status" -ne 0 ]]; then
        echo "error: apt-get install prometheus failed ($status)" >&2
        exit "$status"
    fi
}

section "[1/5] promtool"
if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
    echo "using $(command -v promtool)"
else
    echo "promtool or prometheus not found: installing Debian's prometheus package"
    install_promtool
fi
promtool --version 2>&1 | head -n 1

section "[2/5] promtool check rules $RULES"
promtool check rules "$RULES"

section "[3/5] promtool test rules $RULE_TESTS"
promtool test rules "$RULE_TESTS"

section "[4/5] promtool check config $CONFIG"
promtool check config "$CONFIG"

section "[5/5] dashboard queries parse as PromQL ($DASHBOARD)"
# Each panel query, with Grafana's variables filled in, becomes a recording rule of a
# throwaway rules file, which promtool parses.
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 - "$DASHBOARD" "$tmp/dashboard-queries.rules.yml" <<'PY'
import json
import sys

sys.path.insert(0, "tests/observability")
from dashboard_queries import dashboard_queries

dashboard, out = sys.argv[1], sys.argv[2]
queries = dashboard_queries(dashboard, {})
with open(out, "w", encoding="utf-8") as f:
    f.write("groups:\n  - name: dashboard-queries\n    rules:\n")
    for i, (title, expr) in enumerate(queries):
        f.write(f"      # {json.dumps(title)}\n")
        f.write(f"      - record: dashboard:query_{i}\n")
        f.write(f"        expr: {json.dumps(expr)}\n")
print(f"{len(queries)} queries from {dashboard}")
PY
promtool check rules "$tmp/dashboard-queries.rules.yml"

section "deploy checks passed"
