"""The evaluation figures every model writes: ROC, precision-recall, confusion, calibration.

One ``write_plots`` for every trainer and for ``haidang evaluate``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_plots(
    labels: np.ndarray,
    prob: np.ndarray,
    threshold: float,
    out_dir: Path,
    prefix: str,
    title: str,
    label_names: list[str],
) -> list[Path]:
    """ROC, PR, confusion matrix and calibration PNGs; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import (
        average_precision_score,
        precision_recall_curve,
        roc_auc_score,
        roc_curve,
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    pred = (prob >= threshold).astype(int)
    labels = labels.astype(int)

    def save(fig, name):
        path = out_dir / f"{prefix}-{name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)

    fpr, tpr, _ = roc_curve(labels, prob)
    sens = float((pred[labels == 1] == 1).mean())
    spec = float((pred[labels == 0] == 0).mean())
    fig, ax = plt.subplots(figsize=(4.8, 4.6))
    ax.plot(fpr, tpr, lw=2, label=f"AUC = {roc_auc_score(labels, prob):.3f}")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="chance")
    ax.plot([1 - spec], [sens], "o", color="crimson", label=f"threshold {threshold:.3f}")
    ax.set(
        xlabel="1 - specificity (false positive rate)",
        ylabel="sensitivity (true positive rate)",
        title=f"ROC — {title}",
        xlim=(0, 1),
        ylim=(0, 1.01),
    )
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    save(fig, "roc")

    prec, rec, _ = precision_recall_curve(labels, prob)
    fig, ax = plt.subplots(figsize=(4.8, 4.6))
    ax.plot(rec, prec, lw=2, label=f"AP = {average_precision_score(labels, prob):.3f}")
    ax.axhline(labels.mean(), ls="--", color="grey", lw=1, label=f"prevalence {labels.mean():.2f}")
    ppv = float(labels[pred == 1].mean()) if pred.any() else float("nan")
    ax.plot([sens], [ppv], "o", color="crimson", label=f"threshold {threshold:.3f}")
    ax.set(
        xlabel=f"recall (sensitivity for {label_names[1]})",
        ylabel="precision (PPV)",
        title=f"Precision–recall — {title}",
        xlim=(0, 1),
        ylim=(0, 1.01),
    )
    ax.legend(loc="lower left")
    ax.grid(alpha=0.3)
    save(fig, "pr")

    cm = np.array([[((labels == t) & (pred == p)).sum() for p in (0, 1)] for t in (0, 1)])
    fig, ax = plt.subplots(figsize=(4.4, 4.0))
    ax.imshow(cm, cmap="Blues")
    for t in (0, 1):
        for p in (0, 1):
            share = cm[t, p] / max(cm[t].sum(), 1)
            ax.text(
                p,
                t,
                f"{cm[t, p]}\n({share:.0%} of row)",
                ha="center",
                va="center",
                color="white" if cm[t, p] > cm.max() / 2 else "black",
                fontsize=11,
            )
    ax.set_xticks([0, 1], [f"pred. {n}" for n in label_names])
    ax.set_yticks([0, 1], [f"true {n}" for n in label_names])
    ax.set_title(f"Confusion at threshold {threshold:.3f}\n{title}")
    save(fig, "confusion")

    n_bins = 10 if len(labels) >= 200 else 5
    frac, mean_pred = calibration_curve(labels, prob, n_bins=n_bins, strategy="quantile")
    fig, ax = plt.subplots(figsize=(4.8, 4.6))
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfectly calibrated")
    ax.plot(mean_pred, frac, "o-", lw=2, label="model (quantile bins)")
    ax.set(
        xlabel=f"predicted probability of {label_names[1]}",
        ylabel=f"observed fraction {label_names[1]}",
        title=f"Calibration — {title}",
        xlim=(0, 1),
        ylim=(0, 1.01),
    )
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    save(fig, "calibration")
    return paths
