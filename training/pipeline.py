"""The training pipeline, written once: fit -> export -> parity -> calibrate -> threshold ->
metrics -> plots -> card -> register.

Each model supplies a ``Recipe``: its data, its fit, its threshold rule, its graph (export and
parity), its metrics and the model-specific parts of its card. Everything else is here, so
every model version folder is made the same way and ``serving.registry.ModelVersion.load``
accepts it. Validation comes in two kinds, and the steps take both:

* an image model (``ImageRecipe``) has validation images: the exported graph scores them (what
  serving runs), Platt scaling calibrates its logits and each output's threshold is chosen on
  those calibrated probabilities, on validation only;
* the learned CDSS models (interaction risk, protocol anomaly) score validation themselves,
  out of sample (``Validation.scores``: pairs of unseen drugs, held-out records) with models
  fitted without those rows. Nothing is calibrated, and the threshold is chosen before export
  because a graph may carry it (the protocol table's ``unusual`` output).

An image model's fit is saved to a checkpoint beside nothing that ships
(``var/train/<name>-<version>.pt``) so a failure after it does not cost the fit again
(``--resume-fit``).
"""

from __future__ import annotations

import datetime as dt
import logging
import platform
import shlex
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

    model: Any  # a torch.nn.Module, a scikit-learn estimator, a lookup table: what export takes
    report: dict[str, Any]
    seconds: float


@dataclass
class Validation:
    """The validation side as the pipeline needs it: inputs or scores, 0/1 labels, patients."""

    inputs: Any  # the graph's inputs (images: float32 [N, 1, H, W], the shared chain applied)
    labels: np.ndarray  # int [N, K], one column per output
    patients: np.ndarray | None = None  # [N] patient id, for patient-level folds and bootstrap
    data: Any = None  # the recipe's own object (for its metrics and threshold rule)
    # [N, K] scores the recipe measured out of sample; then the exported graph does not score
    # validation and nothing is calibrated
    scores: np.ndarray | None = None


class Recipe(ABC):
    """What one model supplies to ``run``.

    The optional parts default to a model with no checkpoint, no plots and nothing measured
    on the written folder.
    """

    name: str
    outputs: tuple[str, ...]  # one per label column and threshold

    @abstractmethod
    def load(self) -> tuple[Any, Validation]:
        """(what ``fit`` trains on, validation)."""

    @abstractmethod
    def fit(self, train: Any, progress: bool) -> Fitted: ...

    @abstractmethod
    def thresholds(self, val: Validation, prob: np.ndarray) -> np.ndarray:
        """One operating point per output, from validation's labels and scores."""

    @abstractmethod
    def export(self, fitted: Fitted, path: Path, thresholds: np.ndarray | None) -> Path:
        """Write the graph; ``thresholds`` are given when chosen before export."""

    @abstractmethod
    def parity(self, fitted: Fitted, onnx_path: Path, val: Validation,
               thresholds: np.ndarray | None) -> dict[str, Any]:
        """The card's ``parity``: the fitted model against onnxruntime; raises above the
        tolerance, so a graph that computes something else is never registered."""

    @abstractmethod
    def describe(self, fitted: Fitted, thresholds: np.ndarray,
                 calibration: list[dict[str, Any]] | None) -> dict[str, Any]:
        """The card's head after name, version, created: what the model does and how serving
        calls it (task, input, output or outputs, threshold)."""

    @abstractmethod
    def metrics(self, val: Validation, prob: np.ndarray, thresholds: np.ndarray) -> dict:
        """The card's ``metrics.validation``; with calibrated outputs, a section per output
        (the recipe's stratified figures) to which ``run`` adds the figures at threshold."""

    @abstractmethod
    def card(self, val: Validation, fitted: Fitted) -> dict[str, Any]:
        """The rest of the card (model, training, data, intended use, limitations); a
        ``metrics`` entry adds sections beside ``validation``; ``run`` adds the training
        command and ``run_facts`` to ``training``."""

    @abstractmethod
    def frameworks(self) -> str:
        """What fitted and exported the model, for ``training.environment``."""

    def environment(self) -> str:
        return f"python {platform.python_version()}, {self.frameworks()}"

    def run_facts(self, fitted: Fitted, seconds: float) -> dict[str, Any]:
        """How the run went, last in ``training``: here the whole run's seconds."""
        return {"seconds": round(seconds, 1), "environment": self.environment()}

    def plot(self, k: int, version: str, n: int) -> tuple[str, str, list[str]] | None:
        """(file prefix, title, class names) of output ``k``'s validation plots; None: none."""
        return None

    def save_fit(self, fitted: Fitted, path: Path) -> None:
        """Keep the fit where a later run can resume from it; a quick fit keeps nothing."""
        return None

    def resume(self, path: Path) -> Fitted:
        raise ValueError(f"{self.name} keeps no fit to resume from: train it again")

    def after_written(self, out: Path, val: Validation, fitted: Fitted,
                      mv: ModelVersion) -> tuple[list[Path], dict[str, Any]]:
        """Figures and card facts measured on the written version, as serving loads it."""
        return [], {}


