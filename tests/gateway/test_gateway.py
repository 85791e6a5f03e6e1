"""The gateway end to end with real peers: dcmtk storescu in, Orthanc as the PACS out."""

from __future__ import annotations

import pydicom
import pytest

from dicom_gateway.runtime import Gateway
from haidang.testbed.studies import SAMPLES, fresh_copy, make_study
from tests.support.gateway_helpers import dataset_hash, gateway_settings, send_as_is, wait_until

pytestmark = pytest.mark.orthanc


def test_ingest_assemble_and_write_back(tmp_path, orthanc):
    settings = gateway_settings(tmp_path, orthanc)
    study_uid, files = make_study(list(SAMPLES), tmp_path / "send")
    with Gateway(settings) as gw:
        for res in send_as_is(files, gw.port):
            assert res.returncode == 0, res.stderr
        index = gw.index
        # every instance indexed, stored byte-identical in its own transfer syntax
        instances = {i["sop_uid"]: i for i in index.study_instances(study_uid)}
        assert len(instances) == len(files)
        for f in files:
            sent = pydicom.dcmread(f, stop_before_pixels=True)
            got = instances[str(sent.SOPInstanceUID)]
            assert got["transfer_syntax"] == str(sent.file_meta.TransferSyntaxUID)
            assert dataset_hash(gw.spool.root / got["path"]) == dataset_hash(f)
        # assembled once, processed, and the result is in the PACS
        wait_until(
            lambda: (index.study(study_uid) or {}).get("state") == "processed",
            timeout=30,
            what="study processed",
        )
        assert index.query("SELECT COUNT(*) FROM jobs WHERE study_uid = ?", (study_uid,))[0][0] == 1
        wait_until(
            lambda: (
                all(e["state"] == "done" for e in index.list_exports()) and index.list_exports()
            ),
            timeout=30,
            what="export delivered",
        )
        found = orthanc.find_instances(StudyInstanceUID=study_uid, Modality="SR")
        assert len(found) == 1
        tags = orthanc.instance_tags(found[0]["ID"])
        assert tags["SeriesDescription"] == "Haidang study summary"
        results = index.results(study_uid)
        assert [r["state"] for r in results] == ["current"]
        assert results[0]["summary"]["instances"] == len(files)
        study = index.study(study_uid)
        assert study["first_arrival"] <= study["last_arrival"] <= study["assembled_at"]
        assert study["assembled_at"] <= study["processed_at"]


def test_late_instance_reopens_study_and_result_supersedes(tmp_path, orthanc):
    settings = gateway_settings(tmp_path, orthanc, quiet=0.5)
    study_uid, files = make_study(["ct", "mr"], tmp_path / "send")
    late = fresh_copy("us_implicit", tmp_path / "send", study_uid=study_uid)
    with Gateway(settings) as gw:
        index = gw.index
        for res in send_as_is(files, gw.port):
            assert res.returncode == 0, res.stderr
        wait_until(lambda: len(orthanc.find_instances(StudyInstanceUID=study_uid, Modality="SR"))
                   == 1, timeout=30, what="first result in the PACS")
        for res in send_as_is([late], gw.port):
            assert res.returncode == 0, res.stderr
        wait_until(lambda: len(orthanc.find_instances(StudyInstanceUID=study_uid, Modality="SR"))
                   == 2, timeout=30, what="second result in the PACS")
        study = index.study(study_uid)
        assert study["generation"] == 2 and study["state"] == "processed"
        first, second = index.results(study_uid)
        assert first["state"] == "superseded" and first["superseded_by"] == second["id"]
        assert second["state"] == "current" and second["summary"]["instances"] == 3
        # the new result lands in the same result series, as a new instance
        srs = orthanc.find_instances(StudyInstanceUID=study_uid, Modality="SR")
        series = {orthanc.instance_tags(i["ID"])["SeriesInstanceUID"] for i in srs}
        sops = {orthanc.instance_tags(i["ID"])["SOPInstanceUID"] for i in srs}
        assert len(series) == 1 and len(sops) == 2


def test_broken_analysis_fails_its_job_not_the_gateway(tmp_path):
    settings = gateway_settings(tmp_path, quiet=0.3, analyses=("no-such-analysis",))
    with Gateway(settings) as gw:
        uid1, files1 = make_study(["ct"], tmp_path / "a")
        assert send_as_is(files1, gw.port)[0].returncode == 0
        wait_until(lambda: gw.index.results(uid1), timeout=20, what="a result row")
        results = {r["analysis"]: r for r in gw.index.results(uid1)}
        res = results["no-such-analysis"]
        assert res["state"] == "failed" and "not registered" in res["error"]
        # the study still leaves a trace: the study summary says it was not analysed, and why
        assert results["study-summary"]["summary"]["not_analysed"] == [
            "no-such-analysis: analysis error (AnalysisUnavailable)"]
        job = gw.index.query("SELECT state, error FROM jobs WHERE study_uid = ?", (uid1,))[0]
        assert job[0] == "failed" and "no-such-analysis" in job[1]
        # the worker lives on: the next study is processed too
        uid2, files2 = make_study(["mr"], tmp_path / "b")
        assert send_as_is(files2, gw.port)[0].returncode == 0
        wait_until(lambda: (gw.index.study(uid2) or {}).get("state") == "processed", timeout=20,
                   what="second study processed")


