"""How the gateway asks for imaging inference, the same way in both deployment modes.

* Embedded (``haidang up``, no ``serving.url``): the model runs in this process; one
  session per model, shared by every caller.
* Split (``serving.url`` set): HTTP to the BentoML service, with a timeout, retries with
  backoff, and round-robin over several replicas (``url = "http://a:3000,http://b:3000"``).
  A replica that fails is skipped for the next attempt.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from typing import Any

import numpy as np

from serving.imaging.predictor import Prediction, Predictor

log = logging.getLogger(__name__)

_EMBEDDED: dict[tuple, tuple[str, Predictor]] = {}
_EMBEDDED_LOCK = threading.Lock()


class ServingUnavailable(RuntimeError):
    """No serving replica answered; the message lists what was tried."""


def embedded_predictor(models_dir, name: str, providers: list[str] | None = None,
                       threads: int = 0) -> Predictor:
    """The process-wide predictor for the registry's current version of a model.

    Loaded once per version: after ``haidang models promote`` the next call loads the new
    version (reading the one-line ``current`` pointer costs microseconds).
    """
    from serving.imaging.session import load_from_registry
    from serving.registry import ModelRegistry

    version = ModelRegistry(models_dir).current_version(name)
    key = (str(models_dir), name, tuple(providers or ()), threads)
    with _EMBEDDED_LOCK:
        loaded = _EMBEDDED.get(key)
        if loaded is None or loaded[0] != version:
            predictor = Predictor(load_from_registry(models_dir, name, providers=providers,
                                                     threads=threads))
            _EMBEDDED[key] = loaded = (version, predictor)
        return loaded[1]


class ImagingClient:
    """``predict`` / ``info`` for one imaging model, in-process or over HTTP."""

    def __init__(self, serving_settings, model: str = "cxr-triage"):
        self.settings = serving_settings
        self.model = model
        urls = [u.strip().rstrip("/") for u in (serving_settings.url or "").split(",")]
        self.urls = [u for u in urls if u]
        self.mode = "http" if self.urls else "embedded"
        self._cycle = itertools.cycle(range(len(self.urls))) if self.urls else None
        self._cycle_lock = threading.Lock()
        self._http = None
        self._info: dict[str, Any] | None = None

    @classmethod
    def from_settings(cls, settings, model: str = "cxr-triage") -> ImagingClient:
        return cls(settings.serving, model)

    # --- embedded -------------------------------------------------------------------------
    def _predictor(self) -> Predictor:
        return embedded_predictor(
            self.settings.models_dir, self.model, self.settings.providers or None,
            self.settings.threads,
        )

    # --- http -----------------------------------------------------------------------------
    def _post(self, route: str, body: dict) -> Any:
        import httpx

        if self._http is None:
            self._http = httpx.Client(timeout=self.settings.timeout_s)
        attempts = max(1, int(self.settings.retries) + 1)
        tried = []
        for attempt in range(attempts):
            with self._cycle_lock:
                url = self.urls[next(self._cycle)]
            try:
                response = self._http.post(f"{url}/{route}", json=body)
            except httpx.HTTPError as exc:
                tried.append(f"{url}: {type(exc).__name__}")
            else:
                if response.status_code < 400:
                    return response.json()
                if response.status_code < 500:
                    raise ValueError(
                        f"serving {url}/{route} refused the request "
                        f"({response.status_code}): {response.text[:300]}"
                    )
                tried.append(f"{url}: HTTP {response.status_code}")
            if attempt + 1 < attempts:
                time.sleep(min(0.2 * 2**attempt, 2.0))
        raise ServingUnavailable(
            f"imaging serving did not answer after {attempts} attempts ({'; '.join(tried)}); "
            "check that `haidang serve-imaging` runs at serving.url, or unset serving.url to run "
            "the model inside the gateway"
        )

    # --- the API --------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """Model identity, provider, threshold and input spec (HTTP: cached after first call)."""
        if self.mode == "embedded":
            return self._predictor().describe()
        if self._info is None:
            self._info = self._post("info", {})
        return self._info

    def input_spec(self) -> dict[str, Any]:
        return dict(self.info().get("input") or {})

    def predict(self, images: np.ndarray) -> list[Prediction]:
        """One Prediction per preprocessed image ([N, C, H, W] or [N, H, W]).

        Each carries its class activation maps (``cams``) when the model has them: the heat
        map comes with the scores, from the same run.
        """
        images = np.asarray(images, dtype=np.float32)
        if images.ndim == 3:
            images = images[:, None]
        if self.mode == "embedded":
            return self._predictor().predict(images)
        results = self._post("predict", {"images": images.tolist()})
        return [Prediction.model_validate(r) for r in results]

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None
