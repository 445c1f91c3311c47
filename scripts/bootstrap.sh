#!/usr/bin/env bash
# Creates .venv (Python 3.11+) and installs the project with the extras named in $1
# (e.g. "dev,demo"). Shared by scripts/test.sh and scripts/demo.sh; safe to run again.
# Everything comes from a lock with hashes (requirements/, made by scripts/lock.sh): demo.lock
# when only the demo extra is asked for, else dev.lock (every extra). Wheels only, nothing built
# but the project itself, with the locked build backend and no download.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"

# An existing .venv is kept (looking for interpreters costs seconds at every test run).
if [ ! -x .venv/bin/python ]; then
  python_bin="${PYTHON:-}"
  if [ -z "$python_bin" ]; then
    for candidate in python3.13 python3.12 python3.11 python3; do
      if command -v "$candidate" >/dev/null 2>&1 &&
         "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        python_bin="$candidate"
        break
      fi
    done
  fi
  if [ -z "$python_bin" ]; then
    echo "error: Python 3.11 or newer is needed (set PYTHON=/path/to/python3.11)" >&2
    exit 1
  fi

  if ! "$python_bin" -m venv .venv 2>/dev/null; then
    # Debian splits venv out of python3; install it when we may.
    rm -rf .venv
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      ver=$("$python_bin" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "python${ver}-venv" >/dev/null || DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
      "$python_bin" -m venv .venv
    else
      echo "error: '$python_bin -m venv' failed; install python3-venv (sudo apt-get install python3-venv)" >&2
      exit 1
    fi
  fi
fi

unknown="$(.venv/bin/python - "${extras//,/ }" <<'PY'
import sys, tomllib
known = tomllib.load(open("pyproject.toml", "rb"))["project"].get("optional-dependencies", {})
print(" ".join(e for e in sys.argv[1].split() if e not in known))
PY
)"
if [ -n "$unknown" ]; then
  echo "error: no extra '$unknown' in pyproject.toml" >&2
  exit 1
fi
lock=requirements/demo.lock
for extra in ${extras//,/ }; do
  [ "$extra" = demo ] || lock=requirements/dev.lock
done

# Done before with this very lock, pyproject.toml and interpreter: nothing to do (test.sh runs
# this at every call).
stamp="$(cat "$lock" pyproject.toml | sha256sum | cut -d' ' -f1) $lock $(.venv/bin/python -VV | head -1)"
if [ -f .venv/.bootstrap-stamp ] && [ "$(cat .venv/.bootstrap-stamp)" = "$stamp" ]; then
  exit 0
fi
rm -f .venv/.bootstrap-stamp

quiet() { "$@" 2> >(grep -v "^WARNING: Location" >&2); }
# --require-hashes: every file is checked against the lock, pip itself included (Debian's venv
# brings pip 23.0, which reads these locks as they are and then upgrades itself from them).
quiet .venv/bin/python -m pip install --quiet --disable-pip-version-check --require-hashes \
  --only-binary :all: -r "$lock"
# The project itself, editable, without a download: its build backend came from the lock.
quiet .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
  --no-build-isolation --no-index -e .
echo "$stamp" >.venv/.bootstrap-stamp
