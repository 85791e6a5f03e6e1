"""The image half of the intended-use gate: is this picture a frontal chest radiograph?

A model must never flag what it was not made for. Headers are often empty or wrong in real
PACS data, so the pixels are judged on their own, whatever the header says:

1. **Rules** for what needs no learning: a uniform or near-empty image (``blank``), and
   noise (neighbouring pixels of a radiograph are strongly correlated, of noise not).
2. **A small learned check** (``gate.onnx`` beside the model, sha256 in the card): a CNN on
   the whole image padded to a square at 64 px, with four classes: frontal chest, the same
   with its grey scale inverted, lateral chest, and anything else (CT, MR, US, NM,
   extremities, ...). It also returns its embedding. The film passes when its frontal
   probability reaches the card's ``min_frontal_probability``, which training reads off
   patients the gate never saw, so it sits on this gate's own score scale (a fixed 0.5
   did not: it moved acceptance by seed alone). Several members may be averaged in the
   one graph.
3. **A feature-space distance**: the Mahalanobis distance of that embedding from the frontal
   chest films it was trained on (``gate.npz``). Few real non-chest images exist to learn
   from, so an image unlike every training film is refused even if the classifier is unsure.

A refusal names the likeliest other class, with one check: ``inverted`` (which tells the
PACS team to fix a photometric setting) is said only when the pixels turned back pass as a
frontal chest film; otherwise the image is ``not_chest``.

Everything comes from the card's ``gate`` section and the files beside the model; refusal
reasons are machine codes plus a Vietnamese and an English sentence for clinicians.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

GATE_SIZE = 64
CLASSES = ("frontal", "inverted", "lateral", "not_chest")

REASONS: dict[str, tuple[str, str]] = {
    "blank": (
        "Ảnh trống hoặc gần như đồng nhất, không có nội dung để phân tích",
        "The image is blank or nearly uniform: nothing to analyse",
    ),
    "noise": (
        "Ảnh chỉ có nhiễu, không phải phim X-quang",
        "The image is noise, not a radiograph",
    ),
    "not_chest": (
        "Không phải phim X-quang ngực thẳng (có thể là CT, MR, siêu âm, y học hạt nhân hoặc "
        "phim chi)",
        "Not a frontal chest radiograph (it may be CT, MR, ultrasound, nuclear medicine or an "
        "extremity film)",
    ),
    "lateral": (
        "Phim ngực nghiêng: mô hình chỉ dành cho phim ngực thẳng (PA/AP)",
        "Lateral chest view: the model is made for frontal (PA/AP) films only",
    ),
    "inverted": (
        "Thang xám bị đảo ngược so với Photometric Interpretation của ảnh",
        "The grey scale is inverted relative to the image's photometric interpretation",
    ),
}


class GateError(RuntimeError):
    """The gate's files are missing or do not match the card; the message says which."""


@dataclass(frozen=True)
class GateVerdict:
    analysed: bool
    reason: str  # machine code, '' when analysed: 'blank', 'noise', 'not_chest', ...
    reason_vi: str  # Vietnamese sentence for clinicians
    reason_en: str


ACCEPTED = GateVerdict(True, "", "", "")


def refused(reason: str) -> GateVerdict:
    vi, en = REASONS[reason]
    return GateVerdict(False, reason, vi, en)


def displayed_unit(image: np.ndarray, photometric: str = "MONOCHROME2") -> np.ndarray | None:
    """The image as displayed (bright = dense) in [0, 1] by its own min..max; None if flat."""
    x = np.asarray(image, dtype=np.float64)
    if x.ndim != 2 or x.size == 0:
        raise ValueError(f"expected a 2-D greyscale image, got shape {x.shape}")
    lo, hi = float(np.min(x)), float(np.max(x))
    if not hi > lo:
        return None
    unit = (x - lo) / (hi - lo)
    if str(photometric).upper() == "MONOCHROME1":
        unit = 1.0 - unit
    return unit


def gate_input(unit: np.ndarray, size: int = GATE_SIZE) -> np.ndarray:
    """[0, 1] image -> float32 [1, size, size]: padded to a square (aspect ratio kept, so a
    tall whole-body scan stays tall), area-resized, normalised like the model input."""
    from serving.imaging.preprocess import area_resize_np

    h, w = unit.shape
    side = max(h, w)
    square = np.zeros((side, side), np.float64)
    top, left = (side - h) // 2, (side - w) // 2
    square[top : top + h, left : left + w] = unit
    small = area_resize_np(square, (size, size))
    return ((small - 0.5) / 0.25)[None].astype(np.float32)


