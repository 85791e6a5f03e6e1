"""An end-to-end run (``haidang up``: gateway, chest X-ray analysis, PACS write-back, CDSS,
worklist) at DEBUG level; its logs and audit trail must not contain the patient names, IDs
and birth dates it was sent."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pydicom
import pytest

from haidang.testbed.studies import fresh_copy
from tests.support.gateway_helpers import settings_data, settings_env, wait_until
from tests.support.imaging_e2e import CXR_ROUTES, cxr_studies, model_registry
from tests.support.pacs import free_port, storescu, wait_for_port

pytestmark = pytest.mark.orthanc
REPO = Path(__file__).resolve().parents[2]
NAME, PID, BIRTH = "HOANG^THI THU TRANG", "BN-2026-558812", "19630521"
CDSS_PATIENT, CDSS_EPISODE = "BN-CDSS-99017", "LK-77210045"


def test_logs_and_audit_of_an_end_to_end_run_hold_no_patient_identifiers(tmp_path, orthanc):
    data = settings_data(tmp_path, orthanc, quiet=0.5)
    data["routes"] = CXR_ROUTES
    http_port = free_port()
    data["serving"] = {"port": http_port, "host": "127.0.0.1",
                       "models_dir": str(model_registry(tmp_path))}
    data["security"] = {"api_keys": ["e2e-key"], "audit_log": str(tmp_path / "audit.log")}
    env = settings_env(data)
    files = []
    for _, study_files in cxr_studies(tmp_path / "cxr", 2):
        files += study_files
    files.append(fresh_copy("ct", tmp_path / "ct"))
    for f in files:  # the identifiers we will look for
        ds = pydicom.dcmread(f)
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = NAME, PID, BIRTH
        ds.save_as(f, enforce_file_format=True)
    study_uids = {str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID)
                  for f in files}

    log_path = tmp_path / "haidang.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "haidang", "--log-level", "DEBUG", "up"],
                                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(data["gateway"]["port"], timeout=90)
        wait_for_port(http_port, timeout=90)
        for f in files:
            assert storescu([f], data["gateway"]["port"], "HAIDANG").returncode == 0
        wait_until(lambda: all(orthanc.find_instances(StudyInstanceUID=uid, Modality="SR")
                               for uid in study_uids), timeout=120, what="results in the PACS")
        base = f"http://127.0.0.1:{http_port}"
        body = {"MA_LK": CDSS_EPISODE, "MA_BN": CDSS_PATIENT, "NGAY_SINH": BIRTH,
                "GIOI_TINH": 2, "MA_BENH_CHINH": "J18.9",
                "THUOC": [{"TEN_THUOC": "Amiodaron 200mg"}, {"TEN_THUOC": "Levofloxacin 500mg"}]}
        r = httpx.post(f"{base}/api/v1/prescriptions/check", json=body,
                       headers={"X-API-Key": "e2e-key"}, timeout=30)
        assert r.status_code == 200 and r.json()["alerts"], r.text
        r = httpx.get(f"{base}/api/worklist", headers={"X-API-Key": "e2e-key"}, timeout=30)
        assert r.status_code == 200 and len(r.json()["studies"]) == 3
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    spooled = [p.read_bytes() for p in Path(data["gateway"]["spool_dir"]).rglob("*.dcm")]
    assert any(NAME.encode() in raw for raw in spooled)  # the identifiers really went in
    logs = log_path.read_text(encoding="utf-8", errors="replace")
    audit = (tmp_path / "audit.log").read_text(encoding="utf-8")
    assert "study" in logs and "DEBUG" in logs  # the run really logged
    events = {json.loads(line)["event"] for line in audit.splitlines()}
    assert {"check", "export", "access", "settings"} <= events, events
    for text, where in ((logs, "application log"), (audit, "audit trail")):
        for secret in (NAME, NAME.replace("^", " "), "THU TRANG", PID, BIRTH, CDSS_PATIENT,
                       CDSS_EPISODE):
            assert secret not in text, f"{secret!r} found in the {where}"
