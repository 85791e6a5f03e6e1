"""The committed sample studies are valid DICOM (dciodvfy) and match their manifests."""

from __future__ import annotations

import csv
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "datasets" / "samples"
DEMO = SAMPLES / "demo"
NPZ = ROOT / "datasets" / "pneumoniamnist" / "pneumoniamnist_trainval.npz"
FILES = sorted(SAMPLES.glob("*.dcm"))
DEMO_FILES = sorted(DEMO.glob("*.dcm"))


def manifest(folder: Path = SAMPLES) -> list[dict[str, str]]:
    with open(folder / "manifest.csv", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_samples_exist():
    names = {f.name for f in FILES}
    assert {"real-cr-chest-rg1.dcm", "real-cr-hand-rg3.dcm"} <= names
    labels = [int(r["label"]) for r in manifest()]
    assert labels.count(0) >= 2 and labels.count(1) >= 2  # some normal, some pneumonia
    assert {r["path"] for r in manifest()} <= names


def dciodvfy(path: Path) -> str:
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.fail("dciodvfy missing: install dicom3tools (scripts/setup.sh)")
    res = subprocess.run([exe, str(path)], capture_output=True, text=True)
    return res.stdout + res.stderr


@pytest.mark.parametrize("path", FILES + DEMO_FILES,
                         ids=[f.name for f in FILES] + [f"demo/{f.name}" for f in DEMO_FILES])
def test_dciodvfy_finds_no_errors(path):
    out = dciodvfy(path)
    iod = {"CR": "CRImage", "DX": "DXImage", "CT": "CTImage"}[pydicom.dcmread(
        path, stop_before_pixels=True).Modality]
    if path.name == "siim-acr-chest-cr.dcm":
        iod = "SCImage"  # the real file as SIIM shipped it: Secondary Capture
    assert iod in out  # recognised as the intended IOD
    errors = [line for line in out.splitlines() if line.startswith("Error")]
    assert not errors, errors


def test_demo_holds_real_adult_radiographs_and_the_cases_to_refuse():
    rows = manifest(DEMO)
    assert {r["path"] for r in rows} == {f.name for f in DEMO_FILES}
    nih = [r for r in rows if r["path"].startswith("nih-")]
    assert len(nih) == 12 and all(r["expected"] == "analysed" for r in nih)
    assert {r["view"] for r in nih} == {"PA", "AP"}
    assert {r["findings"] == "No Finding" for r in nih} == {True, False}
    refused = {r["reason"]: r["path"] for r in rows if r["expected"] == "refused"}
    assert {"lateral", "age", "modality", "blank"} <= set(refused)
    photometric, uids = [], set()
    for row in rows:
        ds = pydicom.dcmread(DEMO / row["path"])
        assert ds.SOPInstanceUID == row["SOPInstanceUID"]
        assert ds.StudyInstanceUID == row["StudyInstanceUID"]
        assert "^" in str(ds.PatientName) and ds.PatientID.startswith("HD")
        assert ds.PatientAge == f"{int(row['age']):03d}Y"
        assert ds.get("ViewPosition", "") == row["view"]
        photometric.append(ds.PhotometricInterpretation)
        uids.add(ds.StudyInstanceUID)
        if row["path"].startswith("nih-"):
            assert (ds.Rows, ds.Columns) == (1024, 1024) and ds.Modality in ("CR", "DX")
            assert ds.BodyPartExamined == "CHEST" and int(row["age"]) >= 18
            assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGLSLossless
    assert photometric.count("MONOCHROME1") == 1
    assert len(uids) == len(rows)  # one study each
    assert int(next(r for r in rows if r["reason"] == "age")["age"]) < 18
    blank = pydicom.dcmread(DEMO / refused["blank"])
    assert blank.BodyPartExamined == "" and np.ptp(blank.pixel_array) == 0
    assert pydicom.dcmread(DEMO / refused["modality"]).Modality == "CT"
    assert pydicom.dcmread(DEMO / refused["lateral"]).ViewPosition == "LL"


def test_wrapped_samples_match_manifest_and_data():
    with np.load(NPZ) as npz:
        val_x, val_y = npz["val_images"], npz["val_labels"].ravel()
    uids, studies = set(), set()
    for row in manifest():
        ds = pydicom.dcmread(SAMPLES / row["path"])
        idx = int(row["source"].split("[")[1].rstrip("]"))
        assert int(row["label"]) == int(val_y[idx])
        assert ds.SOPInstanceUID == row["SOPInstanceUID"]
        assert ds.Modality == "CR" and ds.PhotometricInterpretation == "MONOCHROME2"
        assert ds.BodyPartExamined == "CHEST"
        assert "^" in str(ds.PatientName) and ds.PatientID.startswith("HD")
        np.testing.assert_array_equal(ds.pixel_array[::8, ::8], val_x[idx])
        uids.add(ds.SOPInstanceUID)
        studies.add(ds.StudyInstanceUID)
    assert len(uids) == len(studies) == len(manifest())  # fresh UIDs, one study each


def test_real_cr_copies_have_fresh_uids():
    import data_store

    src = Path(data_store.__file__).parent / "data"
    for ours, theirs in [("real-cr-chest-rg1.dcm", "RG1_UNCI.dcm"),
                         ("real-cr-hand-rg3.dcm", "RG3_UNCI.dcm"),
                         ("demo/refuse-ct.dcm", "693_UNCI.dcm")]:
        a = pydicom.dcmread(SAMPLES / ours)
        b = pydicom.dcmread(src / theirs, stop_before_pixels=True)
        assert a.SOPInstanceUID != b.SOPInstanceUID
        assert a.StudyInstanceUID != b.StudyInstanceUID
        assert a.PatientName != b.get("PatientName")
        assert (a.Rows, a.Columns) == (b.Rows, b.Columns)
        assert a.file_meta.TransferSyntaxUID == pydicom.uid.JPEGLSLossless
