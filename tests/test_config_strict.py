"""Config strictness (issue 10, item 5): no type coercion, a pseudonymous patient_ref that is
neither a national id in any spacing nor a name, a password file of the service user that others
cannot read (refused by check-config, named at the daemon's start).
The national ids below are synthetic numbers whose check digits were worked out by hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import ConfigError, parse_config, private_file_problem, service_uid
from agent.runtime import mqtt_settings

VALID_FNR = "15076500565"  # a synthetic fødselsnummer with valid mod-11 check digits
OTHER_FNR = "01019912368"
VALID_DNR = "41019912351"  # a D-number (day + 40)


def base(tmp_path: Path, **changes: object) -> dict[str, object]:
    config: dict[str, object] = {
        "unit_id": "oslo-unit-0042",
        "state_dir": str(tmp_path / "state"),
        "dispenser": {"device": "/dev/ttyUSB0"},
        "patient_ref": "p7f3c9a2e",
    }
    config.update(changes)
    return config


def refused(config: dict[str, object], *fragments: str) -> str:
    with pytest.raises(ConfigError) as problem:
        parse_config(config)
    for fragment in fragments:
        assert fragment in str(problem.value), str(problem.value)
    return str(problem.value)


@pytest.mark.parametrize(
    ("mqtt", "field"),
    [
        ({"port": "8883"}, "mqtt.port"),
        ({"tls": "yes"}, "mqtt.tls"),
        ({"tls": 1}, "mqtt.tls"),
        ({"keepalive_s": 30.0}, "mqtt.keepalive_s"),
        ({"username": 42}, "mqtt.username"),
    ],
)
def test_types_are_not_coerced(tmp_path: Path, mqtt: dict[str, object], field: str) -> None:
    refused(base(tmp_path, mqtt=mqtt), field)


def test_engine_numbers_and_dates_still_read_as_json_has_them(tmp_path: Path) -> None:
    config = parse_config(
        base(
            tmp_path,
            engine={"grace_minutes": 30},  # an integer where a float is expected is a number
            schedule={"rules": [{"effective_from": "2026-11-23", "times": ["08:00"]}]},
        )
    )
    assert config.engine.grace_minutes == 30
    refused(base(tmp_path, engine={"grace_minutes": "30"}), "engine.grace_minutes")


@pytest.mark.parametrize(
    "ref",
    [
        VALID_FNR,
        f"{VALID_FNR[:6]} {VALID_FNR[6:]}",
        f"{VALID_FNR[:6]}-{VALID_FNR[6:]}",
        f"{VALID_FNR[:2]}.{VALID_FNR[2:4]}.{VALID_FNR[4:6]} {VALID_FNR[6:]}",
        f"p-{OTHER_FNR}",
        VALID_DNR,
        f"{VALID_DNR[:6]} {VALID_DNR[6:9]} {VALID_DNR[9:]}",
    ],
)
def test_a_national_id_in_any_spacing_is_refused(tmp_path: Path, ref: str) -> None:
    refused(base(tmp_path, patient_ref=ref), "patient_ref", "national identity number")


@pytest.mark.parametrize(
    "ref", ["Kari Nordmann", "kari-nordmann", "KariNordmann", "Ola", "NORDMANN, KARI", "anna-berg"]
)
def test_a_name_is_refused(tmp_path: Path, ref: str) -> None:
    refused(base(tmp_path, patient_ref=ref), "patient_ref")


@pytest.mark.parametrize("ref", ["p7f3c9a2e", "p-e2e-0001", "patient-7f3a", "P-E2E-0O01"])
def test_pseudonyms_pass(tmp_path: Path, ref: str) -> None:
    assert parse_config(base(tmp_path, patient_ref=ref)).patient_ref == ref


def test_eleven_digits_that_fail_the_check_are_still_refused_as_no_pseudonym(
    tmp_path: Path,
) -> None:
    refused(base(tmp_path, patient_ref="01017012345"), "patient_ref")


def password_file(tmp_path: Path, mode: int) -> Path:
    path = tmp_path / "mqtt-password"
    path.write_text("secret\n", encoding="utf-8")
    path.chmod(mode)
    return path


def test_a_missing_password_file_is_named(tmp_path: Path) -> None:
    assert private_file_problem(tmp_path / "missing", os.geteuid()) == (
        f"{tmp_path / 'missing'} does not exist"
    )
    config = parse_config(
        base(tmp_path, mqtt={"username": "u", "password_file": str(tmp_path / "missing")})
    )
    with pytest.raises(ConfigError, match=r"mqtt\.password_file: .*missing cannot be read"):
        mqtt_settings(config)  # the daemon's start: a clear error, not a traceback


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o606, 0o601])
def test_a_password_file_others_can_use_is_refused(tmp_path: Path, mode: int) -> None:
    problem = private_file_problem(password_file(tmp_path, mode), os.geteuid())
    assert problem is not None
    assert f"readable by everyone (mode {mode:04o})" in problem


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o640])
def test_a_private_password_file_of_the_service_user_is_accepted(tmp_path: Path, mode: int) -> None:
    assert private_file_problem(password_file(tmp_path, mode), os.geteuid()) is None


def test_the_service_user_is_the_owner_of_the_state_folder(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    assert service_uid(tmp_path / "state") == (tmp_path / "state").stat().st_uid
    assert service_uid(tmp_path / "not-yet") == os.geteuid()


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_check_config_refuses_a_password_file_of_another_user(tmp_path: Path) -> None:
    path = password_file(tmp_path, 0o600)
    os.chown(path, 65534, 65534)  # nobody
    config = tmp_path / "c.json"
    mqtt = {"username": "u", "password_file": str(path)}
    config.write_text(json.dumps(base(tmp_path, mqtt=mqtt)), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "agent.cli", "check-config", str(config), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    items = {i["name"]: i for i in json.loads(result.stdout)["items"]}
    assert not items["password file"]["ok"]
    assert "owned by uid 65534" in items["password file"]["detail"]


def test_check_config_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(base(tmp_path, mqtt={"port": "8883"})), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "agent.cli", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "mqtt.port" in result.stderr
