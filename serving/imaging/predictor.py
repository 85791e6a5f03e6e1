"""Batched prediction: model output to calibrated probabilities and findings, using the card.

Thresholds and calibration come from the model card, never from code, so a retrained
model with a new operating point changes behaviour only through its registration.

Two card shapes are served:

* one output (``cxr-pneumonia``): ``output`` + ``threshold``, a probability per image;
* several outputs (``cxr-triage``): ``outputs`` lists each label with its ``threshold`` and
  its ``calibration`` (Platt: ``p = sigmoid(slope * logit + intercept)``, fitted on
  validation); ``urgent`` names the outputs whose finding makes a study URGENT. The graph
  also returns a class activation map per output from the same forward pass, so the heat
  map costs no second run. ``calibrated`` is the one function that turns logits into
  probabilities: ``haidang evaluate`` calls it too, so serving and evaluation agree.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel

from serving.imaging.session import ModelSession


class Prediction(BaseModel):
    """One image's result, carrying the identity of the model that produced it.

    ``probability``/``finding``/``threshold`` are those of the urgent output (the most
    probable one when several are urgent); ``probabilities``/``findings`` give every output,
    ``cams`` its class activation map (model feature grid, e.g. 7x7) when the graph has one.
    """

    probability: float
    finding: bool
    label: str
    threshold: float
    probabilities: dict[str, float] = {}
    findings: dict[str, bool] = {}
    cams: dict[str, list[list[float]]] = {}
    model: str
    version: str
    sha256: str
    provider: str


def _first_number(value: Any) -> float | None:
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, dict):
        for key in ("operating", "default", "value", "youden", "threshold"):
            if isinstance(value.get(key), int | float):
                return float(value[key])
        for v in value.values():
            if isinstance(v, int | float):
                return float(v)
            if isinstance(v, dict) and isinstance(v.get("value"), int | float):
                return float(v["value"])
    return None


def card_threshold(card: dict[str, Any]) -> float:
    """The decision threshold the model card declares (``threshold`` or ``thresholds``)."""
    for key in ("threshold", "decision_threshold", "thresholds"):
        if key in card:
            value = _first_number(card[key])
            if value is not None:
                return value
    output = card.get("output") or card.get("outputs") or {}
    if isinstance(output, dict):
        value = _first_number(output.get("threshold"))
        if value is not None:
            return value
    raise ValueError("model card has no decision threshold; add `threshold:` to card.yaml")


def card_labels(card: dict[str, Any]) -> list[str]:
    """Class names, negative first (default: normal, pneumonia)."""
    labels = card.get("labels")
    if isinstance(labels, dict):
        labels = [labels[k] for k in sorted(labels, key=lambda k: int(k))]
    if isinstance(labels, list) and len(labels) >= 2:
        return [str(x) for x in labels]
    return ["normal", "pneumonia"]


def card_activation(card: dict[str, Any]) -> str | None:
    """``output.activation`` from the card; an output named ``probability`` needs none."""
    output = card.get("output") or {}
    if isinstance(output, dict) and output.get("activation"):
        return str(output["activation"]).lower()
    if isinstance(output, dict) and str(output.get("name", "")).lower() == "probability":
        return "none"
    return None


def to_probability(raw: np.ndarray, activation: str | None = None) -> np.ndarray:
    """Positive-class probability per row from logits or probabilities ([N], [N,1] or [N,2])."""
    raw = np.asarray(raw, dtype=np.float64)
    raw = raw.reshape(raw.shape[0], -1)
    if raw.shape[1] >= 2:
        if activation in ("softmax", "logits", None) and not (
            activation is None
            and np.all((raw >= 0) & (raw <= 1))
            and np.allclose(raw.sum(1), 1, atol=1e-3)
        ):
            e = np.exp(raw - raw.max(1, keepdims=True))
            raw = e / e.sum(1, keepdims=True)
        return raw[:, 1]
    col = raw[:, 0]
    if activation in ("sigmoid", "logit", "logits") or (
        activation is None and (col.min(initial=0) < 0 or col.max(initial=0) > 1)
    ):
        col = 1.0 / (1.0 + np.exp(-col))
    return col


def card_outputs(card: dict[str, Any]) -> list[dict[str, Any]]:
    """The multi-output section of a card (``outputs``), or [] for a one-output card."""
    outputs = card.get("outputs")
    return [dict(o) for o in outputs] if isinstance(outputs, list) else []


def calibrated(logits: np.ndarray, outputs: list[dict[str, Any]]) -> np.ndarray:
    """Logits [N, K] -> calibrated probabilities [N, K] with each output's Platt parameters.

    The only place calibration is applied: serving (``Predictor``) and ``haidang evaluate``
    both call it.
    """
    z = np.asarray(logits, dtype=np.float64).reshape(len(logits), -1)
    if z.shape[1] != len(outputs):
        raise ValueError(f"model returned {z.shape[1]} outputs, its card lists {len(outputs)}")
    slope = np.asarray([float(o.get("calibration", {}).get("slope", 1.0)) for o in outputs])
    intercept = np.asarray(
        [float(o.get("calibration", {}).get("intercept", 0.0)) for o in outputs]
    )
    return 1.0 / (1.0 + np.exp(-(z * slope + intercept)))


class Predictor:
    """Turns preprocessed images into Predictions, in batches of at most ``max_batch``."""

    def __init__(self, session: ModelSession, max_batch: int = 32):
        self.session = session
        self.max_batch = max_batch
        card = session.card
        self.outputs = card_outputs(card)
        if self.outputs:
            self.labels = [str(o["name"]) for o in self.outputs]
            self.thresholds = np.asarray([float(o["threshold"]) for o in self.outputs])
            urgent = card.get("urgent") or self.labels
            self.urgent = [self.labels.index(u) for u in urgent]
            self.threshold = float(self.thresholds[self.urgent[0]])
        else:
            self.labels = card_labels(card)
            self.threshold = card_threshold(card)
            self.thresholds = np.asarray([self.threshold])
            self.urgent = [0]
        self.activation = card_activation(card)

    def describe(self) -> dict[str, Any]:
        """Identity plus what a client needs to prepare inputs (the card's input section)."""
        return {
            **self.session.info(),
            "threshold": self.threshold,
            "labels": self.labels,
            "thresholds": dict(zip(self.output_labels(), self.thresholds.tolist(), strict=True)),
            "urgent": [self.output_labels()[k] for k in self.urgent],
            "input": dict(self.session.card.get("input") or {}),
            "input_shape": self.session.input_shape,
        }

    def output_labels(self) -> list[str]:
        """One name per probability column (the positive label of a one-output model)."""
        return self.labels if self.outputs else [self.labels[1]]

    def scores(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Calibrated probabilities [N, K] and class activation maps [N, K, h, w] (or None)."""
        images = np.asarray(images, dtype=np.float32)
        if images.ndim == 3:
            images = images[:, None]
        probs, cams = [], []
        for start in range(0, len(images), self.max_batch):
            raw = self.session.run_all(images[start : start + self.max_batch])
            if self.outputs:
                probs.append(calibrated(raw[0], self.outputs))
                if len(raw) > 1:
                    cams.append(np.asarray(raw[1], np.float32))
            else:
                probs.append(to_probability(raw[0], self.activation)[:, None])
        k = len(self.output_labels())
        prob = np.concatenate(probs) if probs else np.zeros((0, k))
        return prob, (np.concatenate(cams) if cams else None)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """The urgent output's probability per image [N] (the first urgent output)."""
        return self.scores(images)[0][:, self.urgent[0]]

    def predict(self, images: np.ndarray) -> list[Prediction]:
        info = self.session.info()
        prob, cams = self.scores(images)
        names = self.output_labels()
        results = []
        for i, row in enumerate(prob):
            hits = row >= self.thresholds
            k = max(self.urgent, key=lambda j: row[j])
            finding = bool(any(hits[j] for j in self.urgent))
            if self.outputs:
                label = names[k] if finding else "no urgent finding"
            else:
                label = self.labels[1 if finding else 0]
            results.append(
                Prediction(
                    probability=float(row[k]),
                    finding=finding,
                    label=label,
                    threshold=float(self.thresholds[k]),
                    probabilities={n: float(v) for n, v in zip(names, row, strict=True)},
                    findings={n: bool(h) for n, h in zip(names, hits, strict=True)},
                    cams={}
                    if cams is None
                    else {n: np.round(c, 5).tolist() for n, c in zip(names, cams[i], strict=True)},
                    model=info["model"],
                    version=info["version"],
                    sha256=info["sha256"],
                    provider=info["provider"],
                )
            )
        return results
