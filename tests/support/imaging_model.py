"""Tiny real ONNX models for imaging tests, written with onnx.helper (no training needed).

* ``build_onnx``: one output, logit = 8·mean(top-left 14×14 of a 28×28 image) − 4, so a
  bright top-left quarter means "pneumonia".
* ``build_cam_onnx``: the cxr-triage contract: ``logits`` [N, 2] and ``cam`` [N, 2, 7, 7]
  from one graph; the feature map is the image average-pooled to 7×7, each output's map is
  a weight times it, and each logit is its map's mean plus a bias. A bright top-left
  quarter therefore lights the top-left of the map: a known answer for heat maps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

SIZE = 28


def weights() -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), dtype=np.float32)
    mask[: SIZE // 2, : SIZE // 2] = 8.0 / (SIZE // 2) ** 2
    return mask.reshape(-1, 1)


REPO_MODELS = Path(__file__).resolve().parents[2] / "models"


def build_onnx(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(weights(), "w")
    b = numpy_helper.from_array(np.array([-4.0], dtype=np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["image"], ["flat"], axis=1),
         helper.make_node("MatMul", ["flat", "w"], ["mm"]),
         helper.make_node("Add", ["mm", "b"], ["logit"])],
        "quadrant",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, SIZE, SIZE])],
        [helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["N", 1])],
        initializer=[w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


CARD = {
    "name": "cxr-triage",
    "version": "0.0.1-test",
    "labels": ["normal", "pneumonia"],
    "threshold": 0.5,
    "output": {"activation": "sigmoid"},
    "input": {"size": [SIZE, SIZE], "channels": 1},
}


CAM_WEIGHTS = (2.0, 16.0)  # abnormal, pneumonia
CAM_BIASES = (-1.0, -3.0)
CAM_CARD = {
    "name": "cxr-triage",
    "version": "0.0.2-test",
    "labels": ["abnormal", "pneumonia"],
    "urgent": ["pneumonia"],
    "outputs": [
        {"name": "abnormal", "threshold": 0.45,
         "calibration": {"slope": 0.5, "intercept": 0.2}},
        {"name": "pneumonia", "threshold": 0.5,
         "calibration": {"slope": 1.5, "intercept": -0.25}},
    ],
    "output": {"name": "logits", "activation": "calibrated sigmoid"},
    "input": {"size": [SIZE, SIZE], "channels": 1},
}


def build_cam_onnx(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.asarray(CAM_WEIGHTS, np.float32).reshape(2, 1, 1, 1), "w")
    b = numpy_helper.from_array(np.asarray(CAM_BIASES, np.float32), "b")
    axes = numpy_helper.from_array(np.asarray([2, 3], np.int64), "axes")
    graph = helper.make_graph(
        [helper.make_node("AveragePool", ["image"], ["feat"], kernel_shape=[4, 4],
                          strides=[4, 4]),
         helper.make_node("Conv", ["feat", "w"], ["cam"]),
         helper.make_node("ReduceMean", ["cam", "axes"], ["pooled"], keepdims=0),
         helper.make_node("Add", ["pooled", "b"], ["logits"])],
        "cam",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2]),
         helper.make_tensor_value_info("cam", TensorProto.FLOAT, ["N", 2, 7, 7])],
        initializer=[w, b, axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def build_registry(root: Path, name: str = "cxr-triage", version: str = "0.0.1-test") -> Path:
    """``root/<name>/<version>/{model.onnx,card.yaml}`` plus ``root/<name>/current``.

    The small test model stands behind the committed model's real intended-use gate (its
    ``gate.onnx``, ``gate.npz``, ``gate`` and ``population`` card sections), so a study goes
    through the gateway exactly as with the served model."""
    vdir = root / name / version
    import hashlib
    import shutil

    onnx_path = build_onnx(vdir / "model.onnx")
    sha = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    card = {**CARD, "name": name, "version": version, "sha256": sha}
    shipped = REPO_MODELS / "cxr-triage"
    if (shipped / "current").is_file():
        served = shipped / (shipped / "current").read_text().strip()
        served_card = yaml.safe_load((served / "card.yaml").read_text(encoding="utf-8"))
        for key in ("gate", "population"):
            if key in served_card:
                card[key] = served_card[key]
        for extra in ("gate.onnx", "gate.npz"):
            if (served / extra).is_file():
                shutil.copy(served / extra, vdir / extra)
    (vdir / "card.yaml").write_text(yaml.safe_dump(card))
    (root / name / "current").write_text(version + "\n")
    return root


def bright_top_left(n: int = 1) -> np.ndarray:
    img = np.zeros((n, 1, SIZE, SIZE), dtype=np.float32)
    img[:, :, : SIZE // 2, : SIZE // 2] = 1.0
    return img
