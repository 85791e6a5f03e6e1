"""The durable delivery queue for the non-DICOM channels, against receivers that are not
Haidang's code: the ``hl7`` package's MLLP server and a loopback FHIR/webhook endpoint.

HL7: AA delivers; AE and AR are refusals, dead-lettered after
``export.rejected_max_attempts`` tries; no answer is a timeout, retried with the same
control id until an ACK comes. FHIR: down then up, the report is delivered once; a second
generation replaces it (conditional update). Every delivery is queued by a committed job
and sent by the exporter, the same code that sends DICOM.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pydicom
import pytest

from dicom_gateway import metrics
from dicom_gateway.analyses import Message
from dicom_gateway.analyses.cxr_pneumonia.fhir import (
    build_diagnostic_report,
    report_json,
    report_key,
)
from dicom_gateway.analyses.cxr_pneumonia.hl7 import control_id, oru_r01
from dicom_gateway.index import SCHEMA_VERSION, Index
from dicom_gateway.spool import Spool
from dicom_gateway.worker import _store
from dicom_gateway.writeback import Exporter
from haidang.ground.settings import Settings
from haidang.testbed.studies import make_study
from serving.imaging.predictor import Prediction
from tests.support.gateway_helpers import wait_until
from tests.support.pacs import free_port
from tests.support.receivers import FhirAndHookServer, MLLPListener

pytest_plugins = ["tests.support.postgres_fixtures"]

PREDICTION = Prediction(probability=0.87, finding=True, label="pneumonia", threshold=0.5,
                        model="cxr-pneumonia", version="1.2.3", sha256="ab" * 32,
                        provider="CPUExecutionProvider")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    _, paths = make_study(["cr"], tmp_path_factory.mktemp("src"))
    return pydicom.dcmread(paths[0], stop_before_pixels=True)


def _settings(tmp_path, database_url: str | None = None, **extra) -> Settings:
    data = {"gateway": {"spool_dir": str(tmp_path / "spool"),
                        "database_url": database_url or f"sqlite:///{tmp_path / 'index.db'}"},
            "export": {"max_attempts": 20, "base_delay_s": 0.05, "max_delay_s": 0.2,
                       "rejected_max_attempts": 3}}
    for key, value in extra.items():
        data.setdefault(key, {}).update(value)
    return Settings.model_validate(data)


def _queue(index: Index, spool: Spool, settings: Settings, study_uid: str,
           messages: list[Message], generation: int = 1) -> list[int]:
    """Commit a job whose result carries ``messages``, through the index's own API."""
    from dicom_gateway.analyses import AnalysisOutput

    index.record_instance(sop_uid=f"{study_uid}.{generation}", study_uid=study_uid,
                          series_uid="1.2", sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
                          transfer_syntax="1.2.840.10008.1.2.1", path="x.dcm", size=1,
                          calling_ae="TEST", attrs={}, quiet_period_s=0.0)
    index.assemble_due(now=time.time() + 1)
    job = index.claim_job("test", 60)
    assert job is not None and job.study_uid == study_uid
    out = AnalysisOutput(analysis="probe", messages=messages)
    return index.complete_job(job, [_store(job, "probe", out, spool, settings)])


def _drive(exporter: Exporter, index: Index, done, timeout: float = 30):
    """Run the exporter until ``done(exports)`` holds (as the gateway's loop does)."""
    def step():
        exporter.run_once()
        rows = index.list_exports()
        return rows if done(rows) else None
    return wait_until(step, timeout=timeout, interval=0.05, what="deliveries")


def _cli(settings: Settings, *args: str) -> str:
    """``haidang ARGS`` as an operator runs it, against this test's index."""
    env = {**os.environ, "HAIDANG_GATEWAY": json.dumps({
        "database_url": settings.gateway.database_url,
        "spool_dir": str(settings.gateway.spool_dir)})}
    run = subprocess.run([sys.executable, "-m", "haidang", *args], capture_output=True,
                         text=True, env=env, timeout=60)
    assert run.returncode == 0, run.stderr
    return run.stdout


