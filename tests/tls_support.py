"""A test CA and certificates made at test time (never committed), and a private mosquitto that
runs the repo's example broker configuration (docs/broker/) on 127.0.0.1 with them."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from broker import MosquittoBroker
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

REPO = Path(__file__).resolve().parent.parent
BROKER_DIR = REPO / "docs" / "broker"
CONFIG_DIR = "/etc/mosquitto/dispenser/"
CENTRE_IDENTITY = "centre.operator"


@dataclass(frozen=True)
class Identity:
    cert: Path
    key: Path


class TestCa:
    """One certificate authority in `directory`; `issue()` writes a cert and key signed by it."""

    __test__ = False  # not a pytest class

    def __init__(self, directory: Path, name: str = "Test Response Centre CA") -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(self._name)
            .issuer_name(self._name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )
        self.cert_path = directory / "ca.crt"
        self.cert_path.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def issue(
        self, common_name: str, *, server: bool = False, expired: bool = False, file_stem: str = ""
    ) -> Identity:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        if expired:
            before, after = now - dt.timedelta(days=10), now - dt.timedelta(days=1)
        else:
            before, after = now - dt.timedelta(hours=1), now + dt.timedelta(days=7)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(before)
            .not_valid_after(after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        cert = builder.sign(self._key, hashes.SHA256())
        stem = file_stem or common_name
        cert_path = self.directory / f"{stem}.crt"
        key_path = self.directory / f"{stem}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_path.chmod(0o600)
        return Identity(cert_path, key_path)


class TlsBroker(MosquittoBroker):
    """mosquitto running docs/broker/mosquitto.conf and docs/broker/acl: only the listener
    (a free port on 127.0.0.1), the file paths and the persistence folder are the test's."""

    def __init__(self, workdir: Path, ca: TestCa) -> None:
        self.ca = ca
        self.server = ca.issue("localhost", server=True, file_stem="server")
        super().__init__(workdir)

    def _write_config(self) -> None:
        files = self.workdir / "etc"
        files.mkdir(exist_ok=True)
        (files / "ca.crt").write_bytes(self.ca.cert_path.read_bytes())
        (files / "server.crt").write_bytes(self.server.cert.read_bytes())
        (files / "server.key").write_bytes(self.server.key.read_bytes())
        (files / "acl").write_text((BROKER_DIR / "acl").read_text())
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        text = (BROKER_DIR / "mosquitto.conf").read_text()
        assert "listener 8883\n" in text
        assert CONFIG_DIR in text
        text = text.replace("listener 8883\n", f"listener {self.port} {self.host}\n")
        text = text.replace(CONFIG_DIR, f"{files}/")
        text = text.replace(
            "persistence_location /var/lib/mosquitto/", f"persistence_location {data}/"
        )
        lines = [
            text,
            f"log_dest file {self.log_path}",
            "log_type all",
            "connection_messages true",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # as in MosquittoBroker: stay able to read the temp dir
        self.config_path.write_text("\n".join(lines) + "\n")
