"""The lockfiles in requirements/ agree with pyproject.toml (offline; no resolver is run).

- every pin is exact and carries at least one sha256 hash (pip --require-hashes needs both);
- every runtime dependency is pinned in every lock, every extra in dev.lock, the demo extra in
  demo.lock, pip and the build backend in the two locks bootstrap.sh installs, each at a version
  its range in pyproject.toml allows;
- demo.lock and unit.lock pin the versions dev.lock pins (the unit runs what the suite tested);
- unit.lock holds the runtime's whole dependency closure for the unit (aarch64 CPython 3.11), read
  from the installed packages' metadata, and nothing else (no dev tool on a unit);
- every third-party module the shipped code imports comes from a package in unit.lock, except in
  the folders that belong to an extra that is never installed on a unit.

Whether the locks are the newest resolution of pyproject.toml needs the network:
`bash scripts/lock.sh --check` (README, "Dependencies").
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
LOCKS = REPO / "requirements"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]

# Raspberry Pi OS bookworm on the unit: what unit.lock is resolved for (scripts/lock.sh).
UNIT_ENV = {
    "implementation_name": "cpython",
    "implementation_version": "3.11.2",
    "os_name": "posix",
    "platform_machine": "aarch64",
    "platform_python_implementation": "CPython",
    "platform_system": "Linux",
    "python_full_version": "3.11.2",
    "python_version": "3.11",
    "sys_platform": "linux",
    "extra": "",
}
# Shipped folders whose code runs only with an extra that a unit never installs.
EXTRA_CODE = {"agent/demo": "demo", "agent/fhir": "centre"}
HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}$")


@dataclass
class Pin:
    requirement: Requirement
    hashes: list[str] = field(default_factory=list)

    def applies(self, env: dict[str, str]) -> bool:
        marker = self.requirement.marker
        return marker is None or marker.evaluate(env)

    @property
    def version(self) -> Version:
        (spec,) = self.requirement.specifier
        return Version(spec.version)


def read_lock(name: str) -> dict[str, list[Pin]]:
    """name -> its pins (a universal lock may pin one name twice, under exclusive markers)."""
    pins: dict[str, list[Pin]] = {}
    current: Pin | None = None
    for raw in (LOCKS / name).read_text().splitlines():
        line = raw.strip().removesuffix("\\").strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("--hash="):
            assert current is not None, f"{name}: a hash before any pin: {line}"
            assert HASH.match(line), f"{name}: not a sha256 hash: {line}"
            current.hashes.append(line)
            continue
        assert not line.startswith("-"), f"{name}: an option in a lock: {line}"
        current = Pin(Requirement(line))
        pins.setdefault(canonicalize_name(current.requirement.name), []).append(current)
    return pins


DEV, DEMO, UNIT = read_lock("dev.lock"), read_lock("demo.lock"), read_lock("unit.lock")
ALL = {"dev.lock": DEV, "demo.lock": DEMO, "unit.lock": UNIT}


# Where the universal locks are used: Linux, x86_64 or aarch64, CPython 3.11 and newer.
LINUX_ENVS = [
    {
        **UNIT_ENV,
        "platform_machine": machine,
        "python_version": py,
        "python_full_version": py + ".0",
    }
    for machine in ("x86_64", "aarch64")
    for py in ("3.11", "3.12", "3.13", "3.14")
]


def pinned(lock: dict[str, list[Pin]], requirement: Requirement, where: str) -> None:
    """`requirement` is pinned in range on every target where it applies (a pin whose marker
    leaves out a target where the requirement holds would install nothing there)."""
    name = canonicalize_name(requirement.name)
    assert name in lock, f"{requirement} is not pinned in {where}"
    envs = [UNIT_ENV] if lock is UNIT else LINUX_ENVS
    for env in envs:
        if requirement.marker is not None and not requirement.marker.evaluate(env):
            continue
        pins = [p for p in lock[name] if p.requirement.marker is None or p.applies(env)]
        assert pins, f"{where} pins {name} only where {requirement} does not apply ({env})"
        for pin in pins:
            assert requirement.specifier.contains(pin.version, prereleases=True), (
                f"{where} pins {name}=={pin.version}, outside pyproject.toml's {requirement}"
            )


@pytest.mark.parametrize("name", sorted(ALL))
def test_every_pin_is_exact_and_hashed(name: str) -> None:
    text = (LOCKS / name).read_text()
    assert text.startswith(f"# requirements/{name}: "), "the header says what the lock is for"
    assert "bash scripts/lock.sh" in text.split("\n\n")[0], "the header says how to regenerate"
    assert ALL[name], f"{name} pins nothing"
    for pins in ALL[name].values():
        for pin in pins:
            specs = list(pin.requirement.specifier)
            assert len(specs) == 1, f"{name}: {pin.requirement} is not one exact pin"
            assert specs[0].operator == "==", f"{name}: {pin.requirement} is not pinned with =="
            assert "*" not in specs[0].version, f"{name}: {pin.requirement} is a wildcard"
            assert pin.hashes, f"{name}: {pin.requirement} has no --hash"


@pytest.mark.parametrize("name", sorted(ALL))
def test_every_runtime_dependency_is_pinned_in_every_lock(name: str) -> None:
    for text in PROJECT["dependencies"]:
        requirement = Requirement(text)
        marker = requirement.marker
        if name == "unit.lock" and marker is not None and not marker.evaluate(UNIT_ENV):
            continue  # not for the unit's platform
        pinned(ALL[name], requirement, name)


def test_every_extra_is_pinned_in_dev_lock_and_the_demo_extra_in_demo_lock() -> None:
    extras = PROJECT["optional-dependencies"]
    assert "demo" in extras
    for extra, requirements in extras.items():
        for text in requirements:
            pinned(DEV, Requirement(text), f"dev.lock (extra {extra})")
    for text in extras["demo"]:
        pinned(DEMO, Requirement(text), "demo.lock")


@pytest.mark.parametrize("name", ["dev.lock", "demo.lock"])
def test_the_bootstrap_locks_pin_pip_and_the_build_backend(name: str) -> None:
    # bootstrap.sh builds the editable install without isolation, from these pins only.
    for text in [*PYPROJECT["build-system"]["requires"], "pip", "editables"]:
        pinned(ALL[name], Requirement(text), name)


@pytest.mark.parametrize("name", ["demo.lock", "unit.lock"])
def test_the_smaller_locks_pin_dev_lock_versions(name: str) -> None:
    for key, pins in ALL[name].items():
        assert key in DEV, f"{name} pins {key}, which dev.lock does not"
        tested = {pin.version for pin in DEV[key]}
        for pin in pins:
            assert pin.version in tested, (
                f"{name} pins {key}=={pin.version}; the suite runs {sorted(map(str, tested))}"
            )


def _unit_closure() -> set[str]:
    """The runtime's dependencies on the unit, transitively, from installed metadata."""
    todo = [Requirement(text) for text in PROJECT["dependencies"]]
    seen: set[str] = set()
    while todo:
        requirement = todo.pop()
        if requirement.marker is not None and not requirement.marker.evaluate(UNIT_ENV):
            continue
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            continue  # not on this machine (an aarch64-only dependency): still must be pinned
        todo.extend(Requirement(text) for text in requires)
    return seen


