"""Labelled images for training and evaluation, in two shapes a data scientist has.

* MedMNIST ``.npz`` files: ``<split>_images`` (N, H, W) uint8 and ``<split>_labels`` (N, 1).
* A folder of DICOM files plus a labels CSV. The CSV has a ``label`` column (0/1, or the
  label names of the card such as ``normal`` / ``pneumonia``) and either a
  ``SOPInstanceUID`` or a ``path`` (relative to the folder) column; an optional ``split``
  column (``train`` / ``val`` / ``test``) selects rows.

Both come out as ``LabelledImages``: float32 images in [0, 1] of shape (N, 1, H, W) at the
model's input size, brighter = denser (MONOCHROME2), plus int64 labels. DICOM goes through
``serving.imaging.preprocess`` so training sees exactly the pixels serving sees.

The training side of every chest X-ray model draws from them the same way: ``augmentation``
(MONAI, random, then the shared eval chain; each model sets how strong) over
``AugmentedImages`` in a ``shuffled_loader`` seeded per ensemble member. torch and MONAI are
imported only there, so ``haidang evaluate`` reads data without them.
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


def augmentation(
    spec: Mapping[str, Any],
    *,
    rotate: float,
    scale: float,
    translate: float,
    shear: float,
    padding: str,
    gamma: tuple[float, float],
    noise: tuple[float, float],
    smooth: bool = False,
    first: Sequence[Any] = (),
):
    """MONAI augmentation of a [1, H, W] image in [0, 1], then the shared eval chain.

    ``rotate`` (radians), ``scale``, ``translate`` (pixels) and ``shear`` bound the random
    affine; ``gamma`` the contrast change; ``noise`` is (probability, std) of Gaussian noise;
    ``smooth`` adds a light Gaussian blur; ``first`` runs before everything (the model's own
    transforms). No flips: the heart is on the left.
    """
    from monai.transforms import (
        Compose,
        RandAdjustContrast,
        RandAffine,
        RandGaussianNoise,
        RandGaussianSmooth,
        RandScaleIntensity,
        RandShiftIntensity,
    )

    from serving.imaging.preprocess import eval_transforms

    blur = [RandGaussianSmooth(prob=0.2, sigma_x=(0.3, 0.8), sigma_y=(0.3, 0.8))] if smooth else []
    return Compose(
        [
            *first,
            RandAffine(
                prob=0.9,
                rotate_range=(rotate,),
                scale_range=(scale, scale),
                translate_range=(translate, translate),
                shear_range=(shear, shear),
                padding_mode=padding,
                mode="bilinear",
            ),
            RandAdjustContrast(prob=0.5, gamma=gamma),
            RandScaleIntensity(prob=0.5, factors=0.15),
            RandShiftIntensity(prob=0.5, offsets=0.08),
            *blur,
            RandGaussianNoise(prob=noise[0], std=noise[1]),
            eval_transforms(spec),
        ]
    )


class AugmentedImages:
    """Images at model size in [0, 1] (float16 or float32), each drawn through ``transform``
    as float32: a map-style dataset for ``torch.utils.data.DataLoader``."""

    def __init__(self, images: np.ndarray, targets: np.ndarray, transform):
        import torch

        self.images = images
        self.targets = torch.from_numpy(np.asarray(targets, np.float32))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        import torch

        x = torch.from_numpy(np.asarray(self.images[i], np.float32))
        return torch.as_tensor(self.transform(x)).float(), self.targets[i]


def shuffled_loader(data: AugmentedImages, batch_size: int, seed: int, drop_last: bool,
                    workers: int = 0):
    """Batches in an order fixed by ``seed`` (one ensemble member, reproducible)."""
    import torch

    return torch.utils.data.DataLoader(
        data,
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        drop_last=drop_last,
        num_workers=workers,
        persistent_workers=workers > 0,
        worker_init_fn=_one_thread,
    )


def _one_thread(_worker_id: int) -> None:
    """A loader worker uses one thread: the cores belong to the fit."""
    import torch

    torch.set_num_threads(1)