class ImageRecipe(Recipe):
    """An image model: a torch network over ``image`` [N, 1, H, W] exported with
    ``torch.onnx``, parity on validation images, Platt-calibrated outputs, each threshold the
    highest with sensitivity >= ``target_sensitivity`` on validation. The model adds its data,
    fit, network (``empty_model``), stratified metrics, card parts and ``figures``."""

    onnx_outputs: tuple[str, ...]  # graph output names, e.g. ("logits", "cam")
    input_spec: dict[str, Any]
    target_sensitivity: float
    parity_images = 96

    @abstractmethod
    def empty_model(self) -> Any: ...

    def figures(self, out: Path, val: Validation, fitted: Fitted,
                session) -> tuple[list[Path], dict[str, Any]]:
        """Figures drawn with the served session (``ModelSession``) and the facts they show."""
        return [], {}

    def thresholds(self, val: Validation, prob: np.ndarray) -> np.ndarray:
        return np.asarray([
            sensitivity_threshold(val.labels[:, k], prob[:, k], self.target_sensitivity)
            for k in range(len(self.outputs))
        ])

    def export(self, fitted: Fitted, path: Path, thresholds: np.ndarray | None) -> Path:
        return export_onnx(fitted.model, path, self.input_spec["size"],
                           output_names=self.onnx_outputs)

    def parity(self, fitted: Fitted, onnx_path: Path, val: Validation,
               thresholds: np.ndarray | None) -> dict[str, Any]:
        diff = parity_check(fitted.model, onnx_path, val.inputs[: self.parity_images])
        return {"max_abs_diff": float(f"{diff:.3g}"), "tolerance": PARITY_TOLERANCE,
                "images": int(min(self.parity_images, len(val.inputs))),
                "compared": f"{', '.join(self.onnx_outputs)}: PyTorch vs onnxruntime CPU"}

    def describe(self, fitted: Fitted, thresholds: np.ndarray,
                 calibration: list[dict[str, Any]] | None) -> dict[str, Any]:
        return {
            "input": {**self.input_spec, "shape": [-1, 1, *self.input_spec["size"]],
                      "layout": "NCHW"},
            "outputs": [{
                "name": name,
                "calibration": calibration[k],
                "threshold": round(float(thresholds[k]), 6),
                "operating_point": f"highest threshold with sensitivity >= "
                f"{self.target_sensitivity:.2f} on validation (calibrated probability)",
            } for k, name in enumerate(self.outputs)],
        }

    def plot(self, k: int, version: str, n: int) -> tuple[str, str, list[str]]:
        name = self.outputs[k]
        return (f"val-{name}", f"{self.name} {version} {name}, validation (n={n})",
                [f"no {name}", name])

    def frameworks(self) -> str:
        import torch

        return f"{platform.machine()}, torch {torch.__version__}"

    def run_facts(self, fitted: Fitted, seconds: float) -> dict[str, Any]:
        return {"fit_seconds": round(fitted.seconds, 1), "fit": fitted.report,
                "environment": self.environment()}

    def save_fit(self, fitted: Fitted, path: Path) -> None:
        import torch

        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state": fitted.model.state_dict(), "report": fitted.report,
                    "seconds": fitted.seconds}, path)

    def resume(self, path: Path) -> Fitted:
        import torch

        return recipe_resume(self, torch.load(path, weights_only=False))

    def after_written(self, out: Path, val: Validation, fitted: Fitted,
                      mv: ModelVersion) -> tuple[list[Path], dict[str, Any]]:
        from serving.imaging.session import ModelSession

        session = ModelSession(mv.name, mv.version, mv.onnx_path, mv.sha256, mv.card)
        return self.figures(out, val, fitted, session)


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


