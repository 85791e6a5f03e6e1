"""The intended-use gate: header rules, the refusal SR, and refusals through the real gateway.

The end-to-end part sends real DICOM with dcmtk storescu to the gateway, which writes
back to a real Orthanc: a blank CR without BodyPartExamined, a lateral DX, a CT slice, a
child, and an adult film whose grey scale is inverted under a MONOCHROME2 header. Each
refused study must never be URGENT, never carry a TID 1500 result, and must show its
reason in the study-summary SR read back from the PACS (and in the result the worklist
reads). The header refusals come from ``intended_use``, blank and inverted from the image
gate (``serving.imaging.gate``). An adult frontal chest radiograph in the same run must
still be analysed, so the gate cannot pass these tests by refusing everything.
"""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import DigitalXRayImageStorageForPresentation, generate_uid

from dicom_gateway.analyses.cxr_pneumonia.wording import (
    NOT_ANALYSED_EN,
    NOT_ANALYSED_VI,
    not_analysed,
)
from dicom_gateway.analyses.intended_use import CHEST_RADIOGRAPH, Population, judge_header
from dicom_gateway.analyses.summary_sr import build_summary_sr, read_text
from haidang.testbed.studies import sample_path
from tests.support.imaging_e2e import DEMO, adult_registry, imaging_settings
from tests.support.sr_validation import dciodvfy_errors, pixelmed_sr_report

TODAY = dt.date(2026, 6, 1)
ADULT = Population(age_min=18)
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
TID1500_SR = "1.2.840.10008.5.1.4.1.1.88.34"


def header(**attrs) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    base = {"Modality": "CR", "BodyPartExamined": "CHEST", "ViewPosition": "PA",
            "PhotometricInterpretation": "MONOCHROME2", "Rows": 1024, "Columns": 1024,
            "StudyDate": "20260115", "PatientAge": "045Y"}
    for key, value in {**base, **attrs}.items():
        if isinstance(value, bytes):  # as read from a malformed file: converted on access
            tag = pydicom.datadict.tag_for_keyword(key)
            ds[tag] = pydicom.dataelem.RawDataElement(
                pydicom.tag.Tag(tag), pydicom.datadict.dictionary_VR(tag), len(value), value, 0,
                True, True)
        elif value is not None:
            setattr(ds, key, value)
    return ds


# --- header rules ----------------------------------------------------------------------------

def test_adult_frontal_chest_radiograph_is_accepted():
    verdict = judge_header(header(), ADULT, today=TODAY)
    assert verdict.analysed and verdict.reason == "" and not verdict.warnings


@pytest.mark.parametrize("attrs, reason, words", [
    ({"ViewPosition": "LL"}, "lateral", "lateral view"),
    ({"ViewPosition": "LATERAL"}, "lateral", "lateral view"),
    ({"ViewPosition": "OBL"}, "view", "view OBL"),
    ({"Modality": "CT"}, "modality", "CT image"),
    ({"BodyPartExamined": "HAND"}, "not_chest", "body part HAND"),
    ({"PhotometricInterpretation": "RGB"}, "photometric", "RGB image"),
    ({"Rows": 28, "Columns": 28}, "image_size", "28x28"),
    ({"PatientAge": "009Y"}, "age", "aged 9 years"),
    ({"PatientAge": "018M"}, "age", "aged 18 months"),
    ({"PatientAge": None, "PatientBirthDate": "20180301"}, "age", "aged 7 years"),
])
def test_header_outside_the_population_is_refused_with_its_reason(attrs, reason, words):
    verdict = judge_header(header(**attrs), ADULT, today=TODAY)
    assert not verdict.analysed and verdict.reason == reason
    assert words in verdict.reason_en
    assert verdict.reason_vi and verdict.reason_vi != verdict.reason_en


def test_missing_values_defer_to_the_image_check():
    empty = header(BodyPartExamined=None, ViewPosition="", PatientAge=None, Modality=None)
    verdict = judge_header(empty, ADULT, today=TODAY)
    assert verdict.analysed
    assert set(verdict.deferred) == {"Modality", "BodyPartExamined", "ViewPosition", "PatientAge"}


