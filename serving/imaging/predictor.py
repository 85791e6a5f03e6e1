"""Batched prediction: model output to a probability and a finding, using the model card.

The decision threshold comes from the model card, never from code, so a retrained
model with a new operating point changes behaviour only through its registration.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel

from serving.imaging.session import ModelSession


class Prediction(BaseModel):
    """One image's result, carrying the identity of the model that produced it."""

    probability: float
    finding: bool
    label: str
    threshold: float
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


class Predictor:
    """Turns preprocessed images into Predictions, in batches of at most ``max_batch``."""

    def __init__(self, session: ModelSession, max_batch: int = 32):
        self.session = session
        self.max_batch = max_batch
        self.threshold = card_threshold(session.card)
        self.labels = card_labels(session.card)
        self.activation = card_activation(session.card)

    def describe(self) -> dict[str, Any]:
        """Identity plus what a client needs to prepare inputs (the card's input section)."""
        return {
            **self.session.info(),
            "threshold": self.threshold,
            "labels": self.labels,
            "input": dict(self.session.card.get("input") or {}),
            "input_shape": self.session.input_shape,
        }

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Positive-class probabilities for images shaped [N, C, H, W] (or [N, H, W])."""
        images = np.asarray(images, dtype=np.float32)
        if images.ndim == 3:
            images = images[:, None]
        out = []
        for start in range(0, len(images), self.max_batch):
            raw = self.session.run(images[start : start + self.max_batch])
            out.append(to_probability(raw, self.activation))
        return np.concatenate(out) if out else np.zeros(0)

    def predict(self, images: np.ndarray) -> list[Prediction]:
        info = self.session.info()
        results = []
        for p in self.probabilities(images):
            finding = bool(p >= self.threshold)
            results.append(
                Prediction(
                    probability=float(p),
                    finding=finding,
                    label=self.labels[1 if finding else 0],
                    threshold=self.threshold,
                    model=info["model"],
                    version=info["version"],
                    sha256=info["sha256"],
                    provider=info["provider"],
                )
            )
        return results
