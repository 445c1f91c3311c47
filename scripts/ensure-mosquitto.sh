#!/usr/bin/env bash
# Make sure a `mosquitto` binary is available for the test suite.
# Tests start their own private broker on 127.0.0.1 (tests/broker.py); they never rely on a
# system mosquitto service, so whether the package starts one does not matter here.
set -euo pipefail

find_mosquitto() {
    # Debian installs the broker in /usr/sbin, which is not on every user's PATH.
    command -v mosquitto 2>/dev/null && return 0
    for candidate in /usr/sbin/mosquitto /usr/local/sbin/mosquitto; do
        if [ -x "$candidate" ]; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

# The broker, and the stock clients (mosquitto_sub) a test uses as the response centre would.
if path="$(find_mosquitto)" && command -v mosquitto_sub >/dev/null 2>&1; then
    echo "mosquitto: $path"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "error: mosquitto (or mosquitto_sub) is not installed and this script is not running as root." >&2
    echo "       install it with: sudo apt-get install -y --no-install-recommends mosquitto mosquitto-clients" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# Try without refreshing the index first: apt-get update is slow and often unnecessary in CI.
if ! apt-get install -y --no-install-recommends mosquitto mosquitto-clients; then
    apt-get update
    apt-get install -y --no-install-recommends mosquitto mosquitto-clients
fi

if path="$(find_mosquitto)" && command -v mosquitto_sub >/dev/null 2>&1; then
    echo "mosquitto: $path"
    exit 0
fi
echo "error: mosquitto was installed but the broker or mosquitto_sub cannot be found" >&2
exit 1
