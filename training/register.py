"""Train -> export -> parity -> threshold -> plots -> card: one model version folder.

``train_and_register`` is what ``haidang train cxr-pneumonia`` runs. The folder it writes is
complete and self-describing: ``serving.registry.ModelVersion.load`` accepts it as is.
"""

from __future__ import annotations

import datetime as dt
import logging
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from serving.imaging.preprocess import DEFAULT_SPEC, _spec
from serving.registry import CARD_FILE, ONNX_FILE
from training.cxr_pneumonia import TrainConfig, binary_metrics, normalised, train, youden_threshold
from training.data import LABEL_NAMES, LabelledImages, load
from training.export import PARITY_TOLERANCE, export_onnx, parity_check, sha256_of

log = logging.getLogger(__name__)

MODEL_NAME = "cxr-pneumonia"

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
    from training.evaluate import onnx_probabilities, write_plots

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


def command_line() -> str:
    return "haidang " + " ".join(shlex.quote(a) for a in sys.argv[1:])
