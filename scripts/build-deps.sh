#!/usr/bin/env bash
# Installs what building and testing the gateway needs from Debian besides Rust: the
# OpenSSL headers and pkg-config (the `openssl` crate links the system's OpenSSL for the
# wss:// listener), the `openssl` command-line tool (the Python TLS tests make their
# certificates with it) and `haproxy` (the PROXY protocol tests put the gateway behind
# it). Does nothing when they are present; otherwise installs them with apt-get (as root,
# or through sudo), without letting the packages start services.
set -euo pipefail

missing=()
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
if ! pkg-config --exists openssl 2>/dev/null; then
    missing+=(libssl-dev)
fi
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v haproxy >/dev/null 2>&1 || [[ -x /usr/sbin/haproxy ]] || missing+=(haproxy)
if [[ ${#missing[@]} -eq 0 ]]; then
    echo "build dependencies present (pkg-config, libssl-dev, openssl, haproxy)"
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
# policy-rc.d answering 101 keeps the haproxy package from starting its service, unless
# the machine already has a policy in place.
policy="/usr/sbin/policy-rc.d"
added_policy=""
if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod 755 "$policy"
    added_policy=1
fi
status=0
$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq || status=$?
if [[ "$status" -eq 0 ]]; then
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" || status=$?
fi
if [[ -n "$added_policy" ]]; then
    $sudo rm -f "$policy"
fi
exit "$status"
