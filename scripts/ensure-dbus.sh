#!/usr/bin/env bash
# Make sure a `dbus-daemon` binary is available for the test suite.
# The BLE tests start their own private bus (hw/ble.py, PrivateBus) with a stand-in for bluetoothd
# on it; they never use the machine's system bus or any Bluetooth hardware.
set -euo pipefail

if path="$(command -v dbus-daemon)"; then
    echo "dbus-daemon: $path"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "error: dbus-daemon is not installed and this script is not running as root." >&2
    echo "       install it with: sudo apt-get install -y --no-install-recommends dbus-daemon" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y --no-install-recommends dbus-daemon; then
    apt-get update
    apt-get install -y --no-install-recommends dbus-daemon
fi

if path="$(command -v dbus-daemon)"; then
    echo "dbus-daemon: $path"
    exit 0
fi
echo "error: dbus-daemon was installed but cannot be found" >&2
exit 1
