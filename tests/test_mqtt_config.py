"""The broker section of the config: the TLS identity flash.sh writes, plaintext refused to a
remote broker unless allowed (and then warned about at every start)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from agent.config import ConfigError, parse_config
from agent.runtime import build_daemon, mqtt_settings


def config(tmp_path: Path, **mqtt: Any) -> dict[str, Any]:
    return {
        "unit_id": "unit-0001",
        "state_dir": str(tmp_path / "state"),
        "dispenser": {"device": "/dev/null"},
        "mqtt": mqtt,
    }


def test_plaintext_to_a_remote_broker_is_refused_with_the_field_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config(config(tmp_path, host="broker.example.org", port=1883))
    assert "mqtt:" in str(refused.value)
    assert "tls is off for the remote broker broker.example.org" in str(refused.value)
    assert "allow_plaintext" in str(refused.value)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.53"])
def test_plaintext_on_the_unit_itself_is_fine(tmp_path: Path, host: str) -> None:
    assert parse_config(config(tmp_path, host=host)).mqtt.plaintext_remote is False


def test_allowed_plaintext_is_warned_about_at_every_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    allowed = parse_config(config(tmp_path, host="10.0.0.5", allow_plaintext=True))
    caplog.set_level(logging.WARNING, logger="agent.runtime")
    for _start in range(2):
        daemon = build_daemon(allowed)
        daemon.store.close()
    warnings = [r.getMessage() for r in caplog.records if "WITHOUT TLS" in r.getMessage()]
    assert len(warnings) == 2
    assert "10.0.0.5:1883" in warnings[0]


def test_the_tls_identity_reaches_the_link_settings(tmp_path: Path) -> None:
    loaded = parse_config(
        config(
            tmp_path,
            host="broker.example.org",
            port=8883,
            tls=True,
            ca_file="/etc/dispenser-agent/tls/broker-ca.crt",
            client_cert="/etc/dispenser-agent/tls/unit.crt",
            client_key="/etc/dispenser-agent/tls/unit.key",
        )
    )
    settings = mqtt_settings(loaded)
    assert settings.tls is True
    assert settings.ca_file == "/etc/dispenser-agent/tls/broker-ca.crt"
    assert settings.client_cert == "/etc/dispenser-agent/tls/unit.crt"
    assert settings.client_key == "/etc/dispenser-agent/tls/unit.key"
    assert settings.max_packet_bytes == 128 * 1024


@pytest.mark.parametrize(
    ("mqtt", "says"),
    [
        ({"tls": True, "client_cert": "/x.crt"}, "client_cert and client_key go together"),
        ({"tls": True, "client_key": "/x.key"}, "client_cert and client_key go together"),
        ({"ca_file": "/ca.crt"}, "need tls: true"),
    ],
)
def test_an_incomplete_identity_is_refused(tmp_path: Path, mqtt: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        parse_config(config(tmp_path, **mqtt))


def test_check_config_names_an_unreadable_certificate_and_a_key_others_can_read(
    tmp_path: Path,
) -> None:
    import json

    from agent.technician.check_config import check_config

    cert = tmp_path / "unit.crt"
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    key = tmp_path / "unit.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    key.chmod(0o644)
    path = tmp_path / "config.json"
    raw = config(
        tmp_path,
        host="broker.example.org",
        port=8883,
        tls=True,
        ca_file=str(tmp_path / "missing-ca.crt"),
        client_cert=str(cert),
        client_key=str(key),
    )
    path.write_text(json.dumps(raw))
    report = check_config(path)
    lines = {item.name: (item.ok, item.detail) for item in report.items}
    assert lines["mqtt.ca_file"][0] is False
    assert "missing-ca.crt cannot be read" in lines["mqtt.ca_file"][1]
    assert lines["mqtt.client_cert"][0] is True
    assert lines["mqtt.client_key"][0] is False
    assert "readable by everyone" in lines["mqtt.client_key"][1]
