"""Train the paediatric chest X-ray pneumonia model (PneumoniaMNIST, or a hospital's DICOM).

Retired from routing (issue 18): it was trained on children at 28 px and flagged adult films;
``cxr-triage`` (``training.cxr_triage``) serves chest radiographs. Kept so the published
version can be reproduced. ``train_and_register`` is what ``haidang train cxr-pneumonia``
runs.

Why these choices (issue 3):

* Network: MONAI ``ResNet`` (basic blocks, widths 32-64-128-256) with a 3x3 stride-1 stem and
  no max-pool, so a 28x28 radiograph keeps full resolution in the first stage (the usual
  ImageNet stem would throw 3/4 of the pixels away). ~1.2 M parameters: trains on CPU.
* Generalisation over validation score: the held-back test split has another prevalence and
  acquisition mix, so training uses realistic MONAI augmentations (small affine, contrast /
  gamma / intensity jitter, blur, noise), label smoothing, AdamW weight decay, an exponential
  moving average of the weights, and an ensemble of a few seeds exported as ONE ONNX graph.
* Class imbalance (74 % pneumonia): ``pos_weight = n_normal / n_pneumonia`` in the loss.
* Model selection: per seed, the epoch with the best validation AUC (EMA weights).
* The decision threshold is chosen on validation by Youden's J (max sensitivity +
  specificity - 1), which does not depend on prevalence the way max-accuracy does.
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
import math
import platform
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from serving.imaging.preprocess import DEFAULT_SPEC, _spec, eval_transforms
from serving.registry import CARD_FILE, ONNX_FILE
from training.data import (
    LABEL_NAMES,
    AugmentedImages,
    LabelledImages,
    augmentation,
    load,
    shuffled_loader,
)
from training.export import PARITY_TOLERANCE, export_onnx, parity_check, sha256_of
from training.networks import greyscale_resnet
from training.schedule import learning_rate, schedule_progress

log = logging.getLogger(__name__)

MODEL_NAME = "cxr-pneumonia"


@dataclass
class TrainConfig:
    epochs: int = 12
    seeds: list[int] = field(default_factory=lambda: [0])  # more seeds: an ensemble in one graph
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 5e-4
    label_smoothing: float = 0.05
    ema_decay: float = 0.99
    widths: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    layers: list[int] = field(default_factory=lambda: [1, 1, 1, 1])
    time_budget_s: float = 13 * 60.0  # all seeds together; stops early, keeps the best epoch
    threads: int = 2
    workers: int = 0  # a worker process for augmentation measured slower on 2 shared cores
    augment: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_network(cfg: TrainConfig) -> nn.Module:
    return greyscale_resnet(cfg.layers, cfg.widths, 1, small_images=True)


class TriageModel(nn.Module):
    """What is exported: ``image`` [N,1,H,W] -> ``probability`` of pneumonia [N,1].

    The ensemble members' logits are averaged, then passed through a sigmoid.
    """

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits = torch.stack([m(image) for m in self.members], dim=0).mean(dim=0)
        return torch.sigmoid(logits)


def train_transforms(spec: Mapping[str, Any]):
    """Training augmentation (MONAI, random) followed by the deterministic eval chain."""
    return augmentation(spec, rotate=0.17, scale=0.1, translate=2.5, shear=0.05,
                        padding="border", gamma=(0.7, 1.4), noise=(0.3, 0.03), smooth=True)


def normalised(data: LabelledImages, spec: Mapping[str, Any]) -> torch.Tensor:
    """The eval chain over a whole set at model size (crop/resize are identities here)."""
    s = _spec(spec)
    return (torch.from_numpy(data.images) - float(s["mean"])) / float(s["std"])


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch: int = 512) -> np.ndarray:
    model.eval()
    return torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)]).reshape(-1).numpy()


@dataclass
class TrainResult:
    model: TriageModel
    val_probability: np.ndarray
    members: list[dict[str, Any]]
    seconds: float


def train(
    train_data: LabelledImages,
    val_data: LabelledImages,
    spec: Mapping[str, Any],
    cfg: TrainConfig,
    progress: bool = True,
) -> TrainResult:
    from monai.data import set_track_meta
    from monai.utils import set_determinism
    from sklearn.metrics import roc_auc_score
    from tqdm import tqdm

    set_track_meta(False)  # plain tensors: faster augmentation, nothing needs the metadata
    torch.set_num_threads(cfg.threads)
    n_pos = int(train_data.labels.sum())
    n_neg = len(train_data) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("training data needs both classes (normal and pneumonia)")
    if len(set(val_data.labels.tolist())) < 2:
        raise ValueError("validation data needs both classes to compute AUC")
    pos_weight = torch.tensor([n_neg / n_pos])
    x_val = normalised(val_data, spec)
    transform = train_transforms(spec) if cfg.augment else eval_transforms(spec)

    start = time.monotonic()
    members, reports = [], []
    per_seed_budget = cfg.time_budget_s / max(len(cfg.seeds), 1)
    for seed in cfg.seeds:
        seed_start = time.monotonic()
        set_determinism(seed=seed)
        if hasattr(transform, "set_random_state"):
            transform.set_random_state(seed=seed)
        loader = shuffled_loader(
            AugmentedImages(train_data.images, train_data.labels, transform),
            cfg.batch_size, seed, drop_last=len(train_data) > cfg.batch_size, workers=cfg.workers,
        )
        net = build_network(cfg)
        ema = torch.optim.swa_utils.AveragedModel(
            net,
            multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.ema_decay),
            use_buffers=True,
        )
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps, step = cfg.epochs * len(loader), 0
        best_auc, best_epoch, best_state = -1.0, -1, None
        bar = tqdm(range(cfg.epochs), desc=f"seed {seed}", unit="epoch", disable=not progress)
        for epoch in bar:
            net.train()
            total, count = 0.0, 0
            for xb, yb in loader:
                done = schedule_progress(
                    step, steps, time.monotonic() - seed_start, per_seed_budget
                )
                if done >= 1.0:
                    break  # out of time: the learning rate has already been annealed
                for group in opt.param_groups:
                    group["lr"] = learning_rate(cfg.lr, done)
                target = yb[:, None] * (1 - cfg.label_smoothing) + cfg.label_smoothing / 2
                loss = nn.functional.binary_cross_entropy_with_logits(
                    net(xb), target, pos_weight=pos_weight
                )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                ema.update_parameters(net)
                total += float(loss.detach()) * len(yb)
                count += len(yb)
            auc = float(roc_auc_score(val_data.labels, predict_logits(ema.module, x_val)))
            if auc > best_auc:
                best_auc, best_epoch = auc, epoch + 1
                best_state = copy.deepcopy(ema.module.state_dict())
            bar.set_postfix(
                loss=f"{total / max(count, 1):.4f}", val_auc=f"{auc:.4f}", best=f"{best_auc:.4f}"
            )
            if step < (epoch + 1) * len(loader) and epoch + 1 < cfg.epochs:
                log.warning(
                    "seed %d: time budget reached in epoch %d of %d; the schedule was compressed "
                    "to fit, keeping the best epoch",
                    seed,
                    epoch + 1,
                    cfg.epochs,
                )
                break
        bar.close()
        best = build_network(cfg)
        best.load_state_dict(best_state)
        best.eval()
        members.append(best)
        reports.append(
            {
                "seed": seed,
                "best_epoch": best_epoch,
                "epochs_run": round(step / len(loader), 2),
                "time_limited": step < steps,
                "val_auc": round(best_auc, 4),
                "seconds": round(time.monotonic() - seed_start, 1),
            }
        )
        log.info("seed %d: best val AUC %.4f at epoch %d", seed, best_auc, best_epoch)

    model = TriageModel(members).eval()
    with torch.no_grad():
        val_prob = model(x_val).reshape(-1).numpy()
    return TrainResult(model, val_prob, reports, time.monotonic() - start)


def youden_threshold(labels: np.ndarray, prob: np.ndarray) -> float:
    """Threshold maximising sensitivity + specificity - 1 (midpoint to the next score)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(labels, prob)
    j = tpr - fpr
    i = int(np.argmax(j))
    t = float(thr[i])
    lower = prob[prob < t]
    if math.isfinite(t) and lower.size:
        t = (t + float(lower.max())) / 2  # midway between the two scores the cut separates
    return float(min(max(t, 1e-6), 1 - 1e-6))


