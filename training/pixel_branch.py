"""The pixel branch of ``cxr-triage``: a linear model over 16-px block means of the image,
blended with the CNN inside the one exported graph.

Why it exists: on the same patient split, a logistic regression on the block means of the
model's own input (regularisation picked by patient-grouped cross-validation on the training
films) carries information the small from-scratch CNN misses: added to the CNN's logit it
raised validation AUC within each source collection and within PA and AP films (issue 18;
figures in ``models/cxr-triage/README.md``). Its weights favour brighter central and lower
lung fields, i.e. opacity.

Why it is built this way:

* It runs in torch (``AvgPool2d`` + a weighted sum), so it is exported in the same ONNX graph,
  costs nothing at serving time and needs no scikit-learn there.
* Each grid cell's contribution ``w·(x - centre)`` is kept as a map: summed over the grid it
  is the branch's logit minus its intercept. Added to the CNN's class activation map (upsampled
  to the same grid, mean preserved), the served heat map still explains exactly the served
  logit: ``logits = mean(cam) + bias``.
* The blend is fixed, not tuned on validation: each branch's logit is standardised by its mean
  and standard deviation over the training films and the two are added with equal weight.
* ``pneumonia`` is fitted on pneumonia vs No Finding films only (the issue's target), and
  ``abnormal`` on all films.
* It reads only the inner cells (``MARGIN`` cells left out at each edge, weight 0 there). A
  first fit over every cell put its heaviest weights on the outer ring: dark film borders,
  collimation and PORTABLE markers, which mark the sicker patients' portable films rather
  than disease, and its heat map lit the film's edge.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

CELL = 16  # px per grid cell: a 224-px input gives a 14x14 grid, twice the CNN's 7x7
C_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)  # inverse L2 strength, picked by grouped CV on train
MARGIN = 1  # grid cells left out at each edge: the film's border, markers and collimation


class PixelBranch(nn.Module):
    """``image`` [N,1,H,W] -> per-cell contributions [N,K,H/16,W/16] (sum = logit - intercept).

    Buffers (all fitted on training films): ``centre`` [g*g] block means' training mean;
    ``weight`` [K, g*g] and ``intercept`` [K], the logistic regression as
    ``w·(block means - centre) + intercept``; and
    the blend: ``pixel_centre``/``pixel_scale`` and ``cnn_centre``/``cnn_scale`` [K], each
    branch's logit mean and standard deviation over the training films.
    """

    def __init__(self, grid: int, outputs: int):
        super().__init__()
        self.grid = grid
        self.pool = nn.AvgPool2d(CELL)
        for name, shape in (("centre", (grid * grid,)), ("weight", (outputs, grid * grid)),
                            ("intercept", (outputs,)), ("pixel_centre", (outputs,)),
                            ("pixel_scale", (outputs,)), ("cnn_centre", (outputs,)),
                            ("cnn_scale", (outputs,))):
            self.register_buffer(name, torch.ones(shape) if "scale" in name else torch.zeros(shape))

    def cells(self, image: torch.Tensor) -> torch.Tensor:
        """Block means [N, g*g]: the branch's features."""
        return self.pool(image).flatten(1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.cells(image) - self.centre
        contrib = x[:, None, :] * self.weight[None]
        return contrib.unflatten(-1, (self.grid, self.grid))

    def blend(self, cnn_cam: torch.Tensor, cnn_bias: torch.Tensor,
              image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CNN map [N,K,h,w] + bias [K] -> blended (logits [N,K], cam [N,K,g,g]).

        ``logits = (cnn - cnn_centre)/cnn_scale + (pixel - pixel_centre)/pixel_scale``, and
        ``cam`` is laid out so that ``logits = mean(cam) + bias`` exactly.
        """
        contrib = self(image)
        cells = self.grid * self.grid
        up = nn.functional.interpolate(cnn_cam, size=contrib.shape[-2:], mode="nearest")
        cam = (up / self.cnn_scale[:, None, None]
               + contrib * cells / self.pixel_scale[:, None, None])
        return cam.mean(dim=(2, 3)) + self.bias(cnn_bias), cam

    def bias(self, cnn_bias: torch.Tensor) -> torch.Tensor:
        return ((cnn_bias - self.cnn_centre) / self.cnn_scale
                + (self.intercept - self.pixel_centre) / self.pixel_scale)


def grid_for(size: int, cnn_grid: int) -> int:
    """The branch's grid for a ``size``-px input; it must be a multiple of the CNN's grid so
    that nearest upsampling keeps the CNN map's mean."""
    grid = size // CELL
    if size % CELL or grid % cnn_grid:
        raise ValueError(f"pixel branch: a {size}-px input gives a {grid}-cell grid that the "
                         f"CNN's {cnn_grid}-cell map does not divide; use a multiple of 32 px")
    return grid


def fit_pixel_branch(images: np.ndarray, targets: np.ndarray, pair: list[np.ndarray | None],
                     patients: np.ndarray, cnn_logits: np.ndarray,
                     cnn_grid: int) -> tuple[PixelBranch, dict[str, Any]]:
    """Fit one logistic regression per output on the training films' block means.

    ``images`` are normalised model inputs [N,1,H,W]; ``targets`` [N,K] 0/1; ``pair[k]`` a
    mask of the films output k is fitted on (None: all); ``cnn_logits`` [N,K] the CNN's
    logits on the same films, for the blend's standardisation. The inverse regularisation C
    is picked per output by 5-fold cross-validation grouped by patient, on these films only.
    """
    from sklearn.linear_model import LogisticRegression

    size = images.shape[-1]
    branch = PixelBranch(grid_for(size, cnn_grid), targets.shape[1])
    with torch.no_grad():
        feats = branch.cells(torch.from_numpy(np.ascontiguousarray(images, np.float32))).numpy()
    inner = inner_cells(branch.grid)
    centre, scale = feats.mean(0), feats.std(0) + 1e-6
    z = ((feats - centre) / scale)[:, inner]
    weights, intercepts, report = [], [], {}
    for k in range(targets.shape[1]):
        rows = np.ones(len(z), bool) if pair[k] is None else pair[k]
        y = targets[rows, k]
        C, cv_auc = pick_c(z[rows], y, patients[rows])
        lr = LogisticRegression(C=C, max_iter=5000).fit(z[rows], y)
        w = np.zeros(len(centre))
        w[inner] = lr.coef_[0] / scale[inner]
        weights.append(w)
        intercepts.append(float(lr.intercept_[0]))  # the logit is w·(x - centre) + intercept
        report[k] = {"C": C, "cv_auc": None if cv_auc is None else round(cv_auc, 4),
                     "films": int(rows.sum()), "positive": int(y.sum())}
    branch.centre.copy_(torch.from_numpy(centre.astype(np.float32)))
    branch.weight.copy_(torch.from_numpy(np.asarray(weights, np.float32)))
    branch.intercept.copy_(torch.tensor(intercepts, dtype=torch.float32))
    pixel_logits = (feats - centre) @ np.asarray(weights).T + np.asarray(intercepts)
    for name, values in (("pixel", pixel_logits), ("cnn", cnn_logits)):
        getattr(branch, f"{name}_centre").copy_(torch.from_numpy(values.mean(0).astype(np.float32)))
        getattr(branch, f"{name}_scale").copy_(
            torch.from_numpy((values.std(0) + 1e-6).astype(np.float32)))
    return branch.eval(), report


def inner_cells(grid: int) -> np.ndarray:
    """Flat indices of the grid cells the branch reads: all but ``MARGIN`` at each edge
    (all cells on a grid too small to lose them, as in tests' tiny inputs)."""
    keep = np.zeros((grid, grid), bool)
    m = MARGIN if grid > 2 * MARGIN + 1 else 0
    keep[m : grid - m, m : grid - m] = True
    return np.flatnonzero(keep.ravel())


def pick_c(z: np.ndarray, y: np.ndarray, patients: np.ndarray) -> tuple[float, float | None]:
    """The C with the best out-of-fold AUC (folds grouped by patient); the middle of the grid
    when there are too few patients or positives to cross-validate."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold

    folds = min(5, len(set(patients)))
    if folds < 2 or y.sum() < folds or (1 - y).sum() < folds:
        return C_GRID[len(C_GRID) // 2], None
    best: tuple[float, float] | None = None
    for C in C_GRID:
        oof = np.zeros(len(y))
        for a, b in GroupKFold(folds).split(z, y, groups=patients):
            if len(set(y[a])) < 2:
                oof[b] = 0.0
                continue
            oof[b] = LogisticRegression(C=C, max_iter=5000).fit(z[a], y[a]).decision_function(z[b])
        score = float(roc_auc_score(y, oof))
        if best is None or score > best[1]:
            best = (C, score)
    return best
