"""Occlusion sensitivity: which parts of the image moved the model's probability.

Gradient-free, so it works from the ONNX model alone: slide a grey patch over the
image, run all occluded copies as one batch, and credit each pixel with the drop in
probability its patches caused. Cheap at the model's input size (28×28 → a few dozen
copies).
"""

from __future__ import annotations

import numpy as np


def occlusion_sensitivity(
    probabilities,
    image: np.ndarray,
    patch: int | None = None,
    stride: int | None = None,
    baseline: float | None = None,
    max_batch: int = 64,
) -> np.ndarray:
    """A [H, W] map for an ``image`` of [C, H, W] or [H, W]; positive where occlusion lowered
    the positive-class probability. ``probabilities`` maps a batch [N,C,H,W] to [N].
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 2:
        img = img[None]
    _, h, w = img.shape
    patch = patch or max(2, min(h, w) // 4)
    stride = stride or max(1, patch // 2)
    fill = float(img.mean()) if baseline is None else baseline
    ys = list(range(0, max(h - patch, 0) + 1, stride))
    xs = list(range(0, max(w - patch, 0) + 1, stride))
    if ys[-1] + patch < h:
        ys.append(h - patch)
    if xs[-1] + patch < w:
        xs.append(w - patch)
    boxes = [(y, x) for y in ys for x in xs]
    base = float(np.asarray(probabilities(img[None]))[0])
    drops = np.empty(len(boxes), dtype=np.float32)
    for start in range(0, len(boxes), max_batch):
        chunk = boxes[start : start + max_batch]
        batch = np.repeat(img[None], len(chunk), axis=0)
        for i, (y, x) in enumerate(chunk):
            batch[i, :, y : y + patch, x : x + patch] = fill
        drops[start : start + len(chunk)] = base - np.asarray(
            probabilities(batch), dtype=np.float32
        )
    heat = np.zeros((h, w), dtype=np.float32)
    count = np.zeros((h, w), dtype=np.float32)
    for (y, x), d in zip(boxes, drops, strict=True):
        heat[y : y + patch, x : x + patch] += d
        count[y : y + patch, x : x + patch] += 1
    heat /= np.maximum(count, 1)
    return heat


def normalise(heat: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] for display, keeping only evidence *for* the finding."""
    pos = np.clip(heat, 0, None)
    top = float(pos.max())
    return pos / top if top > 0 else pos


def resize_map(heat: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2-D map to ``shape`` (rows, columns) with Pillow."""
    from PIL import Image

    im = Image.fromarray(np.asarray(heat, dtype=np.float32), mode="F")
    return np.asarray(im.resize((shape[1], shape[0]), Image.BILINEAR), dtype=np.float32)
