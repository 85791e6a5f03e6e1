"""ONNX export with a parity check: serving runs exactly what was validated.

Every trainer uses these: one export, one parity check, one ``ParityError``. The graph has
one input ``image`` float32 [N, 1, H, W] (N dynamic) and the outputs the model names
(``probability`` [N, 1] for cxr-pneumonia; ``logits`` [N, K] and ``cam`` [N, K, h, w] for
cxr-triage). After export, onnxruntime and PyTorch run the same validation images; the
export fails when the largest absolute difference of any output exceeds the tolerance. The
figure goes into the model card.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from haidang.ground.files import sha256_of  # noqa: F401 - the trainers take it from here

PARITY_TOLERANCE = 1e-4
INPUT_NAME = "image"
OUTPUT_NAME = "probability"


class ParityError(RuntimeError):
    """onnxruntime and the training framework disagree beyond the tolerance: do not ship."""


def export_onnx(
    model,
    out: Path,
    size: Sequence[int],
    opset: int = 17,
    output_names: Sequence[str] = (OUTPUT_NAME,),
) -> Path:
    """Write ``model`` as a single self-contained ONNX file (weights inside), dynamic batch."""
    import onnx
    import torch

    model.eval()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(2, 1, int(size[0]), int(size[1]), dtype=torch.float32)
    torch.onnx.export(
        model,
        (dummy,),
        str(out),
        input_names=[INPUT_NAME],
        output_names=list(output_names),
        dynamic_axes={INPUT_NAME: {0: "N"}, **{name: {0: "N"} for name in output_names}},
        opset_version=opset,
        dynamo=False,
    )
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    return out


def parity_check(model, onnx_path: Path, x: np.ndarray, tolerance: float = PARITY_TOLERANCE):
    """Max |PyTorch - onnxruntime| over every output on ``x`` (N,1,H,W); raises
    ``ParityError`` above tolerance. Runs in two uneven batches so the dynamic batch axis is
    exercised too.
    """
    import onnxruntime as ort
    import torch

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    x = np.ascontiguousarray(x, dtype=np.float32)
    cut = max(1, len(x) // 3)
    parts = [sess.run(names, {INPUT_NAME: x[:cut]}), sess.run(names, {INPUT_NAME: x[cut:]})]
    model.eval()
    with torch.no_grad():
        torch_out = model(torch.from_numpy(x))
    if isinstance(torch_out, torch.Tensor):
        torch_out = (torch_out,)
    diff = 0.0
    for k, name in enumerate(names):
        ort_out = np.concatenate([p[k] for p in parts])
        ref = torch_out[k].numpy()
        if ort_out.shape != ref.shape:
            raise ParityError(
                f"output {name} shapes differ: onnxruntime {ort_out.shape}, torch {ref.shape}"
            )
        diff = max(diff, float(np.max(np.abs(ort_out - ref))))
    if not diff <= tolerance:
        raise ParityError(
            f"max |torch - onnxruntime| = {diff:.3g} > {tolerance:g} on {len(x)} images"
        )
    return diff
