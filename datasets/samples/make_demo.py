"""Make the demo studies in ``datasets/samples/demo`` (run from the repository root):

    python datasets/samples/make_demo.py [SHARED_DATA_DIR]

``SHARED_DATA_DIR`` (default ``../shared/data``) holds the project's real data with its
provenance; ``datasets/nih-cxr`` is used first when it has the images.

What the demo shows (``manifest.csv`` says what each study is and what the intended-use
gate must decide):

1. The 12 full-size (1024 px) NIH ChestX-ray14 originals, real adult frontal chest
   radiographs, wrapped losslessly (JPEG-LS) into DICOM: AP films as CR Image Storage
   (bedside), PA films as Digital X-Ray Image Storage - For Presentation. NIH's real age,
   sex and view; a synthetic Vietnamese patient; one PA film stored MONOCHROME1 (pixels
   inverted with the header, as a CR reader would send it).
2. The SIIM-ACR chest CR (real, Secondary Capture, JPEG baseline) with fresh UIDs and a
   synthetic patient; its PatientAge ``62`` is corrected to ``062Y`` so the file is valid.
3. Studies the gate must refuse:
   - ``refuse-lateral``: the header says ViewPosition LL (lateral). No lateral chest
     radiograph with redistributable terms is available here, so the pixels are an NIH
     frontal film: it shows the header check, not the image check.
   - ``refuse-child``: a real NIH frontal film of a 12-year-old (256 px, the only size held
     for that patient).
   - ``refuse-ct``: a real CT slice (pydicom-data ``693_UNCI``).
   - ``refuse-blank``: a CR whose pixels are uniform grey and whose BodyPartExamined is
     empty: only the image check can refuse it.

UIDs come from fixed seeds, so re-running reproduces the same files. The images carry
NIH's labels in the manifest for reading, not for metrics: the demo is not a test set.
"""

from __future__ import annotations

import csv
import datetime as dt
import sys
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEGLSLossless,
    generate_uid,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
OUT = HERE / "demo"
STUDY_DATE = dt.date(2026, 1, 15)
# The nominal detector pixel of a 43 cm plate read at 1024 px: NIH publishes no spacing for
# its 1024-px images, so DX files state this nominal value and say so (DerivationDescription).
NOMINAL_SPACING_MM = 0.42
MONOCHROME1_IMAGE = "00001281_000.png"
CHILD_IMAGE = "00001054_002.png"
LATERAL_SOURCE = "00001299_000.png"
CHEST = ("43799004", "SCT", "Chest")  # CID 4009 DX Anatomy Imaged

# Synthetic patients (invented; any resemblance is coincidental). DICOM PN: FAMILY^GIVEN.
NAMES = {
    "M": ["NGUYEN^VAN HUNG", "TRAN^QUOC DUNG", "LE^VAN THANH", "PHAM^MINH TUAN",
          "HOANG^DUC LONG", "VO^THANH SON", "DO^VAN KHANH", "NGO^QUANG VINH"],
    "F": ["NGUYEN^THI HOA", "TRAN^THI LAN", "LE^THI MAI", "PHAM^THI NGA", "BUI^THI THUY",
          "DANG^THI HUONG"],
}


def uid(*parts: str) -> str:
    return generate_uid(entropy_srcs=["haidang-demo", *parts])


def find_data(shared: Path) -> tuple[Path, Path]:
    """(NIH folder with labels.csv, images/ and full-size/; the SIIM file)."""
    local = ROOT / "datasets" / "nih-cxr"
    nih = local if (local / "full-size").is_dir() else shared / "nih-cxr"
    return nih, shared / "real-dicom" / "siim-acr-chest-cr.dcm"


def nih_labels(nih: Path) -> dict[str, dict[str, str]]:
    with open(nih / "labels.csv", encoding="utf-8") as fh:
        return {row["image"]: row for row in csv.DictReader(fh)}


def birth_date(age: int, key: str) -> str:
    """A birth date giving ``age`` full years on the study date (day from the key)."""
    offset = int(uid(key, "birth").rsplit(".", 1)[1]) % 300 + 1
    born = STUDY_DATE.replace(year=STUDY_DATE.year - age - 1) + dt.timedelta(days=offset)
    return born.strftime("%Y%m%d")


