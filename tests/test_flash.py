"""flash.sh against a temporary root directory: files, modes, owners (when run as root),
idempotency, --dry-run, and a clear refusal of a bad bundle or wheelhouse before any change.

The wheelhouse here is two tiny hand-made wheels (the real one is aarch64 and needs the
network: scripts/build-wheelhouse.sh), so the suite stays fast and offline while pip's
platform-restricted, index-free install still runs for real.
"""

from __future__ import annotations

import hashlib
import json
import marshal
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FLASH = REPO / "flash.sh"
HAS_OPENSSL = shutil.which("openssl") is not None
AS_ROOT = os.geteuid() == 0

needs_openssl = pytest.mark.skipif(not HAS_OPENSSL, reason="openssl is needed to make a test PKI")

PASSWD = (
    "root:x:0:0:root:/root:/bin/bash\n"
    "systemd-network:x:998:998:systemd Network Management:/:/usr/sbin/nologin\n"
)
GROUP = "root:x:0:\ndialout:x:20:pi\nsystemd-network:x:998:\n"
CONFIG_TXT = "# Raspberry Pi config\ndtparam=audio=on\n"
FSTAB = (
    "proc /proc proc defaults 0 0\n"
    "PARTUUID=1234-01 /boot/firmware vfat defaults 0 2\n"
    "PARTUUID=1234-02 / ext4 defaults,noatime 0 1\n"
)


def make_wheel(
    folder: Path,
    name: str,
    files: dict[str, str],
    requires: tuple[str, ...] = (),
    tag: str = "py3-none-any",
) -> Path:
    """A minimal valid wheel (what pip needs: METADATA, WHEEL, RECORD)."""
    dist = name.replace("-", "_")
    info = f"{dist}-1.0.dist-info"
    meta = "Metadata-Version: 2.1\nName: " + name + "\nVersion: 1.0\n"
    meta += "".join(f"Requires-Dist: {r}\n" for r in requires)
    content = {
        **files,
        f"{info}/METADATA": meta,
        f"{info}/WHEEL": (
            f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: {tag}\n"
        ),
    }
    record = "".join(f"{path},,\n" for path in content) + f"{info}/RECORD,,\n"
    path = folder / f"{dist}-1.0-{tag}.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for member, text in {**content, f"{info}/RECORD": record}.items():
            wheel.writestr(member, text)
    return path


def make_wheelhouse(folder: Path, dependency_tag: str = "py3-none-any") -> Path:
    folder.mkdir()
    make_wheel(
        folder,
        "dispenser-agent",
        {"agent/__init__.py": "", "agent/cli.py": "def main() -> int:\n    return 0\n"},
        requires=("tinydep",),
    )
    make_wheel(folder, "tinydep", {"tinydep.py": "X = 1\n"}, tag=dependency_tag)
    return folder


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A broker CA, a unit certificate it signed, a stranger's certificate, a signing key."""
    d = tmp_path_factory.mktemp("pki")
    if not HAS_OPENSSL:
        return d
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "3650",
        "-subj",
        "/CN=test broker CA",
        cwd=d,
    )
    openssl(
        "req", *ec, "-keyout", "unit.key", "-out", "unit.csr", "-subj", "/CN=oslo-unit-0042", cwd=d
    )
    openssl(
        "x509",
        "-req",
        "-in",
        "unit.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "unit.crt",
        "-days",
        "365",
        cwd=d,
    )
    openssl(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "other.key",
        "-out",
        "other.crt",
        "-days",
        "365",
        "-subj",
        "/CN=someone else",
        cwd=d,
    )
    openssl("genpkey", "-algorithm", "ed25519", "-out", "signing.key", cwd=d)
    openssl("pkey", "-in", "signing.key", "-pubout", "-out", "signing.pub", cwd=d)
    return d


UNIT_CONF = (
    "# unit 42, Oslo\n"
    "UNIT_ID=oslo-unit-0042\n"
    "BROKER_URL=mqtts://broker.responssenter.example:8884\n"
    "TIME_ZONE=Europe/Oslo\n"
    "DISPENSER_DEVICE=/dev/serial/by-id/usb-Dispenser_SIM-100-if00\n"
)


