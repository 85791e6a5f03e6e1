"""End to end, every channel: a chest X-ray pushed with dcmtk reaches the PACS (SR, GSPS,
SC), the RIS (HL7 ORU^R01 and, when urgent, the priority update) and the HIS (FHIR
DiagnosticReport), with nothing but configuration, through outages of each receiver and
a crash between the job's commit and delivery. A late image re-opens the study: the new
SR names the old one as predecessor and the HIS keeps one, current, report.

Real Orthanc, real dcmtk, the real model, the ``hl7`` package's MLLP server, a loopback
FHIR endpoint that validates with ``fhir.resources``; dciodvfy and PixelMed on what the
PACS holds.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from dicom_gateway.index import Index
from dicom_gateway.runtime import Gateway
from haidang.ground.settings import Settings
from tests.support.gateway_helpers import send_as_is, wait_until
from tests.support.imaging_e2e import cxr_studies, imaging_settings
from tests.support.pacs import free_port
from tests.support.receivers import FhirAndHookServer, MLLPListener
from tests.support.sr_validation import assert_valid_sr, dciodvfy_errors, pixelmed_dump

pytestmark = pytest.mark.orthanc
ROOT = Path(__file__).resolve().parents[2]


def _pacs(orthanc, study_uid: str, modality: str) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(io.BytesIO(orthanc.instance_file(i["ID"])))
            for i in orthanc.find_instances(StudyInstanceUID=study_uid, Modality=modality)]


def _push_from_orthanc(orthanc, files, study_uid: str, port: int) -> None:
    """The PACS sends the study to Haidang, as a routing rule in the hospital would."""
    import httpx

    for f in files:
        httpx.post(f"{orthanc.url}/instances", content=f.read_bytes(), timeout=30
                   ).raise_for_status()
    httpx.put(f"{orthanc.url}/modalities/haidang", timeout=30,
              json={"AET": "HAIDANG", "Host": "127.0.0.1", "Port": port}).raise_for_status()
    [found] = httpx.post(f"{orthanc.url}/tools/lookup", content=study_uid, timeout=30).json()
    httpx.post(f"{orthanc.url}/modalities/haidang/store", timeout=120,
               json={"Resources": [found["ID"]], "Synchronous": True}).raise_for_status()


def test_every_channel_survives_outages_a_crash_and_a_reanalysis(tmp_path, orthanc):
    http_port, mllp_port = free_port(), free_port()
    data = imaging_settings(tmp_path, orthanc).model_dump(mode="json")
    data["export"].update({"base_delay_s": 0.2, "max_delay_s": 0.5, "max_attempts": 100})
    data["notify"] = {"fhir_url": f"http://127.0.0.1:{http_port}/fhir",
                      "webhook_url": f"http://127.0.0.1:{http_port}/hook",
                      "patient_identifier_system": "urn:oid:1.2.704.0.99"}
    data["hl7"] = {"host": "127.0.0.1", "port": mllp_port, "timeout_s": 2,
                   "priority_message": "ORM^O01"}
    settings = Settings.model_validate(data)
    (study_uid, files), = cxr_studies(tmp_path / "in", 1)  # cxr-01-pneumonia, fresh UIDs

    # 1. HIS and RIS are down: the PACS pushes the study and gets its objects back, the other
    #    deliveries wait
    with Gateway(settings) as gw:
        _push_from_orthanc(orthanc, files, study_uid, gw.port)
        wait_until(lambda: _pacs(orthanc, study_uid, "SR") and _pacs(orthanc, study_uid, "PR")
                   and _pacs(orthanc, study_uid, "OT"), timeout=120, what="SR, GSPS, SC in PACS")
        def first_attempts():
            # retries run every 0.2-0.5 s: wait for a moment when none is in flight ("sending")
            rows = [r for r in gw.index.list_exports() if r["channel"] != "dicom"]
            done = rows and all(r["attempts"] >= 1 and r["state"] != "sending" for r in rows)
            return rows if done else None

        waiting = wait_until(first_attempts, timeout=30, what="failed first attempts")
        [result] = [r for r in gw.index.results(study_uid) if r["analysis"] == "cxr-pneumonia"]
    urgent = result["priority"] == "URGENT"
    assert urgent, "cxr-01-pneumonia is expected to be flagged by the shipped model"
    assert sorted(r["channel"] for r in waiting) == ["fhir", "hl7", "hl7", "webhook"]
    assert all(r["state"] == "pending" and "not reached" in r["last_error"] for r in waiting)

    # 2. a crash right after claiming them: leased, never sent, the process gone
    crashed = Index(settings.gateway.database_url)
    crashed.claim_exports(64, lease_s=3600, now=max(r["next_attempt_at"] for r in waiting))
    assert {r["state"] for r in crashed.list_exports() if r["channel"] != "dicom"} == {"sending"}
    crashed.close()

    # 3. receivers up, gateway restarted: each delivery arrives exactly once
    his = FhirAndHookServer(http_port).start()
    ris = MLLPListener(mllp_port, "AA").start()
    try:
        with Gateway(settings) as gw:
            wait_until(lambda: all(r["state"] == "done" for r in gw.index.list_exports()),
                       timeout=60, what="all deliveries done after restart")
            [key] = his.reports
            assert his.puts == [key] and len(his.hooks) == 1
            assert ris.control_ids("ORU^R01") and ris.control_ids("ORM^O01")
            assert len(ris.received) == 2 and len(set(ris.control_ids())) == 2
            report = his.reports[key]
            assert report["imagingStudy"][0]["identifier"]["value"] == f"urn:oid:{study_uid}"
            assert report["subject"]["identifier"]["system"] == "urn:oid:1.2.704.0.99"
            assert re.search(r"[+-]\d\d:\d\d$", report["effectiveDateTime"])  # has a zone
            oru = ris.received[ris.control_ids().index(ris.control_ids("ORU^R01")[0])]
            assert oru.extract_field("OBR", 1, 25) == "P"
            orm = ris.received[ris.control_ids().index(ris.control_ids("ORM^O01")[0])]
            assert orm.extract_field("ORC", 1, 7, 1, 6) == "S"
            sent = pydicom.dcmread(files[0])
            assert orm.extract_field("ORC", 1, 3) == str(sent.AccessionNumber)

            # 4. a late image re-opens the study: generation 2 supersedes generation 1
            [first_sr] = _pacs(orthanc, study_uid, "SR")
            late = pydicom.dcmread(files[0])
            late.SOPInstanceUID = late.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            late_path = tmp_path / "late.dcm"
            late.save_as(late_path, enforce_file_format=True)
            assert all(r.returncode == 0 for r in send_as_is([late_path], gw.port))
            wait_until(lambda: len(_pacs(orthanc, study_uid, "SR")) == 2, timeout=120,
                       what="second SR in PACS")
            wait_until(lambda: all(r["state"] == "done" for r in gw.index.list_exports()),
                       timeout=60, what="generation 2 delivered")
            assert his.puts == [key, key] and list(his.reports) == [key]  # replaced, not added
            assert len(set(ris.control_ids("ORU^R01"))) == 2  # a new result, a new message
    finally:
        his.stop()
        ris.stop()

    second_sr = next(ds for ds in _pacs(orthanc, study_uid, "SR")
                     if ds.SOPInstanceUID != first_sr.SOPInstanceUID)
    [predecessor] = second_sr.PredecessorDocumentsSequence
    refs = predecessor.ReferencedSeriesSequence[0].ReferencedSOPSequence
    assert [r.ReferencedSOPInstanceUID for r in refs] == [first_sr.SOPInstanceUID]
    assert second_sr.SeriesInstanceUID == first_sr.SeriesInstanceUID  # same AI series
    for n, ds in enumerate(_pacs(orthanc, study_uid, "SR")):
        path = tmp_path / f"sr{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert_valid_sr(path)
    for modality in ("PR", "OT"):
        for n, ds in enumerate(_pacs(orthanc, study_uid, modality)):
            path = tmp_path / f"{modality}{n}.dcm"
            ds.save_as(path, enforce_file_format=True)
            assert not dciodvfy_errors(path), (modality, dciodvfy_errors(path))
            if modality == "PR":  # read back by PixelMed: the overlay as the PACS holds it
                assert "GraphicAnnotationSequence" in pixelmed_dump(path)


def test_a_study_received_but_not_analysed_leaves_a_trace_in_pacs(tmp_path, orthanc):
    """A multi-frame colour ultrasound routed to the chest X-ray analysis: its intended-use
    gate refuses it, so the study summary SR says so in PACS, in Vietnamese and English."""
    from dicom_gateway.analyses.cxr_pneumonia.wording import NOT_ANALYSED_EN, NOT_ANALYSED_VI
    from dicom_gateway.analyses.summary_sr import read_text
    from haidang.testbed.studies import make_study

    data = imaging_settings(tmp_path, orthanc).model_dump(mode="json")
    data["routes"] = [{"name": "all-to-cxr", "match": {}, "analyses": ["cxr-pneumonia"]}]
    settings = Settings.model_validate(data)
    study_uid, files = make_study(["us_jpeg_base"], tmp_path / "us")
    with Gateway(settings) as gw:
        assert all(r.returncode == 0 for r in send_as_is(files, gw.port))
        [sr] = wait_until(lambda: _pacs(orthanc, study_uid, "SR"), timeout=60,
                          what="study summary SR in PACS")
    assert sr.SeriesDescription == "Haidang study summary"
    path = tmp_path / "trace.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert not dciodvfy_errors(path)
    texts = read_text(sr)
    assert any(t.startswith(f"{NOT_ANALYSED_VI}: ") and f" / {NOT_ANALYSED_EN}: " in t
               for t in texts), texts


def _start_worker(env: dict[str, str], log_path) -> tuple[subprocess.Popen, int, object]:
    """``python -m tests.support.gateway_worker``: the gateway as ``haidang gateway`` runs it."""
    log = open(log_path, "wb")  # noqa: SIM115 - closed by the caller
    proc = subprocess.Popen([sys.executable, "-u", "-m", "tests.support.gateway_worker"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=log)
    line = proc.stdout.readline().decode()
    assert line.startswith("READY"), (line, log_path.read_text()[-2000:])
    return proc, int(line.split()[1]), log


def test_killed_after_commit_before_delivery_delivers_once_after_restart(tmp_path):
    """SIGKILL a gateway process whose job committed while the HIS and RIS were down; the
    restarted process delivers each message exactly once."""
    from haidang.ground.processes import stop_process
    from tests.support.gateway_helpers import settings_env

    http_port, mllp_port = free_port(), free_port()
    data = imaging_settings(tmp_path).model_dump(mode="json")
    data["export"].update({"base_delay_s": 0.2, "max_delay_s": 0.5, "max_attempts": 100})
    data["notify"] = {"fhir_url": f"http://127.0.0.1:{http_port}/fhir"}
    data["hl7"] = {"host": "127.0.0.1", "port": mllp_port, "timeout_s": 2}
    env = {**settings_env(data), "PYTHONPATH": str(ROOT)}
    (study_uid, files), = cxr_studies(tmp_path / "in", 1)

    proc, port, log = _start_worker(env, tmp_path / "first.log")
    try:
        assert all(r.returncode == 0 for r in send_as_is(files, port))
        index = Index(data["gateway"]["database_url"])

        def committed_not_delivered():
            rows = [r for r in index.list_exports() if r["channel"] != "dicom"]
            return rows if rows and all(r["attempts"] >= 1 for r in rows) else None

        rows = wait_until(committed_not_delivered, timeout=120, what="job committed")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        stop_process(proc, 10)
        log.close()
    assert all(r["state"] in ("pending", "sending") for r in rows)

    his, ris = FhirAndHookServer(http_port).start(), MLLPListener(mllp_port).start()
    proc, port, log = _start_worker(env, tmp_path / "second.log")
    try:
        wait_until(lambda: all(r["state"] == "done" for r in index.list_exports()),
                   timeout=60, what="delivered after restart")
        time.sleep(1.0)  # the exporter keeps running: nothing more may arrive
        assert len(his.puts) == 1  # exactly once, each
        assert len(ris.received) == len(set(ris.control_ids())) == sum(
            r["channel"] == "hl7" for r in rows) >= 1
        assert [r["analysis"] for r in index.results(study_uid)] == ["cxr-pneumonia"]
    finally:
        stop_process(proc, 20)
        log.close()
        his.stop()
        ris.stop()
        index.close()
