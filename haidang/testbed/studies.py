"""Real DICOM files (pydicom-data and the shipped samples), copied with fresh UIDs.

Several pydicom test files share one SOPInstanceUID, so every copy gets new Study,
Series and SOP Instance UIDs (or the study UID a test asks for). Pixel data is
written back untouched, in the file's own transfer syntax.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

try:
    import data_store

    DATA_DIR = Path(data_store.__file__).parent / "data"
except ImportError:  # pragma: no cover - dev extra not installed
    DATA_DIR = Path("/nonexistent")

# The chest radiographs ``haidang demo`` sends (``datasets/samples/demo``, with a manifest
# saying which the model's intended-use gate accepts and which it must refuse).
SAMPLE_STUDIES = Path(__file__).resolve().parents[2] / "datasets" / "samples"
DEMO = SAMPLE_STUDIES / "demo"

# A spread of modalities and transfer syntaxes that storage SCPs meet in practice.
SAMPLES = {
    "ct": "693_UNCI.dcm",  # CT, explicit VR LE
    "ct_j2k": "693_J2KR.dcm",  # CT, JPEG 2000 lossless
    "cr": "RG3_UNCI.dcm",  # CR, 6 MB, explicit VR LE
    "cr_j2k": "RG3_J2KI.dcm",  # CR, JPEG 2000
    "mr": "MR2_UNCI.dcm",  # MR, explicit VR LE
    "mr_jls": "emri_small_jpeg_ls_lossless.dcm",  # Enhanced MR, JPEG-LS
    "us_rle": "OBXXXX1A_rle.dcm",  # US, RLE lossless
    "us_jpeg_ll": "JPGLosslessP14SV1_1s_1f_8b.dcm",  # US, JPEG lossless
    "us_jpeg_base": "color3d_jpeg_baseline.dcm",  # US multiframe, JPEG baseline
    "us_implicit": "gdcm-US-ALOKA-16.dcm",  # US, implicit VR LE
}


def sample_path(key: str) -> Path:
    path = DATA_DIR / SAMPLES.get(key, key)
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: pip install pydicom-data (the dev extra)")
    return path


def fresh_copy(key: str, dest_dir: Path, study_uid: str | None = None,
               series_uid: str | None = None, patient_id: str = "HD-TEST-0001",
               patient_name: str = "NGUYEN^VAN AN") -> Path:
    """Copy a sample with new UIDs; returns the path of the copy (named after its SOP UID)."""
    ds = pydicom.dcmread(sample_path(key))
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    sop_uid = generate_uid()
    ds.SOPInstanceUID = sop_uid
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    dest_dir.mkdir(parents=True, exist_ok=True)
    out = dest_dir / f"{sop_uid}.dcm"
    ds.save_as(out, enforce_file_format=True)
    return out


def make_study(keys: list[str], dest_dir: Path, **kwargs) -> tuple[str, list[Path]]:
    """One study whose instances are copies of the given samples (one series per sample)."""
    study_uid = generate_uid()
    return study_uid, [fresh_copy(k, dest_dir, study_uid=study_uid, **kwargs) for k in keys]


def demo_manifest() -> list[dict[str, str]]:
    """One row per demo study: ``path``, ``expected`` (analysed / refused), ``reason`` ..."""
    with open(DEMO / "manifest.csv", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def sample_files() -> list[Path]:
    """The demo's adult frontal chest radiographs: what the model is made for."""
    if not (DEMO / "manifest.csv").is_file():
        return []
    return [DEMO / r["path"] for r in demo_manifest() if r["expected"] == "analysed"]


def cxr_studies(dest: Path, count: int) -> list[tuple[str, list[Path]]]:
    """``count`` one-image chest X-ray studies with fresh UIDs (shipped samples, cycled),
    uncompressed (explicit VR little endian), so that any storage SCU can send them."""
    samples = sample_files()
    out = []
    for n in range(count):
        if samples:
            ds = pydicom.dcmread(samples[n % len(samples)])
            if ds.file_meta.TransferSyntaxUID.is_compressed:
                ds.decompress()  # the demo films are JPEG-LS; any sender can send these
            ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            folder = dest / f"s{n}"
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            out.append((str(ds.StudyInstanceUID), [path]))
        else:
            out.append(make_study(["cr"], dest / f"s{n}"))
    return out