@pytest.mark.parametrize("attrs, warning", [
    ({"PatientAge": "62"}, "PatientAge is not nnnD"),
    ({"PatientAge": "045X"}, "PatientAge is not nnnD"),
    ({"PatientAge": "150Y"}, "over 130 years"),
    ({"PatientAge": None, "StudyDate": "20990101", "PatientBirthDate": "19700101"},
     "StudyDate is in the future"),
    ({"PatientAge": None, "PatientBirthDate": "20990101"}, "PatientBirthDate is in the future"),
    ({"PatientAge": None, "StudyDate": "20000101", "PatientBirthDate": "20100101"},
     "PatientBirthDate is after StudyDate"),
    ({"PatientAge": None, "PatientBirthDate": "18500101"}, "age over 130"),
    ({"PatientAge": None, "PatientBirthDate": "1970-01-01"}, "not a valid YYYYMMDD"),
    ({"PixelSpacing": [0, 0]}, "PixelSpacing is not two values"),
    ({"PixelSpacing": [25.0, 25.0]}, "PixelSpacing is not two values"),
    ({"ImagerPixelSpacing": b"x\\y"}, "ImagerPixelSpacing is not numeric"),
])
def test_impossible_header_values_are_named_never_trusted(attrs, warning):
    verdict = judge_header(header(**attrs), ADULT, today=TODAY)
    assert verdict.analysed, "an impossible value defers to the image check, it does not refuse"
    assert any(warning in w for w in verdict.warnings), verdict.warnings
    for value in attrs.values():  # warnings are logged: they name the field, never its value
        if isinstance(value, str) and value:
            assert value not in " ".join(verdict.warnings)
    if "PatientAge" in attrs or "PatientBirthDate" in attrs:
        assert "PatientAge" in verdict.deferred  # no age was assumed


def test_malformed_patient_age_falls_back_to_the_birth_date():
    verdict = judge_header(header(PatientAge="9", PatientBirthDate="20170101"), ADULT,
                           today=TODAY)
    assert not verdict.analysed and verdict.reason == "age"
    assert any("PatientAge" in w for w in verdict.warnings)


def test_population_comes_from_the_card():
    card = {"population": {"age_min": 18, "views": ["PA", "AP"], "modalities": ["CR", "DX"],
                           "photometric": ["MONOCHROME1", "MONOCHROME2"],
                           "body_parts": ["chest"]}}
    population = Population.from_card(card)
    assert population.age_min == 18 and population.body_parts == ("CHEST",)
    assert Population.from_card({"population": {"age_min_years": 18, "body_part": "CHEST"}}) == \
        Population(age_min=18, body_parts=("CHEST",))
    assert Population.from_card({}) == CHEST_RADIOGRAPH and CHEST_RADIOGRAPH.age_min is None
    assert judge_header(header(PatientAge="009Y"), CHEST_RADIOGRAPH, today=TODAY).analysed
    assert not judge_header(header(ViewPosition="RL"), CHEST_RADIOGRAPH, today=TODAY).analysed


# --- the refusal SR --------------------------------------------------------------------------

def test_refusal_sr_passes_both_validators_and_states_the_reason(tmp_path):
    source = pydicom.dcmread(sample_path("ct"), stop_before_pixels=True)
    statement = not_analysed("phim nghiêng", "lateral view")
    path = tmp_path / "refusal-sr.dcm"
    build_summary_sr([source], [statement]).save_as(path, enforce_file_format=True)
    assert_valid_summary_sr(path)
    assert statement in read_text(pydicom.dcmread(path))


def assert_valid_summary_sr(path: Path) -> None:
    assert not dciodvfy_errors(path)
    report = pixelmed_sr_report(path)
    assert "Found Root Template TID_2000 (BasicDiagnosticImagingReport)" in report, report
    bad = [line for line in report.splitlines() if line.startswith("Error")]
    assert not bad, bad


# --- through the real gateway ----------------------------------------------------------------

def chest_source() -> Path:
    """A real adult frontal chest radiograph (NIH, PA, DX) from the demo set."""
    return DEMO / "nih-07-pa-normal.dcm"


