"""The committed sample studies are valid DICOM (dciodvfy) and match their manifest."""

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
NPZ = ROOT / "datasets" / "pneumoniamnist" / "pneumoniamnist_trainval.npz"
FILES = sorted(SAMPLES.glob("*.dcm"))


def manifest() -> list[dict[str, str]]:
    with open(SAMPLES / "manifest.csv", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_samples_exist():
    names = {f.name for f in FILES}
    assert {"real-cr-chest-rg1.dcm", "real-cr-hand-rg3.dcm"} <= names
    labels = [int(r["label"]) for r in manifest()]
    assert labels.count(0) >= 2 and labels.count(1) >= 2  # some normal, some pneumonia
    assert {r["path"] for r in manifest()} <= names


@pytest.mark.parametrize("path", FILES, ids=[f.name for f in FILES])
def test_dciodvfy_finds_no_errors(path):
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.fail("dciodvfy missing: install dicom3tools (scripts/setup.sh)")
    res = subprocess.run([exe, str(path)], capture_output=True, text=True)
    out = res.stdout + res.stderr
    assert "CRImage" in out  # recognised as the CR IOD
    errors = [line for line in out.splitlines() if line.startswith("Error")]
    assert not errors, errors


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
                         ("real-cr-hand-rg3.dcm", "RG3_UNCI.dcm")]:
        a = pydicom.dcmread(SAMPLES / ours)
        b = pydicom.dcmread(src / theirs, stop_before_pixels=True)
        assert a.SOPInstanceUID != b.SOPInstanceUID
        assert a.StudyInstanceUID != b.StudyInstanceUID
        assert a.PatientName != b.get("PatientName")
        assert (a.Rows, a.Columns) == (b.Rows, b.Columns)
        assert a.file_meta.TransferSyntaxUID == pydicom.uid.JPEGLSLossless