def _oru(source, generation: int = 1) -> Message:
    msg_id = control_id(str(source.StudyInstanceUID), "probe", generation, "ORU^R01")
    from haidang.ground.settings import HL7Settings

    body = oru_r01(source, PREDICTION, msg_id=msg_id, cfg=HL7Settings(host="127.0.0.1"),
                   time_zone="Asia/Ho_Chi_Minh")
    return Message("hl7", "ORU^R01", msg_id, str(body))


@pytest.mark.parametrize("answer", ["AA", "AE", "AR"])
def test_hl7_ack_decides_delivered_or_dead_letter(tmp_path, source, answer):
    port = free_port()
    settings = _settings(tmp_path, hl7={"host": "127.0.0.1", "port": port, "timeout_s": 2})
    index, spool = Index(settings.gateway.database_url), Spool(settings.gateway.spool_dir)
    message = _oru(source)
    dead0 = metrics.EXPORTS.labels("hl7", "dead")._value.get()
    listener = MLLPListener(port, answer).start()
    try:
        _queue(index, spool, settings, str(source.StudyInstanceUID), [message])
        [row] = _drive(Exporter(settings, index, spool.root), index,
                       lambda rows: rows[0]["state"] in ("done", "dead"))
    finally:
        listener.stop()
    assert row["channel"] == "hl7"
    if answer == "AA":
        assert row["state"] == "done" and row["attempts"] == 1
        assert listener.control_ids() == [message.key]
        # the receiver parsed the whole message, segment by segment, Vietnamese intact
        [got] = listener.received
        assert str(got) == message.body
        assert [str(seg[0]) for seg in got][:4] == ["MSH", "PID", "ORC", "OBR"]
        assert "NGHI NGỜ VIÊM PHỔI" in str(got.segments("OBX")[3][5])
    else:  # a refusal: tried rejected_max_attempts times, always as the same message
        assert row["state"] == "dead" and row["attempts"] == 3
        assert listener.control_ids() == [message.key] * 3
        assert f"answered {answer}" in row["last_error"]
        assert metrics.EXPORTS.labels("hl7", "dead")._value.get() == dead0 + 1
        # the operator sees it with `haidang exports list --dead` and sends it again
        listed = _cli(settings, "exports", "list", "--dead")
        assert f"{row['id']:>6}  dead" in listed and " hl7 " in listed and answer in listed
        assert "queued again" in _cli(settings, "exports", "retry", str(row["id"]))
        assert index.list_exports(dead_only=True) == []


def test_hl7_no_answer_then_listener_down_then_up_delivers_once_with_one_control_id(
        tmp_path, source):
    port = free_port()
    settings = _settings(tmp_path, hl7={"host": "127.0.0.1", "port": port, "timeout_s": 0.5})
    index, spool = Index(settings.gateway.database_url), Spool(settings.gateway.spool_dir)
    exporter = Exporter(settings, index, spool.root)
    message = _oru(source)
    _queue(index, spool, settings, str(source.StudyInstanceUID), [message])

    silent = MLLPListener(port, answer=None).start()  # reads, never answers
    try:
        [row] = _drive(exporter, index, lambda rows: rows[0]["attempts"] >= 2)
    finally:
        silent.stop()
    assert row["state"] == "pending" and "no ACK" in row["last_error"]
    assert silent.control_ids() == [message.key] * len(silent.received)

    [row] = _drive(exporter, index, lambda rows: rows[0]["attempts"] >= 3)  # nobody listens
    assert row["state"] == "pending" and "not reached" in row["last_error"]

    listener = MLLPListener(port, "AA").start()
    try:
        [row] = _drive(exporter, index, lambda rows: rows[0]["state"] == "done")
        for _ in range(3):  # nothing more is sent once delivered
            exporter.run_once()
    finally:
        listener.stop()
    assert listener.control_ids() == [message.key]