def _study(ds: pydicom.Dataset, folder: Path, **attrs) -> tuple[str, Path]:
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return str(ds.StudyInstanceUID), path


def refusal_cases(dest: Path) -> dict[str, tuple[str, Path]]:
    chest = lambda: pydicom.dcmread(chest_source())  # noqa: E731 - a fresh copy per case
    return {
        "adult": _study(chest(), dest / "adult", PatientAge="045Y", PatientBirthDate=""),
        "lateral": _study(chest(), dest / "lateral", Modality="DX", ViewPosition="LL",
                          SOPClassUID=DigitalXRayImageStorageForPresentation,
                          PatientAge="052Y", PatientBirthDate=""),
        "age": _study(chest(), dest / "child", PatientAge="009Y", PatientBirthDate="20170110"),
        "modality": _study(pydicom.dcmread(sample_path("ct")), dest / "ct",
                           PatientAge="060Y"),
        "blank": _study(pydicom.dcmread(DEMO / "refuse-blank.dcm"), dest / "blank"),
        "inverted": _study(inverted(chest()), dest / "inverted", PatientAge="045Y",
                           PatientBirthDate=""),
    }


def inverted(ds: pydicom.Dataset) -> pydicom.Dataset:
    """The grey scale turned over while the header still says MONOCHROME2."""
    assert ds.PhotometricInterpretation == "MONOCHROME2"
    pixels = ds.pixel_array
    ds.decompress()
    ds.PixelData = (pixels.max() - pixels).astype(pixels.dtype).tobytes()
    return ds


EXPECTED = {"lateral": ("phim nghiêng", "lateral view"),
            "age": ("9 tuổi", "aged 9 years"),
            "modality": ("ảnh CT", "CT image"),
            "blank": ("Ảnh trống", "blank"),
            "inverted": ("Thang xám bị đảo ngược", "inverted")}


@pytest.fixture(scope="module")
def gated_run(tmp_path_factory):
    """One PACS, one gateway, every case sent once; each test below checks one case."""
    from dicom_gateway.runtime import Gateway
    from dicom_gateway.worklist import worklist_rows
    from tests.support.gateway_helpers import send_as_is, wait_until
    from tests.support.pacs import Orthanc

    tmp = tmp_path_factory.mktemp("gate")
    pacs = Orthanc(tmp / "orthanc")
    pacs.start()
    try:
        settings = imaging_settings(tmp, pacs, models_dir=str(adult_registry(tmp)))
        data = settings.model_dump(mode="json")
        data["routes"] = [{"name": "all-images", "match": {}, "analyses": ["cxr-pneumonia"]}]
        settings = type(settings).model_validate(data)
        cases = refusal_cases(tmp / "in")
        with Gateway(settings) as gw:
            for _uid, path in cases.values():
                for run in send_as_is([path], gw.port):
                    assert run.returncode == 0, run.stderr
            uids = {uid for uid, _ in cases.values()}
            rows = wait_until(
                lambda: {r.study_uid: r for r in worklist_rows(gw.index)
                         if r.study_uid in uids and r.status in ("in-pacs", "failed")}
                if len([r for r in worklist_rows(gw.index) if r.study_uid in uids
                        and r.status in ("in-pacs", "failed")]) == len(uids) else None,
                timeout=180, what="every case's result in the PACS")
            summaries = {v.study_uid: v.summary for v in gw.index.study_results(sorted(uids),
                                                                                 ("current",))
                         if v.analysis == "cxr-pneumonia"}
        yield {"cases": cases, "rows": rows, "summaries": summaries, "pacs": pacs, "tmp": tmp}
    finally:
        pacs.stop()


def _pacs_srs(pacs, study_uid: str) -> list[pydicom.Dataset]:
    found = pacs.find_instances(StudyInstanceUID=study_uid, Modality="SR")
    return [pydicom.dcmread(io.BytesIO(pacs.instance_file(e["ID"]))) for e in found]


