"""Security controls: audit trail (chain, tampering, exports), rate limits,
and no patient identifiers in the logs of an end-to-end run."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from haidang.ground import audit
from haidang.ground.settings import Settings
from serving.ratelimit import TokenBucket
from tests.support.cdss_support import fixture_kb, settings_for

REPO = Path(__file__).resolve().parents[2]


def _haidang(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "haidang", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


def _written_log(tmp_path, n=5) -> Path:
    settings = Settings.model_validate({"security": {"audit_log": str(tmp_path / "audit.log")}})
    audit.record_settings(settings, "test")
    for i in range(n):
        audit.record(settings, "access", {"patient": f"BN-{i}"}, resource="/api/worklist")
    audit.close_all()
    return tmp_path / "audit.log"


def test_audit_verify_passes_then_names_the_tampered_line(tmp_path):
    path = _written_log(tmp_path)
    lines = path.read_text().splitlines()
    assert len(lines) == 6
    assert "BN-1" not in path.read_text()  # identifiers are keyed hashes
    ok = _haidang("audit", "verify", str(path))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "6 records" in ok.stdout and "intact" in ok.stdout

    rec = json.loads(lines[3])
    rec["resource"] = "/api/worklist?changed"
    lines[3] = json.dumps(rec, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    path.write_text("\n".join(lines) + "\n")
    bad = _haidang("audit", "verify", str(path))
    assert bad.returncode == 1
    assert "line 4: content does not match its hash" in bad.stdout, bad.stdout

    # deleting a record breaks the chain of the record after it
    path = _written_log(tmp_path / "b")
    lines = path.read_text().splitlines()
    del lines[2]
    path.write_text("\n".join(lines) + "\n")
    bad = _haidang("audit", "verify", "--json", str(path))
    report = json.loads(bad.stdout)
    assert bad.returncode == 1 and not report["intact"]
    assert any(p.startswith("line 3: chain broken") for p in report["problems"]), report


def test_settings_digest_changes_with_configuration():
    a = Settings()
    b = Settings.model_validate({"gateway": {"port": 11113}})
    assert audit.settings_digest(a) == audit.settings_digest(Settings())
    assert audit.settings_digest(a) != audit.settings_digest(b)


def test_token_bucket_refills_at_its_rate():
    bucket = TokenBucket(rate=10, burst=3)
    assert [bucket.take("a", now=0.0) for _ in range(3)] == [0, 0, 0]
    assert bucket.take("a", now=0.0) == pytest.approx(0.1)
    assert bucket.take("b", now=0.0) == 0  # another caller has its own bucket
    assert bucket.take("a", now=0.15) == 0


def test_native_api_rate_limited_per_caller(tmp_path):
    from serving.cdss.app import create_app

    settings = settings_for(tmp_path, api_keys=["k1"], rate_limit_per_s=2, rate_limit_burst=3)
    client = TestClient(create_app(settings, kb=fixture_kb()))
    body = {"THUOC": [{"TEN_THUOC": "Paracetamol 500mg"}]}
    codes = [client.post("/api/v1/prescriptions/check", json=body,
                         headers={"X-API-Key": "k1"}).status_code for _ in range(5)]
    assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429], codes
    r = client.post("/api/v1/prescriptions/check", json=body, headers={"X-API-Key": "k1"})
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    # guessing keys does not escape the limit: the address has its own bucket
    assert client.post("/api/v1/prescriptions/check", json=body,
                       headers={"X-API-Key": "guess"}).status_code == 429
    time.sleep(0.6)
    assert client.post("/api/v1/prescriptions/check", json=body,
                       headers={"X-API-Key": "k1"}).status_code == 200
    assert client.get("/healthz").status_code == 200  # only the API paths are limited