def calibrate(logits: np.ndarray, val: Validation) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Platt scaling of each output on the graph's validation logits: the card's calibration
    blocks and the calibrated probabilities (from the unrounded fit, as the thresholds see)."""
    fits = [platt(logits[:, k], val.labels[:, k]) for k in range(val.labels.shape[1])]
    prob = calibrated(logits, [{"calibration": c} for c in fits])
    held_out_ece = cross_fitted_ece(logits, val.labels, val.patients)
    blocks = [{
        "method": "Platt scaling on validation logits: p = sigmoid(slope*logit + intercept)",
        "slope": round(c["slope"], 6),
        "intercept": round(c["intercept"], 6),
        "ece_uncalibrated": round(ece(val.labels[:, k], calibrated(
            logits[:, k : k + 1], [{"calibration": {}}])[:, 0]), 4),
        "ece_calibrated_on_validation": round(ece(val.labels[:, k], prob[:, k]), 4),
        "ece_cross_fitted": held_out_ece[k],
    } for k, c in enumerate(fits)]
    return blocks, prob


def run(recipe: Recipe, out: Path, options: RunOptions) -> dict[str, Any]:
    """Train ``recipe`` into the new version folder ``out``; returns the card."""
    started = time.monotonic()
    out = Path(out)
    if (out / ONNX_FILE).exists():
        raise FileExistsError(f"{out} already holds a model: choose a new version folder")
    train, val = recipe.load()
    fitted = fit_or_resume(recipe, train, out, options)

    calibration, thresholds, prob = None, None, val.scores
    if prob is not None:  # scored out of sample: the operating point may go into the graph
        thresholds = recipe.thresholds(val, prob)
    onnx_path = recipe.export(fitted, out / ONNX_FILE, thresholds)
    parity = recipe.parity(fitted, onnx_path, val, thresholds)
    if prob is None:  # the exported graph scores validation, as serving will
        calibration, prob = calibrate(onnx_outputs(onnx_path, val.inputs)[0], val)
        thresholds = recipe.thresholds(val, prob)

    metrics = recipe.metrics(val, prob, thresholds)
    body = recipe.card(val, fitted)
    card: dict[str, Any] = {
        "name": recipe.name,
        "version": out.name,
        "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        **recipe.describe(fitted, thresholds, calibration),
        "sha256": sha256_of(onnx_path),
        "parity": parity,
        "metrics": {"validation": metrics, **body.pop("metrics", {})},
        **body,
    }
    card["training"] = {
        **card.get("training", {}),
        "command": options.command or f"haidang train {recipe.name}",
        **({"fit_resumed_from": f"{options.resume_fit} (the weights an earlier `haidang train "
            f"{recipe.name}` run saved; every step after the fit ran again)"}
           if options.resume_fit else {}),
        **recipe.run_facts(fitted, time.monotonic() - started),
    }
    if calibration is not None:  # per calibrated output: what `haidang evaluate` reports
        for k, name in enumerate(recipe.outputs):
            section = metrics.setdefault(name, {})
            section.update(output_metrics(val.labels[:, k], prob[:, k], thresholds[k]))
            section["ece_on_calibration_set"] = section["ece"]
            section["ece"] = calibration[k]["ece_cross_fitted"]  # calibrated on other patients
    figures: list[str] = []
    if options.plots:
        from training.plots import write_plots

        for k in range(len(recipe.outputs)):
            named = recipe.plot(k, out.name, len(prob))
            if named:
                figures += [p.name for p in write_plots(
                    val.labels[:, k], prob[:, k], float(thresholds[k]), out, *named)]
    write_card(out, card)
    mv = ModelVersion.load(out)  # the folder must load as written
    paths, facts = recipe.after_written(out, val, fitted, mv)
    figures += [p.name for p in paths]
    card.update(facts)
    if figures:
        card["plots"] = figures
    if figures or facts:
        write_card(out, card)
    if options.promote:
        ModelRegistry(out.parent.parent).promote(out.parent.name, out.name)
    return card


def fit_or_resume(recipe: Recipe, train: Any, out: Path, options: RunOptions) -> Fitted:
    """The recipe's fit, kept for ``--resume-fit``; or the fit an earlier run kept."""
    if options.resume_fit:
        fitted = recipe.resume(Path(options.resume_fit))
        log.info("fit resumed from %s", options.resume_fit)
        return fitted
    fitted = recipe.fit(train, options.progress)
    recipe.save_fit(fitted, Path(options.checkpoint_dir) / f"{recipe.name}-{out.name}.pt")
    return fitted


def write_card(out: Path, card: dict[str, Any]) -> None:
    (out / CARD_FILE).write_text(yaml.safe_dump(card, sort_keys=False, allow_unicode=True,
                                                width=100), encoding="utf-8")


def recipe_resume(recipe: ImageRecipe, saved: dict[str, Any]) -> Fitted:
    """The ``Fitted`` a checkpoint holds, rebuilt with the recipe's own network."""
    model = recipe.empty_model()
    model.load_state_dict(saved["state"])
    return Fitted(model.eval(), saved.get("report", {}), float(saved.get("seconds", 0.0)))


def command_line() -> str:
    return "haidang " + " ".join(shlex.quote(a) for a in sys.argv[1:])
