#!/usr/bin/env bash
# Prepares a unit: installs the agent on a Raspberry Pi OS Lite (bookworm, aarch64) root file system
# from an offline wheelhouse and a unit provisioning bundle. See README, "Installing on a unit".
#
#   flash.sh --bundle DIR --wheelhouse DIR (--root DIR [--boot DIR] | --image FILE)
#            [--read-only-root] [--state-device SPEC] [--dry-run] [--no-chown] [--replace-config]
#
# Everything is checked (bundle, wheelhouse, root) before the first change. Each step compares what
# is there with what should be there and changes only the difference, so a second run changes
# nothing; --dry-run prints the steps it would take and changes nothing.
set -euo pipefail
umask 077 # nothing is readable by others until it is given its mode

readonly SERVICE_USER=dispenser
readonly SERVICE_GROUPS=(dialout gpio bluetooth) # serial port, GPIO chips, BlueZ over D-Bus
readonly APP_DIR=/opt/dispenser-agent
readonly CONF_DIR=/etc/dispenser-agent
readonly STATE_DIR=/var/lib/dispenser-agent
readonly UNIT_DIR=/etc/systemd/system
readonly UNITS=(dispenser-agent.service dispenser-agent-failure@.service)
# Wheel platform tags a Raspberry Pi OS bookworm (glibc 2.36, aarch64) can run; shared with
# scripts/build-wheelhouse.sh, which downloads the wheelhouse with the same tags.
readonly WHEEL_PLATFORMS=(manylinux_2_36_aarch64 manylinux_2_34_aarch64 manylinux_2_31_aarch64
    manylinux_2_28_aarch64 manylinux_2_17_aarch64 manylinux2014_aarch64 linux_aarch64)
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage() {
    sed -n '5,6p' "$0" | sed 's/^# *//' >&2
    exit 2
}
die() {
    printf 'flash.sh: error: %s\n' "$*" >&2
    exit 1
}
warn() { printf 'flash.sh: warning: %s\n' "$*" >&2; }

root="" boot="" image="" bundle="" wheelhouse="" state_device="LABEL=agent-state"
dry_run=0 chown_files=1 read_only_root=0 replace_config=0 python_version=""
while [ $# -gt 0 ]; do
    case "$1" in
    --root) root="${2:?--root needs a directory}"; shift 2 ;;
    --boot) boot="${2:?--boot needs a directory}"; shift 2 ;;
    --image) image="${2:?--image needs a file}"; shift 2 ;;
    --bundle) bundle="${2:?--bundle needs a directory}"; shift 2 ;;
    --wheelhouse) wheelhouse="${2:?--wheelhouse needs a directory}"; shift 2 ;;
    --state-device) state_device="${2:?--state-device needs a device spec}"; shift 2 ;;
    --python-version) python_version="${2:?--python-version needs X.Y}"; shift 2 ;;
    --read-only-root) read_only_root=1; shift ;;
    --replace-config) replace_config=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    --no-chown) chown_files=0; shift ;;
    --print-wheel-platforms) printf '%s\n' "${WHEEL_PLATFORMS[@]}"; exit 0 ;;
    -h | --help) usage ;;
    *) die "unknown option '$1' (see --help)" ;;
    esac
done
[ -n "$bundle" ] || die "--bundle DIR is required"
[ -n "$wheelhouse" ] || die "--wheelhouse DIR is required"
if [ -n "$root" ] && [ -n "$image" ]; then die "give --root or --image, not both"; fi
if [ -z "$root" ] && [ -z "$image" ]; then die "give --root DIR (a mounted root) or --image FILE"; fi
if [ "$(id -u)" -ne 0 ] && [ "$chown_files" -eq 1 ]; then
    # Unprivileged (a developer's test run): modes are set, owners cannot be.
    warn "not running as root: files keep your owner (as with --no-chown)"
    chown_files=0
fi