def binary_metrics(labels: np.ndarray, prob: np.ndarray, threshold: float) -> dict[str, float]:
    """AUC, accuracy, sensitivity, specificity and friends at ``threshold`` (positive = 1)."""
    from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

    labels = np.asarray(labels).astype(int)
    pred = (prob >= threshold).astype(int)
    tp = int(((pred == 1) & (labels == 1)).sum())
    tn = int(((pred == 0) & (labels == 0)).sum())
    fp = int(((pred == 1) & (labels == 0)).sum())
    fn = int(((pred == 0) & (labels == 1)).sum())
    both = len(set(labels.tolist())) == 2

    def ratio(a: int, b: int) -> float:
        return round(a / b, 4) if b else float("nan")

    return {
        "n": int(len(labels)),
        "n_positive": int(labels.sum()),
        "auc": round(float(roc_auc_score(labels, prob)), 4) if both else float("nan"),
        "average_precision": round(float(average_precision_score(labels, prob)), 4)
        if both
        else float("nan"),
        "accuracy": ratio(tp + tn, len(labels)),
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "ppv": ratio(tp, tp + fp),
        "npv": ratio(tn, tn + fn),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "brier": round(float(brier_score_loss(labels, prob)), 4),
        "threshold": round(float(threshold), 6),
        "tp": tp,
        "tn": tn,
        "fp": fp,
        "fn": fn,
    }


