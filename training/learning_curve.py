"""How ``cxr-triage`` grows with labelled films: the recipe fitted on a share of the training
patients' labels, scored on its own validation patients (issue 18).

Why: the recipe stays about 0.04 below the pneumonia-vs-No-Finding target whatever its
settings (test-time augmentation, blends, learning rates: ``models/cxr-triage/README.md``).
What decides the next step is whether more labelled films would close that gap, and how many.

How:
* one contrastive pretraining on *all* training films (it uses no labels, so every point
  shares it and only the labels vary);
* per share and draw, one member (seed = draw) fitted on the labels of a random share of the
  training *patients*, then the pixel branch on the same films, as the recipe does;
* every point is scored on the recipe's own validation patients, which no point trains on;
* a straight line in log2(labelled films) gives the gain per doubling, its standard error, and
  the films a target needs at that slope and at the steepest slope inside its 95% range.

It is an extrapolation from a few points on one validation split: an order of magnitude.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from training import metrics
from training.cxr_triage import (
    DATA,
    SPEC,
    CxrSet,
    TriageConfig,
    device_of,
    fit,
    load_labelled_folder,
    patient_split,
    pretrained_start,
    torch_logits,
)

SCORES = ("abnormal", "pneumonia_vs_no_finding")


@dataclass
class CurveConfig:
    shares: list[float] = field(default_factory=lambda: [0.25, 0.5, 1.0])
    draws: int = 2  # random patient subsets per share; the draw is also the member's seed
    targets: dict[str, float] = field(  # issue 18's validation AUC targets
        default_factory=lambda: {"abnormal": 0.74, "pneumonia_vs_no_finding": 0.78})
    triage: TriageConfig = field(default_factory=TriageConfig)

    def __post_init__(self) -> None:
        bad = [s for s in self.shares if not 0 < s <= 1]
        if bad:
            raise ValueError(f"shares must lie in (0, 1], got {bad}: e.g. 0.25,0.5,1")
        if self.draws < 1:
            raise ValueError(f"draws must be at least 1, got {self.draws}")


@dataclass
class CurvePoint:
    share: float
    draw: int
    films: int
    pneumonia_films: int
    cnn: dict[str, float]  # the member alone
    blended: dict[str, float]  # with the pixel branch, as served
    seconds: float


def patients_share(train: CxrSet, share: float, draw: int) -> np.ndarray:
    """Indices of the films of a random ``share`` of ``train``'s patients (all for share 1)."""
    pids = np.asarray(sorted({r["patient_id"] for r in train.rows}))
    if share < 1:
        pids = np.random.default_rng(draw).choice(pids, max(1, round(len(pids) * share)),
                                                  replace=False)
    keep = set(pids.tolist())
    return np.asarray([i for i, r in enumerate(train.rows) if r["patient_id"] in keep])


def validation_scores(logits: np.ndarray, val: CxrSet) -> dict[str, float]:
    """Abnormal vs No Finding, and pneumonia vs No Finding (other findings left out)."""
    abnormal, pneumonia = val.targets[:, 0] == 1, val.targets[:, 1] == 1
    pair = ~abnormal | pneumonia
    return {
        "abnormal": round(metrics.auc(abnormal, logits[:, 0]), 4),
        "pneumonia_vs_no_finding": round(metrics.auc(pneumonia[pair], logits[pair, 1]), 4),
    }


def log_fit(films: Sequence[float], auc: Sequence[float], target: float) -> dict[str, Any]:
    """AUC = a + b·log2(films) by least squares; the films ``target`` needs at b and at the
    steepest slope inside b's 95% range (Student t)."""
    from scipy import stats

    x, y = np.log2(np.asarray(films, float)), np.asarray(auc, float)
    b, a = np.polyfit(x, y, 1)
    dof = len(x) - 2
    spread = float(((x - x.mean()) ** 2).sum())
    se = math.sqrt(float(((y - (a + b * x)) ** 2).sum()) / dof / spread) if dof > 0 and spread \
        else float("nan")
    steep = b + stats.t.ppf(0.975, dof) * se if dof > 0 else float("nan")

    def films_for(slope: float) -> float | None:
        if not slope > 0:
            return None  # flat or falling: no amount of films reaches the target on this line
        return round(2 ** (x.mean() + (target - y.mean()) / slope))

    return {
        "per_doubling": round(float(b), 4),
        "standard_error": round(se, 4) if math.isfinite(se) else None,  # None: two points
        "at_most_films_now": round(float(a + b * x.max()), 4),
        "target": target,
        "films_for_target": films_for(b),
        "films_for_target_at_steepest_slope": films_for(steep),
        "points": len(x),
    }


