"""Labelled images for training and evaluation, in two shapes a data scientist has.

* MedMNIST ``.npz`` files: ``<split>_images`` (N, H, W) uint8 and ``<split>_labels`` (N, 1).
* A folder of DICOM files plus a labels CSV. The CSV has a ``label`` column (0/1, or the
  label names of the card such as ``normal`` / ``pneumonia``) and either a
  ``SOPInstanceUID`` or a ``path`` (relative to the folder) column; an optional ``split``
  column (``train`` / ``val`` / ``test``) selects rows.

Both come out as ``LabelledImages``: float32 images in [0, 1] of shape (N, 1, H, W) at the
model's input size, brighter = denser (MONOCHROME2), plus int64 labels. DICOM goes through
``serving.imaging.preprocess`` so training sees exactly the pixels serving sees.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from serving.imaging.preprocess import _spec, area_resize_np, center_square_np, dicom_to_unit

LABEL_NAMES = ("normal", "pneumonia")


class DataError(ValueError):
    """The data cannot be read as asked; the message says what to fix."""


@dataclass
class LabelledImages:
    images: np.ndarray  # float32 (N, 1, H, W) in [0, 1]
    labels: np.ndarray  # int64 (N,)
    source: str

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: Sequence[int] | np.ndarray) -> LabelledImages:
        idx = np.asarray(idx)
        return LabelledImages(self.images[idx], self.labels[idx], f"{self.source}[subset]")


def unit_at_model_size(unit2d: np.ndarray, spec: Mapping[str, Any]) -> np.ndarray:
    """Crop + resize of the shared chain, without normalisation (augmentation comes between)."""
    s = _spec(spec)
    img = (center_square_np(unit2d, float(s.get("inner_crop", 1.0)))
           if s.get("crop") == "center_square" else unit2d)
    return area_resize_np(img, s["size"])


def load_npz(path: Path | str, split: str, spec: Mapping[str, Any] | None = None) -> LabelledImages:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist")
    with np.load(path) as npz:
        key_i, key_l = f"{split}_images", f"{split}_labels"
        if key_i not in npz or key_l not in npz:
            have = sorted(k[: -len("_images")] for k in npz.files if k.endswith("_images"))
            raise DataError(f"{path} has no split '{split}' (it has: {', '.join(have) or 'none'})")
        raw = npz[key_i]
        labels = npz[key_l].reshape(-1).astype(np.int64)
    if raw.ndim != 3:
        raise DataError(f"{key_i} must be (N, H, W) greyscale, got {raw.shape}")
    s = _spec(spec)
    lo, hi = (float(v) for v in s["scale"])
    unit = (raw.astype(np.float32) - lo) / (hi - lo)
    if tuple(unit.shape[1:]) != tuple(s["size"]):
        unit = np.stack([unit_at_model_size(u, s) for u in unit])
    return LabelledImages(unit[:, None].astype(np.float32), labels, f"{path}:{split}")


def _parse_label(value: str, row_no: int) -> int:
    v = value.strip().lower()
    if v in ("0", "1"):
        return int(v)
    if v in LABEL_NAMES:
        return LABEL_NAMES.index(v)
    raise DataError(f"labels CSV row {row_no}: label '{value}' is not 0/1 or one of {LABEL_NAMES}")


def load_dicom_folder(
    folder: Path | str,
    labels_csv: Path | str,
    spec: Mapping[str, Any] | None = None,
    split: str | None = None,
) -> LabelledImages:
    """Read every labelled DICOM file under ``folder`` through the serving preprocessing."""
    import pydicom
    from tqdm import tqdm

    folder, labels_csv = Path(folder), Path(labels_csv)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder of DICOM files")
    with open(labels_csv, newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise DataError(f"{labels_csv} has no rows")
    cols = set(rows[0])
    if "label" not in cols or not ({"SOPInstanceUID", "path"} & cols):
        raise DataError(
            f"{labels_csv} needs a 'label' column and a 'SOPInstanceUID' or 'path' column"
        )
    if split is not None and "split" in cols:
        rows = [r for r in rows if r["split"].strip() == split]
        if not rows:
            raise DataError(f"{labels_csv} has no rows with split '{split}'")

    by_uid: dict[str, Path] = {}
    if "SOPInstanceUID" in cols and any(r.get("SOPInstanceUID") for r in rows):
        for f in sorted(p for p in folder.rglob("*") if p.is_file()):
            try:
                head = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
            except Exception:  # noqa: BLE001 - not DICOM: skip
                continue
            if "SOPInstanceUID" in head:
                by_uid[str(head.SOPInstanceUID)] = f

    s = _spec(spec)
    images, labels = [], []
    for i, row in enumerate(tqdm(rows, desc="DICOM", unit="img"), start=2):
        if row.get("path"):
            f = folder / row["path"]
        else:
            f = by_uid.get(row["SOPInstanceUID"].strip())
            if f is None:
                raise DataError(f"labels CSV row {i}: no file in {folder} has that SOPInstanceUID")
        if not f.exists():
            raise DataError(f"labels CSV row {i}: {f} does not exist")
        unit = dicom_to_unit(pydicom.dcmread(f))
        images.append(unit_at_model_size(unit, s)[None])
        labels.append(_parse_label(row["label"], i))
    return LabelledImages(
        np.stack(images).astype(np.float32),
        np.asarray(labels, np.int64),
        f"{folder} + {labels_csv.name}",
    )


def load(
    data: Path | str,
    split: str,
    spec: Mapping[str, Any] | None = None,
    labels_csv: Path | str | None = None,
) -> LabelledImages:
    """``.npz`` file or DICOM folder (then ``labels_csv`` is required)."""
    data = Path(data)
    if data.is_dir():
        if labels_csv is None:
            raise DataError(f"{data} is a folder: give its labels with --labels FILE.csv")
        return load_dicom_folder(data, labels_csv, spec, split)
    return load_npz(data, split, spec)