def test_the_unit_lock_is_the_runtime_closure_for_the_unit() -> None:
    closure = _unit_closure()
    assert sorted(closure - set(UNIT)) == [], "needed on the unit, missing from unit.lock"
    assert sorted(set(UNIT) - closure) == [], "in unit.lock, not needed by the runtime"
    for pins in UNIT.values():
        for pin in pins:
            assert pin.applies(UNIT_ENV), (
                f"unit.lock pins {pin.requirement}, which does not apply on the unit"
            )


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level module -> the shipped files that import it (absolute, non-stdlib, non-own)."""
    packages = PYPROJECT["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    own = set(packages)
    found: dict[str, set[str]] = {}
    for package in packages:
        for path in sorted((REPO / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for module in names:
                    top = module.split(".")[0]
                    if top not in own and top not in sys.stdlib_module_names:
                        found.setdefault(top, set()).add(path.relative_to(REPO).as_posix())
    return found


def test_every_module_the_shipped_code_imports_comes_from_its_lock() -> None:
    providers = metadata.packages_distributions()
    imports = _third_party_imports()
    assert {"serial", "paho", "pydantic", "cobs"} <= set(imports), "the scan found the runtime"
    for module, files in sorted(imports.items()):
        assert module in providers, f"{module} (imported by {sorted(files)}) is not installed"
        dists: set[str] = {canonicalize_name(d) for d in providers[module]}
        for file in sorted(files):
            extra = next((e for p, e in EXTRA_CODE.items() if file.startswith(p + "/")), None)
            lock, where = (UNIT, "unit.lock") if extra is None else (DEV, "dev.lock")
            assert dists & set(lock), f"{file} imports {module} ({sorted(dists)}): not in {where}"
            if extra is not None:  # and the extra brings it, directly or through another
                extra_reqs = PROJECT["optional-dependencies"][extra]
                roots = {canonicalize_name(Requirement(t).name) for t in extra_reqs} | set(UNIT)
                assert _needs(roots, dists), f"{file} imports {module}: not from the {extra} extra"


def _needs(roots: set[str], dists: set[str]) -> bool:
    """Whether one of `dists` is among `roots` or their installed dependencies, transitively."""
    todo, seen = list(roots), set()
    while todo:
        name = todo.pop()
        if name in dists:
            return True
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            continue
        todo.extend(canonicalize_name(Requirement(t).name) for t in requires)
    return False


def test_the_readme_commands_install_from_the_locks_with_hashes() -> None:
    bootstrap = (REPO / "scripts/bootstrap.sh").read_text()
    assert "--require-hashes" in bootstrap
    assert "requirements/dev.lock" in bootstrap
    assert "requirements/demo.lock" in bootstrap
    wheelhouse = (REPO / "scripts/build-wheelhouse.sh").read_text()
    assert "--require-hashes" in wheelhouse
    assert "requirements/unit.lock" in wheelhouse
    for script in ("scripts/test.sh", "scripts/demo.sh"):
        assert "scripts/bootstrap.sh" in (REPO / script).read_text()