def learning_curve(data_dir: Path = DATA, cfg: CurveConfig | None = None,
                   spec: dict[str, Any] = SPEC, limit: int = 0,
                   progress: bool = True) -> dict[str, Any]:
    """Run the curve; returns what ``write`` saves (points, fits, pretraining, settings)."""
    from tqdm import tqdm

    cfg = cfg or CurveConfig()
    start = time.monotonic()
    data = load_labelled_folder(Path(data_dir), spec, limit)
    tr, va = patient_split(data, cfg.triage.val_fraction, cfg.triage.split_seed)
    train, val = data.subset(tr), data.subset(va)
    pretrained = None
    if cfg.triage.pretrain_epochs > 0:
        pretrained = pretrained_start(train, cfg.triage, spec, device_of(), progress)
    points: list[CurvePoint] = []
    plan = [(s, d) for s in sorted(cfg.shares) for d in range(cfg.draws)]
    for share, draw in tqdm(plan, desc="learning curve", unit="fit", disable=not progress):
        t0 = time.monotonic()
        sub = train.subset(patients_share(train, share, draw))
        model = fit(sub, replace(cfg.triage, seeds=[draw]), False, spec, pretrained).model
        blended = validation_scores(torch_logits(model, val.images), val)
        model.pixels = None
        points.append(CurvePoint(share, draw, len(sub), int(sub.targets[:, 1].sum()),
                                 validation_scores(torch_logits(model, val.images), val),
                                 blended, round(time.monotonic() - t0, 1)))
    films = [p.films for p in points]
    return {
        "what": "cxr-triage recipe fitted on a share of the training patients' labels "
        "(training.learning_curve); AUC on the recipe's validation patients",
        "validation": {"films": len(val), "patients": len(set(val.column("patient_id"))),
                       "pneumonia": int(val.targets[:, 1].sum()),
                       "no_finding": int((val.targets[:, 0] == 0).sum())},
        "points": [asdict(p) for p in points],
        "fit_log2_films": {
            kind: {score: log_fit(films, [getattr(p, kind)[score] for p in points],
                                  cfg.targets[score])
                   for score in SCORES}
            for kind in ("blended", "cnn")
        },
        "pretraining": pretrained[1] if pretrained else None,
        "config": {"shares": cfg.shares, "draws": cfg.draws, "data": str(data_dir),
                   "triage": cfg.triage.as_dict()},
        "seconds": round(time.monotonic() - start, 1),
    }


def write(result: dict[str, Any], out: Path) -> list[Path]:
    """``out/learning-curve.json`` and ``out/learning-curve.png``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "learning-curve.json"
    json_path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n",
                         encoding="utf-8")
    return [json_path, plot(result, out / "learning-curve.png")]


def plot(result: dict[str, Any], path: Path) -> Path:
    """AUC against labelled films (log scale), both scores, the member alone and blended,
    with each fitted line and the target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    films = np.asarray([p["films"] for p in result["points"]], float)
    grid = np.geomspace(films.min(), max(films.max() * 8, 8000), 50)
    for ax, score in zip(axes, SCORES, strict=True):
        for kind, colour, label in (("blended", "C0", "with pixel branch (as served)"),
                                    ("cnn", "C1", "CNN alone")):
            auc = [p[kind][score] for p in result["points"]]
            fitted = result["fit_log2_films"][kind][score]
            ax.scatter(films, auc, color=colour, label=label)
            ref = fitted["at_most_films_now"]
            ax.plot(grid, ref + fitted["per_doubling"] * np.log2(grid / films.max()),
                    color=colour, ls="--", lw=1)
        target = result["fit_log2_films"]["blended"][score]["target"]
        ax.axhline(target, color="k", lw=0.8)
        ax.text(grid[-1], target + 0.003, f"target {target}", fontsize=8, ha="right")
        ax.set_xscale("log")
        ax.set_xlabel("labelled training films")
        ax.set_title(score.replace("_", " "))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"validation AUC ({result['validation']['films']} films)")
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle("cxr-triage: AUC against labelled films (dashed: straight line in log2 films)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
