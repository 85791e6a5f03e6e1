"""Adult chest X-ray triage (issue 18): data, network and fit for ``cxr-triage``.

Why these choices:

* Data: the NIH ChestX-ray14 subset in ``datasets/nih-cxr`` (1,838 adult frontal films, NIH's
  own multi-label findings). Split by ``patient_id`` so no patient is on both sides.
* Network: a MONAI ``ResNet`` (basic blocks) at 224 px with the usual stride-2 stem and
  max-pool, small enough to train on 2 CPU cores. No outside weights: the chest models on
  PyPI that ship weights were trained on ChestX-ray14 itself, which would leak the very
  patients held back for evaluation. Instead the convolutional layers are first pretrained
  without labels, contrastively, on the training films (``training.contrastive``).
* Multi-task: besides the two served outputs (``abnormal``, ``pneumonia``) the network learns
  the five other frequent NIH findings as auxiliary heads; they share the features and help
  a model that sees only ~1,400 training films. Only the served outputs are exported.
* The exported graph returns ``logits`` [N, K] and ``cam`` [N, K, h, w] from ONE forward pass:
  the class activation map is the classifier's weights applied to the last feature map, and
  the logits are its spatial mean plus the bias, so the map explains exactly those logits.
* Ensemble: a few seeds averaged inside the one graph (logits and maps alike).
* Pixel branch (``training.pixel_branch``): a linear model over 16-px block means, fitted on
  the training films after the CNN and blended with it in the same graph; it adds the global
  opacity signal the small CNN misses.
* No model selection on validation: a fixed one-cycle schedule, EMA weights at the end.
  Validation is used for calibration and thresholds only (``training.pipeline``).
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from serving.imaging.preprocess import _spec, file_to_unit
from training.data import AugmentedImages, augmentation, shuffled_loader, unit_at_model_size
from training.networks import greyscale_resnet
from training.pipeline import ImageRecipe
from training.pixel_branch import CELL, PixelBranch, fit_pixel_branch, grid_for, inner_cells

log = logging.getLogger(__name__)

MODEL_NAME = "cxr-triage"
OUTPUTS = ("abnormal", "pneumonia")
AUXILIARY = ("infiltration", "fibrosis", "atelectasis", "effusion", "edema")
TRAINED = OUTPUTS + AUXILIARY
SPEC: dict[str, Any] = {
    "name": "image",
    "size": [224, 224],
    "channels": 1,
    "dtype": "float32",
    "crop": "center_square",
    "inner_crop": 0.75,  # drop the outer 12.5% each side: view markers live there
    "resize": "area",
    "scale": [0, 255],
    "mean": 0.5,
    "std": 0.25,
}


@dataclass
class CxrSet:
    """Images at model size in [0, 1] (float16 to halve memory), targets and per-image facts."""

    images: np.ndarray  # float16 (N, 1, H, W)
    targets: np.ndarray  # float32 (N, len(TRAINED)); 1 = finding present
    rows: list[dict[str, str]]  # the labels.csv rows (image, findings, patient_id, view, ...)

    def __len__(self) -> int:
        return len(self.rows)

    def subset(self, idx: Sequence[int] | np.ndarray) -> CxrSet:
        idx = np.asarray(idx, dtype=int)
        return CxrSet(self.images[idx], self.targets[idx], [self.rows[i] for i in idx])

    def column(self, name: str) -> np.ndarray:
        return np.asarray([r.get(name, "") for r in self.rows])


def findings_targets(findings: str) -> list[float]:
    """NIH findings (``A|B`` or ``No Finding``) -> one 0/1 per ``TRAINED`` label."""
    names = {f.strip().lower() for f in findings.split("|") if f.strip()}
    abnormal = bool(names - {"no finding"})
    return [float(abnormal)] + [float(label in names) for label in TRAINED[1:]]


def load_labelled_folder(folder: Path, spec: Mapping[str, Any] = SPEC, limit: int = 0) -> CxrSet:
    """``folder/labels.csv`` + ``folder/images/`` (PNG, JPEG or DICOM) -> ``CxrSet``."""
    from tqdm import tqdm

    folder = Path(folder)
    with open(folder / "labels.csv", newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    if limit:  # a reproducible random subset (tests, smoke runs): the CSV is ordered by source
        keep = np.sort(np.random.default_rng(0).choice(len(rows), min(limit, len(rows)), False))
        rows = [rows[i] for i in keep]
    images = np.empty((len(rows), 1, *_spec(spec)["size"]), np.float16)
    for i, row in enumerate(tqdm(rows, desc="images", unit="img", mininterval=5)):
        unit, _ = file_to_unit(folder / "images" / row["image"])
        images[i, 0] = unit_at_model_size(unit, spec)
    targets = np.asarray([findings_targets(r.get("findings", "")) for r in rows], np.float32)
    return CxrSet(images, targets, rows)


def patient_split(data: CxrSet, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val), disjoint by ``patient_id``, stratified by the patient's findings.

    Patients are grouped by whether any of their films has pneumonia / any finding, and each
    group is split on its own, so both sides keep the label mix.
    """
    patients: dict[str, list[int]] = {}
    for i, row in enumerate(data.rows):
        patients.setdefault(row["patient_id"], []).append(i)
    strata: dict[tuple[bool, bool], list[str]] = {}
    for pid, idx in patients.items():
        key = (bool(data.targets[idx, 1].max()), bool(data.targets[idx, 0].max()))
        strata.setdefault(key, []).append(pid)
    rng = np.random.default_rng(seed)
    val_patients: set[str] = set()
    for key in sorted(strata):
        pids = sorted(strata[key])
        rng.shuffle(pids)
        val_patients.update(pids[: round(len(pids) * val_fraction)])
    val = np.asarray([i for i, r in enumerate(data.rows) if r["patient_id"] in val_patients])
    train = np.asarray([i for i, r in enumerate(data.rows) if r["patient_id"] not in val_patients])
    return train, val


