"""The training pipeline, written once: fit -> export -> parity -> calibrate -> threshold ->
metrics -> plots -> card -> register.

Each image model supplies a ``Recipe``: its data (split by patient), its fit, its stratified
metrics and the model-specific parts of its card. Everything else is here, so every model
version folder is made the same way and ``serving.registry.ModelVersion.load`` accepts it.

Calibration and thresholds are computed from the exported graph (what serving runs), on
validation only. The fit is saved to a checkpoint beside nothing that ships
(``var/train/<name>-<version>.pt``) so a failure after it does not cost the fit again
(``--resume-fit``).
"""

from __future__ import annotations

import datetime as dt
import logging
import platform
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import yaml

from serving.imaging.predictor import calibrated
from serving.registry import CARD_FILE, ONNX_FILE, ModelRegistry, ModelVersion
from training.export import PARITY_TOLERANCE, export_onnx, parity_check, sha256_of
from training.metrics import ece, output_metrics, sensitivity_threshold

log = logging.getLogger(__name__)


@dataclass
class Fitted:
    """What a recipe's fit returns: the model to export and how the fit went."""

    model: Any  # a torch.nn.Module returning the graph's outputs
    report: dict[str, Any]
    seconds: float


@dataclass
class Validation:
    """The validation side as the pipeline needs it: model inputs, 0/1 labels, patients."""

    inputs: np.ndarray  # float32 [N, 1, H, W], the shared preprocessing chain applied
    labels: np.ndarray  # int [N, K], one column per exported output
    patients: np.ndarray  # [N] patient id, for patient-level folds and bootstrap
    data: Any = None  # the recipe's own object (for its stratified metrics)


class Recipe(Protocol):
    name: str
    outputs: tuple[str, ...]  # exported output labels, in graph order
    onnx_outputs: tuple[str, ...]  # graph output names, e.g. ("logits", "cam")
    input_spec: dict[str, Any]
    target_sensitivity: float

    def load(self) -> tuple[Any, Validation]: ...

    def fit(self, train: Any, progress: bool) -> Fitted: ...

    def metrics(self, val: Validation, prob: np.ndarray, thresholds: np.ndarray) -> dict: ...

    def card(self, val: Validation, fitted: Fitted) -> dict[str, Any]: ...

    def figures(
        self, out: Path, val: Validation, fitted: Fitted, session
    ) -> tuple[list[Path], dict[str, Any]]: ...

    def empty_model(self) -> Any: ...


@dataclass
class RunOptions:
    command: str = ""
    progress: bool = True
    plots: bool = True
    promote: bool = False
    resume_fit: Path | None = None
    checkpoint_dir: Path = Path("var/train")


def platt(logit: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """Platt scaling on one output: ``p = sigmoid(slope * logit + intercept)``."""
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(label)) < 2:
        raise ValueError("calibration needs positive and negative validation images")
    lr = LogisticRegression(C=1e4, max_iter=1000).fit(np.asarray(logit)[:, None], label)
    return {"slope": float(lr.coef_[0, 0]), "intercept": float(lr.intercept_[0])}


def cross_fitted_ece(
    logits: np.ndarray, labels: np.ndarray, patients: np.ndarray, folds: int = 2, seed: int = 0
) -> list[float | None]:
    """ECE per output when calibration is fitted on other patients than it is measured on.

    The served calibration is fitted on all of validation; measuring ECE on the same images
    would flatter it, so each fold's ECE comes from a calibration fitted on the other folds.
    """
    ids = np.unique(patients)
    rng = np.random.default_rng(seed)
    fold_of = dict(zip(ids, rng.integers(0, folds, len(ids)), strict=True))
    fold = np.asarray([fold_of[p] for p in patients])
    result = []
    for k in range(labels.shape[1]):
        prob = np.empty(len(labels))
        try:
            for f in range(folds):
                fit_on, test = fold != f, fold == f
                c = platt(logits[fit_on, k], labels[fit_on, k])
                prob[test] = calibrated(logits[test, k : k + 1], [{"calibration": c}])[:, 0]
        except ValueError:  # a fold without both classes (tiny validation sets)
            result.append(None)
            continue
        result.append(round(ece(labels[:, k], prob), 4))
    return result


