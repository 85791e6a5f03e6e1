"""Per-operator profiles behind the inference benchmark: where each runtime spends a batch.

onnxruntime: the served SessionOptions (``serving.imaging.session.session_options``) with
profiling on; prints the graph after optimisation (fused NCHWc convolutions) and the mean
time per node. PyTorch eager: ``torch.profiler`` over the same trained weights
(``run.torch_from_onnx``). Profilers add overhead: read the shares, not the totals.

    python -m bench.inference.profile [--batch 32] [--threads 2] [--calls 30]
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.inference import run  # the benchmark's loaders: same model, same inputs


def onnxruntime_profile(onnx_path: Path, x: np.ndarray, threads: int, calls: int) -> None:
    import onnx
    import onnxruntime as ort

    from serving.imaging.session import session_options

    workdir = Path(tempfile.mkdtemp())
    options = session_options(threads)
    options.enable_profiling = True
    options.profile_file_prefix = str(workdir / "ort")
    options.optimized_model_filepath = str(workdir / "optimised.onnx")
    sess = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    print("onnxruntime graph after optimisation:")
    for node in onnx.load(str(workdir / "optimised.onnx")).graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute
                 if a.name in ("activation", "kernel_shape", "strides")}
        fused_add = " + Add" if node.op_type == "Conv" and len(node.input) == 4 else ""
        print(f"  {node.domain or 'ai.onnx'}:{node.op_type}{fused_add} {attrs}")
    for _ in range(5):
        sess.run(None, {"image": x})
    for _ in range(calls):
        sess.run(None, {"image": x})
    events = json.loads(Path(sess.end_profiling()).read_text())
    total: dict[str, float] = collections.defaultdict(float)
    count: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = e.get("args", {}).get("op_name", "?")
            key = f"{op:<18} {e['name'][:-len('_kernel_time')]}"
            total[key] += e["dur"]
            count[key] += 1
    grand = sum(total.values())
    print(f"\nonnxruntime, batch {len(x)}: mean us per call and share, by node")
    for key, us in sorted(total.items(), key=lambda kv: -kv[1]):
        print(f"  {us / count[key]:9.1f} us {100 * us / grand:5.1f}%  {key}")


def torch_profile(model, x: np.ndarray, calls: int) -> None:
    import torch

    xt = torch.from_numpy(x)
    with torch.inference_mode():
        for _ in range(5):
            model(xt)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(calls):
                model(xt)
    print(f"\nPyTorch eager, batch {len(x)}:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=30)
    args = ap.parse_args()

    import torch

    from serving.imaging.session import load_from_registry

    torch.set_num_threads(args.threads)
    session = load_from_registry(run.ROOT / "models", run.MODEL,
                                 providers=["CPUExecutionProvider"], threads=args.threads)
    spec = session.card.get("input") or {}
    images = run.sample_inputs(spec)
    x = np.ascontiguousarray(np.resize(images, (args.batch, *images.shape[1:])), np.float32)
    onnxruntime_profile(session.onnx_path, x, args.threads, args.calls)
    torch_profile(run.torch_from_onnx(session.onnx_path, run.network_config(session.card)), x,
                  args.calls)
    return 0


if __name__ == "__main__":
    sys.exit(main())
