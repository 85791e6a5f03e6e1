"""ONNX export with a parity check: serving runs exactly what was validated.

The graph has one input ``image`` float32 [N, 1, H, W] (N dynamic) and one output
``probability`` float32 [N, 1] (probability of the positive class). After export,
onnxruntime and PyTorch run the same validation images; the export fails when the largest
absolute difference exceeds ``PARITY_TOLERANCE``. The figure goes into the model card.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

PARITY_TOLERANCE = 1e-4
INPUT_NAME = "image"
OUTPUT_NAME = "probability"


class ParityError(RuntimeError):
    """onnxruntime and PyTorch disagree beyond the tolerance: do not ship this graph."""


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export_onnx(model: torch.nn.Module, out: Path, size: tuple[int, int], opset: int = 17) -> Path:
    """Write ``model`` as a single self-contained ONNX file (weights inside)."""
    import onnx

    model.eval()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(2, 1, int(size[0]), int(size[1]), dtype=torch.float32)
    torch.onnx.export(
        model,
        (dummy,),
        str(out),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}},
        opset_version=opset,
        dynamo=False,
    )
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    return out


def parity_check(
    model: torch.nn.Module, onnx_path: Path, x: np.ndarray, tolerance: float = PARITY_TOLERANCE
) -> float:
    """Max |PyTorch - onnxruntime| on ``x`` (N,1,H,W); raises ``ParityError`` above tolerance.

    Runs in two uneven batches so the dynamic batch axis is exercised too.
    """
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = np.ascontiguousarray(x, dtype=np.float32)
    cut = max(1, len(x) // 3)
    ort_out = np.concatenate(
        [
            sess.run([OUTPUT_NAME], {INPUT_NAME: x[:cut]})[0],
            sess.run([OUTPUT_NAME], {INPUT_NAME: x[cut:]})[0],
        ]
    )
    model.eval()
    with torch.no_grad():
        torch_out = model(torch.from_numpy(x)).numpy()
    if ort_out.shape != torch_out.shape:
        raise ParityError(
            f"output shapes differ: onnxruntime {ort_out.shape}, torch {torch_out.shape}"
        )
    diff = float(np.max(np.abs(ort_out - torch_out)))
    if not diff <= tolerance:
        raise ParityError(
            f"max |torch - onnxruntime| = {diff:.3g} > {tolerance:g} on {len(x)} images"
        )
    return diff
