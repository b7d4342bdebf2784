#!/usr/bin/env bash
# The one test command: Rust unit and integration tests, then the Python interop tests
# against the real binary. Works from any directory. Needs cargo and python3 (3.11) with
# pip; everything else (the interop test packages) is installed into .venv here.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PYTHON="${PYTHON:-python3}"
VENV="$ROOT/.venv"
REQUIREMENTS="tests/interop/requirements.txt"
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

section "[1/4] Python environment for the interop tests ($VENV)"
if [[ ! -x "$VENV/bin/python" ]]; then
    echo "creating $VENV with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
fi
wanted_sha="$(sha256_of "$REQUIREMENTS")"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$wanted_sha" ]]; then
    echo "$REQUIREMENTS unchanged since the last install; skipping pip install"
else
    echo "pip install -q -r $REQUIREMENTS"
    "$VENV/bin/python" -m pip install -q -r "$REQUIREMENTS"
    printf '%s\n' "$wanted_sha" >"$STAMP"
fi

section "[2/4] cargo test --workspace --all-targets"
cargo test --workspace --all-targets

section "[3/4] cargo build -p charge-point-gateway --bin charge-point-gateway"
cargo build -p charge-point-gateway --bin charge-point-gateway

target_dir="${CARGO_TARGET_DIR:-target}"
[[ "$target_dir" == /* ]] || target_dir="$ROOT/$target_dir"
GATEWAY_BIN="$target_dir/debug/charge-point-gateway"
if [[ ! -x "$GATEWAY_BIN" ]]; then
    echo "error: gateway binary not found at $GATEWAY_BIN" >&2
    exit 1
fi

section "[4/4] interop tests: pytest tests/interop (GATEWAY_BIN=$GATEWAY_BIN)"
GATEWAY_BIN="$GATEWAY_BIN" "$VENV/bin/python" -m pytest -q tests/interop