def onnx_outputs(onnx_path: Path, inputs: np.ndarray, batch: int = 64) -> list[np.ndarray]:
    """Every graph output on ``inputs`` with onnxruntime CPU (what serving runs)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    parts = [sess.run(None, {name: inputs[i : i + batch]}) for i in range(0, len(inputs), batch)]
    return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]


def run(recipe: Recipe, out: Path, options: RunOptions) -> dict[str, Any]:
    """Train ``recipe`` into the new version folder ``out``; returns the card."""
    import torch

    out = Path(out)
    if (out / ONNX_FILE).exists():
        raise FileExistsError(f"{out} already holds a model: choose a new version folder")
    train, val = recipe.load()
    checkpoint = Path(options.checkpoint_dir) / f"{recipe.name}-{out.name}.pt"
    if options.resume_fit:
        fitted = recipe_resume(recipe, torch.load(options.resume_fit, weights_only=False))
        log.info("fit resumed from %s", options.resume_fit)
    else:
        fitted = recipe.fit(train, options.progress)
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        torch.save(
            {"state": fitted.model.state_dict(), "report": fitted.report,
             "seconds": fitted.seconds}, checkpoint,
        )

    onnx_path = export_onnx(
        fitted.model, out / ONNX_FILE, recipe.input_spec["size"],
        output_names=recipe.onnx_outputs,
    )
    parity = parity_check(fitted.model, onnx_path, val.inputs[:96])
    logits = onnx_outputs(onnx_path, val.inputs)[0]

    calibration = [platt(logits[:, k], val.labels[:, k]) for k in range(len(recipe.outputs))]
    outputs = [{"name": n, "calibration": c} for n, c in zip(recipe.outputs, calibration,
                                                                strict=True)]
    prob = calibrated(logits, outputs)
    thresholds = np.asarray([
        sensitivity_threshold(val.labels[:, k], prob[:, k], recipe.target_sensitivity)
        for k in range(len(recipe.outputs))
    ])
    held_out_ece = cross_fitted_ece(logits, val.labels, val.patients)
    for k, o in enumerate(outputs):
        o["threshold"] = round(float(thresholds[k]), 6)
        o["calibration"] = {
            "method": "Platt scaling on validation logits: p = sigmoid(slope*logit + intercept)",
            "slope": round(calibration[k]["slope"], 6),
            "intercept": round(calibration[k]["intercept"], 6),
            "ece_uncalibrated": round(ece(val.labels[:, k], calibrated(
                logits[:, k : k + 1], [{"calibration": {}}])[:, 0]), 4),
            "ece_calibrated_on_validation": round(ece(val.labels[:, k], prob[:, k]), 4),
            "ece_cross_fitted": held_out_ece[k],
        }
        o["operating_point"] = (
            f"highest threshold with sensitivity >= {recipe.target_sensitivity:.2f} "
            "on validation (calibrated probability)"
        )

    card: dict[str, Any] = {
        "name": recipe.name,
        "version": out.name,
        "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "input": {**recipe.input_spec, "shape": [-1, 1, *recipe.input_spec["size"]],
                  "layout": "NCHW"},
        "outputs": outputs,
        "sha256": sha256_of(onnx_path),
        "parity": {"max_abs_diff": float(f"{parity:.3g}"), "tolerance": PARITY_TOLERANCE,
                   "images": int(min(96, len(val.inputs))),
                   "compared": f"{', '.join(recipe.onnx_outputs)}: PyTorch vs onnxruntime CPU"},
        "metrics": {"validation": recipe.metrics(val, prob, thresholds)},
        **recipe.card(val, fitted),
    }
    card["training"] = {
        **card.get("training", {}),
        "command": options.command or f"haidang train {recipe.name}",
        **({"fit_resumed_from": f"{options.resume_fit} (the weights an earlier `haidang train "
            f"{recipe.name}` run saved; every step after the fit ran again)"}
           if options.resume_fit else {}),
        "fit_seconds": round(fitted.seconds, 1),
        "fit": fitted.report,
        "environment": f"python {platform.python_version()}, {platform.machine()}, "
        f"torch {torch.__version__}",
    }
    for k, name in enumerate(recipe.outputs):
        section = card["metrics"]["validation"].setdefault(name, {})
        section.update(output_metrics(val.labels[:, k], prob[:, k], thresholds[k]))
        section["ece_on_calibration_set"] = section["ece"]
        section["ece"] = held_out_ece[k]  # the honest figure: calibrated on other patients
    figures: list[str] = []
    if options.plots:
        from training.plots import write_plots

        for k, name in enumerate(recipe.outputs):
            paths = write_plots(
                val.labels[:, k], prob[:, k], float(thresholds[k]), out, f"val-{name}",
                f"{recipe.name} {out.name} {name}, validation (n={len(prob)})",
                [f"no {name}", name],
            )
            figures += [p.name for p in paths]
    (out / CARD_FILE).write_text(yaml.safe_dump(card, sort_keys=False, allow_unicode=True,
                                                width=100), encoding="utf-8")
    from serving.imaging.session import ModelSession

    mv = ModelVersion.load(out)  # the folder must load as written
    session = ModelSession(mv.name, mv.version, mv.onnx_path, mv.sha256, mv.card)
    paths, facts = recipe.figures(out, val, fitted, session)
    figures += [p.name for p in paths]
    card.update(facts)
    if figures or facts:
        card["plots"] = figures
        (out / CARD_FILE).write_text(yaml.safe_dump(card, sort_keys=False, allow_unicode=True,
                                                    width=100), encoding="utf-8")
    if options.promote:
        ModelRegistry(out.parent.parent).promote(recipe.name, out.name)
    return card


def recipe_resume(recipe: Recipe, saved: dict[str, Any]) -> Fitted:
    """The ``Fitted`` a checkpoint holds, rebuilt with the recipe's own network."""
    model = recipe.empty_model()
    model.load_state_dict(saved["state"])
    return Fitted(model.eval(), saved.get("report", {}), float(saved.get("seconds", 0.0)))


def command_line() -> str:
    return "haidang " + " ".join(shlex.quote(a) for a in sys.argv[1:])
