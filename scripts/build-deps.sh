#!/usr/bin/env bash
# Installs what building and testing the gateway needs from Debian besides Rust: the
# OpenSSL headers and pkg-config (the `openssl` crate links the system's OpenSSL for the
# wss:// listener) and the `openssl` command-line tool (the Python TLS tests make their
# certificates with it). Does nothing when they are present; otherwise installs them with
# apt-get (as root, or through sudo).
set -euo pipefail

missing=()
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
if ! pkg-config --exists openssl 2>/dev/null; then
    missing+=(libssl-dev)
fi
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if [[ ${#missing[@]} -eq 0 ]]; then
    echo "build dependencies present (pkg-config, libssl-dev, openssl)"
    exit 0
fi

sudo=""
if [[ "$(id -u)" -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        sudo="sudo"
    else
        echo "error: ${missing[*]} missing and installing needs root (apt-get install ${missing[*]})" >&2
        exit 1
    fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: ${missing[*]} missing and there is no apt-get; install them by hand" >&2
    exit 1
fi
echo "installing ${missing[*]} with apt-get"
$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
