# Sourced by scripts/build-deps.sh and scripts/check-deploy.sh: apt_install PACKAGE...
# installs Debian packages as root, or through sudo (then APT_SUDO is "sudo", for the
# caller's own follow-up commands), without letting their maintainer scripts start
# services (a policy-rc.d answering 101, unless the machine already has a policy). On
# failure it prints the end of apt-get's output and returns its status.

APT_SUDO=""

apt_install() {
    if [[ "$(id -u)" -ne 0 ]]; then
        if command -v sudo >/dev/null 2>&1; then
            APT_SUDO="sudo"
        else
            echo "error: installing $* needs root (apt-get install $*)" >&2
            return 1
        fi
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "error: $* missing and there is no apt-get; install them by hand" >&2
        return 1
    fi

    local policy="/usr/sbin/policy-rc.d" added_policy=""
    if [[ ! -e "$policy" ]]; then
        printf '#!/bin/sh\nexit 101\n' | $APT_SUDO tee "$policy" >/dev/null
        $APT_SUDO chmod 755 "$policy"
        added_policy=1
    fi

    local status=0 log
    log="$(mktemp)"
    {
        $APT_SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
            $APT_SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
    } >"$log" 2>&1 || status=$?
    if [[ "$status" -ne 0 ]]; then
        tail -n 30 "$log" >&2
    fi
    rm -f "$log"

    if [[ -n "$added_policy" ]]; then
        $APT_SUDO rm -f "$policy"
    fi
    return "$status"
}