def test_fhir_down_then_up_delivered_once_and_reanalysis_replaces_it(tmp_path, source):
    port = free_port()
    settings = _settings(tmp_path, notify={"fhir_url": f"http://127.0.0.1:{port}/fhir",
                                           "webhook_url": f"http://127.0.0.1:{port}/hook"})
    index, spool = Index(settings.gateway.database_url), Spool(settings.gateway.spool_dir)
    exporter = Exporter(settings, index, spool.root)
    study_uid = str(source.StudyInstanceUID)

    def messages(probability: float, generation: int) -> list[Message]:
        pred = PREDICTION.model_copy(update={"probability": probability})
        report = build_diagnostic_report(source, pred, report_uid="1.2.826.0.1.3680043.10.1")
        hook = {"event": "haidang.urgent-study", "study_instance_uid": study_uid}
        return [Message("fhir", "DiagnosticReport", report_key(report), report_json(report)),
                Message("webhook", "urgent-study", f"hook-{generation}", json.dumps(hook))]

    _queue(index, spool, settings, study_uid, messages(0.61, 1))
    rows = _drive(exporter, index, lambda rows: all(r["attempts"] >= 2 for r in rows))
    assert all(r["state"] == "pending" and "not reached" in r["last_error"] for r in rows)

    server = FhirAndHookServer(port, status=503).start()  # up, but overloaded
    try:
        rows = _drive(exporter, index, lambda rows: all(r["attempts"] >= 3 for r in rows))
        assert all("HTTP 503" in r["last_error"] and r["state"] == "pending" for r in rows)
        server.status = 0
        _drive(exporter, index, lambda rows: all(r["state"] == "done" for r in rows))
        for _ in range(3):
            exporter.run_once()
        key = "urn:dicom:uid|urn:oid:1.2.826.0.1.3680043.10.1"
        assert server.puts == [key] and len(server.hooks) == 1  # delivered once
        first = server.reports[key]
        assert first["contained"][0]["valueQuantity"]["value"] == pytest.approx(0.61)

        # the study is analysed again (a late image): the HIS keeps one report, the new one
        _queue(index, spool, settings, study_uid, messages(0.93, 2), generation=2)
        _drive(exporter, index, lambda rows: all(r["state"] == "done" for r in rows))
        assert server.puts == [key, key] and list(server.reports) == [key]
        assert server.reports[key]["contained"][0]["valueQuantity"]["value"] == pytest.approx(
            0.93)
    finally:
        server.stop()
    channels = {(r["channel"], r["state"]) for r in index.list_exports()}
    assert channels == {("fhir", "done"), ("webhook", "done")}


def test_a_newer_result_drops_the_older_undelivered_messages(tmp_path, source):
    """HIS down during two analyses of one study: only the current report ever arrives."""
    port = free_port()
    settings = _settings(tmp_path, notify={"fhir_url": f"http://127.0.0.1:{port}/fhir"})
    index, spool = Index(settings.gateway.database_url), Spool(settings.gateway.spool_dir)
    exporter = Exporter(settings, index, spool.root)
    study_uid = str(source.StudyInstanceUID)

    def report(probability: float) -> Message:
        body = build_diagnostic_report(source, PREDICTION.model_copy(
            update={"probability": probability}), report_uid="1.2.826.0.1.3680043.10.2")
        return Message("fhir", "DiagnosticReport", report_key(body), report_json(body))

    [old] = _queue(index, spool, settings, study_uid, [report(0.55)])
    _drive(exporter, index, lambda rows: rows[0]["attempts"] >= 1)
    _queue(index, spool, settings, study_uid, [report(0.97)], generation=2)
    states = {r["id"]: r["state"] for r in index.list_exports()}
    assert states[old] == "superseded" and not index.retry_export(old)
    server = FhirAndHookServer(port).start()
    try:
        _drive(exporter, index, lambda rows: any(r["state"] == "done" for r in rows))
        for _ in range(3):
            exporter.run_once()
    finally:
        server.stop()
    [key] = server.reports
    assert server.puts == [key]
    assert server.reports[key]["contained"][0]["valueQuantity"]["value"] == pytest.approx(0.97)