def _meta(sop_class: str, sop_uid: str, ts: str = ExplicitVRLittleEndian) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def patient_and_study(ds: Dataset, key: str, n: int, name: str, sex: str, age: int | None,
                      description: str) -> None:
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = name
    ds.PatientID = f"HD2{n:05d}"
    ds.PatientSex = sex
    ds.PatientBirthDate = birth_date(age, key) if age is not None else ""
    if age is not None:
        ds.PatientAge = f"{age:03d}Y"
    ds.StudyInstanceUID = uid(key, "study")
    ds.StudyDate = STUDY_DATE.strftime("%Y%m%d")
    ds.StudyTime = f"{7 + n % 10:02d}{(7 * n) % 60:02d}00"
    ds.ReferringPhysicianName = ""
    ds.StudyID = f"D{n:04d}"
    ds.AccessionNumber = f"DEMO{n:06d}"
    ds.StudyDescription = description
    ds.SeriesInstanceUID = uid(key, "series")
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.InstitutionName = "Benh vien mau (sample hospital)"
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = ds.StudyTime


def radiograph(pixels: np.ndarray, key: str, n: int, *, name: str, sex: str, age: int | None,
               view: str, body_part: str, modality: str, photometric: str = "MONOCHROME2",
               derivation: str) -> Dataset:
    """An 8-bit greyscale CR or DX (For Presentation) image, JPEG-LS lossless."""
    sop_class = (DigitalXRayImageStorageForPresentation if modality == "DX"
                 else ComputedRadiographyImageStorage)
    sop_uid = uid(key, "sop")
    ds = Dataset()
    ds.file_meta = _meta(sop_class, sop_uid)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    patient_and_study(ds, key, n, name, sex, age,
                      "XQ NGUC THANG" if body_part == "CHEST" else "XQ")
    ds.Modality = modality
    ds.SeriesDescription = f"{body_part} {view}".strip()
    ds.BodyPartExamined = body_part  # Type 2: empty when the modality did not say
    if not body_part:
        ds.Laterality = ""
    ds.ViewPosition = view
    ds.Manufacturer = "Haidang samples (synthetic wrapper)"
    ds.PatientOrientation = ["L", "F"] if view in ("PA", "") else ["R", "F"]
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.DerivationDescription = derivation[:1024]
    ds.BurnedInAnnotation = "NO"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.WindowCenter, ds.WindowWidth = 128, 256
    ds.VOILUTFunction = "LINEAR"
    ds.LossyImageCompression = "00"
    if modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ImageType = ["DERIVED", "PRIMARY", "", ""]
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = 1 if photometric == "MONOCHROME2" else -1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
        ds.PresentationLUTShape = "IDENTITY" if photometric == "MONOCHROME2" else "INVERSE"
        ds.ImageLaterality = "U"
        ds.AcquisitionContextSequence = []
        region = Dataset()
        region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning = CHEST
        ds.AnatomicRegionSequence = [region]
        ds.DetectorType = ""
        ds.ImagerPixelSpacing = [NOMINAL_SPACING_MM, NOMINAL_SPACING_MM]
        ds.PositionerType = ""
        ds.AcquisitionDeviceProcessingDescription = ""
    ds.PixelData = pixels.astype(np.uint8).tobytes()
    ds.compress(JPEGLSLossless, generate_instance_uid=False)
    return ds


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"), dtype=np.uint8)


def nih_cases(nih: Path) -> list[tuple[str, Dataset, dict]]:
    labels = nih_labels(nih)
    cases, counters = [], {"M": 0, "F": 0}
    for n, path in enumerate(sorted((nih / "full-size").glob("*.png")), start=1):
        row = labels[path.name]
        sex, age, view = row["sex"], int(row["age"]), row["view"]
        name = NAMES[sex][counters[sex] % len(NAMES[sex])]
        counters[sex] += 1
        pixels = _png(path)
        photometric = "MONOCHROME2"
        if path.name == MONOCHROME1_IMAGE:
            pixels, photometric = 255 - pixels, "MONOCHROME1"
        modality = "DX" if view == "PA" else "CR"
        derivation = (f"NIH ChestX-ray14 {path.name} (1024 px original), wrapped losslessly"
                      + ("; ImagerPixelSpacing is a nominal 0.42 mm (NIH gives none)"
                         if modality == "DX" else "")
                      + ("; stored inverted as MONOCHROME1" if photometric == "MONOCHROME1"
                         else ""))
        ds = radiograph(pixels, f"nih-{path.name}", n, name=name, sex=sex, age=age, view=view,
                        body_part="CHEST", modality=modality, photometric=photometric,
                        derivation=derivation)
        kind = "normal" if row["findings"] == "No Finding" else "finding"
        cases.append((f"nih-{n:02d}-{view.lower()}-{kind}", ds, {
            "expected": "analysed", "reason": "", "findings": row["findings"], "view": view,
            "age": age, "sex": sex, "source": f"NIH ChestX-ray14 {path.name}"}))
    return cases


