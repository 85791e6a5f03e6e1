"""End to end: dcmtk storescu → gateway → model → TID 1500 SR + visual summary in Orthanc.

Real Orthanc, real dcmtk, real onnxruntime, the gateway in-process. The SR read back from
the PACS must carry exactly the finding and probability that serving returns for the same
image, pass both SR validators, and the worklist must list the study.
"""

from __future__ import annotations

import json

import pydicom
import pytest
from prometheus_client import REGISTRY

from dicom_gateway.analyses.cxr_pneumonia.sr import read_finding
from dicom_gateway.runtime import Gateway
from dicom_gateway.worklist import worklist_rows
from haidang.ground.processes import stop_process
from serving.imaging.client import ImagingClient
from serving.imaging.preprocess import dicom_to_model_input
from tests.support.gateway_helpers import send_as_is, wait_until
from tests.support.imaging_e2e import cxr_studies, imaging_settings
from tests.support.sr_validation import assert_valid_sr, dciodvfy_errors

pytestmark = pytest.mark.orthanc


def _pacs_objects(orthanc, study_uid: str, modality: str) -> list[dict]:
    return orthanc.find_instances(StudyInstanceUID=study_uid, Modality=modality)


def test_storescu_to_pacs_sr_and_visual_summary(tmp_path, orthanc):
    settings = imaging_settings(tmp_path, orthanc)
    (study_uid, files), = cxr_studies(tmp_path / "in", 1)
    with Gateway(settings) as gw:
        for run in send_as_is(files, gw.port):
            assert run.returncode == 0, run.stderr
        wait_until(lambda: _pacs_objects(orthanc, study_uid, "SR")
                   and _pacs_objects(orthanc, study_uid, "OT")
                   and _pacs_objects(orthanc, study_uid, "PR"), timeout=90,
                   what="SR, presentation state and visual summary in Orthanc")
        rows = wait_until(lambda: [r for r in worklist_rows(gw.index)
                                   if r.study_uid == study_uid and r.status == "in-pacs"],
                          timeout=30, what="worklist row in PACS state")

    # what serving returns for the image that was sent
    client = ImagingClient.from_settings(settings)
    sent = pydicom.dcmread(files[0])
    expected = client.predict(dicom_to_model_input(sent, client.input_spec())[None])[0]

    sr_entry = _pacs_objects(orthanc, study_uid, "SR")[0]
    sr_path = tmp_path / "sr-from-pacs.dcm"
    sr_path.write_bytes(orthanc.instance_file(sr_entry["ID"]))
    assert_valid_sr(sr_path)
    sr = pydicom.dcmread(sr_path)
    assert sr.StudyInstanceUID == study_uid and sr.VerificationFlag == "UNVERIFIED"
    assert sr.SeriesInstanceUID != sent.SeriesInstanceUID
    assert sr.SeriesDescription.startswith("AI SR: ")
    present, probability = read_finding(sr)
    assert present == expected.finding
    assert probability == pytest.approx(expected.probability, abs=1e-6)
    assert expected.version in json.dumps(sr.to_json_dict(), ensure_ascii=False)

    sc_entry = _pacs_objects(orthanc, study_uid, "OT")[0]
    sc = pydicom.dcmread(__import__("io").BytesIO(orthanc.instance_file(sc_entry["ID"])))
    assert sc.SeriesDescription.startswith("AI summary: ")
    assert sc.pixel_array.ndim == 3 and sc.SeriesInstanceUID not in (sr.SeriesInstanceUID,
                                                                       sent.SeriesInstanceUID)

    row = rows[0]
    assert row.verdict == expected.label and row.finding == expected.finding
    assert row.probability == pytest.approx(expected.probability, abs=1e-6)
    assert row.priority == ("URGENT" if expected.finding else "ROUTINE")
    assert row.modality == sent.Modality and row.time_to_flag_ms is not None
    assert (settings.gateway.spool_dir / "ai" / row.thumbnail).is_file()

    # the presentation state in PACS points at the very image that was sent
    pr_path = tmp_path / "pr-from-pacs.dcm"
    pr_path.write_bytes(orthanc.instance_file(_pacs_objects(orthanc, study_uid, "PR")[0]["ID"]))
    assert not dciodvfy_errors(pr_path)
    pr = pydicom.dcmread(pr_path)
    referenced = pr.ReferencedSeriesSequence[0].ReferencedImageSequence[0]
    assert referenced.ReferencedSOPInstanceUID == sent.SOPInstanceUID
    assert pr.SeriesDescription.startswith("AI overlay: ")


