"""A tiny real ONNX model for imaging tests: pneumonia probability from the top-left quarter.

logit = 8·mean(top-left 14×14 of a 28×28 image) − 4, so a bright top-left quarter means
"pneumonia" and occluding that quarter lowers the probability: explanation maps can be
checked against a known answer. Written with onnx.helper, no training needed.
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
    "name": "cxr-pneumonia",
    "version": "0.0.1-test",
    "labels": ["normal", "pneumonia"],
    "threshold": 0.5,
    "output": {"activation": "sigmoid"},
    "input": {"size": [SIZE, SIZE], "channels": 1},
}


def build_registry(root: Path, name: str = "cxr-pneumonia", version: str = "0.0.1-test") -> Path:
    """``root/<name>/<version>/{model.onnx,card.yaml}`` plus ``root/<name>/current``."""
    vdir = root / name / version
    import hashlib

    onnx_path = build_onnx(vdir / "model.onnx")
    sha = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    (vdir / "card.yaml").write_text(
        yaml.safe_dump({**CARD, "name": name, "version": version, "sha256": sha}))
    (root / name / "current").write_text(version + "\n")
    return root


def bright_top_left(n: int = 1) -> np.ndarray:
    img = np.zeros((n, 1, SIZE, SIZE), dtype=np.float32)
    img[:, :, : SIZE // 2, : SIZE // 2] = 1.0
    return img
