"""De-identified training sets from the spool: DICOM PS3.15 Basic Application Level
Confidentiality Profile, applied with dicom-anonymizer (Kitware; the profile's table E.1-1
as data, edition 2026c).

What we add to the library:

* consistent pseudonymous UIDs: every UID the profile replaces (U, and X/Z/U* when a UID)
  becomes ``2.25.<HMAC-SHA256(secret, uid)>``, so the same study exported twice, or two
  series of one study, keep their relations, and nothing about the original can be read;
* a pseudonymous patient (``HD-<HMAC>``) in Patient ID and Patient's Name, so a data
  scientist can split by patient without knowing who it is;
* the profile applied at every nesting level (the library treats the top level only);
* Patient Identity Removed = YES and the De-identification Method (Code Sequence: DCM
  113100 "Basic Application Confidentiality Profile").

The secret lives in its own file (``--secret``, created 0600 on first use). The
re-identification key (pseudonyms and UIDs back to the originals) is written to a separate
file outside the export folder, so the folder can be handed over without it. Images with
``BurnedInAnnotation = YES`` are left out: the Basic profile does not clean pixels.

``labels.csv`` labels each image with its study's radiologist review from the worklist
where there is one ("agree", or "AI was wrong": the corrected label; ``label_source`` says
which), else with the AI's verdict, so corrections flow into retraining. It reads as
``haidang train --labels`` (``path``, ``label``, ``split``) and as ``haidang evaluate``
(``image`` relative to ``images/``, NIH-style ``findings``).
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from dicomanonymizer import simpledicomanonymizer as sda
from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

PROFILE_DATABASE = "dicomfields_2026c"
METHOD = ("DICOM PS3.15 E.1-1 Basic Application Level Confidentiality Profile "
          "(dicom-anonymizer, table 2026c); HMAC-SHA256 pseudonymous UIDs and patient")
# the labels an image can carry, and their NIH-style findings (`haidang train cxr-triage`,
# `haidang evaluate`): "abnormal" is a finding a radiologist saw that the AI missed, its kind
# unspecified (it counts for the `abnormal` output, not for `pneumonia`)
FINDINGS = {"normal": "No Finding", "pneumonia": "Pneumonia", "abnormal": "Abnormal"}
LABEL_NAMES = tuple(FINDINGS)
# an AI verdict as a label: the chest model's "no urgent finding" is the normal label
LABEL_OF_VERDICT = {"normal": "normal", "no urgent finding": "normal",
                    "pneumonia": "pneumonia", "abnormal": "abnormal"}


def profile_tags() -> dict[str, list[tuple[int, ...]]]:
    """The profile's attributes by action (D, Z, X, U, Z/D, X/Z, X/D, X/Z/D, X/Z/U*)."""
    return dicom_anonymization_database_selector(PROFILE_DATABASE)


def load_secret(path: Path) -> bytes:
    """The HMAC secret behind every pseudonym; created (0600) on first use."""
    path = Path(path)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32) + "\n")
    return bytes.fromhex(path.read_text().strip())


