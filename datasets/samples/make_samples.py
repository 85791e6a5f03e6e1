"""Make the sample studies in this folder (run from the repository root):

    python datasets/samples/make_samples.py

1. Wraps validation images of PneumoniaMNIST (some pneumonia, some normal) into valid CR
   Image Storage objects: MONOCHROME2, patient / study / series / equipment / image modules,
   synthetic Vietnamese patients, a window that maps stored 0..255 exactly to [0, 1].
   Each 28x28 image is enlarged 8x (pixel replication) to 224x224 so viewers show it at a
   readable size; the serving preprocessing (area resize back to 28x28) then recovers the
   original pixels exactly, so the model sees what it saw in validation. ``manifest.csv``
   gives the true label of each (and is a labels CSV for ``haidang evaluate``).
2. Copies two real full-size CR radiographs from pydicom-data (``data_store``): RG1_UNCI
   (chest, MONOCHROME1, 15-bit) and RG3_UNCI (extremity, MONOCHROME1, 10-bit), with fresh
   UIDs and synthetic patients, re-encoded JPEG-LS lossless to keep the repository small.

UIDs are derived from fixed seeds (``generate_uid(entropy_srcs=...)``), so re-running the
script reproduces the same files instead of churning git; they are not the source files'.
"""

from __future__ import annotations

import csv
import datetime as dt
import sys
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ComputedRadiographyImageStorage,
    ExplicitVRLittleEndian,
    JPEGLSLossless,
    generate_uid,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
NPZ = ROOT / "datasets" / "pneumoniamnist" / "pneumoniamnist_trainval.npz"
SCALE = 8  # 28 -> 224 by pixel replication
LABELS = ("normal", "pneumonia")

# Synthetic patients (invented names; any resemblance is coincidental). DICOM PN: FAMILY^GIVEN.
PATIENTS = [
    ("TRAN^THI BINH", "F", "20210314"),
    ("NGUYEN^VAN AN", "M", "20200802"),
    ("LE^MINH KHOA", "M", "20220119"),
    ("PHAM^THU HA", "F", "20191127"),
    ("HOANG^GIA BAO", "M", "20210905"),
    ("VU^NGOC LAN", "F", "20200430"),
    ("DANG^QUOC HUY", "M", "20181212"),
    ("BUI^THANH MAI", "F", "20220607"),
]
# Validation indices, fixed: 4 pneumonia and 4 normal (chosen as the first of each class).
N_PER_CLASS = 4
REAL_CR = [("RG1_UNCI.dcm", "CHEST", "PA"), ("RG3_UNCI.dcm", "HAND", "")]


def uid(*parts: str) -> str:
    return generate_uid(entropy_srcs=["haidang-samples", *parts])


def _file_meta(sop_uid: str, ts: str = ExplicitVRLittleEndian) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def _patient_study_series(ds: Dataset, key: str, patient: tuple[str, str, str], n: int,
                          body_part: str, view: str) -> None:
    name, sex, birth = patient
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = name
    ds.PatientID = f"HD{n:06d}"
    ds.PatientBirthDate = birth
    ds.PatientSex = sex
    ds.StudyInstanceUID = uid(key, "study")
    ds.StudyDate = "20260115"
    ds.StudyTime = f"{8 + n % 8:02d}{(7 * n) % 60:02d}00"
    ds.ReferringPhysicianName = ""
    ds.StudyID = f"S{n:04d}"
    ds.AccessionNumber = f"ACC{n:06d}"
    ds.StudyDescription = "XQ NGUC THANG" if body_part == "CHEST" else "XQ BAN TAY"
    ds.Modality = "CR"
    ds.SeriesInstanceUID = uid(key, "series")
    ds.SeriesNumber = 1
    ds.SeriesDescription = f"{body_part} {view}".strip()
    ds.BodyPartExamined = body_part
    ds.ViewPosition = view
    ds.Manufacturer = "Haidang samples (synthetic wrapper)"
    ds.InstitutionName = "Benh vien mau (sample hospital)"
    ds.InstanceNumber = 1
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = ds.StudyTime