def rule_check(unit: np.ndarray | None, card_rules: dict[str, float],
               raw: np.ndarray | None = None) -> str:
    """'blank', 'noise' or '' from the rules alone.

    ``raw`` (the values before scaling) tells a flat image with sensor noise (a tiny spread
    around a large level: blank) from noise filling the whole range.
    """
    from serving.imaging.preprocess import area_resize_np

    if unit is None:
        return "blank"
    if raw is not None:
        level = float(np.abs(np.mean(raw)))
        raw_spread = float(np.percentile(raw, 99) - np.percentile(raw, 1))
        if level > 0 and raw_spread < card_rules.get("min_relative_spread", 0.02) * level:
            return "blank"
    spread = float(np.percentile(unit, 99) - np.percentile(unit, 1))
    if spread < card_rules.get("min_spread", 0.04):
        return "blank"
    h, w = unit.shape
    scale = max(1, min(h, w) // 128)
    small = area_resize_np(unit, (h // scale, w // scale)) if scale > 1 else unit
    a, b = small[:, :-1].ravel(), small[:, 1:].ravel()
    if a.std() == 0 or b.std() == 0:
        return "blank"
    corr = float(np.corrcoef(a, b)[0, 1])
    if corr < card_rules.get("min_neighbour_correlation", 0.6):
        return "noise"
    return ""


class ImageGate:
    """Judges pixels against the model's intended use (frontal chest radiographs)."""

    def __init__(self, onnx_path: Path, stats: dict[str, np.ndarray], config: dict[str, Any]):
        import onnxruntime as ort

        self.config = config
        self.rules = dict(config.get("rules") or {})
        self.min_frontal = float(config.get("min_frontal_probability", 0.5))
        self.max_distance = float(config["max_distance"])
        self.mean = np.asarray(stats["mean"], np.float64)
        self.precision = np.asarray(stats["precision"], np.float64)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self._session = ort.InferenceSession(
            str(onnx_path), options, providers=["CPUExecutionProvider"]
        )

    @classmethod
    def from_model_dir(cls, model_dir: Path) -> ImageGate:
        """Reads the card's ``gate`` section and ``gate.onnx`` / ``gate.npz`` beside it."""
        from haidang.ground.files import sha256_of as file_sha256

        model_dir = Path(model_dir)
        card = yaml.safe_load((model_dir / "card.yaml").read_text(encoding="utf-8")) or {}
        config = card.get("gate")
        if not config:
            raise GateError(f"{model_dir}/card.yaml has no gate section: train the gate "
                            "(haidang train cxr-gate --out MODEL_DIR)")
        onnx_path = model_dir / config.get("file", "gate.onnx")
        stats_path = model_dir / config.get("stats", "gate.npz")
        for path, key in ((onnx_path, "sha256"), (stats_path, "stats_sha256")):
            if not path.is_file():
                raise GateError(f"{path} is missing: restore it from git or retrain the gate")
            if file_sha256(path) != str(config.get(key, "")):
                raise GateError(f"{path} does not match the sha256 in {model_dir}/card.yaml")
        with np.load(stats_path) as npz:
            stats = {k: npz[k] for k in npz.files}
        return cls(onnx_path, stats, config)

    def scores(self, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Class probabilities [N, 4] and Mahalanobis distances [N] for gate inputs."""
        batch = np.stack(images).astype(np.float32)
        prob, emb = self._session.run(["probabilities", "embedding"], {"image": batch})
        d = emb.astype(np.float64) - self.mean
        distance = np.sqrt(np.maximum(np.einsum("ni,ij,nj->n", d, self.precision, d), 0))
        return prob, distance

    def judge(self, image: np.ndarray, photometric: str = "MONOCHROME2") -> GateVerdict:
        """``image``: 2-D array after modality/VOI LUT, before inversion."""
        unit = displayed_unit(image, photometric)
        rule = rule_check(unit, self.rules, np.asarray(image, np.float64))
        if rule:
            return refused(rule)
        prob, distance = self.scores([gate_input(unit)])
        verdict = self.verdict(prob[0], float(distance[0]))
        if verdict.reason == "inverted":
            # "inverted" tells the PACS team to fix a photometric setting, so say it only when
            # it is true: the same pixels turned back must pass as a frontal chest film. A
            # hand film (bright bones on black) also looks "inverted" to the classifier.
            prob, distance = self.scores([gate_input(1.0 - unit)])
            if not self.verdict(prob[0], float(distance[0])).analysed:
                return refused("not_chest")
        return verdict

    def verdict(self, prob: np.ndarray, distance: float) -> GateVerdict:
        if prob[0] >= self.min_frontal and distance <= self.max_distance:
            return ACCEPTED
        if prob[0] >= self.min_frontal:  # the classifier says chest, but unlike any chest film
            return refused("not_chest")
        return refused(CLASSES[1 + int(np.argmax(prob[1:]))])