@pytest.fixture
def bundle(tmp_path: Path, pki: Path) -> Path:
    if not HAS_OPENSSL:
        pytest.skip("openssl is needed to make a test PKI")
    b = tmp_path / "bundle"
    b.mkdir()
    (b / "unit.conf").write_text(UNIT_CONF)
    shutil.copy(pki / "ca.crt", b / "broker-ca.crt")
    shutil.copy(pki / "unit.crt", b / "unit.crt")
    shutil.copy(pki / "unit.key", b / "unit.key")
    shutil.copy(pki / "signing.pub", b / "centre-signing.pub")
    (b / "mqtt-password").write_text("s3cret\n")
    return b


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """What a mounted Raspberry Pi OS root looks like, as far as flash.sh reads it."""
    r = tmp_path / "root"
    for d in ("etc", "usr/bin", "boot/firmware"):
        (r / d).mkdir(parents=True)
    (r / "etc/passwd").write_text(PASSWD)
    (r / "etc/group").write_text(GROUP)
    (r / "etc/shadow").write_text("root:*:19000:0:99999:7:::\n")
    (r / "etc/shadow").chmod(0o640)
    (r / "etc/fstab").write_text(FSTAB)
    (r / "usr/bin/python3.11").write_text("")
    (r / "boot/firmware/config.txt").write_text(CONFIG_TXT)
    return r


@pytest.fixture
def wheelhouse(tmp_path: Path) -> Path:
    return make_wheelhouse(tmp_path / "wheels")


