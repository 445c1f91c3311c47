"""`dispenser-agent audit export`: the audit log as a file the municipality can file.

Writes `<unit>-audit-<time>.jsonl` (one audit record per line, the hash chain as stored), a
manifest (`.manifest.json`: unit, records, chain verdict, the file's SHA-256) and a
`sha256sum`-style line (`.sha256`). If the unit has a private key (PEM), the manifest is signed
with it (`openssl dgst -sha256 -sign`, `.manifest.sig`). Files are 0600: they hold the patient's
history until the municipality has them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from agent.store.audit import canonical_json
from agent.store.db import Store

DEFAULT_UNIT_KEY = Path("/etc/dispenser-agent/tls/unit.key")  # the TLS client key flash.sh installs


@dataclass(frozen=True)
class Export:
    log: Path
    manifest: Path
    checksum: Path
    signature: Path | None
    sha256: str
    records: int
    chain_ok: bool
    signature_note: str


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def export_audit(
    store: Store, unit_id: str, out_dir: Path, key: Path | None = DEFAULT_UNIT_KEY
) -> Export:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    base = out_dir / f"{unit_id}-audit-{stamp}"
    lines: list[bytes] = []
    after = 0
    while batch := store.audit_records(after, 1000):
        for record in batch:
            row = {
                "seq": record.seq,
                "at_utc": record.at_utc,
                "trust": record.trust,
                "kind": record.kind,
                "body": record.body,
                "prev_hash": record.prev_hash,
                "hash": record.hash,
            }
            lines.append(canonical_json(row).encode() + b"\n")
        after = batch[-1].seq
    data = b"".join(lines)
    log_path = base.with_suffix(".jsonl")
    _write_private(log_path, data)
    digest = hashlib.sha256(data).hexdigest()
    report = store.verify_audit()
    manifest = {
        "schema": "dispenser-audit-export/1",
        "unit_id": unit_id,
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "file": log_path.name,
        "sha256": digest,
        "records": len(lines),
        "chain_ok": report.ok,
        "chain_problem": report.reason,
    }
    manifest_path = base.with_suffix(".manifest.json")
    _write_private(manifest_path, json.dumps(manifest, indent=2).encode() + b"\n")
    checksum = base.with_suffix(".sha256")
    _write_private(checksum, f"{digest}  {log_path.name}\n".encode())
    signature, note = _sign(manifest_path, key)
    return Export(log_path, manifest_path, checksum, signature, digest, len(lines), report.ok, note)


def _sign(manifest: Path, key: Path | None) -> tuple[Path | None, str]:
    if key is None or not key.is_file():
        return None, "not signed: the unit has no key (the SHA-256 manifest stands alone)"
    openssl = shutil.which("openssl")
    if openssl is None:
        return None, "not signed: openssl is not installed"
    signature = manifest.with_suffix(".sig")
    result = subprocess.run(
        [openssl, "dgst", "-sha256", "-sign", str(key), "-out", str(signature), str(manifest)],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    if result.returncode != 0:
        return None, f"not signed: openssl failed: {result.stderr.strip()[:200]}"
    signature.chmod(0o600)
    return signature, f"signed with {key}"
