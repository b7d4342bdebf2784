#!/usr/bin/env bash
# Reproduces BENCHMARKS.md: builds the gateway, the simulator and the echo server, installs
# the peer servers (npm ocpp-rpc, Python ocpp) and the Kafka-protocol broker (tansu), then
# runs bench/bench.py, which prints the report and writes it to BENCHMARKS.md, and
# bench/cluster.py (several nodes sharing a redis-server), which appends its section.
#
#   bench/run.sh                 the full run (about 15 minutes on 2 cores, after building)
#   bench/run.sh --quick         a smoke run with small sizes, written to target/bench-quick.md
#                                (the test suite runs it with --check --max-cpu-ratio)
#   bench/run.sh --quick --debug the same with debug builds (checks only that it runs)
#
# Other arguments go to bench/bench.py (see bench/bench.py --help).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

profile=release
quick=false
check=false
output=""
pass=()
expect_output=false
for arg in "$@"; do
  if $expect_output; then output="$arg"; expect_output=false; continue; fi
  case "$arg" in
    --debug) profile=debug ;;
    --quick) quick=true; pass+=("$arg") ;;
    --check) check=true; pass+=("$arg") ;;
    --output) expect_output=true ;;
    --output=*) output="${arg#--output=}" ;;
    *) pass+=("$arg") ;;
  esac
done
# Where cargo puts what it builds: CARGO_TARGET_DIR when set, like cargo itself.
target_dir="${CARGO_TARGET_DIR:-target}"
if [[ -z "$output" ]]; then
  if $quick; then output="$target_dir/bench-quick.md"; else output="BENCHMARKS.md"; fi
fi

step() { printf '\n== %s\n' "$*" >&2; }

step "building the gateway, the simulator and the echo server ($profile)"
cargo_flags=()
[[ $profile == release ]] && cargo_flags+=(--release)
cargo build "${cargo_flags[@]}" -p charge-point-gateway -p charge-point-simulator -p bench-echo-server

step "the Kafka-protocol broker (tansu 0.6.0)"
if ! tansu --version 2>/dev/null | grep -q "0\.6\.0"; then
  cargo install tansu --version 0.6.0 --features dynostore --locked
fi

step "the ocpp-rpc peer server (npm)"
peer_js=bench/peers/ocpp-rpc
if ! cmp -s "$peer_js/package-lock.json" "$peer_js/node_modules/.bench-installed" 2>/dev/null; then
  (cd "$peer_js" && npm ci --no-audit --no-fund --loglevel=error)
  cp "$peer_js/package-lock.json" "$peer_js/node_modules/.bench-installed"
fi

step "the Python ocpp peer server (venv)"
venv=bench/.venv
requirements=bench/peers/python/requirements.txt
if ! cmp -s "$requirements" "$venv/.requirements" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$venv/.requirements"
fi

step "running the benchmark"
python3 bench/bench.py --bin-dir "$target_dir/$profile" --python "$venv/bin/python" --output "$output" "${pass[@]}"

step "the cluster benchmark (appended to $output)"
cluster_flags=(--bin-dir "$target_dir/$profile" --output "$output")
$quick && cluster_flags+=(--quick)
$check && cluster_flags+=(--check)
"$venv/bin/python" bench/cluster.py "${cluster_flags[@]}"
