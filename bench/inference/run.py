"""onnxruntime vs PyTorch eager on the same triage network and the same inputs.

The network is the one ``training.cxr_pneumonia`` trains (MONAI ResNet ensemble, as the
model card's training config describes, else the defaults); it is exported to ONNX with
the project's own exporter, so both runtimes execute identical weights. Inputs are the
sample studies, preprocessed by serving's chain, tiled to the batch size. Both runtimes
get the same number of threads. With onnxruntime's CUDA provider present, a CUDA row is
added.

    python bench/inference/run.py [--seconds 3] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def sample_inputs(spec: dict) -> np.ndarray:
    import pydicom

    from serving.imaging.preprocess import dicom_to_model_input

    files = sorted((ROOT / "datasets" / "samples").glob("cxr-*.dcm"))
    if not files:
        raise SystemExit("no sample studies in datasets/samples")
    return np.stack([dicom_to_model_input(pydicom.dcmread(f), spec) for f in files])


def network_config():
    import yaml

    from training.cxr_pneumonia import TrainConfig

    cfg = TrainConfig()
    current = ROOT / "models" / "cxr-pneumonia" / "current"
    if current.is_file():
        card = yaml.safe_load((current.parent / current.read_text().strip() / "card.yaml")
                              .read_text(encoding="utf-8"))
        train = (card.get("training") or {}).get("config") or {}
        for key in ("widths", "layers", "seeds"):
            if key in train:
                setattr(cfg, key, train[key])
        return cfg, card.get("input") or {}
    return cfg, {}


def timed(fns: dict, seconds: float, rounds: int = 5) -> dict[str, float]:
    """Median seconds per call for each function, measured in alternating rounds.

    The machine is shared: alternating the runtimes spreads any burst of outside load
    over both, and the median ignores the calls that a burst hit.
    """
    for fn in fns.values():
        for _ in range(3):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            end = time.perf_counter() + seconds / rounds
            while time.perf_counter() < end:
                t = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t)
    return {name: float(np.median(v)) for name, v in samples.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    import onnxruntime as ort
    import torch

    from training.cxr_pneumonia import TriageModel, build_network
    from training.export import export_onnx

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    cfg, spec = network_config()
    model = TriageModel([build_network(cfg) for _ in cfg.seeds]).eval()
    size = tuple(spec.get("size", [28, 28]))
    images = sample_inputs(spec)
    onnx_path = export_onnx(model, Path(tempfile.mkdtemp()) / "model.onnx", size)

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    sessions = {"onnxruntime CPU": ort.InferenceSession(str(onnx_path), options,
                                                          providers=["CPUExecutionProvider"])}
    if "CUDAExecutionProvider" in ort.get_available_providers():
        sessions["onnxruntime CUDA"] = ort.InferenceSession(
            str(onnx_path), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])

    rows = []
    for batch in (1, 32):
        x = np.ascontiguousarray(np.resize(images, (batch, *images.shape[1:])), np.float32)
        xt = torch.from_numpy(x)
        fns = {"PyTorch eager (CPU)": lambda xt=xt: model(xt)}
        for name, sess in sessions.items():
            fns[name] = lambda s=sess, x=x: s.run(None, {s.get_inputs()[0].name: x})
        with torch.inference_mode():
            reference = model(xt).numpy()
            median = timed(fns, args.seconds * len(fns))
        torch_ips = batch / median["PyTorch eager (CPU)"]
        for name, sec in median.items():
            if name in sessions:
                sess = sessions[name]
                out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
                diff = float(np.abs(out - reference).max())
            else:
                diff = 0.0
            rows.append({"runtime": name, "batch": batch, "images_per_s": batch / sec,
                         "ms_per_batch": 1000 * sec, "speedup": batch / sec / torch_ips,
                         "max_abs_diff": diff})

    params = sum(p.numel() for p in model.parameters())
    print(f"model: TriageModel, {len(cfg.seeds)} x MONAI ResNet widths={cfg.widths} "
          f"layers={cfg.layers}, {params / 1e6:.2f} M parameters, input {size}; "
          f"threads={args.threads}; torch {torch.__version__}, onnxruntime {ort.__version__}; "
          f"{platform.processor() or platform.machine()}")
    print("\n| runtime | batch | images/s | median ms per batch | vs PyTorch | max abs diff |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['runtime']} | {r['batch']} | {r['images_per_s']:.0f} | "
              f"{r['ms_per_batch']:.2f} | {r['speedup']:.2f}x | {r['max_abs_diff']:.1e} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "params": params}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