def flash(
    root: Path, bundle: Path, wheelhouse: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(
        [
            "bash",
            str(FLASH),
            "--root",
            str(root),
            "--bundle",
            str(bundle),
            "--wheelhouse",
            str(wheelhouse),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Every path under the root: type, mode, owner, mtime and content (or link target)."""
    seen: dict[str, tuple[object, ...]] = {}
    for path in sorted([root, *root.rglob("*")]):
        st = path.lstat()
        if path.is_symlink():
            body: object = os.readlink(path)
        elif path.is_file():
            body = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            body = None
        seen[str(path.relative_to(root))] = (
            stat.S_IFMT(st.st_mode),
            stat.S_IMODE(st.st_mode),
            st.st_uid,
            st.st_gid,
            st.st_mtime_ns,
            body,
        )
    return seen


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def entry(file: Path, name: str) -> list[str]:
    for line in file.read_text().splitlines():
        if line.split(":")[0] == name:
            return line.split(":")
    raise AssertionError(f"{name} not in {file}")


def test_prepares_a_unit(root: Path, bundle: Path, wheelhouse: Path) -> None:
    done = flash(root, bundle, wheelhouse)
    assert done.returncode == 0, done.stderr
    assert "prepared for unit oslo-unit-0042" in done.stdout

    user = entry(root / "etc/passwd", "dispenser")
    assert user[5:] == ["/nonexistent", "/usr/sbin/nologin"]
    uid, gid = int(user[2]), int(user[3])
    assert 100 <= uid <= 999
    assert uid not in (0, 998)  # free of the ids already taken
    assert entry(root / "etc/group", "dispenser")[2] == str(gid)
    for group in ("dialout", "gpio", "bluetooth"):
        assert "dispenser" in entry(root / "etc/group", group)[3].split(",")
    assert entry(root / "etc/group", "dialout")[3] == "pi,dispenser"
    assert entry(root / "etc/shadow", "dispenser")[1] == "!"
    assert mode(root / "etc/shadow") == 0o640

    conf = root / "etc/dispenser-agent"
    assert json.loads((conf / "config.json").read_text()) == {
        "unit_id": "oslo-unit-0042",
        "state_dir": "/var/lib/dispenser-agent",
        "dispenser": {"device": "/dev/serial/by-id/usb-Dispenser_SIM-100-if00"},
        "mqtt": {
            "host": "broker.responssenter.example",
            "port": 8884,
            "tls": True,
            "ca_file": "/etc/dispenser-agent/tls/broker-ca.crt",
            "client_cert": "/etc/dispenser-agent/tls/unit.crt",
            "client_key": "/etc/dispenser-agent/tls/unit.key",
            "username": "oslo-unit-0042",
            "password_file": "/etc/dispenser-agent/mqtt-password",
        },
    }
    expected_modes = {
        conf: 0o750,
        conf / "config.json": 0o640,
        conf / "tls": 0o750,
        conf / "tls/broker-ca.crt": 0o640,
        conf / "tls/unit.crt": 0o640,
        conf / "tls/unit.key": 0o600,
        conf / "centre-signing.pub": 0o640,
        conf / "mqtt-password": 0o600,
        root / "var/lib/dispenser-agent": 0o700,
        root / "opt/dispenser-agent/bin/dispenser-agent": 0o755,
        root / "etc/systemd/system/dispenser-agent.service": 0o644,
    }
    for path, expected in expected_modes.items():
        assert mode(path) == expected, path
    assert (conf / "tls/unit.key").read_bytes() == (bundle / "unit.key").read_bytes()
    if AS_ROOT:  # owners are only set by root (CI)
        owners = {
            conf: (0, gid),
            conf / "config.json": (0, gid),
            conf / "tls/unit.key": (uid, gid),
            conf / "mqtt-password": (uid, gid),
            root / "var/lib/dispenser-agent": (uid, gid),
            root / "opt/dispenser-agent/site/agent/cli.py": (0, 0),
        }
        for path, owner in owners.items():
            st = path.lstat()
            assert (st.st_uid, st.st_gid) == owner, path

    site = root / "opt/dispenser-agent/site"
    assert (site / "agent/cli.py").is_file()
    assert (site / "tinydep.py").is_file()  # the dependency came from the wheelhouse
    if sys.version_info[:2] == (3, 11):  # this python writes bytecode the root's python3.11 reads
        tag = sys.implementation.cache_tag
        for pyc, source in [
            (site / f"agent/__pycache__/cli.{tag}.pyc", "/opt/dispenser-agent/site/agent/cli.py"),
            (site / f"__pycache__/tinydep.{tag}.pyc", "/opt/dispenser-agent/site/tinydep.py"),
        ]:
            data = pyc.read_bytes()
            assert int.from_bytes(data[4:8], "little") == 0b01, pyc  # hash-based, unchecked
            assert marshal.loads(data[16:]).co_filename == source  # tracebacks name the unit's file
    launcher = (root / "opt/dispenser-agent/bin/dispenser-agent").read_text()
    assert launcher.startswith("#!/usr/bin/python3 -I\n")
    assert 'sys.path.insert(0, "/opt/dispenser-agent/site")' in launcher

    units = root / "etc/systemd/system"
    for unit in ("dispenser-agent.service", "dispenser-agent-failure@.service"):
        assert (units / unit).read_bytes() == (REPO / "systemd" / unit).read_bytes()
    wants = units / "multi-user.target.wants/dispenser-agent.service"
    assert os.readlink(wants) == "/etc/systemd/system/dispenser-agent.service"

    config_txt = (root / "boot/firmware/config.txt").read_text()
    assert config_txt.startswith(CONFIG_TXT)
    assert config_txt.splitlines()[-2:] == ["[all]", "dtparam=watchdog=on"]
    watchdog = (root / "etc/systemd/system.conf.d/50-dispenser-watchdog.conf").read_text()
    assert "RuntimeWatchdogSec=15s" in watchdog
    assert os.readlink(root / "etc/localtime") == "/usr/share/zoneinfo/Europe/Oslo"
    assert (root / "etc/timezone").read_text() == "Europe/Oslo\n"
    assert (root / "etc/fstab").read_text() == FSTAB  # read-only root only when asked


def test_a_python_of_another_version_compiles_no_bytecode_and_says_so(
    root: Path, bundle: Path, wheelhouse: Path
) -> None:
    (root / "usr/bin/python3.11").rename(root / "usr/bin/python3.99")
    done = flash(root, bundle, wheelhouse)
    assert done.returncode == 0, done.stderr
    assert "is not CPython 3.99: no bytecode compiled" in done.stderr
    assert not list((root / "opt/dispenser-agent/site").rglob("*.pyc"))


def test_a_second_run_changes_nothing(root: Path, bundle: Path, wheelhouse: Path) -> None:
    assert flash(root, bundle, wheelhouse, "--read-only-root").returncode == 0
    before = snapshot(root)
    again = flash(root, bundle, wheelhouse, "--read-only-root")
    assert again.returncode == 0, again.stderr
    assert "nothing to change" in again.stdout
    assert snapshot(root) == before


def test_dry_run_lists_and_changes_nothing(root: Path, bundle: Path, wheelhouse: Path) -> None:
    before = snapshot(root)
    dry = flash(root, bundle, wheelhouse, "--dry-run", "--read-only-root")
    assert dry.returncode == 0, dry.stderr
    assert snapshot(root) == before
    lines = dry.stdout.splitlines()
    for expected in (
        "would write /etc/dispenser-agent/config.json",
        "would write /etc/dispenser-agent/tls/unit.key (mode 600",
        "would install 2 wheels from",
        "would link /etc/systemd/system/multi-user.target.wants/dispenser-agent.service",
        "would write /boot/firmware/config.txt",
        "would write /etc/fstab",
    ):
        assert any(line.startswith(expected) for line in lines), expected
    assert "nothing was changed" in lines[-1]


def test_no_chown_sets_modes_only(root: Path, bundle: Path, wheelhouse: Path) -> None:
    done = flash(root, bundle, wheelhouse, "--no-chown")
    assert done.returncode == 0, done.stderr
    key = root / "etc/dispenser-agent/tls/unit.key"
    assert mode(key) == 0o600
    assert key.stat().st_uid == os.geteuid()
    assert "nothing to change" in flash(root, bundle, wheelhouse, "--no-chown").stdout


def test_read_only_root(root: Path, bundle: Path, wheelhouse: Path) -> None:
    done = flash(root, bundle, wheelhouse, "--read-only-root", "--state-device", "/dev/mmcblk0p3")
    assert done.returncode == 0, done.stderr
    fstab = (root / "etc/fstab").read_text().splitlines()
    assert fstab[1] == "PARTUUID=1234-01 /boot/firmware vfat defaults,ro 0 2"
    assert fstab[2] == "PARTUUID=1234-02 / ext4 defaults,noatime,ro 0 1"
    assert (
        "/dev/mmcblk0p3 /var/lib/dispenser-agent ext4 defaults,noatime,nodev,nosuid,noexec,"
        "commit=30 0 2"
    ) in fstab
    mounts = {line.split()[1] for line in fstab if line.startswith("tmpfs")}
    assert mounts == {
        "/tmp",
        "/var/tmp",
        "/var/log",
        "/var/lib/systemd/timesync",
        "/var/lib/NetworkManager",
    }
    journald = root / "etc/systemd/journald.conf.d/50-dispenser-volatile.conf"
    assert "Storage=volatile" in journald.read_text()


def test_an_edited_config_is_kept(root: Path, bundle: Path, wheelhouse: Path) -> None:
    assert flash(root, bundle, wheelhouse).returncode == 0
    config = root / "etc/dispenser-agent/config.json"
    edited = config.read_text().replace('"unit_id"', '"patient_ref": "p7f3c9a2e",\n  "unit_id"')
    config.write_text(edited)
    again = flash(root, bundle, wheelhouse)
    assert again.returncode == 0, again.stderr
    assert "config.json exists and differs from the bundle: kept" in again.stderr
    assert config.read_text() == edited
    assert flash(root, bundle, wheelhouse, "--replace-config").returncode == 0
    assert "patient_ref" not in config.read_text()


def _unlink(name: str) -> Callable[[Path], object]:
    return lambda b: (b / name).unlink()


def _conf(old: str, new: str) -> Callable[[Path], object]:
    return lambda b: (b / "unit.conf").write_text(UNIT_CONF.replace(old, new))


def _write(name: str, text: str) -> Callable[[Path], object]:
    return lambda b: (b / name).write_text(text)


BAD_BUNDLES: dict[str, tuple[Callable[[Path], object], str]] = {
    "no unit.conf": (_unlink("unit.conf"), "unit.conf is missing"),
    "no key": (_unlink("unit.key"), "bundle: unit.key is missing"),
    "no CA": (_unlink("broker-ca.crt"), "bundle: broker-ca.crt is missing"),
    "no signing key": (_unlink("centre-signing.pub"), "bundle: centre-signing.pub is missing"),
    "bad unit id": (_conf("oslo-unit-0042", "Oslo Unit 42"), "UNIT_ID 'Oslo Unit 42' must be"),
    "no unit id": (_conf("UNIT_ID=oslo-unit-0042\n", ""), "UNIT_ID '' must be"),
    "plain mqtt": (_conf("mqtts://", "mqtt://"), "must be mqtts://HOST[:PORT] (TLS only"),
    "bad port": (_conf(":8884", ":99999"), "port 99999 is out of range"),
    "unknown key": (_conf("TIME_ZONE", "TIMEZONE"), "line 4: unknown key TIMEZONE"),
    "not key=value": (_conf("TIME_ZONE=", "TIME_ZONE "), "line 4 is not KEY=value"),
    "unknown zone": (_conf("Europe/Oslo", "Europe/Atlantis"), "TIME_ZONE 'Europe/Atlantis'"),
    "shell in value": (_conf("Europe/Oslo", "$(touch /tmp/x)"), "is not a zone name"),
    "bad device": (_conf("/dev/serial", "/tmp/serial"), "must be a path under /dev"),
    "cert is junk": (_write("unit.crt", "hello\n"), "unit.crt is not one PEM certificate"),
    "empty key": (_write("unit.key", ""), "bundle: unit.key is empty"),
    "key in cert slot": (
        lambda b: shutil.copy(b / "unit.key", b / "unit.crt"),
        "unit.crt is not one PEM certificate",
    ),
    "two-line password": (_write("mqtt-password", "a\nb\n"), "mqtt-password must be one"),
}
OPENSSL_BUNDLES: dict[str, tuple[str, str, str]] = {
    # file in the pki, its place in the bundle, the error
    "key of another cert": ("other.key", "unit.key", "unit.key does not belong to unit.crt"),
    "cert of another CA": ("other.crt", "unit.crt", "unit.crt is not signed by broker-ca.crt"),
}


@pytest.mark.parametrize("case", sorted(BAD_BUNDLES))
def test_a_bad_bundle_is_refused_before_any_change(
    case: str, root: Path, bundle: Path, wheelhouse: Path
) -> None:
    spoil, message = BAD_BUNDLES[case]
    spoil(bundle)
    before = snapshot(root)
    refused = flash(root, bundle, wheelhouse)
    assert refused.returncode == 1
    assert message in refused.stderr
    assert refused.stderr.startswith("flash.sh: error: bundle")
    assert snapshot(root) == before


@needs_openssl
@pytest.mark.parametrize("case", sorted(OPENSSL_BUNDLES))
def test_a_mismatched_identity_is_refused(
    case: str, root: Path, bundle: Path, wheelhouse: Path, pki: Path
) -> None:
    source, place, message = OPENSSL_BUNDLES[case]
    shutil.copy(pki / source, bundle / place)
    before = snapshot(root)
    refused = flash(root, bundle, wheelhouse)
    assert refused.returncode == 1
    assert message in refused.stderr
    assert snapshot(root) == before


def test_no_bundle_directory(root: Path, tmp_path: Path, wheelhouse: Path) -> None:
    refused = flash(root, tmp_path / "nowhere", wheelhouse)
    assert refused.returncode == 1
    assert "bundle '" in refused.stderr
    assert "is not a directory" in refused.stderr


@pytest.mark.parametrize(
    ("dependency_tag", "message"),
    [
        ("cp311-cp311-manylinux2014_x86_64", "pip cannot install dispenser-agent for aarch64"),
        (None, "pip cannot install dispenser-agent for aarch64"),
    ],
)
def test_a_wheelhouse_that_cannot_install_is_refused_before_any_change(
    root: Path, bundle: Path, tmp_path: Path, dependency_tag: str | None, message: str
) -> None:
    if dependency_tag is None:  # the dependency missing
        wheels = make_wheelhouse(tmp_path / "wheels")
        next(wheels.glob("tinydep-*")).unlink()
    else:  # the dependency built for a PC, not for the Pi
        wheels = make_wheelhouse(tmp_path / "wheels", dependency_tag)
    before = snapshot(root)
    refused = flash(root, bundle, wheels)
    assert refused.returncode == 1
    assert message in refused.stderr
    assert "tinydep" in refused.stderr  # pip's own words name the wheel
    assert snapshot(root) == before


def test_not_a_root_or_no_boot_partition(root: Path, bundle: Path, wheelhouse: Path) -> None:
    (root / "boot/firmware/config.txt").unlink()
    refused = flash(root, bundle, wheelhouse)
    assert refused.returncode == 1
    assert "no config.txt under boot/firmware or boot" in refused.stderr
    (root / "etc/passwd").unlink()
    refused = flash(root, bundle, wheelhouse)
    assert "has no etc/passwd: not a root file system" in refused.stderr


def test_a_new_wheelhouse_replaces_the_install(root: Path, bundle: Path, tmp_path: Path) -> None:
    first = make_wheelhouse(tmp_path / "first")
    assert flash(root, bundle, first).returncode == 0
    second = tmp_path / "second"
    second.mkdir()
    make_wheel(second, "dispenser-agent", {"agent/__init__.py": "", "agent/cli2.py": ""})
    done = flash(root, bundle, second)
    assert done.returncode == 0, done.stderr
    site = root / "opt/dispenser-agent/site"
    assert (site / "agent/cli2.py").is_file()
    assert not (site / "tinydep.py").exists()
    assert not (root / "opt/dispenser-agent/site.old").exists()


# --- --image: a real disk image, loop-mounted (root only, as flashing an image is) ---------------

IMAGE_TOOLS = ("mkfs.ext4", "losetup", "partx", "mount", "umount")
MIB = 1024 * 1024


def _mbr_image(path: Path, partitions: list[Path]) -> list[int]:
    """A disk image with an MBR: each file system image a primary partition, from 1 MiB on;
    returns their byte offsets."""
    offsets, table, at = [], b"", MIB
    for fs in partitions:
        size = fs.stat().st_size
        table += bytes([0, 0, 0, 0, 0x83, 0, 0, 0])
        table += (at // 512).to_bytes(4, "little") + (size // 512).to_bytes(4, "little")
        offsets.append(at)
        at += size
    with path.open("wb") as image:
        image.write(bytes(446) + table.ljust(64, b"\0") + b"\x55\xaa")
        for fs, offset in zip(partitions, offsets, strict=True):
            image.seek(offset)
            image.write(fs.read_bytes())
    return offsets


def _run(*args: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.strip()


@pytest.mark.skipif(
    not AS_ROOT or any(shutil.which(t) is None for t in IMAGE_TOOLS),
    reason="flashing an image needs root, loop devices and e2fsprogs",
)
def test_an_image_is_flashed_through_loop_mounts(
    tmp_path: Path, root: Path, bundle: Path, wheelhouse: Path
) -> None:
    boot = tmp_path / "boot-content"
    (root / "boot/firmware").rename(boot)
    (root / "boot/firmware").mkdir()
    filesystems = []
    for name, content, size in (("boot", boot, 8), ("root", root, 24)):
        fs = tmp_path / f"{name}.ext4"
        with fs.open("wb") as f:
            f.truncate(size * MIB)
        _run("mkfs.ext4", "-q", "-d", str(content), str(fs))
        filesystems.append(fs)
    image = tmp_path / "unit.img"
    offsets = _mbr_image(image, filesystems)
    try:
        _run("losetup", "--find")
    except subprocess.CalledProcessError:
        pytest.skip("no loop device can be attached here")

    dry = subprocess.run(
        ["bash", str(FLASH), "--image", str(image), "--bundle", str(bundle),
         "--wheelhouse", str(wheelhouse), "--dry-run"],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "PYTHON": sys.executable},
    )  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    assert "would write /boot/firmware/config.txt" in dry.stdout
    done = subprocess.run(
        ["bash", str(FLASH), "--image", str(image), "--bundle", str(bundle),
         "--wheelhouse", str(wheelhouse)],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "PYTHON": sys.executable},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert _run("losetup", "--associated", str(image)) == ""  # detached again

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    loops = [_run("losetup", "--find", "--show", "--offset", str(o), str(image)) for o in offsets]
    try:
        _run("mount", "-o", "ro", loops[1], str(mnt))
        try:
            assert (mnt / "etc/dispenser-agent/tls/unit.key").stat().st_mode & 0o777 == 0o600
            assert (mnt / "opt/dispenser-agent/site/agent/cli.py").is_file()
            assert entry(mnt / "etc/passwd", "dispenser")[6] == "/usr/sbin/nologin"
        finally:
            _run("umount", str(mnt))
        _run("mount", "-o", "ro", loops[0], str(mnt))
        try:
            assert (mnt / "config.txt").read_text().endswith("dtparam=watchdog=on\n")
        finally:
            _run("umount", str(mnt))
    finally:
        for loop in loops:
            _run("losetup", "-d", loop)


def test_the_written_config_is_one_the_agent_accepts(
    root: Path, bundle: Path, wheelhouse: Path
) -> None:
    from agent.config import parse_config

    assert flash(root, bundle, wheelhouse).returncode == 0
    raw = json.loads((root / "etc/dispenser-agent/config.json").read_text())
    # as the agent reads its file (JSON types, strict), TLS identity included
    config = parse_config(raw)
    assert config.unit_id == "oslo-unit-0042"
    assert config.mqtt.tls is True
    assert str(config.mqtt.ca_file) == "/etc/dispenser-agent/tls/broker-ca.crt"
    assert str(config.mqtt.client_cert) == "/etc/dispenser-agent/tls/unit.crt"
    assert str(config.mqtt.client_key) == "/etc/dispenser-agent/tls/unit.key"