# --- 1. the bundle, checked whole before anything is touched ---------------------------------
[ -d "$bundle" ] || die "bundle '$bundle' is not a directory"
conf="$bundle/unit.conf"
[ -f "$conf" ] || die "bundle: unit.conf is missing (see README, 'The provisioning bundle')"
UNIT_ID="" BROKER_URL="" TIME_ZONE="" DISPENSER_DEVICE="/dev/ttyUSB0"
lineno=0
while IFS= read -r line || [ -n "$line" ]; do
    lineno=$((lineno + 1))
    case "$line" in '' | '#'*) continue ;; esac
    [[ "$line" =~ ^([A-Z_]+)=(.*)$ ]] || die "bundle: unit.conf line $lineno is not KEY=value: '$line'"
    key="${BASH_REMATCH[1]}" value="${BASH_REMATCH[2]}"
    # Parsed, never sourced: a bundle must not be able to run code on the technician's machine.
    case "$key" in
    UNIT_ID) UNIT_ID="$value" ;;
    BROKER_URL) BROKER_URL="$value" ;;
    TIME_ZONE) TIME_ZONE="$value" ;;
    DISPENSER_DEVICE) DISPENSER_DEVICE="$value" ;;
    *) die "bundle: unit.conf line $lineno: unknown key $key (known: UNIT_ID BROKER_URL TIME_ZONE DISPENSER_DEVICE)" ;;
    esac
done <"$conf"
[[ "$UNIT_ID" =~ ^[a-z0-9-]{3,64}$ ]] ||
    die "bundle: UNIT_ID '$UNIT_ID' must be 3-64 characters of a-z, 0-9 and '-'"