def test_routing_rules_choose_analyses():
    from dicom_gateway.routing import analyses_for
    from haidang.ground.settings import Route

    routes = [Route(name="cxr", match={"Modality": ["CR", "DX"], "BodyPartExamined": ["CHEST", ""]},
                    analyses=["cxr-pneumonia"]),
              Route(name="ct-from-er", match={"Modality": ["CT"], "CallingAE": ["ER_CT"]},
                    analyses=["ct-triage", "study-summary"]),
              Route(name="rest", match={}, analyses=["study-summary"])]
    chest = {"Modality": "CR", "BodyPartExamined": "chest"}
    assert analyses_for(routes, [chest], "PACS") == ["cxr-pneumonia"]
    assert analyses_for(routes, [{"Modality": "DX"}], "PACS") == ["cxr-pneumonia"]
    assert analyses_for(routes, [{"Modality": "CR", "BodyPartExamined": "HAND"}], "PACS") == [
        "study-summary"]
    assert analyses_for(routes, [{"Modality": "CT"}], "ER_CT") == ["ct-triage", "study-summary"]
    assert analyses_for(routes, [{"Modality": "CT"}], "PACS") == ["study-summary"]
    assert analyses_for(routes, [chest, {"Modality": "CT"}], "ER_CT") == [
        "cxr-pneumonia", "ct-triage", "study-summary"]
    assert analyses_for([], [chest], "PACS") == ["study-summary"]


def test_metrics_and_health_app(tmp_path):
    from fastapi.testclient import TestClient

    from haidang.web import create_app

    settings = gateway_settings(tmp_path, quiet=30)
    settings.security.development = True
    with Gateway(settings) as gw:
        assert send_as_is([fresh_copy("ct", tmp_path / "send")], gw.port)[0].returncode == 0
        client = TestClient(create_app(settings, gw))
        health = client.get("/gateway/status").json()
        assert health["status"] == "ok" and health["queue"]["instances"] == 1
        text = client.get("/metrics").text
        assert 'haidang_instances_received_total{outcome="stored"}' in text
        assert "haidang_store_seconds_bucket" in text


def test_haidang_up_runs_and_stops_on_ctrl_c(tmp_path):
    import signal
    import subprocess
    import sys
    from pathlib import Path

    import httpx

    from dicom_gateway.scu import echo
    from tests.support.gateway_helpers import settings_data, settings_env
    from tests.support.pacs import free_port, wait_for_port

    data = settings_data(tmp_path, quiet=30)
    http_port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "haidang", "up", "--host", "127.0.0.1",
                             "--port", str(http_port)], env=settings_env(data),
                            cwd=Path(__file__).resolve().parents[2])
    try:
        wait_for_port(http_port, timeout=60)
        assert httpx.get(f"http://127.0.0.1:{http_port}/healthz", timeout=10).status_code == 200
        assert echo("127.0.0.1", data["gateway"]["port"], "HAIDANG", "STORESCU")[0]
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0


def test_private_sop_class_and_deflated_syntax_stored_as_sent(tmp_path):
    """Unknown (private) storage SOP classes and deflated data sets are stored byte for byte."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    from dicom_gateway.scu import send_files

    private = fresh_copy("mr", tmp_path / "send")
    ds = pydicom.dcmread(private)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.3.6.1.4.1.9590.100.1.2.424242"
    ds.save_as(private, enforce_file_format=True)
    deflated = fresh_copy("ct", tmp_path / "send")
    ds = pydicom.dcmread(deflated)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(deflated, enforce_file_format=True)
    with Gateway(gateway_settings(tmp_path, quiet=30)) as gw:
        results = send_files("127.0.0.1", gw.port, "HAIDANG", "STORESCU", [private, deflated])
        assert [r for _, r in results] == [None, None]
        for f in (private, deflated):
            sent = pydicom.dcmread(f, stop_before_pixels=True)
            [got] = gw.index.study_instances(str(sent.StudyInstanceUID))
            assert got["sop_class_uid"] == str(sent.SOPClassUID)
            assert got["transfer_syntax"] == str(sent.file_meta.TransferSyntaxUID)
            stored = (gw.spool.root / got["path"]).read_bytes()
            assert stored.endswith(f.read_bytes()[-got["size"]:])  # the data set, byte for byte
            assert dataset_hash(gw.spool.root / got["path"]) == dataset_hash(f)