def test_split_mode_gateway_calls_bentoml_service(tmp_path, orthanc):
    """``haidang gateway`` + ``haidang serve-imaging``: inference over HTTP, same results."""
    import subprocess
    import time

    import httpx

    from serving.imaging_cli import start_imaging_service
    from tests.support.imaging_e2e import model_registry
    from tests.support.pacs import free_port

    registry = model_registry(tmp_path)
    port = free_port()
    log = open(tmp_path / "bentoml.log", "wb")  # noqa: SIM115
    proc = start_imaging_service(None, "127.0.0.1", port, str(registry), stdout=log,
                                 stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        def ready():
            try:
                return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return proc.poll() is not None
        wait_until(ready, timeout=90, what="bentoml serve")
        assert proc.poll() is None, (tmp_path / "bentoml.log").read_text()[-2000:]
        settings = imaging_settings(tmp_path, orthanc, url=url)
        (study_uid, files), = cxr_studies(tmp_path / "in", 1)
        with Gateway(settings) as gw:
            t0 = time.time()
            send_as_is(files, gw.port)
            wait_until(lambda: _pacs_objects(orthanc, study_uid, "SR"), timeout=90,
                       what="SR in Orthanc")
            rows = wait_until(lambda: [r for r in worklist_rows(gw.index)
                                       if r.study_uid == study_uid], timeout=10, what="row")
            assert time.time() - t0 < 60
        summary = gw.index.results(study_uid)[-1]["summary"]
        assert summary["serving_mode"] == "http"
        client = ImagingClient.from_settings(settings)
        sent = pydicom.dcmread(files[0])
        served = client.predict(dicom_to_model_input(sent, client.input_spec())[None])[0]
        sr = pydicom.dcmread(__import__("io").BytesIO(
            orthanc.instance_file(_pacs_objects(orthanc, study_uid, "SR")[0]["ID"])))
        present, probability = read_finding(sr)
        assert present == served.finding and rows[0].finding == served.finding
        assert probability == pytest.approx(served.probability, abs=1e-6)
    finally:
        stop_process(proc, 20)
        log.close()


def test_worker_processes_analyse_a_burst_and_every_result_reaches_pacs(tmp_path, orthanc):
    """``gateway.job_workers`` = 2: two worker processes claim the studies from the shared
    index; every study still gets its SR, presentation state and summary in Orthanc, each
    study once, and the verdict matches serving's for the image sent."""
    settings = imaging_settings(tmp_path, orthanc)
    data = settings.model_dump(mode="json")
    data["gateway"]["job_workers"] = 2
    settings = type(settings).model_validate(data)
    studies = cxr_studies(tmp_path / "in", 6)
    done_before = REGISTRY.get_sample_value("haidang_jobs_total", {"outcome": "done"}) or 0
    with Gateway(settings) as gw:
        assert not any(t.name == "haidang-worker" for t in gw._threads)  # no in-process worker
        for _uid, files in studies:
            for run in send_as_is(files, gw.port):
                assert run.returncode == 0, run.stderr
        for study_uid, _files in studies:
            wait_until(lambda uid=study_uid: _pacs_objects(orthanc, uid, "SR")
                       and _pacs_objects(orthanc, uid, "PR")
                       and _pacs_objects(orthanc, uid, "OT"), timeout=120,
                       what="SR, presentation state and visual summary of every study")
        workers = {w for (w,) in gw.index.query("SELECT worker FROM jobs WHERE state = 'done'")}
        # the workers' job counts reach this process's /metrics
        wait_until(lambda: (REGISTRY.get_sample_value("haidang_jobs_total", {"outcome": "done"})
                            or 0) - done_before >= len(studies), timeout=10,
                   what="job metrics relayed from the worker processes")
        results = {uid: gw.index.results(uid) for uid, _ in studies}
    assert all(w.startswith(gw.worker_id + "/") for w in workers) and len(workers) >= 1
    client = ImagingClient.from_settings(settings)
    for study_uid, files in studies:
        (result,) = [r for r in results[study_uid] if r["analysis"] == "cxr-pneumonia"]
        expected = client.predict(dicom_to_model_input(
            pydicom.dcmread(files[0]), client.input_spec())[None])[0]
        assert result["state"] == "current" and result["summary"]["verdict"] == expected.label
        assert result["summary"]["probability"] == pytest.approx(expected.probability, abs=1e-6)
        assert len(_pacs_objects(orthanc, study_uid, "SR")) == 1
