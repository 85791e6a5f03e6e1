"""haidang dataset export: the PS3.15 Basic profile leaves no identifying attribute, UIDs are
pseudonymous and consistent, the re-identification key is apart, labels.csv trains."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicom_gateway.deid import Deidentifier, profile_tags
from dicom_gateway.runtime import Gateway
from haidang.testbed.studies import fresh_copy
from tests.support.gateway_helpers import (
    gateway_settings,
    send_as_is,
    settings_data,
    settings_env,
    wait_until,
)

REPO = Path(__file__).resolve().parents[2]
PATIENTS = {"A": ("BN-7731001", "TRAN^THI MAI"), "B": ("BN-7731002", "PHAM^VAN HUNG")}


def _identified(path: Path, who: str) -> Path:
    """A real radiograph carrying many of the profile's identifying attributes."""
    ds = pydicom.dcmread(path)
    ds.PatientID, ds.PatientName = PATIENTS[who]
    ds.PatientBirthDate = "19570214"
    ds.PatientAddress = "12 Hang Bai, Ha Noi"
    ds.InstitutionName = "Benh vien Bach Mai"
    ds.ReferringPhysicianName = "LE^VAN BAC SI"
    ds.OperatorsName = "NGO^THI KY THUAT"
    ds.AccessionNumber = "ACC-99812"
    ds.StudyID = "ST-4411"
    ds.StudyDate = ds.SeriesDate = "20260301"
    ds.DeviceSerialNumber = "SN-CR-0042"
    ref = Dataset()
    ref.ReferencedSOPClassUID = ds.SOPClassUID
    ref.ReferencedSOPInstanceUID = pydicom.uid.generate_uid()
    ref.PatientID = PATIENTS[who][0]  # nested: the profile applies at every level
    ds.ReferencedImageSequence = Sequence([ref])
    block = ds.private_block(0x0011, "HAIDANG TEST", create=True)
    block.add_new(0x01, "LO", PATIENTS[who][1])
    ds.save_as(path, enforce_file_format=True)
    return path


def _all_elements(ds: Dataset):
    for elem in ds:
        yield elem
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _all_elements(item)


def _spooled_study(tmp_path):
    """Two patients' CR studies and one CT study received by a real gateway, analysed."""
    send = tmp_path / "send"
    sa, sb = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    files = {"A": [_identified(fresh_copy("cr", send, study_uid=sa), "A") for _ in range(2)],
             "B": [_identified(fresh_copy("cr", send, study_uid=sb), "B")],
             "CT": [_identified(fresh_copy("ct", send), "A")]}
    settings = gateway_settings(tmp_path, quiet=0.3)
    with Gateway(settings) as gw:
        for res in send_as_is([f for fs in files.values() for f in fs], gw.port):
            assert res.returncode == 0, res.stderr
        wait_until(lambda: gw.index.counts().get("studies.processed") == 3, timeout=30,
                   what="studies processed")
        # the AI verdicts (study-summary stands in for the pneumonia model here)
        for uid, verdict in ((sa, "pneumonia"), (sb, "normal")):
            with gw.index.tx() as q:
                q("UPDATE results SET summary = ? WHERE study_uid = ? AND state = 'current'",
                  (json.dumps({"verdict": verdict}), uid))
    return settings, files, (sa, sb)


def _export(tmp_path, out: Path, *extra) -> subprocess.CompletedProcess:
    data = settings_data(tmp_path, quiet=0.3)
    env = settings_env(data)
    env["HAIDANG_SECURITY__AUDIT_LOG"] = str(tmp_path / "audit.log")
    return subprocess.run([sys.executable, "-m", "haidang", "dataset", "export", "--out",
                           str(out), "--secret", str(tmp_path / "deid.key"), *extra], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)


