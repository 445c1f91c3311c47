#!/usr/bin/env bash
# Make sure `systemd-analyze` is available: the test suite verifies the service units with it and
# fails when their exposure leaves the OK band (tests/test_systemd_units.py). Only the tool is
# needed; nothing is started. On Debian it comes with the `systemd` package.
set -euo pipefail

if command -v systemd-analyze >/dev/null 2>&1; then
    echo "systemd-analyze: $(command -v systemd-analyze)"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "error: systemd-analyze is not installed and this script is not running as root." >&2
    echo "       install it with: sudo apt-get install -y --no-install-recommends systemd" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# Try without refreshing the index first: apt-get update is slow and often unnecessary in CI.
if ! apt-get install -y --no-install-recommends systemd; then
    apt-get update
    apt-get install -y --no-install-recommends systemd
fi

if command -v systemd-analyze >/dev/null 2>&1; then
    echo "systemd-analyze: $(command -v systemd-analyze)"
    exit 0
fi
echo "error: systemd was installed but systemd-analyze cannot be found" >&2
exit 1
