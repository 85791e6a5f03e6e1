"""Heat maps from the class activation map the model returns with its scores.

The ``cxr-triage`` graph returns, from the same forward pass as its logits, the
classifier's weights applied to the last feature map (one map per output, on the model's
feature grid, e.g. 7x7 for a 224-px input). The logit is that map's mean plus a bias, so
the map shows where the score came from, at no extra cost. (The occlusion map this replaced
ran the model once per patch: 120 of 220 ms per study.)
"""

from __future__ import annotations

import numpy as np


def normalise(heat: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] for display, keeping only evidence *for* the finding."""
    pos = np.clip(np.asarray(heat, dtype=np.float32), 0, None)
    top = float(pos.max())
    return pos / top if top > 0 else pos


def resize_map(heat: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2-D map to ``shape`` (rows, columns) with Pillow."""
    from PIL import Image

    im = Image.fromarray(np.asarray(heat, dtype=np.float32), mode="F")
    return np.asarray(im.resize((shape[1], shape[0]), Image.BILINEAR), dtype=np.float32)


def heat_of(prediction, label: str | None = None) -> np.ndarray | None:
    """The activation map of ``label`` (default: the prediction's own label) as [h, w]."""
    cams = getattr(prediction, "cams", None) or {}
    if not cams:
        return None
    key = label if label in cams else prediction.label
    if key not in cams:
        key = max(prediction.probabilities, key=prediction.probabilities.get)
    return np.asarray(cams[key], dtype=np.float32)