[[ "$BROKER_URL" =~ ^mqtts://([A-Za-z0-9.-]+)(:([0-9]{1,5}))?/?$ ]] ||
    die "bundle: BROKER_URL '$BROKER_URL' must be mqtts://HOST[:PORT] (TLS only: the unit carries patient events)"
broker_host="${BASH_REMATCH[1]}" broker_port="${BASH_REMATCH[3]:-8883}"
[ "$broker_port" -ge 1 ] && [ "$broker_port" -le 65535 ] || die "bundle: BROKER_URL port $broker_port is out of range"
[[ "$TIME_ZONE" =~ ^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$ ]] ||
    die "bundle: TIME_ZONE '$TIME_ZONE' is not a zone name such as Europe/Oslo"
[[ "$DISPENSER_DEVICE" =~ ^/dev/[A-Za-z0-9/_.:-]+$ ]] ||
    die "bundle: DISPENSER_DEVICE '$DISPENSER_DEVICE' must be a path under /dev"

pem_has() { # file, PEM label regex: the file holds exactly one such block and nothing else
    local n
    n="$(grep -cE "^-----BEGIN $2-----$" "$1" || true)"
    [ "$n" = 1 ] && grep -qE "^-----END $2-----$" "$1" &&
        [ "$(grep -c '^-----BEGIN ' "$1" || true)" = 1 ]
}
for name in broker-ca.crt unit.crt unit.key centre-signing.pub; do
    [ -f "$bundle/$name" ] || die "bundle: $name is missing"
    [ -s "$bundle/$name" ] || die "bundle: $name is empty"
done
pem_has "$bundle/broker-ca.crt" CERTIFICATE || die "bundle: broker-ca.crt is not one PEM certificate"
pem_has "$bundle/unit.crt" CERTIFICATE || die "bundle: unit.crt is not one PEM certificate"
pem_has "$bundle/unit.key" '(EC |RSA )?PRIVATE KEY' || die "bundle: unit.key is not one PEM private key"
pem_has "$bundle/centre-signing.pub" 'PUBLIC KEY' || die "bundle: centre-signing.pub is not one PEM public key"
if [ -e "$bundle/mqtt-password" ]; then
    [ "$(wc -l <"$bundle/mqtt-password")" -le 1 ] && [ -s "$bundle/mqtt-password" ] ||
        die "bundle: mqtt-password must be one non-empty line"
fi
if command -v openssl >/dev/null 2>&1; then
    openssl x509 -noout -in "$bundle/broker-ca.crt" 2>/dev/null || die "bundle: broker-ca.crt cannot be read as X.509"
    openssl x509 -noout -in "$bundle/unit.crt" 2>/dev/null || die "bundle: unit.crt cannot be read as X.509"
    openssl x509 -noout -checkend 0 -in "$bundle/unit.crt" >/dev/null || die "bundle: unit.crt has expired"
    openssl verify -CAfile "$bundle/broker-ca.crt" "$bundle/unit.crt" >/dev/null 2>&1 ||
        die "bundle: unit.crt is not signed by broker-ca.crt (the broker would refuse the unit)"
    cert_pub="$(openssl x509 -noout -pubkey -in "$bundle/unit.crt")"
    key_pub="$(openssl pkey -pubout -in "$bundle/unit.key" 2>/dev/null)" || die "bundle: unit.key cannot be read (encrypted or damaged)"
    [ "$cert_pub" = "$key_pub" ] || die "bundle: unit.key does not belong to unit.crt"
    openssl pkey -pubin -noout -in "$bundle/centre-signing.pub" 2>/dev/null ||
        die "bundle: centre-signing.pub cannot be read as a public key"
else
    warn "openssl not found: certificates checked for their PEM form only"
fi

# --- 2. the wheelhouse: installed into a scratch folder first, so a missing wheel fails here ----
[ -d "$wheelhouse" ] || die "wheelhouse '$wheelhouse' is not a directory (see scripts/build-wheelhouse.sh)"
compgen -G "$wheelhouse/dispenser_agent-*.whl" >/dev/null ||
    die "wheelhouse: no dispenser_agent-*.whl in '$wheelhouse' (see scripts/build-wheelhouse.sh)"
host_python="${PYTHON:-python3}"
"$host_python" -c 'import pip' >/dev/null 2>&1 ||
    die "'$host_python -m pip' does not run: Python 3 with pip is needed on this machine (or set PYTHON=...)"
scratch="$(mktemp -d)"
mnt=""
mounts=() # innermost first
loops=()
cleanup() {
    local m l
    for m in "${mounts[@]}"; do umount "$m" || warn "could not unmount $m"; done
    for l in "${loops[@]}"; do losetup -d "$l" || warn "could not detach $l"; done
    if [ -n "$mnt" ]; then rmdir "$mnt" 2>/dev/null || true; fi
    rm -rf "$scratch"
}
trap cleanup EXIT

# --- 3. the target root ------------------------------------------------------------------------
if [ -n "$image" ]; then
    # A Raspberry Pi OS image: partition 1 is the boot FAT, partition 2 the ext4 root. Each is
    # attached at its offset (partx reads the table), so no udev is needed for partition nodes.
    [ -f "$image" ] || die "image '$image' is not a file"
    [ "$(id -u)" -eq 0 ] || die "--image needs root (loop devices and mounts); or mount it and use --root"
    for tool in partx losetup mount; do
        command -v "$tool" >/dev/null || die "--image needs $tool (util-linux)"
    done
    mount_partition() { # number, mount point, options
        local start sectors dev
        read -r start sectors < <(partx --raw --noheadings --nr "$1" -o START,SECTORS "$image" 2>/dev/null) ||
            die "image: no partition $1 in '$image' (not a Raspberry Pi OS image?)"
        dev="$(losetup --find --show --offset $((start * 512)) --sizelimit $((sectors * 512)) "$image")" ||
            die "image: cannot attach partition $1 to a loop device"
        loops+=("$dev")
        mount -o "$3" "$dev" "$2" || die "image: cannot mount partition $1 on ${2#"$mnt"}"
        mounts=("$2" "${mounts[@]}")
    }
    mnt="$(mktemp -d)"
    opts=rw
    [ "$dry_run" -eq 0 ] || opts=ro
    mount_partition 2 "$mnt" "$opts"
    [ -d "$mnt/boot/firmware" ] || die "image: the root partition has no /boot/firmware (not bookworm?)"
    mount_partition 1 "$mnt/boot/firmware" "$opts"
    root="$mnt"
fi
[ -d "$root" ] || die "root '$root' is not a directory"
root="$(cd "$root" && pwd)"
[ "$root" != / ] || die "refusing to install into this machine's own / (give the unit's root)"
for f in etc/passwd etc/group; do
    [ -f "$root/$f" ] || die "root '$root' has no $f: not a root file system"
done
if [ "$read_only_root" -eq 1 ] && [ ! -f "$root/etc/fstab" ]; then
    die "--read-only-root: the root has no etc/fstab"
fi
if [ -z "$boot" ]; then
    for candidate in "$root/boot/firmware" "$root/boot"; do
        if [ -f "$candidate/config.txt" ]; then boot="$candidate"; break; fi
    done
fi
[ -n "$boot" ] && [ -f "$boot/config.txt" ] ||
    die "no config.txt under boot/firmware or boot: mount the boot partition there or give --boot DIR (the hardware watchdog is enabled in it)"
if [ -z "$python_version" ]; then
    for candidate in "$root"/usr/bin/python3.[0-9]*; do
        [[ "$candidate" =~ /python(3\.[0-9]+)$ ]] && python_version="${BASH_REMATCH[1]}"
    done
fi
[[ "$python_version" =~ ^3\.[0-9]+$ ]] ||
    die "no usr/bin/python3.X in the root (Raspberry Pi OS Lite has one); give --python-version X.Y"
if [ -e "$root/usr/share/zoneinfo" ]; then
    [ -f "$root/usr/share/zoneinfo/$TIME_ZONE" ] || die "bundle: TIME_ZONE '$TIME_ZONE' is not in the root's zoneinfo"
elif [ -d /usr/share/zoneinfo ]; then
    [ -f "/usr/share/zoneinfo/$TIME_ZONE" ] || die "bundle: TIME_ZONE '$TIME_ZONE' is not a known zone"
fi

# What is installed is named by the wheels' hashes: the same wheelhouse installs nothing again.
# Bytecode: the unit's site is read-only to the service (ProtectSystem=strict), so the daemon can
# never cache what it compiles; without .pyc files it compiles every module from source at every
# start (slower on a Pi, and the compiler's peak stays resident: about 6 MB more at idle, see
# bench/rss_stages.py). Only a python of the unit's own X.Y writes bytecode the unit can use.
if "$host_python" -c 'import sys; sys.exit(f"{sys.version_info[0]}.{sys.version_info[1]}" != sys.argv[1])' "$python_version"; then
    bytecode=1
else
    bytecode=0
fi
wheel_stamp="$(cd "$wheelhouse" && sha256sum -- *.whl | LC_ALL=C sort -k2)"$'\n'"python $python_version"$'\n'"bytecode $bytecode"
installed=0
if [ -f "$root$APP_DIR/wheelhouse.sha256" ] && [ -d "$root$APP_DIR/site" ] &&
    [ "$(cat "$root$APP_DIR/wheelhouse.sha256")" = "$wheel_stamp" ]; then
    installed=1 # these very wheels installed there before
else
    abi="cp${python_version/./}"
    platform_args=()
    for p in "${WHEEL_PLATFORMS[@]}"; do platform_args+=(--platform "$p"); done
    if ! "$host_python" -m pip install --quiet --disable-pip-version-check --no-index \
        --find-links "$wheelhouse" --only-binary=:all: "${platform_args[@]}" \
        --python-version "$python_version" --implementation cp --abi "$abi" \
        --no-compile --target "$scratch/site" dispenser-agent >"$scratch/pip.log" 2>&1; then
        cat "$scratch/pip.log" >&2
        die "wheelhouse: pip cannot install dispenser-agent for aarch64 CPython $python_version from it (a wheel missing, or built for another platform?)"
    fi
    # Console scripts pip wrote there name this machine's python; the unit uses bin/dispenser-agent.
    rm -rf "$scratch/site/bin"
    if [ "$bytecode" -eq 1 ]; then
        # unchecked-hash: a .pyc is used without comparing it with its source (both are swapped in
        # together, whole); -s/-p: tracebacks name the files where they are on the unit.
        "$host_python" -m compileall -q -j 0 --invalidation-mode unchecked-hash \
            -s "$scratch/site" -p "$APP_DIR/site" "$scratch/site" >"$scratch/compile.log" 2>&1 ||
            warn "some modules did not compile to bytecode (they compile at each start): $(tail -n 3 "$scratch/compile.log")"
    else
        warn "$host_python is not CPython $python_version: no bytecode compiled, the unit compiles its modules at every start (slower, about 6 MB more resident); set PYTHON to a python$python_version"
    fi
fi

# --- helpers: each compares, then changes only what differs -------------------------------------
changes=0
step() { # the description of one change; in --dry-run, only that
    changes=$((changes + 1))
    if [ "$dry_run" -eq 1 ]; then printf 'would %s\n' "$*"; else printf '%s\n' "$*"; fi
}
id_of() { # name, file (passwd or group): the numeric id, or nothing
    awk -F: -v n="$1" '$1 == n { print $3; exit }' "$2"
}
owner_text() { # uid, gid: as said in a step, when owners are set at all
    if [ "$chown_files" -eq 1 ]; then printf ', owner %s:%s' "$1" "$2"; fi
}
meta_ok() { # path, mode, uid, gid
    [ "$(stat -c %a "$1")" = "${2#0}" ] || return 1
    [ "$chown_files" -eq 0 ] || [ "$(stat -c %u:%g "$1")" = "$3:$4" ]
}
set_meta() { # path, mode, uid, gid
    chmod "$2" "$1"
    if [ "$chown_files" -eq 1 ]; then chown -h "$3:$4" "$1"; fi
}
put_file() { # source, path in the root, mode, uid, gid
    local dest="$root$2"
    if [ -f "$dest" ] && [ ! -L "$dest" ] && cmp -s "$1" "$dest" && meta_ok "$dest" "$3" "$4" "$5"; then
        return 0
    fi
    step "write $2 (mode $3$(owner_text "$4" "$5"))"
    [ "$dry_run" -eq 0 ] || return 0
    local tmp
    tmp="$(mktemp "$(dirname "$dest")/.flash.XXXXXX")"
    cat "$1" >"$tmp"
    set_meta "$tmp" "$3" "$4" "$5"
    mv -f "$tmp" "$dest"
}
put_text() { # text, path, mode, uid, gid
    printf '%s' "$1" >"$scratch/text"
    put_file "$scratch/text" "$2" "$3" "$4" "$5"
}
put_keep_meta() { # source, path: a system file keeps its own mode and owner
    local dest="$root$2"
    if [ -f "$dest" ]; then
        put_file "$1" "$2" "$(stat -c %a "$dest")" "$(stat -c %u "$dest")" "$(stat -c %g "$dest")"
    else
        put_file "$1" "$2" 644 0 0
    fi
}
ensure_dir() { # path, mode, uid, gid
    local dest="$root$1"
    if [ -d "$dest" ] && [ ! -L "$dest" ]; then
        meta_ok "$dest" "$2" "$3" "$4" && return 0
        step "set $1 to mode $2$(owner_text "$3" "$4")"
    else
        step "create directory $1 (mode $2$(owner_text "$3" "$4"))"
    fi
    [ "$dry_run" -eq 0 ] || return 0
    mkdir -p "$dest"
    set_meta "$dest" "$2" "$3" "$4"
}
ensure_parents() { # path: its missing parent directories, as root 0755 (/etc/systemd/... etc.)
    local parent
    parent="$(dirname "$1")"
    [ -d "$root$parent" ] && return 0
    ensure_parents "$parent"
    ensure_dir "$parent" 755 0 0
}
ensure_link() { # path, target
    if [ -L "$root$1" ] && [ "$(readlink "$root$1")" = "$2" ]; then return 0; fi
    step "link $1 -> $2"
    [ "$dry_run" -eq 0 ] || return 0
    ln -sfn "$2" "$root$1"
}
free_system_id() { # a free id in the system range (from the top, as useradd -r does)
    local id
    for ((id = 999; id >= 100; id--)); do
        if ! awk -F: -v i="$id" '$3 == i { found = 1 } END { exit !found }' "$scratch/passwd" "$scratch/group"; then
            echo "$id"
            return 0
        fi
    done
    die "no free system id in 100-999 in the root's passwd/group"
}

# --- 4. the service user and its groups ---------------------------------------------------------
cp "$root/etc/passwd" "$scratch/passwd"
cp "$root/etc/group" "$scratch/group"
have_shadow=0 have_gshadow=0
if [ -f "$root/etc/shadow" ]; then have_shadow=1; cp "$root/etc/shadow" "$scratch/shadow"; fi
if [ -f "$root/etc/gshadow" ]; then have_gshadow=1; cp "$root/etc/gshadow" "$scratch/gshadow"; fi
add_group() { # name, gid
    printf '%s:x:%s:\n' "$1" "$2" >>"$scratch/group"
    if [ "$have_gshadow" -eq 1 ]; then printf '%s:!::\n' "$1" >>"$scratch/gshadow"; fi
}
uid="$(id_of "$SERVICE_USER" "$scratch/passwd")"
if [ -z "$uid" ]; then
    uid="$(free_system_id)"
    gid="$(id_of "$SERVICE_USER" "$scratch/group")"
    if [ -z "$gid" ]; then gid="$uid"; add_group "$SERVICE_USER" "$gid"; fi
    # No login, no home, no password: a service account only.
    printf '%s:x:%s:%s:Medication dispenser agent:/nonexistent:/usr/sbin/nologin\n' \
        "$SERVICE_USER" "$uid" "$gid" >>"$scratch/passwd"
    if [ "$have_shadow" -eq 1 ]; then printf '%s:!:::::::\n' "$SERVICE_USER" >>"$scratch/shadow"; fi
    printf 'service user %s: new, uid %s, group %s\n' "$SERVICE_USER" "$uid" "$gid"
fi
gid="$(awk -F: -v n="$SERVICE_USER" '$1 == n { print $4; exit }' "$scratch/passwd")"
for g in "${SERVICE_GROUPS[@]}"; do
    [ -n "$(id_of "$g" "$scratch/group")" ] || add_group "$g" "$(free_system_id)"
    for f in group gshadow; do
        [ "$f" = group ] || [ "$have_gshadow" -eq 1 ] || continue
        awk -F: -v OFS=: -v g="$g" -v u="$SERVICE_USER" '
            $1 == g { n = split($4, m, ","); for (i = 1; i <= n; i++) if (m[i] == u) { print; next }
                      $4 = ($4 == "" ? u : $4 "," u) }
            { print }' "$scratch/$f" >"$scratch/$f.new"
        mv "$scratch/$f.new" "$scratch/$f"
    done
done
put_keep_meta "$scratch/group" /etc/group
[ "$have_gshadow" -eq 0 ] || put_keep_meta "$scratch/gshadow" /etc/gshadow
put_keep_meta "$scratch/passwd" /etc/passwd
[ "$have_shadow" -eq 0 ] || put_keep_meta "$scratch/shadow" /etc/shadow

# --- 5. the agent and its dependencies ---------------------------------------------------------
ensure_dir "$APP_DIR" 755 0 0
ensure_dir "$APP_DIR/bin" 755 0 0
if [ "$installed" -eq 0 ]; then
    step "install $(compgen -G "$wheelhouse/*.whl" | wc -l) wheels from $wheelhouse into $APP_DIR/site (CPython $python_version, aarch64)"
    if [ "$dry_run" -eq 0 ]; then
        # Swapped in whole: an interrupted run leaves the old install or none, never half of one.
        rm -rf "$root$APP_DIR/site.new" "$root$APP_DIR/site.old"
        cp -R "$scratch/site" "$root$APP_DIR/site.new"
        chmod -R u=rwX,go=rX "$root$APP_DIR/site.new"
        if [ "$chown_files" -eq 1 ]; then chown -R 0:0 "$root$APP_DIR/site.new"; fi
        if [ -d "$root$APP_DIR/site" ]; then mv "$root$APP_DIR/site" "$root$APP_DIR/site.old"; fi
        mv "$root$APP_DIR/site.new" "$root$APP_DIR/site"
        rm -rf "$root$APP_DIR/site.old"
    fi
fi
put_text "$wheel_stamp" "$APP_DIR/wheelhouse.sha256" 644 0 0
# -I: isolated (no PYTHONPATH, user site or current directory on the path).
put_text "#!/usr/bin/python3 -I
import sys

sys.path.insert(0, \"$APP_DIR/site\")
from agent.cli import main

sys.exit(main())
" "$APP_DIR/bin/dispenser-agent" 755 0 0

# The state directory (systemd's StateDirectory= keeps it so at every start); with a read-only
# root, the state partition is mounted here.
ensure_parents "$STATE_DIR"
ensure_dir "$STATE_DIR" 700 "$uid" "$gid"

# --- 6. config and secrets: readable by the service, writable by root only -------------------
ensure_dir "$CONF_DIR" 750 0 "$gid"
ensure_dir "$CONF_DIR/tls" 750 0 "$gid"
put_file "$bundle/broker-ca.crt" "$CONF_DIR/tls/broker-ca.crt" 640 0 "$gid"
put_file "$bundle/unit.crt" "$CONF_DIR/tls/unit.crt" 640 0 "$gid"
put_file "$bundle/unit.key" "$CONF_DIR/tls/unit.key" 600 "$uid" "$gid"
put_file "$bundle/centre-signing.pub" "$CONF_DIR/centre-signing.pub" 640 0 "$gid"
password_json=""
if [ -f "$bundle/mqtt-password" ]; then
    put_file "$bundle/mqtt-password" "$CONF_DIR/mqtt-password" 600 "$uid" "$gid"
    password_json=",
    \"username\": \"$UNIT_ID\",
    \"password_file\": \"$CONF_DIR/mqtt-password\""
fi
config="{
  \"unit_id\": \"$UNIT_ID\",
  \"state_dir\": \"$STATE_DIR\",
  \"dispenser\": {\"device\": \"$DISPENSER_DEVICE\"},
  \"mqtt\": {
    \"host\": \"$broker_host\",
    \"port\": $broker_port,
    \"tls\": true,
    \"ca_file\": \"$CONF_DIR/tls/broker-ca.crt\",
    \"client_cert\": \"$CONF_DIR/tls/unit.crt\",
    \"client_key\": \"$CONF_DIR/tls/unit.key\"$password_json
  }
}
"
if [ -f "$root$CONF_DIR/config.json" ] && [ "$replace_config" -eq 0 ] &&
    [ "$(cat "$root$CONF_DIR/config.json")"$'\n' != "$config" ]; then
    # The technician adds the patient binding and schedule later: never overwrite them silently.
    warn "$CONF_DIR/config.json exists and differs from the bundle: kept (--replace-config overwrites it)"
    put_file "$root$CONF_DIR/config.json" "$CONF_DIR/config.json" 640 0 "$gid"
else
    put_text "$config" "$CONF_DIR/config.json" 640 0 "$gid"
fi

# --- 7. time zone ------------------------------------------------------------------------------
ensure_link /etc/localtime "/usr/share/zoneinfo/$TIME_ZONE"
printf '%s\n' "$TIME_ZONE" >"$scratch/timezone"
put_keep_meta "$scratch/timezone" /etc/timezone

# --- 8. systemd units, enabled by their [Install] symlinks (no systemctl on this machine) -------
ensure_parents "$UNIT_DIR/multi-user.target.wants/x"
for unit in "${UNITS[@]}"; do
    put_file "$here/systemd/$unit" "$UNIT_DIR/$unit" 644 0 0
done
ensure_link "$UNIT_DIR/multi-user.target.wants/dispenser-agent.service" "$UNIT_DIR/dispenser-agent.service"

# --- 9. the hardware watchdog: the SoC's, fed by systemd; it reboots a hung Pi ------------------
boot_rel="${boot#"$root"}"
if ! grep -qxF 'dtparam=watchdog=on' "$boot/config.txt"; then
    {
        cat "$boot/config.txt"
        printf '\n# dispenser-agent: the SoC watchdog, fed by systemd (RuntimeWatchdogSec)\n[all]\ndtparam=watchdog=on\n'
    } >"$scratch/config.txt"
    if [ "$boot_rel" != "$boot" ]; then
        put_keep_meta "$scratch/config.txt" "$boot_rel/config.txt"
    else # a boot partition mounted outside the root
        step "add dtparam=watchdog=on to $boot/config.txt"
        [ "$dry_run" -eq 1 ] || cat "$scratch/config.txt" >"$boot/config.txt"
    fi
fi
ensure_parents /etc/systemd/system.conf.d/x
# The BCM2835 watchdog's longest timeout is about 15 s.
put_text "# flash.sh: systemd feeds the hardware watchdog; a hung system reboots.
[Manager]
RuntimeWatchdogSec=15s
RebootWatchdogSec=2min
" /etc/systemd/system.conf.d/50-dispenser-watchdog.conf 644 0 0

# --- 10. optional read-only root with a small writable state partition -------------------------
if [ "$read_only_root" -eq 1 ]; then
    # / and the boot partition read-only; state on its own partition; the rest that must be
    # written at run time on tmpfs (lost at reboot, as logs and leases may be).
    awk '
        /^[[:space:]]*#/ || NF < 4 { print; next }
        ($2 == "/" || $2 == "/boot/firmware" || $2 == "/boot") && $4 !~ /(^|,)ro(,|$)/ {
            $4 = $4 ",ro" }
        { print }' "$root/etc/fstab" >"$scratch/fstab"
    marker="# dispenser-agent: writable places on a read-only root (flash.sh --read-only-root)"
    if ! grep -qxF "$marker" "$scratch/fstab"; then
        cat >>"$scratch/fstab" <<EOF
$marker
$state_device $STATE_DIR ext4 defaults,noatime,nodev,nosuid,noexec,commit=30 0 2
tmpfs /tmp tmpfs nosuid,nodev,mode=1777,size=32m 0 0
tmpfs /var/tmp tmpfs nosuid,nodev,mode=1777,size=16m 0 0
tmpfs /var/log tmpfs nosuid,nodev,noexec,mode=0755,size=32m 0 0
tmpfs /var/lib/systemd/timesync tmpfs nosuid,nodev,noexec,mode=0755,size=1m 0 0
tmpfs /var/lib/NetworkManager tmpfs nosuid,nodev,noexec,mode=0700,size=4m 0 0
EOF
    fi
    put_keep_meta "$scratch/fstab" /etc/fstab
    ensure_parents /etc/systemd/journald.conf.d/x
    put_text "# flash.sh --read-only-root: the journal lives in RAM; failures are also traced on the
# state partition by dispenser-agent-failure@.service.
[Journal]
Storage=volatile
RuntimeMaxUse=16M
" /etc/systemd/journald.conf.d/50-dispenser-volatile.conf 644 0 0
fi

if [ "$changes" -eq 0 ]; then
    echo "flash.sh: nothing to change: $root is prepared for unit $UNIT_ID"
elif [ "$dry_run" -eq 1 ]; then
    echo "flash.sh: dry run: $changes change(s) would be made; nothing was changed"
else
    sync
    echo "flash.sh: $changes change(s) made: $root is prepared for unit $UNIT_ID"
fi
