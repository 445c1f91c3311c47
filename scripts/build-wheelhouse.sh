#!/usr/bin/env bash
# Builds the offline wheelhouse that flash.sh installs on a unit (no network on first boot):
# the agent's own wheel, and exactly the wheels pinned in requirements/unit.lock (the runtime for
# Raspberry Pi OS bookworm: aarch64, glibc 2.36, CPython 3.11), each checked against its hash.
#
#   bash scripts/build-wheelhouse.sh OUT_DIR [PYTHON_VERSION]     (needs the network, not root)
#
# Run it on any machine (x86_64 included): nothing is built for aarch64 here, only downloaded. The
# agent's wheel is built in .venv (scripts/bootstrap.sh: pip and the build backend from a lock,
# so no unhashed download either). unit.lock is resolved for CPython 3.11; another
# PYTHON_VERSION works only where the same pins have wheels for it (pip names the one missing).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: build-wheelhouse.sh OUT_DIR [PYTHON_VERSION]}"
pyver="${2:-3.11}"
mkdir -p "$out"

bash scripts/bootstrap.sh demo # the smallest lock with pip and the build backend
python_bin=.venv/bin/python
quiet() { "$@" 2> >(grep -v "^WARNING: Location" >&2); } # pip.conf's missing find-links folders

platform_args=()
while IFS= read -r p; do platform_args+=(--platform "$p"); done < <(bash flash.sh --print-wheel-platforms)
target_args=(--only-binary=:all: "${platform_args[@]}" --python-version "$pyver" --implementation cp
    --abi "cp${pyver/./}")

# The agent itself is pure Python: one py3-none-any wheel.
quiet "$python_bin" -m pip wheel --quiet --disable-pip-version-check --no-deps --no-build-isolation \
    --no-index --wheel-dir "$out" .
# Its dependencies: the unit lock, every file checked against its hash (--no-deps: the lock is
# the whole set; the trial install below proves nothing is missing).
quiet "$python_bin" -m pip download --quiet --disable-pip-version-check --dest "$out" --no-deps \
    --require-hashes "${target_args[@]}" -r requirements/unit.lock
# What flash.sh will do, offline: the agent with its dependencies from this folder alone.
trial="$(mktemp -d)"
trap 'rm -rf "$trial"' EXIT
quiet "$python_bin" -m pip install --quiet --disable-pip-version-check --no-index --find-links "$out" \
    "${target_args[@]}" --no-compile --target "$trial" dispenser-agent
wheels=("$out"/*.whl)
echo "wheelhouse: ${#wheels[@]} wheels in $out"
