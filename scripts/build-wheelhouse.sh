#!/usr/bin/env bash
# Builds the offline wheelhouse that flash.sh installs on a unit (no network on first boot):
# the agent's own wheel, and every runtime dependency as a wheel for CPython on aarch64
# (Raspberry Pi OS bookworm: CPython 3.11, glibc 2.36) or as a pure-Python wheel.
#
#   bash scripts/build-wheelhouse.sh OUT_DIR [PYTHON_VERSION]     (needs the network, not root)
#
# Run it on any machine (x86_64 included): nothing is built for aarch64 here, only downloaded; a
# dependency with no aarch64 or pure wheel fails the run by name (then build that wheel on a Pi
# with `pip wheel` and put it in OUT_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: build-wheelhouse.sh OUT_DIR [PYTHON_VERSION]}"
pyver="${2:-3.11}"
python_bin="${PYTHON:-python3}"
mkdir -p "$out"

platform_args=()
while IFS= read -r p; do platform_args+=(--platform "$p"); done < <(bash flash.sh --print-wheel-platforms)

# The agent itself is pure Python: one py3-none-any wheel.
"$python_bin" -m pip wheel --quiet --disable-pip-version-check --no-deps --wheel-dir "$out" .
agent_wheel=""
for w in "$out"/dispenser_agent-*.whl; do # the newest, should older versions lie there too
    if [ -z "$agent_wheel" ] || [ "$w" -nt "$agent_wheel" ]; then agent_wheel="$w"; fi
done
# Its dependencies, resolved for the unit's platform, binary only (nothing compiles on the unit).
"$python_bin" -m pip download --quiet --disable-pip-version-check --dest "$out" \
    --only-binary=:all: "${platform_args[@]}" \
    --python-version "$pyver" --implementation cp --abi "cp${pyver/./}" "$agent_wheel"
wheels=("$out"/*.whl)
echo "wheelhouse: ${#wheels[@]} wheels in $out"
