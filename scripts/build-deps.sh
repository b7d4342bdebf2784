#!/usr/bin/env bash
# Installs what building and testing the gateway needs from Debian besides Rust: the
# OpenSSL headers and pkg-config (the `openssl` crate links the system's OpenSSL for the
# wss:// listener), the `openssl` command-line tool (the Python TLS tests make their
# certificates with it), `haproxy` (the PROXY protocol tests put the gateway behind it)
# and `redis-server` (the cluster tests share a registry in it). Does nothing when they
# are present; otherwise installs them with apt-get (as root, or through sudo; see
# scripts/apt-install.sh), without letting the packages start services.
set -euo pipefail

missing=()
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
if ! pkg-config --exists openssl 2>/dev/null; then
    missing+=(libssl-dev)
fi
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v haproxy >/dev/null 2>&1 || [[ -x /usr/sbin/haproxy ]] || missing+=(haproxy)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [[ ${#missing[@]} -eq 0 ]]; then
    echo "build dependencies present (pkg-config, libssl-dev, openssl, haproxy, redis-server)"
    exit 0
fi

echo "installing ${missing[*]} with apt-get"
source "$(dirname "${BASH_SOURCE[0]}")/apt-install.sh"
apt_install "${missing[@]}"
