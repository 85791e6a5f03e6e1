"""The BentoML imaging service for split mode (``haidang serve-imaging``).

Run directly with ``bentoml serve serving.imaging_service:ImagingService``.

One onnxruntime session per model, loaded from the registry (``serving.models_dir``) at
start, providers chosen once (CUDA when available, else CPU). ``/predict`` is batchable:
BentoML's adaptive batching merges concurrent requests into one ``session.run``. Every
result, and ``/info``, names the provider, model, version and sha256.

Settings come from ``$HAIDANG_CONFIG`` and ``HAIDANG_SERVING__*`` variables, as for every
other part of Haidang. BentoML's own INFO lines (an access line per request) show only
when ``logging.third_party_level`` is INFO or DEBUG, as for every other library; the
warm-up runs one prediction before the service answers, so the first study does not pay
for the session's first run. Several replicas may run behind one address (or be listed in the
gateway's ``serving.url``, comma-separated); they share nothing.
"""

from __future__ import annotations

import logging
import os

import bentoml
import numpy as np

IMAGING_MODEL = os.environ.get("HAIDANG_IMAGING_MODEL", "cxr-triage")
MAX_BATCH = int(os.environ.get("HAIDANG_IMAGING_MAX_BATCH", "32"))
MAX_LATENCY_MS = int(os.environ.get("HAIDANG_IMAGING_MAX_LATENCY_MS", "1000"))
# as set by `haidang serve` (haidang.ground.logs.set_third_party_level), inherited by this process
THIRD_PARTY_LEVEL = os.environ.get("HAIDANG_LOGGING__THIRD_PARTY_LEVEL", "WARNING").upper()
BENTOML_INFO = logging.getLevelName(THIRD_PARTY_LEVEL) <= logging.INFO
logging.getLogger("bentoml").setLevel(THIRD_PARTY_LEVEL)


@bentoml.service(name="haidang-imaging", traffic={"timeout": 60}, workers=1,
                 logging={"access": {"enabled": BENTOML_INFO}})
class ImagingService:
    """Chest X-ray triage on preprocessed inputs ([N, 1, H, W] float32)."""

    def __init__(self) -> None:
        from haidang.ground.settings import load_settings
        from serving.imaging.predictor import Predictor
        from serving.imaging.session import load_from_registry

        settings = load_settings()
        session = load_from_registry(settings.serving.models_dir, IMAGING_MODEL,
                                     providers=settings.serving.providers or None)
        self.predictor = Predictor(session, max_batch=MAX_BATCH)
        shape = [1 if not isinstance(d, int) or d < 1 else d for d in session.input_shape]
        self.predictor.predict(np.zeros(shape, np.float32))  # warm-up: the first run is slow

    @bentoml.api(batchable=True, batch_dim=0, max_batch_size=MAX_BATCH,
                 max_latency_ms=MAX_LATENCY_MS)
    def predict(self, images: np.ndarray) -> list[dict]:
        """One result per image: calibrated probabilities, findings, activation maps, identity."""
        return [p.model_dump() for p in self.predictor.predict(images)]

    @bentoml.api(route="/info")
    def info(self) -> dict:
        """Which model (name, version, sha256) runs on which execution provider."""
        return self.predictor.describe()
