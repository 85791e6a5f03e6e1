"""Metrics a card and ``haidang evaluate`` report, computed one way for both.

Why each:

* ``auc`` with a patient-level bootstrap interval: films of one patient are not independent,
  so patients (not images) are resampled.
* ``ece``: expected calibration error, 10 equal-width bins, |observed - predicted| weighted
  by the bin's share of images. A probability shown to a clinician must mean what it says.
* ``auc_pa`` / ``auc_ap``: AP (portable, bedside) films are more often the sick; a model can
  learn the view instead of the disease, so the AUC within each view is reported.
* ``sensitivity_threshold``: the triage operating point, the highest threshold that still
  finds the required share of positives on validation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _round(x: float, digits: int = 4) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), digits)


def auc(labels: np.ndarray, prob: np.ndarray) -> float:
    """ROC AUC, NaN when only one class is present."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels).astype(int)
    if len(np.unique(labels)) < 2:
        return float("nan")
    return float(roc_auc_score(labels, prob))


def ece(labels: np.ndarray, prob: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error with equal-width bins."""
    labels = np.asarray(labels, dtype=float)
    prob = np.asarray(prob, dtype=float)
    if not len(labels):
        return float("nan")
    which = np.minimum((prob * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.mean() * abs(labels[inside].mean() - prob[inside].mean())
    return float(total)


def sensitivity_threshold(labels: np.ndarray, prob: np.ndarray, sensitivity: float) -> float:
    """The highest threshold with sensitivity >= ``sensitivity``, midway to the next score."""
    labels = np.asarray(labels).astype(int)
    pos = np.sort(np.asarray(prob)[labels == 1])
    if not len(pos):
        raise ValueError("no positive cases: cannot choose a sensitivity operating point")
    k = int(np.floor(len(pos) * (1 - sensitivity)))  # this many positives may fall below
    cut = float(pos[k])
    below = np.asarray(prob)[np.asarray(prob) < cut]
    if below.size:
        cut = (cut + float(below.max())) / 2
    return float(min(max(cut, 1e-6), 1 - 1e-6))


def at_threshold(labels: np.ndarray, prob: np.ndarray, threshold: float) -> dict[str, Any]:
    labels = np.asarray(labels).astype(int)
    pred = np.asarray(prob) >= threshold
    tp = int((pred & (labels == 1)).sum())
    tn = int((~pred & (labels == 0)).sum())
    fp = int((pred & (labels == 0)).sum())
    fn = int((~pred & (labels == 1)).sum())
    return {
        "accuracy": _round((tp + tn) / len(labels)) if len(labels) else None,
        "sensitivity": _round(tp / (tp + fn)) if tp + fn else None,
        "specificity": _round(tn / (tn + fp)) if tn + fp else None,
        "ppv": _round(tp / (tp + fp)) if tp + fp else None,
        "flagged_share": _round(pred.mean()) if len(labels) else None,
        "threshold": _round(threshold, 6),
    }


def output_metrics(
    labels: np.ndarray, prob: np.ndarray, threshold: float, view: Sequence[str] | None = None
) -> dict[str, Any]:
    """What ``haidang evaluate`` prints per output: auc, auc_pa, auc_ap, accuracy,
    sensitivity, specificity, threshold, ece, n (plus n_positive, ppv, flagged_share)."""
    labels = np.asarray(labels).astype(int)
    prob = np.asarray(prob, dtype=float)
    out: dict[str, Any] = {"auc": _round(auc(labels, prob))}
    if view is not None:
        view = np.asarray([str(v).upper() for v in view])
        for v in ("PA", "AP"):
            inside = view == v
            out[f"auc_{v.lower()}"] = _round(auc(labels[inside], prob[inside]))
    out.update(at_threshold(labels, prob, threshold))
    out["ece"] = _round(ece(labels, prob))
    out["n"] = int(len(labels))
    out["n_positive"] = int(labels.sum())
    return out


def bootstrap_auc(
    labels: np.ndarray,
    prob: np.ndarray,
    groups: Sequence[str],
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """AUC with a 95% percentile interval from resampling ``groups`` (patients)."""
    labels = np.asarray(labels).astype(int)
    prob = np.asarray(prob, dtype=float)
    point = auc(labels, prob)
    result: dict[str, Any] = {"auc": _round(point), "n": int(len(labels)),
                              "n_positive": int(labels.sum())}
    if not np.isfinite(point):
        return result
    groups = np.asarray(groups)
    ids, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(len(ids))]
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(resamples):
        pick = np.concatenate([members[g] for g in rng.integers(0, len(ids), len(ids))])
        a = auc(labels[pick], prob[pick])
        if np.isfinite(a):
            stats.append(a)
    if stats:
        lo, hi = np.percentile(stats, [2.5, 97.5])
        result["ci95"] = [_round(lo), _round(hi)]
        result["patients"] = int(len(ids))
    return result