class Deidentifier:
    """Applies the profile to data sets; remembers what it replaced (the re-id key)."""

    def __init__(self, secret: bytes):
        self._secret = secret
        self.uids: dict[str, str] = {}
        self.patients: dict[str, tuple[str, str]] = {}  # pseudonym -> (PatientID, name)
        self._actions = self._build_actions()

    def _digest(self, kind: str, value: str) -> bytes:
        return hmac.new(self._secret, f"{kind}\x00{value}".encode(), hashlib.sha256).digest()

    def uid(self, old: str) -> str:
        old = str(old).strip()
        if not old:
            return old
        new = self.uids.get(old)
        if new is None:
            new = self.uids[old] = "2.25." + str(int.from_bytes(self._digest("uid", old)[:16],
                                                                  "big"))
        return new

    def patient(self, patient_id: str, name: str) -> str:
        pseudo = "HD-" + self._digest("patient", patient_id or name).hex()[:12].upper()
        self.patients.setdefault(pseudo, (patient_id, name))
        return pseudo

    def _replace_uid(self, dataset: Dataset, tag) -> None:
        element = dataset.get(tag)
        if element is None:
            return
        if element.VR != "UI":
            sda.empty_element(element)
        elif isinstance(element.value, MultiValue | list):
            element.value = [self.uid(v) for v in element.value]
        elif element.value:
            element.value = self.uid(element.value)

    def _build_actions(self) -> dict:
        actions = sda.initialize_actions(PROFILE_DATABASE)
        tags = profile_tags()
        for tag in tags["U_TAGS"] + tags["X_Z_U_STAR_TAGS"]:
            actions[tag] = self._replace_uid
        return actions

    def apply(self, ds: Dataset) -> Dataset:
        """De-identify ``ds`` in place (file meta included) and return it."""
        pseudo = self.patient(str(ds.get("PatientID", "") or ""),
                              str(ds.get("PatientName", "") or ""))
        self._apply_level(ds, top=True)
        ds.PatientID = pseudo
        ds.PatientName = pseudo
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = METHOD[:64]
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator = "113100", "DCM"
        code.CodeMeaning = "Basic Application Confidentiality Profile"
        ds.DeidentificationMethodCodeSequence = Sequence([code])
        if getattr(ds, "file_meta", None) is not None:
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        return ds

    def _apply_level(self, ds: Dataset, top: bool) -> None:
        for element in list(ds):
            if element.VR == "SQ" and element.value:
                for item in element.value:
                    self._apply_level(item, top=False)
        sda.anonymize_dataset(ds, delete_private_tags=True,
                              base_rules_gen=lambda: dict(self._actions))

    def write_key(self, path: Path, rows: list[dict]) -> None:
        """The re-identification key: pseudonyms and UIDs back to the originals (0600)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["kind", "pseudonym", "original", "original_name"])
            for pseudo, (pid, name) in sorted(self.patients.items()):
                w.writerow(["patient", pseudo, pid, name])
            for row in rows:
                for kind in ("study", "series", "sop"):
                    w.writerow([f"{kind}_uid", row[f"pseudo_{kind}"], row[kind], ""])


@dataclass
class ExportResult:
    exported: int = 0
    labelled: int = 0
    labelled_by_radiologists: int = 0
    skipped_burned_in: int = 0
    unreadable: int = 0
    studies: set[str] = field(default_factory=set)
    patients: set[str] = field(default_factory=set)


def select_instances(index, since: float | None = None, modality: str | None = None,
                     verdict: str | None = None) -> list[dict]:
    """Instances in the index matching the filters, each with its study's current AI verdict
    and the label to train on: a radiologist's review (agree: the AI's verdict; "AI was
    wrong": the corrected label) wins over the AI's verdict."""
    verdicts: dict[str, str] = {}
    for result in reversed(index.study_results(states=("current",))):  # oldest first
        v = result.summary.get("verdict")
        if v in LABEL_OF_VERDICT or result.study_uid not in verdicts:
            verdicts[result.study_uid] = v
    reviews = index.latest_reviews()
    rows = []
    for inst in index.received_instances(since):
        if modality and inst.attrs.get("Modality", "").upper() != modality.upper():
            continue
        v = verdicts.get(inst.study_uid)
        if verdict and v != verdict:
            continue
        review = reviews.get(inst.study_uid)
        if review is not None and review.label in LABEL_NAMES:
            label, source = review.label, ("radiologist-agreed" if review.agrees
                                           else "radiologist-corrected")
        elif v in LABEL_OF_VERDICT:
            label, source = LABEL_OF_VERDICT[v], "ai-verdict"
        else:
            label, source = None, None
        rows.append({"sop": inst.sop_uid, "study": inst.study_uid, "series": inst.series_uid,
                     "path": inst.path, "modality": inst.attrs.get("Modality", ""),
                     "verdict": v, "label": label, "label_source": source})
    return rows


def export_dataset(index, spool_root: Path, out: Path, key_file: Path, secret: bytes,
                   since: float | None = None, modality: str | None = None,
                   verdict: str | None = None, progress: Callable | None = None) -> ExportResult:
    """Write de-identified copies, ``labels.csv`` and the separate re-identification key."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    deid = Deidentifier(secret)
    res = ExportResult()
    key_rows, label_rows = [], []
    rows = select_instances(index, since, modality, verdict)
    for row in (progress(rows) if progress else rows):
        try:
            ds = pydicom.dcmread(Path(spool_root) / row["path"])
        except Exception:  # noqa: BLE001 - a damaged spool file is counted, not fatal
            res.unreadable += 1
            continue
        if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
            res.skipped_burned_in += 1
            continue
        deid.apply(ds)
        pseudo_study = str(ds.StudyInstanceUID)
        rel = Path("images") / pseudo_study / f"{ds.SOPInstanceUID}.dcm"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(out / rel, enforce_file_format=True)
        res.exported += 1
        res.studies.add(pseudo_study)
        res.patients.add(str(ds.PatientID))
        key_rows.append({**row, "pseudo_study": pseudo_study,
                         "pseudo_series": str(ds.SeriesInstanceUID),
                         "pseudo_sop": str(ds.SOPInstanceUID)})
        if row["label"] is not None:
            res.labelled += 1
            res.labelled_by_radiologists += row["label_source"] != "ai-verdict"
            label_rows.append({"path": rel.as_posix(), "image": rel.relative_to("images")
                               .as_posix(), "SOPInstanceUID": str(ds.SOPInstanceUID),
                               "label": row["label"], "findings": FINDINGS[row["label"]],
                               "patient": str(ds.PatientID), "modality": row["modality"],
                               "label_source": row["label_source"]})
    _assign_splits(label_rows)
    with open(out / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        cols = ["path", "image", "SOPInstanceUID", "label", "findings", "split", "patient",
                "modality", "label_source"]
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(label_rows)
    deid.write_key(key_file, key_rows)
    return res


def _assign_splits(rows: list[dict], val_fraction: float = 0.2) -> None:
    """train/val by pseudonymous patient (no patient in both), each split non-empty if possible."""
    patients = sorted({r["patient"] for r in rows})
    val = set(patients[::max(2, round(1 / val_fraction))][:max(1, len(patients) // 5)])
    if len(patients) < 2:  # one patient: split its images instead
        for i, r in enumerate(rows):
            r["split"] = "val" if i % 5 == 4 else "train"
        return
    for r in rows:
        r["split"] = "val" if r["patient"] in val else "train"
