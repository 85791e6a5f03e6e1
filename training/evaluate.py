"""``haidang evaluate``: run a registered model as serving runs it, on data it never saw.

``haidang evaluate MODEL_DIR --data DIR --json [--predictions FILE.csv] [--plots OUT_DIR]``

* ``DIR`` holds ``images/`` (PNG, JPEG or DICOM) and ``labels.csv``: column ``image`` (a path
  relative to ``images/``), optional ``findings`` (NIH style, ``A|B`` or ``No Finding``),
  ``view``, ``age``, ``sex``. A MedMNIST ``.npz`` (``--split``) works too.
* Images go through the card's own preprocessing (``serving.imaging.preprocess``) and the
  serving ``Predictor`` (onnxruntime, the card's calibration and thresholds), so the figures
  are those of the served model. The image gate (``serving.imaging.gate``) judges every
  image; metrics cover every labelled image whatever the gate said (the gate is measured on
  its own), and ``flagged`` is true only for images the gate let through.
* With ``findings``, per output: ``auc``, ``auc_pa``, ``auc_ap``, ``accuracy``,
  ``sensitivity``, ``specificity``, ``threshold``, ``ece``, ``n``. ``abnormal`` is any finding
  vs No Finding; another output is its finding vs every other image (``pneumonia`` also
  gives ``auc_vs_no_finding``).
* Nothing is written into the model folder; ``--plots`` names where the figures go.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from serving.imaging.gate import GateError, ImageGate
from serving.imaging.predictor import Predictor
from serving.imaging.preprocess import file_to_unit, unit_to_model_input
from serving.imaging.session import ModelSession
from serving.registry import ModelVersion
from training.data import DataError, load_npz
from training.metrics import auc, output_metrics

BATCH = 32


def finding_labels(findings: str, output: str) -> int:
    """1 when the NIH ``findings`` string has ``output`` (``abnormal``: any finding)."""
    names = {f.strip().lower() for f in str(findings).split("|") if f.strip()}
    if output == "abnormal":
        return int(bool(names - {"no finding"}))
    return int(output.lower() in names)


def _rows(data: Path, labels_csv: Path | None) -> list[dict[str, str]]:
    path = labels_csv or data / "labels.csv"
    if not path.is_file():
        raise DataError(f"{path} is missing: the data folder needs labels.csv (column image)")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "image" not in rows[0]:
        raise DataError(f"{path} needs a column 'image' (a path relative to images/)")
    return rows


def _folder_batches(data: Path, rows: list[dict[str, str]], spec: dict, gate: ImageGate | None
                    ) -> Iterator[tuple[np.ndarray, list[Any]]]:
    """(model inputs [n, 1, H, W], gate verdicts) per batch of rows."""
    inputs, verdicts = [], []
    for row in rows:
        path = data / "images" / row["image"]
        if not path.is_file():
            raise DataError(f"labels.csv names {row['image']}, not found under {data / 'images'}")
        unit, _ = file_to_unit(path)  # displayed: MONOCHROME1 already inverted
        verdicts.append(gate.judge(unit, "MONOCHROME2") if gate else None)
        inputs.append(unit_to_model_input(unit, spec))
        if len(inputs) == BATCH:
            yield np.stack(inputs), verdicts
            inputs, verdicts = [], []
    if inputs:
        yield np.stack(inputs), verdicts


def evaluate(
    model_dir: Path | str,
    data: Path | str,
    split: str = "test",
    labels_csv: Path | str | None = None,
    predictions: Path | str | None = None,
    plots: Path | str | None = None,
) -> dict[str, Any]:
    """Metrics (and optionally a predictions CSV and plots) of ``model_dir`` on ``data``."""
    model_dir, data = Path(model_dir), Path(data)
    mv = ModelVersion.load(model_dir)
    predictor = Predictor(ModelSession(mv.name, mv.version, mv.onnx_path, mv.sha256, mv.card))
    names = predictor.output_labels()
    spec = dict(mv.card.get("input") or {})
    try:
        gate = ImageGate.from_model_dir(model_dir) if mv.card.get("gate") else None
    except GateError as exc:
        raise DataError(str(exc)) from exc

    if data.suffix == ".npz":
        images = load_npz(data, split, spec)
        from serving.imaging.preprocess import _spec

        s = _spec(spec)
        x = (images.images - np.float32(s["mean"])) / np.float32(s["std"])
        prob = np.concatenate([predictor.scores(x[i : i + BATCH])[0]
                               for i in range(0, len(x), BATCH)])
        rows = [{"image": f"{split}[{i}]"} for i in range(len(images))]
        target = names.index("pneumonia") if "pneumonia" in names else len(names) - 1
        labels = {names[target]: images.labels}
        verdicts: list[Any] = [None] * len(rows)  # 28-px MedMNIST: no gate
        views = None
    else:
        if not data.is_dir():
            raise DataError(f"{data} is neither a folder (images/ + labels.csv) nor a .npz file")
        rows = _rows(data, Path(labels_csv) if labels_csv else None)
        probs, verdicts = [], []
        for batch, judged in _folder_batches(data, rows, spec, gate):
            probs.append(predictor.scores(batch)[0])
            verdicts += judged
        prob = np.concatenate(probs)
        has_findings = "findings" in rows[0]
        labels = ({n: np.asarray([finding_labels(r["findings"], n) for r in rows])
                   for n in names} if has_findings else {})
        views = [r.get("view", "") for r in rows] if "view" in rows[0] else None

    analysed = np.asarray([v is None or v.analysed for v in verdicts])
    thresholds = predictor.thresholds
    flagged = analysed & np.any(
        [prob[:, k] >= thresholds[k] for k in predictor.urgent], axis=0)
    result: dict[str, Any] = {
        "model": mv.name, "version": mv.version, "sha256": mv.sha256, "data": str(data),
        "images": len(rows), "analysed": int(analysed.sum()),
        "refused": _count([v.reason for v in verdicts if v is not None and not v.analysed]),
        "flagged": int(flagged.sum()),
        "urgent": [names[k] for k in predictor.urgent],
        "metrics_on": "every labelled image, whatever the gate said",
        "outputs": {},
    }
    for name, y in labels.items():
        k = names.index(name)
        m = output_metrics(y, prob[:, k], float(thresholds[k]), views)
        if name == "pneumonia" and "abnormal" in labels:
            pair = (labels["abnormal"] == 0) | (y == 1)
            value = auc(y[pair], prob[pair, k])
            m["auc_vs_no_finding"] = round(value, 4) if np.isfinite(value) else None
        result["outputs"][name] = m
    if predictions:
        write_predictions(Path(predictions), rows, verdicts, names, prob, flagged)
        result["predictions"] = str(predictions)
    if plots:
        from training.plots import write_plots

        out, paths = Path(plots), []
        for name, y in labels.items():
            k = names.index(name)
            if len(np.unique(y)) == 2:
                paths += write_plots(y, prob[:, k], float(thresholds[k]), out, f"eval-{name}",
                                     f"{mv.name} {mv.version} {name} (n={len(y)})",
                                     [f"no {name}", name])
        result["plots"] = [str(p) for p in paths]
    return result


def _count(values: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def write_predictions(path: Path, rows, verdicts, names, prob, flagged) -> None:
    """One row per image: image, analysed, reason, one probability column per output,
    flagged."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "analysed", "reason", *names, "flagged"])
        for i, row in enumerate(rows):
            v = verdicts[i]
            w.writerow([row["image"], "true" if v is None or v.analysed else "false",
                        "" if v is None else v.reason,
                        *(f"{p:.6f}" for p in prob[i]), "true" if flagged[i] else "false"])
