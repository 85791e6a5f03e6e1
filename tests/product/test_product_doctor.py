"""``haidang doctor`` against a real deployment: Orthanc as the PACS, the committed models,
an SQLite index; then the same with each part broken, where it must say what to fix in
Vietnamese and English and exit 1."""

from __future__ import annotations

import datetime as dt
import shutil
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dicom_gateway.index import Index
from tests.support.gateway_helpers import settings_data, settings_env
from tests.support.pacs import free_port

pytestmark = pytest.mark.orthanc

REPO = Path(__file__).resolve().parents[2]


def _doctor(data: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "haidang", *args, "doctor"], cwd=REPO,
                          env=settings_env(data), capture_output=True, text=True, timeout=120)


def _line(out: str, start: str) -> str:
    found = [ln for ln in out.splitlines() if ln.startswith(start)]
    assert found, f"no line starting {start!r} in:\n{out}"
    return found[0]


def _fixes_follow(out: str, start: str) -> None:
    lines = out.splitlines()
    i = lines.index(_line(out, start))
    assert lines[i + 1].strip().startswith("Cách sửa:"), lines[i:i + 3]
    assert lines[i + 2].strip().startswith("To fix:"), lines[i:i + 3]


def _healthy(tmp_path, orthanc) -> dict:
    data = settings_data(tmp_path, orthanc)
    data["destinations"][0]["web_url"] = orthanc.url
    data["serving"] = {"models_dir": str(REPO / "models"), "port": free_port(),
                       "imaging_port": free_port()}
    Index(data["gateway"]["database_url"]).close()  # the schema, as a first start leaves it
    return data


def test_a_healthy_deployment_passes(tmp_path, orthanc):
    data = _healthy(tmp_path, orthanc)
    res = _doctor(data)
    out = res.stdout
    assert res.returncode == 0, out
    assert "[FAIL]" not in out
    _line(out, f"[ OK ] destination pacs: C-ECHO {orthanc.aet}@127.0.0.1:{orthanc.dicom_port} "
               "answered Success")
    clock = _line(out, "[ OK ] clock vs pacs: PACS clock ")
    assert f" s from ours (Orthanc {orthanc.url}/tools/now, ±1 s)" in clock
    for name in ("cxr-pneumonia", "interaction-risk", "protocol-anomaly"):
        assert "matches its card" in _line(out, f"[ OK ] model {name}: ")
    _line(out, "[ OK ] database: ")
    _line(out, "[ OK ] spool: ")
    _line(out, f"[ OK ] port gateway.port={data['gateway']['port']}: ")
    assert "0 failed" in out and "0 lỗi" in out


def _expired_certificate(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "haidang-test")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=30))
            .not_valid_after(now - dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    cert_file, key_file = folder / "gateway.crt", folder / "gateway.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def test_each_broken_part_is_named_with_its_fix(tmp_path, orthanc):
    data = _healthy(tmp_path, orthanc)
    # a PACS that is not there
    data["destinations"].append({"name": "gone", "ae_title": "GONE", "host": "127.0.0.1",
                                 "port": free_port()})
    # a disk below the watermark
    data["gateway"]["min_free_bytes"] = 2**62
    # a model file changed after registration
    models = tmp_path / "models"
    shutil.copytree(REPO / "models", models)
    onnx = models / "protocol-anomaly" / "1.0.0" / "model.onnx"
    raw = bytearray(onnx.read_bytes())
    raw[-1] ^= 0xFF
    onnx.write_bytes(bytes(raw))
    data["serving"]["models_dir"] = str(models)
    # an expired certificate
    cert_file, key_file = _expired_certificate(tmp_path)
    data["gateway"]["tls"] = {"cert_file": str(cert_file), "key_file": str(key_file)}
    # a database of another version: a column missing
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE instances (sop_uid TEXT PRIMARY KEY, path TEXT)")
    data["gateway"]["database_url"] = f"sqlite:///{db}"
    with socket.socket() as taken:  # the DICOM port held by something else
        taken.bind((data["gateway"]["host"], data["gateway"]["port"]))
        taken.listen(1)
        res = _doctor(data)
    out = res.stdout
    assert res.returncode == 1, out
    for start in ("[FAIL] destination gone: C-ECHO GONE@127.0.0.1:",
                  "[FAIL] spool: ",
                  "[FAIL] model protocol-anomaly: ModelIntegrityError",
                  "[FAIL] TLS gateway.tls.cert_file: ",
                  "[FAIL] database: ",
                  f"[WARN] port gateway.port={data['gateway']['port']}: "):
        _fixes_follow(out, start)
    assert "expired on" in _line(out, "[FAIL] TLS gateway.tls.cert_file: ")
    assert "missing instances." in _line(out, "[FAIL] database: ")
    _line(out, "[ OK ] destination pacs: ")  # the working parts still say so
    _line(out, "[ OK ] model cxr-pneumonia: ")
    assert "5 failed" in out and "5 lỗi" in out


def test_settings_that_do_not_parse(tmp_path):
    bad = tmp_path / "haidang.toml"
    bad.write_text("[gateway]\nport = 'eleven'\n")
    res = _doctor({}, "--config", str(bad))
    assert res.returncode == 1
    assert res.stdout.startswith("[FAIL] settings: invalid settings: gateway.port")
    _fixes_follow(res.stdout, "[FAIL] settings: ")