def test_fhir_refusal_is_dead_lettered_after_the_refusal_limit(tmp_path, source):
    port = free_port()
    settings = _settings(tmp_path, notify={"fhir_url": f"http://127.0.0.1:{port}/fhir"})
    index, spool = Index(settings.gateway.database_url), Spool(settings.gateway.spool_dir)
    report = build_diagnostic_report(source, PREDICTION, report_uid="1.2.3")
    _queue(index, spool, settings, str(source.StudyInstanceUID),
           [Message("fhir", "DiagnosticReport", report_key(report), report_json(report))])
    server = FhirAndHookServer(port, status=422).start()
    try:
        [row] = _drive(Exporter(settings, index, spool.root), index,
                       lambda rows: rows[0]["state"] == "dead")
    finally:
        server.stop()
    assert row["attempts"] == 3 and "HTTP 422" in row["last_error"]


def test_unconfigured_channels_queue_nothing(tmp_path, source):
    settings = _settings(tmp_path)  # no FHIR, webhook or HL7 configured
    index, spool = Index(settings.gateway.database_url), Spool(settings.gateway.spool_dir)
    assert _queue(index, spool, settings, str(source.StudyInstanceUID), [_oru(source)]) == []


def _old_schema() -> str:
    """The index schema of the previous release (version 1: no channel, no version table)."""
    from dicom_gateway.index import SCHEMA

    old = SCHEMA.replace("    channel TEXT NOT NULL DEFAULT 'dicom',\n", "")
    return old[:old.index("CREATE TABLE IF NOT EXISTS schema_version")]


OLD_EXPORT = ("INSERT INTO exports (result_id, study_uid, destination, sop_uid, sop_class_uid, "
              "series_uid, path, state, next_attempt_at, created_at) VALUES (1, '1.2', 'pacs', "
              "'1.2.3', '1.2.840.10008.5.1.4.1.1.88.34', '1.2.4', 'r.dcm', 'pending', 0, 0)")


def _check_migrated(url: str) -> None:
    index = Index(url)
    [row] = index.list_exports()
    assert row["channel"] == "dicom" and row["state"] == "pending"
    assert index.query("SELECT version FROM schema_version WHERE component = 'index'") == [
        (SCHEMA_VERSION,)]
    index.close()
    again = Index(url)  # opening again changes nothing
    assert again.list_exports() == [row]
    again.close()


def test_index_schema_version_1_is_migrated_sqlite(tmp_path):
    """A database written by the previous release (no channel column) opens and works."""
    import sqlite3

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(_old_schema().format(autoid="INTEGER PRIMARY KEY AUTOINCREMENT"))
    conn.execute(OLD_EXPORT)
    conn.commit()
    conn.close()
    _check_migrated(f"sqlite:///{path}")


def test_index_schema_version_1_is_migrated_postgresql(postgres):
    import psycopg

    with psycopg.connect(postgres, autocommit=True) as conn:
        for stmt in _old_schema().format(autoid="BIGSERIAL PRIMARY KEY").split(";"):
            if stmt.strip():
                conn.execute(stmt)
        conn.execute(OLD_EXPORT)
    _check_migrated(postgres)


def test_delivery_queue_on_postgresql_down_then_up_once(tmp_path, source, postgres):
    http_port, mllp_port = free_port(), free_port()
    settings = _settings(tmp_path, postgres,
                         notify={"fhir_url": f"http://127.0.0.1:{http_port}/fhir"},
                         hl7={"host": "127.0.0.1", "port": mllp_port, "timeout_s": 2})
    index, spool = Index(settings.gateway.database_url), Spool(settings.gateway.spool_dir)
    exporter = Exporter(settings, index, spool.root)
    report = build_diagnostic_report(source, PREDICTION, report_uid="1.2.3")
    oru = _oru(source)
    _queue(index, spool, settings, str(source.StudyInstanceUID),
           [Message("fhir", "DiagnosticReport", report_key(report), report_json(report)), oru])
    _drive(exporter, index, lambda rows: all(r["attempts"] >= 2 for r in rows))
    his, ris = FhirAndHookServer(http_port).start(), MLLPListener(mllp_port).start()
    try:
        rows = _drive(exporter, index, lambda rows: all(r["state"] == "done" for r in rows))
        for _ in range(3):
            exporter.run_once()
    finally:
        his.stop()
        ris.stop()
    assert sorted(r["channel"] for r in rows) == ["fhir", "hl7"]
    assert his.puts == [report_key(report)] and ris.control_ids() == [oru.key]
    index.close()
