"""The cxr-pneumonia analysis called the way the gateway calls it, on the demo studies.

Checks routing (the hand radiograph is not a chest: the worker gives the analysis only the
instances its route picked), URGENT exactly above the card's threshold, valid SR + GSPS
+ SC in the same study, and the messages it hands back for delivery: a FHIR report and an
HL7 result always, an HL7 priority update and a webhook for urgent studies only, the
webhook without patient identifiers. The analysis itself sends nothing. A study the
intended-use gate refuses is never scored or flagged, sends no message and carries its
reason in its study-summary SR.
"""

from __future__ import annotations

import json

import pydicom
import pytest

from dicom_gateway.analyses import StudyInput, load_analysis
from dicom_gateway.analyses.cxr_pneumonia import warm_up
from dicom_gateway.analyses.cxr_pneumonia.sr import read_finding
from dicom_gateway.analyses.summary_sr import read_text
from dicom_gateway.routing import route_study
from haidang.ground.settings import Settings
from tests.support.imaging_e2e import DEMO, SAMPLES, model_registry, sample_files
from tests.support.sr_validation import assert_valid_sr


def test_analysis_on_samples_urgent_messages(tmp_path):
    example_routes = [
        {"name": "chest-xray", "match": {"Modality": ["CR", "DX"],
                                         "BodyPartExamined": ["CHEST", ""]},
         "analyses": ["cxr-pneumonia"]},
        {"name": "everything-else", "match": {}, "analyses": ["study-summary"]}]
    settings = Settings.model_validate({
        "gateway": {"spool_dir": str(tmp_path / "spool")}, "routes": example_routes,
        "serving": {"models_dir": str(model_registry(tmp_path))},
        # nothing listens there: an analysis that tried to send would fail or hang
        "notify": {"webhook_url": "http://127.0.0.1:9/hook", "fhir_url": "http://127.0.0.1:9/"},
        "hl7": {"host": "127.0.0.1", "port": 9, "priority_message": "OMI^O23"}})
    info = warm_up(settings)
    analyse = load_analysis("cxr-pneumonia")
    urgent, validated, refused = 0, False, 0
    for path in [*sorted(DEMO.glob("*.dcm")), SAMPLES / "real-cr-hand-rg3.dcm"]:
        source = pydicom.dcmread(path)
        routed = route_study(settings.routes, [{k: str(source.get(k, "")) for k in
                                                ("Modality", "BodyPartExamined")}], "STORESCU")
        if "cxr-pneumonia" not in routed:
            assert source.Modality not in ("CR", "DX") or source.BodyPartExamined != "CHEST"
            continue
        out = analyse(StudyInput(str(source.StudyInstanceUID), "STORESCU", [path], settings))
        if out.summary["verdict"] == "not-analysed":
            refused += 1
            assert out.priority == "ROUTINE" and out.summary["probability"] is None
            assert not out.messages and not out.findings
            (summary_sr,) = out.objects
            assert summary_sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"
            assert out.summary["reason_en"] in "".join(read_text(summary_sr))
            continue
        sr, gsps, sc = out.objects
        assert {sr.StudyInstanceUID, gsps.StudyInstanceUID, sc.StudyInstanceUID} == {
            source.StudyInstanceUID}
        assert gsps.Modality == "PR" and sc.Modality == "OT"
        present, probability = read_finding(sr)
        assert probability == pytest.approx(out.summary["probability"], abs=1e-6)
        assert present == (probability >= info["threshold"]) == out.summary["finding"]
        assert [(f.code, f.present) for f in out.findings] == [("233604007", present)]
        assert out.priority == ("URGENT" if present else "ROUTINE")
        assert out.summary["model"] == info["model"] and out.summary["sha256"] == info["sha256"]
        assert out.thumbnail_png.startswith(b"\x89PNG")
        kinds = [(m.channel, m.kind) for m in out.messages]
        assert kinds == ([("fhir", "DiagnosticReport"), ("hl7", "ORU^R01"),
                          ("hl7", "OMI^O23"), ("webhook", "urgent-study")] if present
                         else [("fhir", "DiagnosticReport"), ("hl7", "ORU^R01")])
        assert json.loads(out.messages[0].body)["status"] == "preliminary"
        if present:
            urgent += 1
            hook = json.loads(out.messages[-1].body)
            assert hook["study_instance_uid"] == source.StudyInstanceUID
            assert hook["priority"] == "URGENT" and hook["unverified_ai_output"] is True
            text = json.dumps(hook, ensure_ascii=False)
            assert str(source.PatientName) not in text and str(source.PatientID) not in text
        if not validated:
            sr_path = tmp_path / "sr.dcm"
            sr.save_as(sr_path, enforce_file_format=True)
            assert_valid_sr(sr_path)
            validated = True
    assert urgent >= 1 and validated and refused >= 1
    # the summary picture is optional
    plain = settings.model_copy(update={"export": settings.export.model_copy(
        update={"summary_image": False})})
    path = sample_files()[0]
    out = analyse(StudyInput(str(pydicom.dcmread(path).StudyInstanceUID), "STORESCU", [path],
                             plain))
    assert [ds.Modality for ds in out.objects] == ["SR", "PR"]


def test_no_radiograph_means_not_analysed_with_a_reason(tmp_path):
    from haidang.testbed.studies import make_study

    settings = Settings.model_validate({"serving": {"models_dir": str(model_registry(tmp_path))}})
    uid, paths = make_study(["us_jpeg_base"], tmp_path / "us")  # multi-frame colour ultrasound
    out = load_analysis("cxr-pneumonia")(StudyInput(uid, "STORESCU", paths, settings))
    # the intended-use gate refuses it: never scored, nothing sent, the reason in PACS
    assert out.summary["verdict"] == "not-analysed" and out.priority == "ROUTINE"
    assert not out.messages and out.summary["probability"] is None
    (summary_sr,) = out.objects
    assert out.summary["reason_en"] and out.summary["reason_en"] in "".join(read_text(summary_sr))
