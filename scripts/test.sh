#!/usr/bin/env bash
# The one test command: Rust unit and integration tests (the Kafka ones against a real
# tansu broker process), the checks of the Prometheus rules and Grafana dashboard, then the
# Python tests against the real binary: the interop tests, and the observability tests
# (one of which runs the gateway with tansu and a real Prometheus server), and a smoke run
# of the benchmark against every peer server. Works from any directory. Needs cargo,
# python3 (3.11) with pip, and node with npm; everything else is installed here: tansu with
# `cargo install` (once per machine), Debian's prometheus package (promtool and the server)
# by scripts/check-deploy.sh, the Python packages into .venv, and the benchmark's peer
# servers (npm ocpp-rpc, Python ocpp in bench/.venv) by bench/run.sh.
set -euo pipefail
# The regression guard's bound on the gateway's CPU per CALL over the echo server's (step 7).
CPU_RATIO_BOUND=4

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PYTHON="${PYTHON:-python3}"
VENV="$ROOT/.venv"
REQUIREMENTS=(tests/interop/requirements.txt tests/observability/requirements.txt tests/deploy/requirements.txt)
STAMP="$VENV/.requirements.sha"

section() {
    printf '\n==> %s\n' "$*"
}

# CPGW_* variables configure the gateway (and an unknown key in a section stops it): a
# developer's own settings must not leak into the config tests or the binary under test.
while IFS= read -r name; do
    unset "$name"
done < <(compgen -e | grep '^CPGW_' || true)

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    else
        "$PYTHON" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$1"
    fi
}

section "[0/7] build dependencies from Debian: scripts/build-deps.sh"
bash "$ROOT/scripts/build-deps.sh"

section "[1/7] Kafka-protocol broker for the Kafka tests (tansu 0.6.0)"
# A real broker process, built once per machine (about 10 minutes on 2 cores);
# `cargo install` skips the build when this version is already installed.
TANSU_VERSION="0.6.0"
CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
export PATH="$CARGO_BIN:$PATH"
if command -v tansu >/dev/null 2>&1 && cargo install --list | grep "^tansu v$TANSU_VERSION:" >/dev/null; then
    echo "tansu $TANSU_VERSION already installed"
else
    cargo install tansu --version "$TANSU_VERSION" --features dynostore --locked
fi
export TANSU_BIN="$(command -v tansu)"

section "[2/7] Python environment for the interop and observability tests ($VENV)"
if [[ ! -x "$VENV/bin/python" ]]; then
    echo "creating $VENV with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
fi
# One line per requirements file: a change to either reinstalls.
wanted_sha="$(for file in "${REQUIREMENTS[@]}"; do printf '%s  %s\n' "$(sha256_of "$file")" "$file"; done)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$wanted_sha" ]]; then
    echo "${REQUIREMENTS[*]} unchanged since the last install; skipping pip install"
else
    pip_args=()
    for file in "${REQUIREMENTS[@]}"; do
        pip_args+=(-r "$file")
    done
    echo "pip install -q ${pip_args[*]}"
    "$VENV/bin/python" -m pip install -q "${pip_args[@]}"
    printf '%s\n' "$wanted_sha" >"$STAMP"
fi

section "[3/7] cargo test --workspace --all-targets"
cargo test --workspace --all-targets
# ocpp as the simulator uses it, without the default `schemas` feature.
cargo test -p ocpp-protocol --no-default-features

section "[4/7] cargo build -p charge-point-gateway --bin charge-point-gateway"
cargo build -p charge-point-gateway --bin charge-point-gateway

target_dir="${CARGO_TARGET_DIR:-target}"
[[ "$target_dir" == /* ]] || target_dir="$ROOT/$target_dir"
GATEWAY_BIN="$target_dir/debug/charge-point-gateway"
if [[ ! -x "$GATEWAY_BIN" ]]; then
    echo "error: gateway binary not found at $GATEWAY_BIN" >&2
    exit 1
fi

section "[5/7] deploy checks: scripts/check-deploy.sh (Prometheus rules and Grafana dashboard)"
# Also installs Debian's prometheus package when promtool or the server is missing: the
# observability tests below run both.
bash scripts/check-deploy.sh

section "[6/7] Python tests: pytest tests/interop tests/observability (GATEWAY_BIN=$GATEWAY_BIN)"
GATEWAY_BIN="$GATEWAY_BIN" "$VENV/bin/python" -m pytest -q tests/interop tests/observability tests/deploy
# The OCPP suites again through HAProxy (deploy/haproxy/haproxy.cfg) in front of a
# three-node cluster sharing a redis-server: any node takes any charge point, and commands
# are sent through one node whichever holds the charge point.
echo "the OCPP interop suites through HAProxy in front of a three-node cluster"
INTEROP_CLUSTER=1 GATEWAY_BIN="$GATEWAY_BIN" "$VENV/bin/python" -m pytest -q \
    tests/interop/test_ocpp16.py tests/interop/test_ocpp2x.py

section "[7/7] benchmark smoke run and CPU guard: bench/run.sh --quick --check --max-cpu-ratio $CPU_RATIO_BOUND"
# The whole benchmark at small sizes with release builds: every server starts, every
# load runs without a single error, the reconnect storm recovers, and the gateway's CPU
# per CALL stays within CPU_RATIO_BOUND times the echo server's at the same offered load
# (a ratio measured in this run, never an absolute time; see docs/benchmarks.md). Figures
# of record come from a full `bench/run.sh`, not from here.
bench/run.sh --quick --check --max-cpu-ratio "$CPU_RATIO_BOUND" --output "$target_dir/bench-quick.md"