def siim_case(siim: Path) -> tuple[str, Dataset, dict]:
    ds = pydicom.dcmread(siim)
    key = "siim-acr-chest-cr"
    for elem in list(ds):
        if elem.tag.group == 0x0010:
            del ds[elem.tag]
    sop_uid = uid(key, "sop")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    patient_and_study(ds, key, 50, "NGUYEN^VAN TOAN", "M", 62, "XQ NGUC THANG")
    ds.SeriesDescription = "view: PA"
    ds.Manufacturer = ""
    return "siim-acr-chest-cr", ds, {
        "expected": "analysed", "reason": "", "findings": "", "view": "PA", "age": 62,
        "sex": "M", "source": "SIIM-ACR Pneumothorax (real-dicom/siim-acr-chest-cr.dcm)"}


def refusal_cases(nih: Path) -> list[tuple[str, Dataset, dict]]:
    import data_store

    labels = nih_labels(nih)
    lateral = radiograph(
        _png(nih / "full-size" / LATERAL_SOURCE), "refuse-lateral", 60, name="LY^VAN PHUC",
        sex="M", age=47, view="LL", body_part="CHEST", modality="CR",
        derivation=f"NIH ChestX-ray14 {LATERAL_SOURCE} (a frontal film) with a lateral (LL) "
                   "header: shows the header check")
    child_row = labels[CHILD_IMAGE]
    child = radiograph(
        _png(nih / "images" / CHILD_IMAGE), "refuse-child", 61, name="TRINH^GIA HUY",
        sex=child_row["sex"], age=int(child_row["age"]), view=child_row["view"],
        body_part="CHEST", modality="CR",
        derivation=f"NIH ChestX-ray14 {CHILD_IMAGE} (256 px), a child's frontal film")
    ct = pydicom.dcmread(Path(data_store.__file__).parent / "data" / "693_UNCI.dcm")
    for elem in list(ct):  # the source's patient and de-identification: a synthetic patient
        if elem.tag.group in (0x0010, 0x0012) or elem.keyword == "AccessionNumber":
            del ct[elem.tag]
    ct.FrameOfReferenceUID = uid("refuse-ct", "frame")
    ct.Laterality = ""
    ct.SOPInstanceUID = ct.file_meta.MediaStorageSOPInstanceUID = uid("refuse-ct", "sop")
    patient_and_study(ct, "refuse-ct", 62, "CAO^THI YEN", "F", 58, "CT NGUC")
    ct.compress(JPEGLSLossless, ct.pixel_array, generate_instance_uid=False)
    blank = radiograph(
        np.full((1024, 1024), 128, np.uint8), "refuse-blank", 63, name="MAI^VAN TAI", sex="M",
        age=40, view="PA", body_part="", modality="CR",
        derivation="uniform grey image with no body part: what a failed exposure or a "
                   "test pattern sends")
    return [
        ("refuse-lateral", lateral, {"expected": "refused", "reason": "lateral",
                                     "view": "LL", "age": 47, "sex": "M",
                                     "source": f"NIH ChestX-ray14 {LATERAL_SOURCE}"}),
        ("refuse-child", child, {"expected": "refused", "reason": "age",
                                 "findings": child_row["findings"], "view": child_row["view"],
                                 "age": int(child_row["age"]), "sex": child_row["sex"],
                                 "source": f"NIH ChestX-ray14 {CHILD_IMAGE}"}),
        ("refuse-ct", ct, {"expected": "refused", "reason": "modality", "age": 58, "sex": "F",
                           "source": "pydicom-data 693_UNCI.dcm (CT)"}),
        ("refuse-blank", blank, {"expected": "refused", "reason": "blank", "view": "PA",
                                 "age": 40, "sex": "M", "source": "generated"}),
    ]


FIELDS = ["path", "StudyInstanceUID", "SOPInstanceUID", "expected", "reason", "findings",
          "view", "age", "sex", "source"]


def main(shared: Path = ROOT.parent / "shared" / "data", out_dir: Path = OUT) -> int:
    nih, siim = find_data(Path(shared))
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, ds, info in [*nih_cases(nih), siim_case(siim), *refusal_cases(nih)]:
        path = out_dir / f"{name}.dcm"
        ds.save_as(path, enforce_file_format=True)
        rows.append({"path": path.name, "StudyInstanceUID": ds.StudyInstanceUID,
                     "SOPInstanceUID": ds.SOPInstanceUID, **{k: "" for k in FIELDS[3:]},
                     **info})
    with open(out_dir / "manifest.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    print(f"{len(rows)} demo studies written to {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*(Path(a) for a in sys.argv[1:2])))
