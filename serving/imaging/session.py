"""One onnxruntime session per model, with the execution provider chosen once at start.

CUDA is used when onnxruntime offers it (``onnxruntime-gpu`` on a GPU machine), the CPU
provider otherwise: the same code path either way. The session remembers which model
(name, version, sha256) it runs so every result can say where it came from.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from haidang.ground.files import sha256_of

log = logging.getLogger(__name__)

PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
# The CUDA provider's options as served. TF32 off: with onnxruntime's default (TF32 allowed
# in convolutions) a probability differed from the CPU's by up to 6.4e-5 on the H100, enough
# to flip a verdict that close to the card's threshold, so the same image could be flagged on
# one machine and not on another. Strict float32 agrees with the CPU within 4.2e-7 and cost
# nothing measurable at the served batch sizes (1-32; bench/inference/RESULTS.md, CUDA).
CUDA_OPTIONS = {"use_tf32": "0"}


def provider_arguments(chosen: list[str]) -> list:
    """`chosen` as `InferenceSession(providers=...)` takes it: CUDA with `CUDA_OPTIONS`."""
    return [(p, dict(CUDA_OPTIONS)) if p == "CUDAExecutionProvider" else p for p in chosen]


def choose_providers(requested: list[str] | None = None) -> list[str]:
    """The providers to use: the requested ones that exist, else CUDA when available, else CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if requested:
        missing = [p for p in requested if p not in available]
        if missing:
            raise RuntimeError(
                f"onnxruntime providers {missing} are not available here (available: {available}); "
                "fix serving.providers in the settings or leave it empty for automatic choice"
            )
        return list(requested)
    return [p for p in PREFERRED_PROVIDERS if p in available] or ["CPUExecutionProvider"]


def session_options(threads: int = 0):
    """The SessionOptions serving uses (the inference benchmark and profile reuse them).

    All graph optimisations: on CPU they fold, fuse Conv+Add+ReLU and switch the
    convolutions to onnxruntime's blocked NCHWc kernels, which run this model's batch-32
    convolutions at ~90% of the cores' FP32 FMA peak (bench/inference/RESULTS.md). The
    other knobs (spinning, arena, memory pattern, denormals-as-zero, a fixed batch size,
    IOBinding) measured within noise of onnxruntime's defaults, so they stay default;
    spinning in particular is kept: off, batch-1 latency rose 23-35%. ``threads`` 0 = one
    intra-op thread per physical core.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


@dataclass
class ModelSession:
    """An onnxruntime InferenceSession plus the identity of the model it runs."""

    name: str
    version: str
    onnx_path: Path
    sha256: str
    card: dict[str, Any] = field(default_factory=dict)
    providers: list[str] | None = None
    threads: int = 0

    def __post_init__(self) -> None:
        import onnxruntime as ort

        self.onnx_path = Path(self.onnx_path)
        if not self.onnx_path.is_file():
            raise FileNotFoundError(
                f"model file {self.onnx_path} is missing; register the model with `haidang models`"
            )
        actual = sha256_of(self.onnx_path)
        if self.sha256 and actual != self.sha256:
            raise RuntimeError(
                f"{self.onnx_path}: sha256 {actual[:12]}… does not match the registry's "
                f"{self.sha256[:12]}…; the file was changed after registration"
            )
        self.sha256 = actual
        chosen = choose_providers(self.providers)
        self._session = ort.InferenceSession(
            str(self.onnx_path), session_options(self.threads),
            providers=provider_arguments(chosen),
        )
        self.provider = self._session.get_providers()[0]
        self.input_name = self._session.get_inputs()[0].name
        self.input_shape = list(self._session.get_inputs()[0].shape)
        self.output_name = self._session.get_outputs()[0].name
        self.output_names = [o.name for o in self._session.get_outputs()]
        log.info(
            "model %s %s (sha256 %s) on %s",
            self.name,
            self.version,
            self.sha256[:12],
            self.provider,
        )

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Raw model output for a float32 batch shaped like the model's input."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        return self._session.run([self.output_name], {self.input_name: batch})[0]

    def run_all(self, batch: np.ndarray) -> list[np.ndarray]:
        """Every output of the graph (e.g. ``logits`` and ``cam``) from one run."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        return self._session.run(self.output_names, {self.input_name: batch})

    def info(self) -> dict[str, str]:
        return {
            "model": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "provider": self.provider,
        }


def load_from_registry(
    models_dir: Path, name: str, providers: list[str] | None = None, threads: int = 0
) -> ModelSession:
    """The current version of ``name`` in the registry at ``models_dir``, ready to run."""
    from serving.registry import ModelRegistry

    mv = ModelRegistry(Path(models_dir)).current(name)
    card = mv.card if isinstance(mv.card, dict) else _as_dict(mv.card)
    return ModelSession(
        name=mv.name,
        version=str(mv.version),
        onnx_path=Path(mv.onnx_path),
        sha256=mv.sha256 or "",
        card=card,
        providers=providers,
        threads=threads,
    )


def _as_dict(card: Any) -> dict[str, Any]:
    if hasattr(card, "model_dump"):
        return card.model_dump(mode="json")
    return dict(card)
