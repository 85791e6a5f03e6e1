"""The cxr-pneumonia analysis called the way the gateway calls it, on the demo studies.

Checks routing (the hand radiograph is not a chest), URGENT exactly above the card's
threshold, valid SR + SC in the same study, the FHIR report posted to an HIS endpoint
and the webhook sent for urgent studies only, without patient identifiers; a study the
intended-use gate refuses is never scored, posted or flagged and carries its reason.
"""

from __future__ import annotations

import http.server
import json
import threading

import pydicom
import pytest

from dicom_gateway.analyses import StudyInput, load_analysis
from dicom_gateway.analyses.cxr_pneumonia import warm_up
from dicom_gateway.analyses.study_summary import read_text
from dicom_gateway.reports.sr import read_finding
from haidang.settings import Settings
from tests.imaging_e2e import DEMO, SAMPLES, model_registry
from tests.sr_validation import assert_valid_sr


@pytest.fixture
def receiver():
    """A local HTTP endpoint recording what is POSTed (stands in for the HIS and chat)."""
    received: list[tuple[str, dict]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, json.loads(body)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", received
    server.shutdown()


def test_analysis_on_samples_urgent_webhook_fhir(tmp_path, receiver):
    url, received = receiver
    example_routes = [
        {"name": "chest-xray", "match": {"Modality": ["CR", "DX"],
                                         "BodyPartExamined": ["CHEST", ""]},
         "analyses": ["cxr-pneumonia"]},
        {"name": "everything-else", "match": {}, "analyses": ["study-summary"]}]
    settings = Settings.model_validate({
        "gateway": {"spool_dir": str(tmp_path / "spool")}, "routes": example_routes,
        "serving": {"models_dir": str(model_registry(tmp_path))},
        "notify": {"webhook_url": f"{url}/hook", "fhir_url": f"{url}/fhir"}})
    info = warm_up(settings)
    analyse = load_analysis("cxr-pneumonia")
    urgent, validated = 0, False
    for path in [*sorted(DEMO.glob("*.dcm")), SAMPLES / "real-cr-hand-rg3.dcm"]:
        source = pydicom.dcmread(path)
        before = len(received)
        out = analyse(StudyInput(str(source.StudyInstanceUID), "STORESCU", [path], settings))
        if (source.Modality not in ("CR", "DX")
                or source.get("BodyPartExamined", "") not in ("CHEST", "")):  # not routed
            assert out.summary["verdict"] == "not-applicable" and not out.objects
            continue
        if out.summary["verdict"] == "not-analysed":
            assert out.priority == "ROUTINE" and out.summary["probability"] is None
            assert received[before:] == []  # nothing posted, nothing flagged
            (summary_sr,) = out.objects
            assert summary_sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"
            assert out.summary["reason_en"] in "".join(read_text(summary_sr))
            continue
        sr, sc = out.objects
        assert {sr.StudyInstanceUID, sc.StudyInstanceUID} == {source.StudyInstanceUID}
        present, probability = read_finding(sr)
        assert probability == pytest.approx(out.summary["probability"], abs=1e-6)
        assert present == (probability >= info["threshold"]) == out.summary["finding"]
        assert out.priority == ("URGENT" if present else "ROUTINE")
        assert out.summary["model"] == info["model"] and out.summary["sha256"] == info["sha256"]
        posts = received[before:]
        assert [p for p, _ in posts] == (["/fhir/DiagnosticReport", "/hook"] if present
                                         else ["/fhir/DiagnosticReport"])
        assert posts[0][1]["status"] == "preliminary"
        if present:
            urgent += 1
            hook = posts[1][1]
            assert hook["study_instance_uid"] == source.StudyInstanceUID
            assert hook["priority"] == "URGENT" and hook["unverified_ai_output"] is True
            text = json.dumps(hook, ensure_ascii=False)
            assert str(source.PatientName) not in text and str(source.PatientID) not in text
        if not validated:
            sr_path = tmp_path / "sr.dcm"
            sr.save_as(sr_path, enforce_file_format=True)
            assert_valid_sr(sr_path)
            validated = True
    assert urgent >= 1 and urgent == len([p for p, _ in received if p == "/hook"])


def test_webhook_retries_server_errors_and_reports_failure(caplog):
    from dicom_gateway.notify import send_webhook, urgent_payload
    from tests.pacs import free_port

    answers = [503, 200]
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            hits.append(1)
            self.send_response(answers.pop(0) if answers else 400)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/hook"
    payload = urgent_payload("1.2.3", {"verdict": "pneumonia", "probability": 0.9})
    try:
        assert send_webhook(url, payload, attempts=3) is True and len(hits) == 2
        assert send_webhook(url, payload, attempts=3) is False and len(hits) == 3  # 400: no retry
    finally:
        server.shutdown()
    assert send_webhook(f"http://127.0.0.1:{free_port()}/hook", payload, attempts=2) is False
    assert "notify.webhook_url" in caplog.text and "not delivered" in caplog.text