def test_export_leaves_no_identifying_attribute_and_trains(tmp_path):
    settings, files, (sa, sb) = _spooled_study(tmp_path)
    out = tmp_path / "export"
    res = _export(tmp_path, out, "--modality", "CR")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "exported 3 images of 2 studies (2 pseudonymous patients)" in res.stdout, res.stdout
    exported = sorted((out / "images").rglob("*.dcm"))
    assert len(exported) == 3  # the CT is filtered out by --modality CR

    tags = profile_tags()
    profile = {t for group in tags.values() for t in group if len(t) == 2}
    originals = {pydicom.dcmread(f).SOPInstanceUID: pydicom.dcmread(f)
                 for fs in files.values() for f in fs}
    key = tmp_path / "export-reid-key.csv"
    key_rows = list(csv.DictReader(key.open()))
    back = {r["pseudonym"]: r["original"] for r in key_rows if r["kind"] == "sop_uid"}
    secrets = {v for pid, name in PATIENTS.values() for v in (pid, name)}
    checked = 0
    for path in exported:
        ds = pydicom.dcmread(path)
        orig = originals[back[str(ds.SOPInstanceUID)]]
        original_values = {(e.tag.group, e.tag.element): e.value for e in _all_elements(orig)
                           if (e.tag.group, e.tag.element) in profile and e.value not in
                           (None, "", b"")}
        for elem in _all_elements(ds):
            tag = (elem.tag.group, elem.tag.element)
            assert not elem.tag.is_private, f"private {elem.tag} survived"
            if tag in profile and tag in original_values:
                checked += 1
                assert elem.value != original_values[tag], f"{elem.keyword} survived"
        raw = path.read_bytes()
        for value in secrets | {"19570214", "Bach Mai", "ACC-99812", str(orig.StudyInstanceUID),
                                str(orig.SOPInstanceUID)}:
            assert value.encode() not in raw, f"{value!r} found in {path.name}"
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert checked >= 3 * 12  # the test really compared the profile's attributes

    # consistent pseudonymous UIDs: one study stays one study; same export again, same UIDs
    studies = {str(pydicom.dcmread(p).StudyInstanceUID) for p in exported}
    assert len(studies) == 2 and sa not in studies and sb not in studies
    again = tmp_path / "again"
    assert _export(tmp_path, again, "--modality", "CR").returncode == 0
    assert sorted(p.name for p in (again / "images").rglob("*.dcm")) == \
        sorted(p.name for p in exported)

    # the key is apart and re-identifies; the data set folder holds no key
    assert not key.is_relative_to(out) and (key.stat().st_mode & 0o077) == 0
    assert {r["original"] for r in key_rows if r["kind"] == "patient"} == \
        {PATIENTS["A"][0], PATIENTS["B"][0]}
    assert not any(v in p.read_text(errors="ignore") for p in out.rglob("*.csv")
                   for v in secrets)

    # labels.csv is what `haidang train --data DIR --labels CSV` reads
    from training.data import load_dicom_folder

    rows = list(csv.DictReader((out / "labels.csv").open()))
    assert sorted(r["label"] for r in rows) == ["normal", "pneumonia", "pneumonia"]
    assert {r["split"] for r in rows} == {"train", "val"}
    train = load_dicom_folder(out, out / "labels.csv", split="train")
    val = load_dicom_folder(out, out / "labels.csv", split="val")
    assert len(train) + len(val) == 3 and set(train.labels) | set(val.labels) == {0, 1}

    only = tmp_path / "pneumonia-only"
    res = _export(tmp_path, only, "--verdict", "pneumonia")
    assert res.returncode == 0 and "exported 2 images of 1 studies" in res.stdout, res.stdout
    assert "dataset-export" in (tmp_path / "audit.log").read_text()


def test_deidentifier_is_consistent_and_keyed():
    a, b = Deidentifier(b"k" * 32), Deidentifier(b"other-secret")
    uid = "1.2.826.0.1.3680043.8.498.1"
    assert a.uid(uid) == a.uid(uid) != b.uid(uid)
    assert a.uid(uid).startswith("2.25.") and len(a.uid(uid)) <= 64
    assert pydicom.uid.UID(a.uid(uid)).is_valid