@pytest.mark.orthanc
def test_adult_frontal_chest_is_analysed_in_the_same_run(gated_run):
    uid, _ = gated_run["cases"]["adult"]
    summary = gated_run["summaries"][uid]
    assert summary["verdict"] != "not-analysed" and 0 <= summary["probability"] <= 1
    assert summary["refused_images"] == 0
    assert [sr.SOPClassUID for sr in _pacs_srs(gated_run["pacs"], uid)] == [TID1500_SR]


@pytest.mark.orthanc
@pytest.mark.parametrize("kind", ["lateral", "age", "modality", "blank", "inverted"])
def test_refused_study_is_not_flagged_and_says_why_in_pacs(gated_run, kind, tmp_path):
    uid, _ = gated_run["cases"][kind]
    row, summary = gated_run["rows"][uid], gated_run["summaries"][uid]
    vi, en = EXPECTED[kind]
    assert row.priority == "ROUTINE" and row.status == "in-pacs"
    assert summary["verdict"] == "not-analysed" and summary["reason"] == kind
    assert summary["probability"] is None and en in summary["reason_en"]
    assert f"{NOT_ANALYSED_EN}: " in summary["statement"]

    srs = _pacs_srs(gated_run["pacs"], uid)
    assert [sr.SOPClassUID for sr in srs] == [COMPREHENSIVE_SR], "no TID 1500 result"
    text = "\n".join(read_text(srs[0]))
    assert f"{NOT_ANALYSED_VI}: " in text and vi in text
    assert f"{NOT_ANALYSED_EN}: " in text and en in text
    if kind == "lateral":  # one full validation of an SR as the PACS holds it
        path = tmp_path / "from-pacs.dcm"
        srs[0].save_as(path, enforce_file_format=True)
        assert_valid_summary_sr(path)


def test_a_lateral_beside_a_frontal_film_is_left_out_the_frontal_is_scored(tmp_path):
    """PA + lateral in one study: the model scores the PA only; the lateral is counted."""
    from dicom_gateway.analyses.base import StudyInput
    from dicom_gateway.analyses.cxr_pneumonia import analyse

    settings = imaging_settings(tmp_path, models_dir=str(adult_registry(tmp_path)))
    study_uid, frontal = _study(pydicom.dcmread(chest_source()), tmp_path / "pa")
    lateral = pydicom.dcmread(chest_source())
    _, lateral_path = _study(lateral, tmp_path / "ll", ViewPosition="LL")
    moved = pydicom.dcmread(lateral_path)
    moved.StudyInstanceUID = study_uid
    moved.save_as(lateral_path, enforce_file_format=True)
    out = analyse(StudyInput(study_uid, "PACS", [frontal, lateral_path], settings))
    assert out.summary["verdict"] != "not-analysed"
    assert out.summary["images"] == 1 and out.summary["refused_images"] == 1
    sr = out.objects[0]
    evidence = [item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                for series in sr.CurrentRequestedProcedureEvidenceSequence
                for item in series.ReferencedSeriesSequence]
    assert evidence == [pydicom.dcmread(frontal).SOPInstanceUID]


def test_impossible_header_values_reach_the_result_and_the_log(tmp_path, caplog):
    """A future StudyDate and a malformed PatientAge: scored on the pixels, and said so."""
    from dicom_gateway.analyses.base import StudyInput
    from dicom_gateway.analyses.cxr_pneumonia import analyse

    settings = imaging_settings(tmp_path, models_dir=str(adult_registry(tmp_path)))
    source = pydicom.dcmread(chest_source())
    source.PatientAge = "45"
    study_uid, path = _study(source, tmp_path / "odd", StudyDate="20991231")
    with caplog.at_level("WARNING", logger="haidang.analysis.cxr"):
        out = analyse(StudyInput(study_uid, "PACS", [path], settings))
    warnings = out.summary["header_warnings"]
    assert any("StudyDate is in the future" in w for w in warnings)
    assert any("PatientAge is not nnnD" in w for w in warnings)
    assert out.summary["verdict"] != "not-analysed"  # the pixels are an adult frontal film
    assert "impossible header values" in caplog.text and "20991231" not in caplog.text