# --- train -> export -> parity -> threshold -> plots -> card (this model's own steps) ----



PROVENANCE_MEDMNIST = {
    "dataset": "PneumoniaMNIST (MedMNIST v2), 28x28 paediatric chest X-rays, train and val splits",
    "licence": "CC BY 4.0",
    "citations": [
        "Yang J, Shi R, Wei D, et al. MedMNIST v2 - A large-scale lightweight benchmark for 2D and "
        "3D biomedical image classification. Scientific Data 10, 41 (2023). "
        "doi:10.1038/s41597-022-01721-8",
        "Kermany DS, Goldbaum M, Cai W, et al. Identifying medical diagnoses and treatable "
        "diseases by image-based deep learning. Cell 172(5):1122-1131 (2018). "
        "doi:10.1016/j.cell.2018.02.010",
    ],
    "source": "Guangzhou Women and Children's Medical Center paediatric CXRs (ages 1-5), "
    "via Kermany et al.; centre-cropped and resized to 28x28 by MedMNIST",
    "test_split": "the official PneumoniaMNIST test split was not used (held back for "
    "independent evaluation)",
}


def _split_dicom(data: LabelledImages, seed: int, val_fraction: float = 0.15):
    """Stratified split when the labels CSV has no split column."""
    rng = np.random.default_rng(seed)
    val_idx = []
    for c in (0, 1):
        idx = np.flatnonzero(data.labels == c)
        rng.shuffle(idx)
        val_idx.extend(idx[: max(1, round(len(idx) * val_fraction))])
    val_mask = np.zeros(len(data), bool)
    val_mask[val_idx] = True
    return data.subset(np.flatnonzero(~val_mask)), data.subset(np.flatnonzero(val_mask))