@dataclass
class TriageConfig:
    epochs: int = 30
    seeds: list[int] = field(default_factory=lambda: [0])
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 5e-4
    ema_decay: float = 0.995
    widths: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    layers: list[int] = field(default_factory=lambda: [1, 1, 1, 1])
    auxiliary_weight: float = 0.5  # loss weight of each auxiliary finding vs a served output
    time_budget_s: float = 24 * 60.0  # all seeds together; the schedule compresses to fit
    threads: int = 2
    val_fraction: float = 0.25
    split_seed: int = 18
    pixel_branch: bool = True  # blend in the linear model on block means (training.pixel_branch)
    pretrain_epochs: int = 60  # contrastive pretraining first (training.contrastive); 0: none
    pretrain_budget_s: float = 30 * 60.0  # its own time budget; the schedule compresses to fit

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_member(cfg: TriageConfig) -> nn.Module:
    return greyscale_resnet(cfg.layers, cfg.widths, len(TRAINED))


def feature_map(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """MONAI ``ResNet.forward`` up to the last stage (before pooling)."""
    x = net.act(net.bn1(net.conv1(x)))
    if not net.no_max_pool:
        x = net.maxpool(x)
    return net.layer4(net.layer3(net.layer2(net.layer1(x))))


class TriageNet(nn.Module):
    """What is exported: ``image`` [N,1,H,W] -> ``logits`` [N,K], ``cam`` [N,K,h,w].

    Per member: cam = W·F (classifier weights over the last feature map), logits = mean(cam)
    + b, which is exactly the member's own pooled classifier. Members are averaged. With a
    ``pixels`` branch (``training.pixel_branch``) the CNN's map and the branch's per-cell
    contributions are blended on the branch's finer grid, still with logits = mean(cam) + bias.
    """

    def __init__(self, members: list[nn.Module], outputs: int = len(OUTPUTS),
                 pixels: PixelBranch | None = None):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.outputs = outputs
        self.pixels = pixels

    def cnn(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The members' averaged map [N,K,h,w] and bias [K]."""
        cams = [torch.einsum("kc,nchw->nkhw", m.fc.weight[: self.outputs], feature_map(m, image))
                for m in self.members]
        return torch.stack(cams).mean(0), self.cnn_bias()

    def cnn_bias(self) -> torch.Tensor:
        return torch.stack([m.fc.bias[: self.outputs] for m in self.members]).mean(0)

    def cnn_grid(self, size: int) -> int:
        """Side of the members' last feature map for a ``size``-px input."""
        with torch.no_grad():
            return int(feature_map(self.members[0], torch.zeros(1, 1, size, size)).shape[-1])

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cam, bias = self.cnn(image)
        if self.pixels is not None:
            return self.pixels.blend(cam, bias, image)
        return cam.mean(dim=(2, 3)) + bias, cam

    def bias(self) -> torch.Tensor:
        """The constant in logits = mean(cam) + bias."""
        bias = self.cnn_bias()
        return bias if self.pixels is None else self.pixels.bias(bias)


def train_transforms(spec: Mapping[str, Any]):
    """MONAI augmentation (no flips: the heart is on the left) then the shared eval chain."""
    from monai.transforms import Lambda

    return augmentation(spec, rotate=0.14, scale=0.12, translate=12, shear=0.04,
                        padding="zeros", gamma=(0.7, 1.5), noise=(0.2, 0.02),
                        first=[Lambda(blank_edges)])


def blank_edges(img: torch.Tensor) -> torch.Tensor:
    """Half the time, black out a strip (up to 20% of the width) at the left and/or right edge.

    The maps of the first fits lay on the film's edges, where portable films carry their
    markers: hiding the edges at random makes them an unreliable cue.
    """
    if np.random.random() >= 0.5:
        return img
    img = img.clone()
    w = img.shape[-1]
    for side in np.flatnonzero(np.random.random(2) < 0.7):
        width = int(np.random.randint(1, max(2, w // 5)))
        if side == 0:
            img[..., :width] = 0.0
        else:
            img[..., w - width :] = 0.0
    return img


def normalised(images: np.ndarray, spec: Mapping[str, Any] = SPEC) -> torch.Tensor:
    """The eval chain over images already at model size (crop/resize are identities)."""
    s = _spec(spec)
    return (torch.from_numpy(images.astype(np.float32)) - float(s["mean"])) / float(s["std"])


@dataclass
class FitResult:
    model: TriageNet
    members: list[dict[str, Any]]
    seconds: float
    device: str
    extra: dict[str, Any] = field(default_factory=dict)


def device_of() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def fit(train: CxrSet, cfg: TriageConfig, progress: bool = True,
        spec: Mapping[str, Any] = SPEC,
        pretrained: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None) -> FitResult:
    """Train ``len(cfg.seeds)`` members on ``train``; returns the ensemble (on CPU, eval).

    ``pretrained`` (what ``pretrained_start`` returns) reuses a pretraining done once, e.g. on
    all training films before fitting on a share of their labels (``training.learning_curve``).
    """
    from monai.data import set_track_meta
    from monai.utils import set_determinism
    from tqdm import tqdm

    from training.schedule import learning_rate, schedule_progress

    set_track_meta(False)
    torch.set_num_threads(cfg.threads)
    device = device_of()
    pos = train.targets.mean(0).clip(0.02, 0.98)
    pos_weight = torch.from_numpy(np.sqrt((1 - pos) / pos)).float().to(device)
    weights = torch.tensor(
        [1.0] * len(OUTPUTS) + [cfg.auxiliary_weight] * len(AUXILIARY), device=device
    )
    transform = train_transforms(spec)
    start = time.monotonic()
    extra: dict[str, Any] = {}
    initial = None
    if pretrained is not None:
        initial, extra["pretraining"] = pretrained
    elif cfg.pretrain_epochs > 0:
        initial, extra["pretraining"] = pretrained_start(train, cfg, spec, device, progress)
    members, reports = [], []
    per_seed = cfg.time_budget_s / max(len(cfg.seeds), 1)
    for seed in cfg.seeds:
        seed_start = time.monotonic()
        set_determinism(seed=seed)
        transform.set_random_state(seed=seed)
        loader = shuffled_loader(AugmentedImages(train.images, train.targets, transform),
                                 cfg.batch_size, seed, drop_last=True)
        net = build_member(cfg)
        if initial is not None:  # every member starts from the one pretraining; own head
            net.load_state_dict(initial, strict=False)
        net = net.to(device)
        ema = torch.optim.swa_utils.AveragedModel(
            net,
            multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.ema_decay),
            use_buffers=True,
        )
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps, step, done = cfg.epochs * len(loader), 0, 0.0
        bar = tqdm(total=steps, desc=f"seed {seed}", unit="step", disable=not progress)
        while done < 1.0:
            net.train()
            for xb, yb in loader:
                done = schedule_progress(step, steps, time.monotonic() - seed_start, per_seed)
                if done >= 1.0:
                    break
                for group in opt.param_groups:
                    group["lr"] = learning_rate(cfg.lr, done)
                xb, yb = xb.to(device), yb.to(device)
                loss = nn.functional.binary_cross_entropy_with_logits(
                    net(xb), yb, pos_weight=pos_weight, reduction="none"
                )
                loss = (loss * weights).sum(1).mean() / weights.sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                ema.update_parameters(net)
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}", epoch=f"{step / len(loader):.1f}")
        bar.close()
        best = build_member(cfg)
        best.load_state_dict({k: v.cpu() for k, v in ema.module.state_dict().items()})
        members.append(best.eval())
        reports.append(
            {
                "seed": seed,
                "epochs_run": round(step / len(loader), 2),
                "time_limited": step < steps,
                "seconds": round(time.monotonic() - seed_start, 1),
            }
        )
        log.info("seed %d: %d steps in %.0f s", seed, step, time.monotonic() - seed_start)
    model = TriageNet(members).eval()
    if cfg.pixel_branch:
        extra.update(attach_pixel_branch(model, train, spec))
    return FitResult(model, reports, time.monotonic() - start, device.type, extra)


def pretrained_start(train: CxrSet, cfg: TriageConfig, spec: Mapping[str, Any],
                     device: torch.device, progress: bool) -> tuple[dict[str, torch.Tensor],
                                                                    dict[str, Any]]:
    """Contrastive pretraining of one member on the training films (``training.contrastive``);
    returns its weights without the classifier, for every member to start from, and the
    report the card records."""
    from training.contrastive import PretrainConfig, pretrain

    net = build_member(cfg)
    pcfg = PretrainConfig(epochs=cfg.pretrain_epochs, time_budget_s=cfg.pretrain_budget_s,
                          seed=cfg.seeds[0] if cfg.seeds else 0)
    report = pretrain(net, feature_map, cfg.widths[-1], train.images, train_transforms(spec),
                      pcfg, device, progress)
    weights = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()
               if not k.startswith("fc.")}
    return weights, report


def attach_pixel_branch(model: TriageNet, train: CxrSet,
                        spec: Mapping[str, Any] = SPEC) -> dict[str, Any]:
    """Fit ``training.pixel_branch`` on the training films and put it in ``model``.

    Returns the card's facts: per output, the C that grouped cross-validation picked, its
    out-of-fold AUC and the films it was fitted on.
    """
    start = time.monotonic()
    model.pixels = None
    cnn_logits = torch_logits(model, train.images)
    size = int(_spec(spec)["size"][0])
    no_finding = train.targets[:, 0] == 0
    pair = [None, no_finding | (train.targets[:, 1] == 1)]  # pneumonia vs No Finding
    branch, report = fit_pixel_branch(
        normalised(train.images, spec).numpy(), train.targets[:, : len(OUTPUTS)], pair,
        train.column("patient_id"), cnn_logits, model.cnn_grid(size))
    model.pixels = branch
    facts = {
        "grid": f"{branch.grid}x{branch.grid} block means of the model input; the inner "
        f"{len(inner_cells(branch.grid))} cells are read, the outer ring (film border, "
        "collimation, markers) is left out",
        "outputs": {OUTPUTS[k]: {**r, "fitted_on": "all training films" if pair[k] is None
                                 else "training films with pneumonia or No Finding"}
                    for k, r in report.items()},
        "seconds": round(time.monotonic() - start, 1),
    }
    log.info("pixel branch: %s", facts)
    return {"pixel_branch": facts}


@torch.no_grad()
def torch_logits(model: TriageNet, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """PyTorch logits [N, K] for images at model size in [0, 1] (the eval chain applied)."""
    model.eval()
    out = [model(normalised(images[i : i + batch]))[0] for i in range(0, len(images), batch)]
    return torch.cat(out).numpy()


# --- the recipe the pipeline runs (training.pipeline) ------------------------------------

DATA = Path("datasets/nih-cxr")
AGE_BANDS = ((0, 18, "<18"), (18, 40, "18-39"), (40, 60, "40-59"), (60, 200, "60+"))
PROVENANCE = {
    "dataset": "NIH ChestX-ray14 subset (datasets/nih-cxr): 1,838 frontal chest radiographs, "
    "256 px, 1,080 patients, NIH's own multi-label findings",
    "citations": [
        "Wang X, Peng Y, Lu L, Lu Z, Bagheri M, Summers RM. ChestX-ray8: Hospital-scale chest "
        "X-ray database and benchmarks on weakly-supervised classification and localization of "
        "common thorax diseases. CVPR 2017.",
    ],
    "acknowledgement": "Data provided by the NIH Clinical Center "
    "(https://nihcc.app.box.com/v/ChestXray-NIHCC).",
    "licence": "NIH Clinical Center: no restrictions on the use of the NIH chest x-ray images",
    "labels": "mined from radiology reports by NLP (NIH quotes > 90% accuracy)",
    "held_back": "further patients of the same source are held back by the project team",
}


def _age_band(age: str) -> str:
    try:
        years = int(float(age))
    except ValueError:
        return "unknown"
    return next(name for lo, hi, name in AGE_BANDS if lo <= years < hi)


class TriageRecipe(ImageRecipe):
    """``cxr-triage`` for ``training.pipeline.run``."""

    name = MODEL_NAME
    outputs = OUTPUTS
    onnx_outputs = ("logits", "cam")
    input_spec = SPEC
    target_sensitivity = 0.90

    def __init__(self, data: Path = DATA, cfg: TriageConfig | None = None, limit: int = 0,
                 size: int = 224):
        """``limit`` and a smaller ``size`` are for quick runs (tests); the model is 224 px."""
        self.data_dir = Path(data)
        self.cfg = cfg or TriageConfig()
        self.limit = limit
        self.input_spec = {**SPEC, "size": [size, size]}

    def load(self):
        from training.pipeline import Validation

        data = load_labelled_folder(self.data_dir, self.input_spec, self.limit)
        tr, va = patient_split(data, self.cfg.val_fraction, self.cfg.split_seed)
        self.train_set, self.val_set = data.subset(tr), data.subset(va)
        val = self.val_set
        log.info("train %d images, validation %d (patient-disjoint)", len(tr), len(va))
        return self.train_set, Validation(
            normalised(val.images).numpy(),
            val.targets[:, : len(OUTPUTS)].astype(int),
            val.column("patient_id"),
            val,
        )

    def fit(self, train: CxrSet, progress: bool):
        from training.pipeline import Fitted

        result = fit(train, self.cfg, progress, self.input_spec)
        return Fitted(
            result.model,
            {"members": result.members, "device": result.device, **result.extra},
            result.seconds,
        )

    def empty_model(self) -> TriageNet:
        model = TriageNet([build_member(self.cfg) for _ in self.cfg.seeds])
        if self.cfg.pixel_branch:
            size = int(self.input_spec["size"][0])
            model.pixels = PixelBranch(grid_for(size, model.cnn_grid(size)), len(OUTPUTS))
        return model

    def resume(self, path: Path):
        """A saved fit; one saved before the pixel branch existed gets the branch fitted
        now, on the same training films (the CNN's weights are used as saved)."""
        from training.pipeline import Fitted

        saved = torch.load(path, weights_only=False)
        model = self.empty_model()
        missing, unexpected = model.load_state_dict(saved["state"], strict=False)
        if unexpected or any(not k.startswith("pixels.") for k in missing):
            raise ValueError(f"{path}: not a cxr-triage fit for this configuration (missing "
                             f"{missing[:3]}, unexpected {unexpected[:3]}); check --seeds")
        report = dict(saved.get("report", {}))
        if missing:
            report.update(attach_pixel_branch(model, self.train_set, self.input_spec))
            report["pixel_branch"]["added_on_resume"] = True
        return Fitted(model.eval(), report, float(saved.get("seconds", 0.0)))

    def metrics(self, val, prob: np.ndarray, thresholds: np.ndarray) -> dict[str, Any]:
        """Per output: AUC with a patient bootstrap 95% interval, overall and by stratum."""
        from training.metrics import bootstrap_auc

        data: CxrSet = val.data
        patients = data.column("patient_id")
        no_finding = data.targets[:, 0] == 0
        strata = {
            "all": np.ones(len(data), bool),
            **{f"view {v}": data.column("view") == v for v in ("PA", "AP")},
            **{f"sex {s}": data.column("sex") == s for s in ("M", "F")},
            **{f"age {b}": np.asarray([_age_band(a) == b for a in data.column("age")])
               for *_, b in AGE_BANDS},
            **{f"source {s.split('@')[0]}": data.column("source") == s
               for s in sorted(set(data.column("source")))},
        }
        result: dict[str, Any] = {}
        for k, name in enumerate(OUTPUTS):
            y = val.labels[:, k]
            by = {s: bootstrap_auc(y[m], prob[m, k], patients[m]) for s, m in strata.items()}
            section: dict[str, Any] = {"auc_by_stratum": by}
            if name == "pneumonia":
                pair = no_finding | (y == 1)  # the target: pneumonia vs No Finding
                section["auc_vs_no_finding_by_stratum"] = {
                    s: bootstrap_auc(y[m & pair], prob[m & pair, k], patients[m & pair])
                    for s, m in strata.items()
                }
            result[name] = section
        self.measured = result
        return result

    def card(self, val, fitted) -> dict[str, Any]:
        data: CxrSet = val.data
        train: CxrSet = self.train_set
        return {
            "task": "multi-label triage of an adult frontal chest radiograph: `abnormal` (any "
            "NIH finding vs No Finding) and `pneumonia`; worklist prioritisation, a "
            "radiologist reads every study",
            "labels": list(OUTPUTS),
            "urgent": ["pneumonia"],
            "urgent_rule": "URGENT when the calibrated pneumonia probability >= its threshold; "
            "`abnormal` at its threshold is reported as a finding but does not make a study "
            "URGENT",
            "output": {"name": "logits", "activation": "calibrated sigmoid (outputs[].calibration)",
                       "cam": self._cam_text()},
            "population": {
                "age_min_years": 18,
                "views": ["PA", "AP"],
                "modalities": ["CR", "DX"],
                "photometric": ["MONOCHROME1", "MONOCHROME2"],
                "body_part": "CHEST",
                "note": "adults, frontal chest radiographs only; lateral views, children, "
                "other body parts and other modalities are outside the intended use",
            },
            "preprocessing": "serving.imaging.preprocess: DICOM modality LUT -> VOI LUT / "
            "window -> [0,1] -> MONOCHROME1 inverted -> centre square crop -> its central 75% "
            "(input.inner_crop: the outer margin carries view markers) -> area resize to "
            "224 -> (x - 0.5) / 0.25; PNG/JPEG: /255 then the same chain. Training uses the equal "
            "MONAI chain (eval_transforms) after MONAI augmentation.",
            "model": {
                "architecture": f"ensemble of {len(self.cfg.seeds)} MONAI ResNet (basic blocks, "
                f"layers {self.cfg.layers}, widths {self.cfg.widths}, 7x7 stride-2 stem + "
                "max-pool), 224 px, no outside weights"
                + ("; its convolutional layers first pretrained without labels on the training "
                   f"films (SimCLR, training.contrastive, {self.cfg.pretrain_epochs} epochs), "
                   "every member starting from that one pretraining"
                   if self.cfg.pretrain_epochs > 0 else "; trained from scratch")
                + ("; blended with a pixel branch: a logistic regression on 16-px block means "
                   "of the same input (training.pixel_branch), each branch's logit "
                   "standardised on the training films and the two added with equal weight"
                   if self.cfg.pixel_branch else ""),
                "parameters": int(sum(p.numel() for p in fitted.model.parameters())),
                "heads": f"{len(TRAINED)} trained ({', '.join(TRAINED)}); the first "
                f"{len(OUTPUTS)} exported",
            },
            "training": {
                "data": str(self.data_dir),
                "split": f"by patient_id, {self.cfg.val_fraction:.0%} of patients to "
                f"validation (seed {self.cfg.split_seed}), stratified by the patient's "
                "pneumonia / any-finding status; no patient on both sides",
                "n_train": len(train),
                "n_train_patients": len(set(train.column("patient_id"))),
                "n_val": len(data),
                "n_val_patients": len(set(data.column("patient_id"))),
                "n_val_positive": {n: int(val.labels[:, k].sum()) for k, n in enumerate(OUTPUTS)},
                "config": self.cfg.as_dict(),
                "augmentation": "blank_edges (MONAI Lambda: half the time, black strips up "
                "to 20% wide at the left/right edge), RandAffine (rotation ±8°, scale ±12%, "
                "translation ±12 px, shear), RandAdjustContrast, RandScale/ShiftIntensity, "
                "RandGaussianNoise; no flips",
                "loss": "BCE over 7 findings, pos_weight sqrt(neg/pos), auxiliary findings "
                f"weighted {self.cfg.auxiliary_weight}",
                "selection": "none on validation: fixed one-cycle schedule (compressed to the "
                "time budget), EMA weights at the end",
            },
            "data": PROVENANCE,
            "intended_use": "Decision support for radiology worklist prioritisation in adults: "
            "bring frontal chest radiographs that may show pneumonia to a radiologist sooner. "
            "Not a diagnosis; a radiologist reads every study.",
            "limitations": [
                "trained on 1.4k images of one source (NIH Clinical Center, USA); "
                "not validated on Vietnamese hospitals, other equipment or other populations",
                "labels were mined from reports by NLP and are noisy",
                "224-px input: fine detail (small nodules, subtle pneumothorax) is lost",
                f"the activation map is on a coarse {self._grid_text()} grid: it shows the "
                "region, not the lesion's outline",
                "thresholds were chosen on validation with its prevalence; flagged share and "
                "PPV shift with prevalence",
                "NOT FOR CLINICAL USE: not a medical device, not clinically validated",
            ],
        }

    def _grid_text(self) -> str:
        size = int(self.input_spec["size"][0])
        grid = size // CELL if self.cfg.pixel_branch else size // 32
        return f"{grid}x{grid}"

    def _cam_text(self) -> str:
        if not self.cfg.pixel_branch:
            return ("cam [N, K, h, w]: classifier weights applied to the last feature map, "
                    "from the same forward pass; logits = mean(cam) + bias")
        return (f"cam [N, K, {self._grid_text()}] from the same forward pass: the CNN's class "
                "activation map (classifier weights over the last feature map, upsampled "
                "nearest to the finer grid) over its blend scale, plus each grid cell's "
                "contribution to the pixel branch's logit over that branch's scale; logits = "
                "mean(cam) + bias exactly")

    def figures(self, out: Path, val, fitted, session) -> tuple[list[Path], dict[str, Any]]:
        """Class activation maps over validation films: a picture to look at
        (cam-examples.png) and where their activation lies (``cam_check``)."""
        path, cams = cam_examples(out / "cam-examples.png", val, session)
        check = {name: cam_border_share(cams[:, k]) for k, name in enumerate(OUTPUTS)}
        return [path], {
            "cam_check": {
                "measured_on": f"{len(cams)} validation films",
                "meaning": "mean share of positive activation on the outer ring of the feature "
                "grid and on its 4 corner cells, against those cells' share of the area",
                **check,
            },
            "known_failure_modes": failure_modes(getattr(self, "measured", {}), check),
        }


def failure_modes(measured: dict[str, Any], cam: dict[str, dict[str, float]]) -> list[str]:
    """Statements drawn from the measured validation figures only: strata whose AUC falls
    0.08 or more below the output's overall AUC, and activation maps that favour the border."""
    modes = []
    for name, section in measured.items():
        by = section.get("auc_by_stratum", {})
        overall = (by.get("all") or {}).get("auc")
        for stratum, m in by.items():
            if overall is None or m.get("auc") is None or stratum == "all":
                continue
            if m["auc"] <= overall - 0.08:
                modes.append(f"{name}: validation AUC {m['auc']} in '{stratum}' (n={m['n']}, "
                             f"{m['n_positive']} positive, 95% CI {m.get('ci95')}) against "
                             f"{overall} overall")
    for name, c in cam.items():
        if c["ring_share"] > c["ring_area_share"] + 0.1:
            modes.append(f"{name}: {c['ring_share']:.0%} of the activation map lies on the outer "
                         f"ring of the grid ({c['ring_area_share']:.0%} of its area): the map "
                         "often points beside the lungs, not at a lesion")
    return modes


def cam_examples(path: Path, val, session, count: int = 8) -> tuple[Path, np.ndarray]:
    """Most and least suspicious validation films with their pneumonia CAM overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from serving.imaging.explain import normalise, resize_map
    from serving.imaging.predictor import Predictor

    predictor = Predictor(session)
    prob, cams = predictor.scores(val.inputs)
    k = OUTPUTS.index("pneumonia")
    order = np.argsort(prob[:, k])
    picks = list(order[::-1][: count - 2]) + list(order[:2])
    fig, axes = plt.subplots(2, count // 2, figsize=(3 * count // 2, 6.4))
    for ax, i in zip(axes.ravel(), picks, strict=True):
        img = val.inputs[i, 0] * 0.25 + 0.5
        heat = resize_map(normalise(cams[i, k]), img.shape)
        ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        ax.imshow(heat, cmap="jet", alpha=0.35 * (heat > 0.2), vmin=0, vmax=1)
        truth = val.data.rows[i]["findings"]
        ax.set_title(f"p={prob[i, k]:.2f} {truth[:24]}", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path, cams


def cam_border_share(cams: np.ndarray) -> dict[str, float]:
    """Share of positive activation on the grid's outer ring and its 4 corner cells."""
    pos = np.clip(cams, 0, None)
    total = pos.sum(axis=(-2, -1)) + 1e-12
    ring = np.ones(cams.shape[-2:], bool)
    ring[1:-1, 1:-1] = False
    corners = np.zeros_like(ring)
    corners[[0, 0, -1, -1], [0, -1, 0, -1]] = True
    area = ring.mean()
    return {
        "ring_share": round(float((pos[..., ring].sum(-1) / total).mean()), 3),
        "ring_area_share": round(float(area), 3),
        "corner_share": round(float((pos[..., corners].sum(-1) / total).mean()), 3),
        "corner_area_share": round(float(corners.mean()), 3),
    }
