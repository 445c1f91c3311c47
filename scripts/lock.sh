#!/usr/bin/env bash
# Regenerates the lockfiles in requirements/ from pyproject.toml (a developer tool: the README's
# commands only read the locks). Needs uv (`pip install uv`, or UV=/path/to/uv) and the network.
#
#   bash scripts/lock.sh                      keep every pin that still fits pyproject.toml
#   bash scripts/lock.sh --upgrade            newest versions the ranges allow
#   bash scripts/lock.sh --upgrade-package X  only X (and what it needs) moves
#   bash scripts/lock.sh --check              exit 1 when a lock differs from what this makes now
#
# Each run also checks that every lock installs from wheels alone where it is used: dev.lock and
# demo.lock on CPython 3.11-3.14, x86_64 and aarch64 Linux; unit.lock on aarch64 CPython 3.11.
#
# dev.lock is resolved first (universal: any OS, CPython 3.11+); demo.lock and unit.lock are
# resolved with dev.lock as constraints, so the unit runs exactly the versions the suite tested.
set -euo pipefail
cd "$(dirname "$0")/.."
uv="${UV:-uv}"
command -v "$uv" >/dev/null 2>&1 || {
    echo "error: uv is needed to regenerate the locks: pip install uv (or set UV=/path/to/uv)" >&2
    exit 1
}

check=0 pass=()
while [ $# -gt 0 ]; do
    case "$1" in
    --check) check=1; shift ;;
    --upgrade) pass+=(--upgrade); shift ;;
    --upgrade-package) pass+=(--upgrade-package "${2:?--upgrade-package needs a name}"); shift 2 ;;
    *) echo "usage: lock.sh [--check | --upgrade | --upgrade-package NAME]" >&2; exit 2 ;;
    esac
done

out=requirements
if [ "$check" -eq 1 ]; then
    out="$(mktemp -d)"
    trap 'rm -rf "$out"' EXIT
    cp requirements/*.lock "$out/" # the current pins are the preferences, as in a normal run
fi

# One lock: name, what it is for (its header), then uv's arguments.
lock() {
    local name="$1" purpose="$2"
    shift 2
    local tmp
    tmp="$(mktemp)"
    # The existing lock is read as the preferred versions (uv keeps a pin unless told otherwise).
    [ -f "$out/$name" ] && cp "$out/$name" "$tmp"
    "$uv" pip compile --quiet --generate-hashes --no-header --only-binary :all: \
        "$@" "${pass[@]}" --output-file "$tmp" >/dev/null
    {
        printf '# requirements/%s: %s\n' "$name" "$purpose"
        printf '# Generated from pyproject.toml by %s (uv pip compile, with hashes): do\n' \
            "\`bash scripts/lock.sh\`"
        printf '# not edit; change pyproject.toml, then regenerate (README, "Dependencies").\n'
        sed "s#$out/dev.lock#requirements/dev.lock#" "$tmp" # --check writes elsewhere
    } >"$out/$name"
    rm -f "$tmp"
}

lock dev.lock "what \`bash scripts/test.sh\` installs (scripts/bootstrap.sh): the
# runtime, every extra (dev, demo, centre), pip and the build backend; universal (any Linux
# machine, x86_64 or aarch64, CPython 3.11 and newer)." \
    pyproject.toml requirements/bootstrap.in --all-extras --universal --python-version 3.11 \
    --constraint requirements/constraints.txt
lock demo.lock "what \`bash scripts/demo.sh\` installs (scripts/bootstrap.sh): the
# runtime, the demo extra, pip and the build backend; universal, at dev.lock's versions." \
    pyproject.toml requirements/bootstrap.in --extra demo --universal --python-version 3.11 \
    --constraint "$out/dev.lock"
lock unit.lock "the unit's runtime (no extras), for Raspberry Pi OS bookworm:
# aarch64, glibc 2.36, CPython 3.11; scripts/build-wheelhouse.sh downloads exactly these wheels
# for flash.sh. At dev.lock's versions." \
    pyproject.toml --python-platform aarch64-manylinux_2_36 --python-version 3.11 \
    --constraint "$out/dev.lock"

# Every pin must install from wheels alone where the lock is used (universal resolution alone
# does not promise that: a version may have wheels for other systems only).
where() { # lock, python version, platform
    local target
    target="$(mktemp -d)"
    if ! "$uv" pip install --quiet --dry-run --target "$target" --python-version "$2" \
        --python-platform "$3" --only-binary :all: --require-hashes -r "$out/$1"; then
        echo "error: $1 does not install from wheels on CPython $2, $3" >&2
        exit 1
    fi
    rm -rf "$target"
}
for py in 3.11 3.12 3.13 3.14; do
    for platform in x86_64-manylinux_2_36 aarch64-manylinux_2_36; do
        where dev.lock "$py" "$platform"
        where demo.lock "$py" "$platform"
    done
done
where unit.lock 3.11 aarch64-manylinux_2_36

if [ "$check" -eq 1 ]; then
    status=0
    for f in requirements/*.lock; do
        diff -u "$f" "$out/$(basename "$f")" || status=1
    done
    if [ "$status" -eq 0 ]; then echo "locks: up to date with pyproject.toml"; else
        echo "locks: out of date: run bash scripts/lock.sh and commit requirements/" >&2
    fi
    exit "$status"
fi
echo "locks: $(grep -c '^[A-Za-z0-9].*==' requirements/dev.lock) pins in dev.lock," \
    "$(grep -c '^[A-Za-z0-9].*==' requirements/demo.lock) in demo.lock," \
    "$(grep -c '^[A-Za-z0-9].*==' requirements/unit.lock) in unit.lock"