def onnx_probabilities(mv, data: LabelledImages, batch: int = 256) -> np.ndarray:
    """Positive-class probability per image, from ``model.onnx`` via onnxruntime."""
    import onnxruntime as ort

    s = _spec(mv.input_spec)
    x = ((data.images - np.float32(s["mean"])) / np.float32(s["std"])).astype(np.float32)
    sess = ort.InferenceSession(str(mv.onnx_path), providers=["CPUExecutionProvider"])
    in_name = sess.get_inputs()[0].name
    out = [sess.run(None, {in_name: x[i : i + batch]})[0] for i in range(0, len(x), batch)]
    return np.concatenate(out).reshape(-1).astype(np.float64)


def load_train_val(data: Path, labels_csv: Path | None, spec: dict[str, Any], seed: int):
    if Path(data).is_dir():
        import csv

        with open(labels_csv, newline="", encoding="utf-8-sig") as fh:
            has_split = "split" in (csv.DictReader(fh).fieldnames or [])
        if has_split:
            return (load(data, "train", spec, labels_csv), load(data, "val", spec, labels_csv))
        return _split_dicom(load(data, "all", spec, labels_csv), seed)
    return load(data, "train", spec), load(data, "val", spec)


def train_and_register(
    data: Path,
    out: Path,
    cfg: TrainConfig,
    labels_csv: Path | None = None,
    size: int = 28,
    command: str | None = None,
    progress: bool = True,
    plots: bool = True,
) -> dict[str, Any]:
    from training.plots import write_plots

    out = Path(out)
    if (out / ONNX_FILE).exists():
        raise FileExistsError(f"{out} already holds a model: choose a new version folder")
    spec = _spec({**DEFAULT_SPEC, "size": [size, size]})
    train_data, val_data = load_train_val(Path(data), labels_csv, spec, cfg.seeds[0])
    log.info(
        "training on %d images (%d pneumonia), validating on %d (%d pneumonia)",
        len(train_data),
        int(train_data.labels.sum()),
        len(val_data),
        int(val_data.labels.sum()),
    )
    result = train(train_data, val_data, spec, cfg, progress=progress)

    onnx_path = export_onnx(result.model, out / ONNX_FILE, spec["size"])
    x_val = normalised(val_data, spec).numpy()
    parity = parity_check(result.model, onnx_path, x_val)
    digest = sha256_of(onnx_path)

    # Threshold and metrics from the exported graph itself (what serving will run).
    from serving.registry import ModelVersion

    version = out.name
    card: dict[str, Any] = {
        "name": MODEL_NAME,
        "version": version,
        "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "task": "binary classification: pneumonia vs normal on a frontal paediatric chest "
        "radiograph "
        "(triage / worklist prioritisation)",
        "labels": list(LABEL_NAMES),
        "positive_label": LABEL_NAMES[1],
        "input": {**spec, "shape": [-1, 1, *spec["size"]], "layout": "NCHW"},
        "preprocessing": (
            "serving.imaging.preprocess: DICOM modality LUT (rescale slope/intercept) -> VOI LUT, "
            "else window centre/width, else min..max -> [0,1] -> MONOCHROME1 inverted -> centre "
            "square crop -> area resize to input.size -> (x - mean) / std. MedMNIST arrays: "
            "uint8 / 255 then the same chain. numpy for serving, the equal MONAI chain "
            "(eval_transforms) in training."
        ),
        "output": {
            "name": "probability",
            "shape": [-1, 1],
            "dtype": "float32",
            "activation": "none",
            "meaning": "probability of pneumonia (sigmoid of the ensemble's mean logit)",
        },
        "threshold": None,
        "threshold_method": "Youden's J (max sensitivity + specificity - 1) on the validation "
        "split, midway between the two scores it separates; chosen on "
        "validation only, robust to prevalence (val is 74% pneumonia)",
        "sha256": digest,
    }
    tmp_card = out / CARD_FILE
    tmp_card.write_text(
        yaml.safe_dump({**card, "threshold": 0.5}, sort_keys=False), encoding="utf-8"
    )
    mv = ModelVersion.load(out)
    val_prob = onnx_probabilities(mv, val_data)
    threshold = youden_threshold(val_data.labels, val_prob)
    val_metrics = binary_metrics(val_data.labels, val_prob, threshold)
    at_half = binary_metrics(val_data.labels, val_prob, 0.5)

    card.update(
        {
            "threshold": round(threshold, 6),
            "metrics": {
                "validation": val_metrics,
                "validation_at_0.5": {
                    k: at_half[k] for k in ("accuracy", "sensitivity", "specificity")
                },
                "per_member": result.members,
            },
            "parity": {
                "max_abs_diff": float(f"{parity:.3g}"),
                "tolerance": PARITY_TOLERANCE,
                "images": int(len(x_val)),
                "compared": "probability, PyTorch vs onnxruntime CPU",
            },
            "model": {
                "architecture": f"ensemble of {len(cfg.seeds)} MONAI ResNet (basic blocks, layers "
                f"{cfg.layers}, widths {cfg.widths}, 3x3 stride-1 stem, no max-pool)",
                "framework": "MONAI + PyTorch, exported to ONNX opset 17 (dynamic batch)",
                "parameters": int(sum(p.numel() for p in result.model.parameters())),
            },
            "training": {
                "command": command or "haidang train " + MODEL_NAME,
                "data": str(data) + (f" + {labels_csv}" if labels_csv else ""),
                "n_train": int(len(train_data)),
                "n_train_pneumonia": int(train_data.labels.sum()),
                "n_val": int(len(val_data)),
                "n_val_pneumonia": int(val_data.labels.sum()),
                "config": cfg.as_dict(),
                "augmentation": "MONAI RandAffine (rot ±10°, scale ±10%, translate ±2.5 px, "
                "shear), "
                "RandAdjustContrast, RandScale/ShiftIntensity, RandGaussianSmooth, "
                "RandGaussianNoise",
                "imbalance": "BCE pos_weight = n_normal / n_pneumonia",
                "regularisation": "label smoothing, AdamW weight decay, EMA of weights",
                "selection": "per seed, the epoch with the best validation AUC (EMA weights)",
                "seconds": round(result.seconds, 1),
                "environment": f"python {platform.python_version()}, {platform.machine()}, "
                f"torch {__import__('torch').__version__}, "
                f"monai {__import__('monai').__version__}",
            },
            "data": PROVENANCE_MEDMNIST
            if not Path(data).is_dir()
            else {
                "dataset": f"DICOM folder {data} with labels {labels_csv}",
                "licence": "as agreed with the data owner",
            },
            "intended_use": "Research and demonstration of the Haidang imaging pipeline: "
            "flag frontal "
            "chest radiographs for earlier radiologist review. Decision support only; "
            "a radiologist reads every study.",
            "limitations": [
                "28x28-pixel research model: fine detail of the radiograph is lost",
                "trained on paediatric (1-5 years) chest X-rays from one centre (Guangzhou); "
                "not validated on adults, other hospitals or Vietnamese populations",
                "pneumonia vs normal only: other findings are neither detected nor excluded",
                "the threshold was chosen on validation data with 74% prevalence; calibration and "
                "accuracy shift with prevalence and equipment",
                "NOT FOR CLINICAL USE: not a medical device, not clinically validated",
            ],
        }
    )
    if plots:
        paths = write_plots(
            val_data.labels,
            val_prob,
            threshold,
            out,
            "val",
            f"{MODEL_NAME} {version}, validation (n={len(val_data)})",
            list(LABEL_NAMES),
        )
        card["plots"] = [p.name for p in paths]
    tmp_card.write_text(
        yaml.safe_dump(card, sort_keys=False, allow_unicode=True, width=100), encoding="utf-8"
    )
    ModelVersion.load(out)  # the folder must load as written
    return card