def wrap_medmnist(img28: np.ndarray, key: str, patient: tuple[str, str, str], n: int) -> Dataset:
    """One 28x28 uint8 MedMNIST image -> a CR Image Storage dataset (224x224, 8-bit)."""
    pixels = np.kron(img28.astype(np.uint8), np.ones((SCALE, SCALE), np.uint8))
    sop_uid = uid(key, "sop")
    ds = Dataset()
    ds.file_meta = _file_meta(sop_uid)
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID = sop_uid
    _patient_study_series(ds, key, patient, n, "CHEST", "PA")
    # PA chest as displayed: rows run to the patient's left, columns to the feet
    ds.PatientOrientation = ["L", "F"]
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.DerivationDescription = (
        "PneumoniaMNIST (MedMNIST v2, CC BY 4.0) 28x28 validation image, enlarged 8x by pixel "
        "replication"
    )
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    # LINEAR window with centre 128, width 256 maps stored value x to exactly x / 255.
    ds.WindowCenter = 128
    ds.WindowWidth = 256
    ds.VOILUTFunction = "LINEAR"
    ds.PixelData = pixels.tobytes()
    return ds


def copy_real_cr(src: Path, key: str, patient: tuple[str, str, str], n: int, body_part: str,
                 view: str) -> Dataset:
    """A pydicom-data CR file with fresh UIDs and a synthetic patient, JPEG-LS lossless."""
    ds = pydicom.dcmread(src)
    sop_uid = uid(key, "sop")
    keep_pixels = ds.pixel_array
    for elem in list(ds):  # drop the original identifying patient/study attributes
        if elem.tag.group == 0x0010 or elem.keyword in ("OtherPatientIDs", "AccessionNumber"):
            del ds[elem.tag]
    if "PixelSpacing" in ds and not all(float(v) > 0 for v in ds.PixelSpacing):
        del ds.PixelSpacing  # RG1 carries 0\\0, which dciodvfy rightly rejects
    ds.SOPInstanceUID = sop_uid
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    _patient_study_series(ds, key, patient, n, body_part, view or str(ds.get("ViewPosition", "")))
    ds.Manufacturer = ds.get("Manufacturer", "") or ""
    ds.compress(JPEGLSLossless, keep_pixels, generate_instance_uid=False)
    return ds


def main(out_dir: Path = HERE) -> int:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with np.load(NPZ) as npz:
        images, labels = npz["val_images"], npz["val_labels"].reshape(-1)
    chosen = []
    for cls in (1, 0):
        chosen += [int(i) for i in np.flatnonzero(labels == cls)[:N_PER_CLASS]]
    rows = []
    for n, idx in enumerate(sorted(chosen), start=1):
        key = f"pneumoniamnist-val-{idx}"
        patient = PATIENTS[(n - 1) % len(PATIENTS)]
        ds = wrap_medmnist(images[idx], key, patient, n)
        name = f"cxr-{n:02d}-{LABELS[labels[idx]]}.dcm"
        ds.save_as(out_dir / name, enforce_file_format=True)
        rows.append({"path": name, "SOPInstanceUID": ds.SOPInstanceUID,
                     "StudyInstanceUID": ds.StudyInstanceUID, "label": int(labels[idx]),
                     "label_name": LABELS[labels[idx]], "split": "samples",
                     "source": f"{NPZ.name} val_images[{idx}]"})
    with open(out_dir / "manifest.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)

    try:
        import data_store
    except ImportError:
        print("pydicom-data missing (pip install pydicom-data): real CR copies skipped",
              file=sys.stderr)
        return 0
    data_dir = Path(data_store.__file__).parent / "data"
    for k, (fname, body_part, view) in enumerate(REAL_CR):
        n = 100 + k
        ds = copy_real_cr(data_dir / fname, f"pydicom-data-{fname}", PATIENTS[-1 - k], n,
                          body_part, view)
        out = out_dir / f"real-cr-{body_part.lower()}-{fname.split('_')[0].lower()}.dcm"
        ds.save_as(out, enforce_file_format=True)
    print(f"{len(rows)} wrapped MedMNIST images + {len(REAL_CR)} real CR files written to "
          f"{out_dir} ({dt.date.today()})")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE))
