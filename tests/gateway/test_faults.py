"""Faults the gateway must ride out: serving down in split mode, a full disk, a PACS that
keeps refusing (dead letters in the metrics). Crash soak: tests/product/test_soak.py."""

from __future__ import annotations

import re
import subprocess

import pytest
from prometheus_client import REGISTRY, generate_latest

from dicom_gateway import runtime
from dicom_gateway.runtime import Gateway
from haidang.ground.processes import stop_process
from haidang.testbed.studies import fresh_copy, make_study
from tests.support.gateway_helpers import gateway_settings, wait_until
from tests.support.imaging_e2e import cxr_studies, imaging_settings, model_registry
from tests.support.pacs import free_port, storescu

pytestmark = pytest.mark.orthanc


def _metric(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_serving_down_in_split_mode_studies_wait_then_are_processed(tmp_path, orthanc,
                                                                     monkeypatch):
    from serving.imaging_cli import start_imaging_service

    monkeypatch.setattr(runtime, "RETRY_MAX_DELAY_S", 1.0)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = imaging_settings(tmp_path, orthanc, url=url, timeout_s=2.0, retries=1)
    studies = cxr_studies(tmp_path / "in", 2)
    deferred0 = _metric("haidang_jobs_total", outcome="deferred")
    proc = None
    log = open(tmp_path / "bentoml.log", "wb")  # noqa: SIM115
    try:
        with Gateway(settings) as gw:
            for _, files in studies:
                assert storescu(files, gw.port, "HAIDANG").returncode == 0
            # serving is down: the studies wait (jobs handed back), nothing fails or is dropped
            wait_until(lambda: _metric("haidang_jobs_total", outcome="deferred") >= deferred0 + 4,
                       timeout=60, what="jobs deferred while serving is down")
            for uid, _ in studies:
                assert gw.index.study(uid)["state"] in ("assembled", "processing")
                assert not [r for r in gw.index.results(uid) if r["state"] == "failed"]
            proc = start_imaging_service(None, "127.0.0.1", port, str(model_registry(tmp_path)),
                                         stdout=log, stderr=subprocess.STDOUT)

            def processed():
                return all((gw.index.study(uid) or {}).get("state") == "processed"
                           for uid, _ in studies)

            wait_until(processed, timeout=150, interval=0.5, what="studies processed after "
                       "serving came back")
            for uid, _ in studies:
                [current] = [r for r in gw.index.results(uid)
                             if r["analysis"] == "cxr-pneumonia" and r["state"] == "current"]
                assert current["summary"]["serving_mode"] == "http"
                assert not [r for r in gw.index.results(uid) if r["state"] == "failed"]
            wait_until(lambda: all(orthanc.find_instances(StudyInstanceUID=uid, Modality="SR")
                                   for uid, _ in studies), timeout=60, what="SRs in the PACS")
    finally:
        if proc is not None:
            stop_process(proc, 20)
        log.close()


def test_disk_pressure_refuses_then_recovers_when_space_returns(tmp_path):
    files = [fresh_copy("ct", tmp_path / "send") for _ in range(3)]
    settings = gateway_settings(tmp_path, quiet=0.3, min_free_bytes=2**62)
    with Gateway(settings) as gw:
        res = storescu(files, gw.port, "HAIDANG", extra=["-v", "--no-halt"])
        assert res.stderr.count("Received Store Response (Refused: OutOfResources)") == 3
        assert gw.index.counts()["instances"] == 0
        assert not [p for p in gw.spool.root.rglob("*") if p.is_file()]  # no partial files
        assert echo_ok(gw)
        gw.spool.min_free_bytes = 1024 * 1024  # space returns (the watermark is met again)
        res = storescu(files, gw.port, "HAIDANG", extra=["-v"])
        assert res.returncode == 0 and "OutOfResources" not in res.stderr, res.stderr
        assert gw.index.counts()["instances"] == 3
        wait_until(lambda: gw.index.counts().get("studies.processed") == 3, timeout=30,
                   what="studies processed after recovery")


def echo_ok(gw) -> bool:
    from dicom_gateway.scu import echo

    return echo("127.0.0.1", gw.port, "HAIDANG", "STORESCU")[0]


def test_dead_letter_visible_in_metrics_and_retry_delivers(tmp_path, orthanc):
    settings = gateway_settings(tmp_path, orthanc, quiet=0.3, max_attempts=2, base_delay_s=0.2)
    study_uid, files = make_study(["mr"], tmp_path / "send")
    dead0 = _metric("haidang_exports_total", channel="dicom", outcome="dead")
    orthanc.stop()
    with Gateway(settings) as gw:
        assert storescu(files, gw.port, "HAIDANG").returncode == 0
        [export] = wait_until(lambda: gw.index.list_exports(dead_only=True), timeout=30,
                              what="dead letter")
        assert _metric("haidang_exports_total", channel="dicom", outcome="dead") == dead0 + 1
        wait_until(lambda: _metric("haidang_queue_depth", queue="exports_dead") == 1,
                   timeout=15, what="dead-letter gauge")
        # what /metrics of `haidang up` / `haidang gateway --metrics-port` exposes
        text = generate_latest().decode()
        assert re.search(r'haidang_queue_depth\{queue="exports_dead"\} 1\.0', text)
        orthanc.start()
        assert gw.index.retry_export(export["id"])
        wait_until(lambda: gw.index.list_exports()[0]["state"] == "done", timeout=30,
                   what="retried export delivered")
        assert len(orthanc.find_instances(StudyInstanceUID=study_uid, Modality="SR")) == 1
