"""Pixels in, model input out: the one preprocessing chain shared by training and serving.

Decision (issue 3): the deterministic chain exists twice, on purpose, and a test proves
they agree within 1e-6:

* ``eval_transforms(spec)`` is a MONAI ``Compose`` (needs torch). Training and
  ``haidang evaluate`` on PyTorch use it, and the training augmentations wrap it.
* ``unit_to_model_input`` / ``array_to_model_input`` / ``dicom_to_model_input`` are plain
  numpy, because serving has only onnxruntime + numpy and must not import torch.

The chain, applied to a 2-D image already mapped to [0, 1] (0 = black, 1 = white, as
displayed in MONOCHROME2):

1. centre crop to a square (MedMNIST did the same to the original Kermany images), then,
   when the spec has ``inner_crop`` (a fraction), to the central part of that square: the
   outer margin of a radiograph carries the side and "PORTABLE"/"AP" markers, and a model
   that sees them learns the view instead of the disease (cxr-triage 1.0.0's first fit did);
2. resize to ``spec["size"]`` by area averaging (``torch`` ``interpolate(mode="area")``,
   i.e. adaptive average pooling: anti-aliased when a full-size radiograph shrinks to 28 px);
3. normalise ``(x - mean) / std``.

DICOM first goes through ``dicom_to_unit``: modality LUT (rescale slope/intercept), VOI LUT
or window centre/width (else the image's own min..max), MONOCHROME1 inversion.

``spec`` is the ``input`` section of a model card (``card.yaml``), so serving builds it from
the card alone, for example::

    {"size": [28, 28], "channels": 1, "crop": "center_square", "resize": "area",
     "scale": [0, 255], "mean": 0.5, "std": 0.25}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

DEFAULT_SPEC: dict[str, Any] = {
    "name": "image",
    "size": [28, 28],
    "channels": 1,
    "dtype": "float32",
    "crop": "center_square",
    "resize": "area",
    "scale": [0, 255],
    "mean": 0.5,
    "std": 0.25,
}


class PreprocessError(ValueError):
    """The image cannot be turned into model input; the message says why and what to do."""


def _spec(spec: Mapping[str, Any] | None) -> dict[str, Any]:
    merged = dict(DEFAULT_SPEC)
    if spec:
        merged.update(spec)
    size = merged["size"]
    if isinstance(size, int):
        size = [size, size]
    merged["size"] = [int(size[0]), int(size[1])]
    if int(merged.get("channels", 1)) != 1:
        raise PreprocessError("only single-channel (greyscale) models are supported")
    return merged


# --- the numpy chain (serving) ---------------------------------------------------------


def center_square_np(img: np.ndarray, fraction: float = 1.0) -> np.ndarray:
    """Centre crop a 2-D image to a square (``fraction`` of its shorter side), with MONAI
    ``CenterSpatialCrop``'s offsets."""
    h, w = img.shape
    side = inner_side(min(h, w), fraction)
    top = max(h // 2 - side // 2, 0)
    left = max(w // 2 - side // 2, 0)
    return img[top : top + side, left : left + side]


def inner_side(side: int, fraction: float) -> int:
    """Side of the central crop keeping ``fraction`` of ``side`` pixels (at least 1)."""
    return max(1, int(round(side * float(fraction))))


def _bin_edges(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Bins of adaptive average pooling along one axis (torch's edges: floor / ceil)."""
    i = np.arange(n_out)
    return (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)


def _area_last_axis(img: np.ndarray, n_out: int) -> np.ndarray:
    """Mean of each bin along the last axis (float64).

    Shrinking: one ``np.add.reduceat`` over contiguous runs (fast along rows), plus the one
    shared pixel where neighbouring bins overlap (torch's bins overlap by at most one).
    Growing (rare here): the small dense pooling product.
    """
    n_in = img.shape[-1]
    start, end = _bin_edges(n_in, n_out)
    if n_out > n_in:
        weights = np.zeros((n_out, n_in))
        for i, (a, b) in enumerate(zip(start, end, strict=True)):
            weights[i, a:b] = 1.0 / (b - a)
        return img.astype(np.float64) @ weights.T
    sums = np.add.reduceat(img, start, axis=-1, dtype=np.float64)
    shared = np.flatnonzero(end[:-1] > start[1:])  # bin i also holds the first pixel of i+1
    sums[..., shared] += img[..., start[shared + 1]]
    return sums / (end - start)


def area_resize_np(img: np.ndarray, size: tuple[int, int] | list[int]) -> np.ndarray:
    """Resize a 2-D image like ``torch.nn.functional.interpolate(mode="area")``.

    Bin sums along contiguous rows in float64, not two dense pooling matrices: the same
    result (to float32 rounding) at a fraction of the cost on a 1024-px film, where the
    matrices made resizing the gateway's most expensive step per study.
    """
    h, w = img.shape
    oh, ow = int(size[0]), int(size[1])
    if (h, w) == (oh, ow):
        return img.astype(np.float32, copy=False)
    out = _area_last_axis(img, ow) if ow != w else img.astype(np.float64)
    if oh != h:
        out = _area_last_axis(np.ascontiguousarray(out.T), oh).T
    return np.ascontiguousarray(out, dtype=np.float32)


def unit_to_model_input(unit2d: np.ndarray, spec: Mapping[str, Any] | None = None) -> np.ndarray:
    """[0, 1] 2-D image -> float32 [1, H, W]: centre square crop, area resize, normalise."""
    s = _spec(spec)
    img = np.asarray(unit2d, dtype=np.float32)
    if img.ndim != 2:
        raise PreprocessError(f"expected a 2-D greyscale image, got shape {img.shape}")
    if s.get("crop") == "center_square":
        img = center_square_np(img, float(s.get("inner_crop", 1.0)))
    img = area_resize_np(img, s["size"])
    out = (img - np.float32(s["mean"])) / np.float32(s["std"])
    return out[None].astype(np.float32)


def array_to_model_input(
    img2d_uint8: np.ndarray, spec: Mapping[str, Any] | None = None
) -> np.ndarray:
    """A MedMNIST-style uint8 2-D array (0..255, MONOCHROME2) -> float32 [1, H, W]."""
    s = _spec(spec)
    lo, hi = (float(v) for v in s["scale"])
    unit = (np.asarray(img2d_uint8, dtype=np.float32) - np.float32(lo)) / np.float32(hi - lo)
    return unit_to_model_input(unit, s)


# --- DICOM -> [0, 1] -------------------------------------------------------------------


def _first(value: Any) -> float:
    """Window centre/width may be multi-valued; the first pair is the default view."""
    try:
        return float(value[0])
    except (TypeError, IndexError):
        return float(value)


def window_to_unit(
    x: np.ndarray, center: float, width: float, function: str = "LINEAR"
) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 windowing straight to [0, 1] (ymin=0, ymax=1)."""
    function = (function or "LINEAR").upper()
    if function == "SIGMOID":
        return (1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))).astype(np.float32)
    if function == "LINEAR_EXACT":
        return np.clip((x - center) / width + 0.5, 0.0, 1.0).astype(np.float32)
    if width < 1:
        raise PreprocessError(f"Window Width {width} < 1 is invalid for LINEAR windowing")
    if width == 1:
        return (x > center - 0.5).astype(np.float32)
    return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0).astype(np.float32)


def dicom_to_unit(ds) -> np.ndarray:
    """A single-frame greyscale DICOM image -> float32 2-D in [0, 1], brighter = denser.

    Order as PS3.3 defines it: modality LUT (rescale slope/intercept or Modality LUT
    Sequence), then VOI (VOI LUT Sequence, else Window Center/Width, else the image's own
    min..max), then MONOCHROME1 inversion so every model sees MONOCHROME2.
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise PreprocessError(
            f"PhotometricInterpretation {photometric or '(missing)'} is not greyscale; "
            "send the MONOCHROME1/2 radiograph, not a secondary capture or colour image"
        )
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise PreprocessError("multi-frame images are not supported by this model; send one frame")
    try:
        raw = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - decoder errors come in many types
        raise PreprocessError(
            f"cannot decode pixel data ({exc}); install pylibjpeg/pyjpegls or send uncompressed"
        ) from exc
    x = np.asarray(apply_modality_lut(raw, ds), dtype=np.float64)

    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        item = ds.VOILUTSequence[0]
        bits = int(item.LUTDescriptor[2])
        lut_out = apply_voi_lut(x, ds, index=0, prefer_lut=True)
        unit = np.asarray(lut_out, dtype=np.float64) / float(2**bits - 1)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        unit = window_to_unit(
            x,
            _first(ds.WindowCenter),
            _first(ds.WindowWidth),
            str(ds.get("VOILUTFunction", "LINEAR")),
        )
    else:
        lo, hi = float(x.min()), float(x.max())
        unit = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    unit = np.clip(unit, 0.0, 1.0).astype(np.float32)
    if photometric == "MONOCHROME1":
        unit = 1.0 - unit
    return unit


def picture_to_unit(path) -> np.ndarray:
    """A PNG or JPEG file -> float32 2-D in [0, 1] (8- or 16-bit greyscale; colour is averaged).

    A picture has no photometric interpretation: bright means dense, as displayed.
    """
    from PIL import Image

    with Image.open(path) as im:
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(im, dtype=np.float64)
            top = 65535.0 if arr.max(initial=0) > 255 else 255.0
            return np.clip(arr / top, 0.0, 1.0).astype(np.float32)
        return (np.asarray(im.convert("L"), dtype=np.float32) / np.float32(255)).astype(np.float32)


def file_to_unit(path) -> tuple[np.ndarray, str]:
    """Any supported image file -> (float32 2-D in [0, 1] as displayed, photometric).

    DICOM goes through ``dicom_to_unit`` (so MONOCHROME1 comes back already inverted);
    PNG/JPEG count as MONOCHROME2.
    """
    from pathlib import Path

    path = Path(path)
    if path.suffix.lower() in (".png", ".jpg", ".jpeg"):
        return picture_to_unit(path), "MONOCHROME2"
    import pydicom

    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # noqa: BLE001 - pydicom raises several types
        raise PreprocessError(
            f"{path.name} is neither PNG/JPEG nor readable DICOM ({exc}); send one of those"
        ) from exc
    return dicom_to_unit(ds), str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()


def dicom_to_model_input(ds, spec: Mapping[str, Any] | None = None) -> np.ndarray:
    """``pydicom.Dataset`` -> float32 [1, H, W] model input (numpy only, no torch)."""
    return unit_to_model_input(dicom_to_unit(ds), spec)


# --- the MONAI chain (training, evaluation on PyTorch) -----------------------------------


def eval_transforms(spec: Mapping[str, Any] | None = None):
    """The deterministic MONAI chain on a [1, H, W] tensor in [0, 1]; equals the numpy chain.

    Imports MONAI (and torch) lazily: serving never calls it.
    """
    from monai.transforms import CenterSpatialCrop, Compose, Lambda, NormalizeIntensity, Resize

    s = _spec(spec)

    def _square(img):
        side = inner_side(min(int(img.shape[-2]), int(img.shape[-1])),
                          float(s.get("inner_crop", 1.0)))
        return CenterSpatialCrop(roi_size=(side, side))(img)

    steps = []
    if s.get("crop") == "center_square":
        steps.append(Lambda(_square))
    steps.append(Resize(spatial_size=tuple(s["size"]), mode="area"))
    steps.append(NormalizeIntensity(subtrahend=float(s["mean"]), divisor=float(s["std"])))
    return Compose(steps)
