"""The image half of the intended-use gate, with the committed cxr-triage gate.

One test per refusal kind (blank, noise, CT, extremity, lateral, inverted) and the frontal
films it must accept. Held-out images only: the CT slice and the hand film were never in
the gate's training set; the NIH films are of the model's validation patients.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pydicom
import pytest

from serving.imaging.gate import GateVerdict, ImageGate
from serving.imaging.preprocess import dicom_to_unit, picture_to_unit

ROOT = Path(__file__).resolve().parents[2]
_TRIAGE = ROOT / "models" / "cxr-triage"
MODEL = _TRIAGE / (_TRIAGE / "current").read_text().strip()  # the served gate
NIH = ROOT / "datasets" / "nih-cxr"
SAMPLES = ROOT / "datasets" / "samples"


@pytest.fixture(scope="module")
def gate() -> ImageGate:
    return ImageGate.from_model_dir(MODEL)


def split_rows() -> tuple[list[dict], np.ndarray, np.ndarray]:
    """NIH rows and the model's (train, validation) indices, split by patient as trained."""
    import yaml

    card = yaml.safe_load((MODEL / "card.yaml").read_text(encoding="utf-8"))
    cfg = card["training"]["config"]
    rows = list(csv.DictReader(open(NIH / "labels.csv", encoding="utf-8")))
    from training.cxr_triage import CxrSet, patient_split

    data = CxrSet(np.zeros((len(rows), 1, 1, 1), np.float16), np.zeros((len(rows), 7)), rows)
    data.targets[:] = [[float(f != "No Finding"), float("Pneumonia" in f), 0, 0, 0, 0, 0]
                       for f in (r["findings"] for r in rows)]
    train, val = patient_split(data, cfg["val_fraction"], cfg["split_seed"])
    return rows, train, val


def validation_films(count: int) -> list[np.ndarray]:
    """NIH films of patients the model (and the gate) never trained on."""
    rows, _, val = split_rows()
    return [picture_to_unit(NIH / "images" / rows[i]["image"]) for i in val[:count]]


def refused_as(verdict: GateVerdict, reason: str) -> None:
    assert not verdict.analysed
    assert verdict.reason == reason, verdict
    assert verdict.reason_vi and verdict.reason_en


def test_accepts_frontal_chest_films(gate):
    films = validation_films(40)
    accepted = [gate.judge(f).analysed for f in films]
    assert sum(accepted) >= 0.95 * len(films)
    ds = pydicom.dcmread(SAMPLES / "real-cr-chest-rg1.dcm")  # MONOCHROME1 CR, as stored
    raw = np.asarray(ds.pixel_array, np.float64)
    assert gate.judge(raw, "MONOCHROME1") == GateVerdict(True, "", "", "")


def test_threshold_sits_where_the_calibration_patients_put_it(gate):
    """The frontal-probability threshold was chosen on calibration patients (training side,
    never trained on): the served gate must accept about the card's share of their films,
    and the calibration and validation patients must not overlap."""
    import yaml

    from serving.imaging.gate import displayed_unit, gate_input
    from training.gate import CALIBRATION_FRACTION, FRONTAL_ACCEPTANCE, calibration_split

    card = yaml.safe_load((MODEL / "card.yaml").read_text(encoding="utf-8"))
    rows, train, val = split_rows()
    _, cal = calibration_split(rows, train, CALIBRATION_FRACTION,
                               card["training"]["config"]["split_seed"])
    assert not {rows[i]["patient_id"] for i in cal} & {rows[i]["patient_id"] for i in val}
    films = [picture_to_unit(NIH / "images" / rows[i]["image"]) for i in cal]
    prob, _ = gate.scores([gate_input(displayed_unit(f)) for f in films])
    passed = float(np.mean(prob[:, 0] >= gate.min_frontal))
    assert abs(passed - FRONTAL_ACCEPTANCE) <= 0.01, passed
    assert gate.min_frontal == pytest.approx(card["gate"]["min_frontal_probability"])


def test_refuses_a_blank_image(gate):
    refused_as(gate.judge(np.full((512, 512), 1000.0)), "blank")
    near_empty = np.zeros((512, 512))
    near_empty[10:14, 10:14] = 4095
    refused_as(gate.judge(near_empty), "blank")


def test_refuses_noise(gate):
    rng = np.random.default_rng(3)
    refused_as(gate.judge(rng.integers(0, 4096, (512, 512)).astype(float)), "noise")


def test_refuses_a_ct_slice(gate):
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("explicit_VR-UN.dcm"))  # held out from training
    assert ds.Modality == "CT"
    refused_as(gate.judge(dicom_to_unit(ds)), "not_chest")


def test_refuses_an_extremity_film(gate):
    ds = pydicom.dcmread(SAMPLES / "real-cr-hand-rg3.dcm")
    refused_as(gate.judge(dicom_to_unit(ds)), "not_chest")


def test_refuses_a_lateral_view(gate):
    from training.gate import synthetic_lateral

    rng = np.random.default_rng(1)
    films = validation_films(10)
    verdicts = [gate.judge(synthetic_lateral(f, rng)) for f in films]
    assert not any(v.analysed for v in verdicts)
    assert [v.reason for v in verdicts].count("lateral") >= 8


def test_refuses_the_real_lateral_films_labelled_frontal(gate):
    """Two NIH films labelled PA/AP are lateral views (``not-frontal.csv``): the only real
    lateral films in the data. 1.2.0's gate accepted both, and the model would have flagged
    both URGENT. The one of a training-side patient is among the gate's training laterals;
    00002592_003 (a validation patient) never was."""
    rows = list(csv.DictReader(open(NIH / "not-frontal.csv", encoding="utf-8")))
    laterals = [r["image"] for r in rows if r["kind"] == "lateral"]
    assert len(laterals) == 2
    for name in laterals:
        verdict = gate.judge(picture_to_unit(NIH / "images" / name))
        assert not verdict.analysed
        assert verdict.reason in ("lateral", "not_chest"), verdict
        assert verdict.reason_vi and verdict.reason_en


def test_refuses_an_inverted_grey_scale(gate):
    film = validation_films(1)[0]
    refused_as(gate.judge(1.0 - film), "inverted")
    # the same pixels declared MONOCHROME1 display inverted: refused too
    refused_as(gate.judge(film, "MONOCHROME1"), "inverted")


def test_missing_gate_files_say_what_to_do(tmp_path):
    import shutil

    from serving.imaging.gate import GateError

    for name in ("card.yaml", "gate.onnx"):
        shutil.copy(MODEL / name, tmp_path / name)
    with pytest.raises(GateError, match="gate.npz is missing"):
        ImageGate.from_model_dir(tmp_path)
