"""onnxruntime (as served) vs PyTorch eager on the registered triage model and the same inputs.

onnxruntime side: the session the service itself builds
(``serving.imaging.session.load_from_registry`` on ``models/cxr-triage/current``: the
registered ``model.onnx``, sha256-checked, same SessionOptions), called through
``ModelSession.run_all`` like the predictor calls it (logits and class activation maps).

PyTorch side: the same trained weights in the network ``training.cxr_triage`` builds (MONAI
ResNet, logits and CAM from one forward pass), run eagerly (``torch.inference_mode``,
float32, channels-first, no compile/jit). The exported graph has each BatchNorm folded into
its convolution; the eager network gets the folded weights and identity BatchNorms, so it
computes the registered model's function while still doing what eager PyTorch does for this
architecture (conv, batch norm, ReLU and add as separate kernels). The max |difference| of
the outputs is printed; it must stay <= 1e-4.

Inputs: the 12 full-size NIH radiographs (``datasets/nih-cxr/full-size``) preprocessed by
serving's chain, tiled to the batch size.
Both runtimes get the same number of threads. Each runtime's arithmetic rate (GFLOP/s
from the graph's convolution and Gemm multiply-adds) is shown against the machine's FP32
FMA peak (``peak.c``, one copy per thread, when a C compiler is present). With
onnxruntime's CUDA provider present, a CUDA row is added.

Extra, NOT the same model, for a one-output model only (``--model cxr-pneumonia``): an int8
(QDQ, static, per-channel) quantisation of the registered graph, calibrated on 256 training
images, with its validation AUC beside the float32 model's (``--no-int8`` skips it).

    python -m bench.inference.run [--seconds 3] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]

MODEL = "cxr-triage"
PARITY_TOLERANCE = 1e-4
DATA = ROOT / "datasets" / "pneumoniamnist" / "pneumoniamnist_trainval.npz"


def sample_inputs(spec: dict) -> np.ndarray:
    from serving.imaging.preprocess import file_to_unit, unit_to_model_input

    files = sorted((ROOT / "datasets" / "nih-cxr" / "full-size").glob("*.png"))
    if not files:
        raise SystemExit("no radiographs in datasets/nih-cxr/full-size")
    return np.stack([unit_to_model_input(file_to_unit(f)[0], spec) for f in files])


def network_config(card: dict):
    from training.cxr_triage import TriageConfig

    cfg = TriageConfig(pixel_branch=False)  # graphs older than the pixel branch lack it
    train = (card.get("training") or {}).get("config") or {}
    for key in ("widths", "layers", "seeds", "pixel_branch"):
        if key in train:
            setattr(cfg, key, train[key])
    return cfg


_CALL = re.compile(r"_(\d+)$")  # torch.onnx's suffix on the k-th call of one module


def _module_name(conv_output: str) -> tuple[int, str]:
    """'/layer1/layer1.0_2/conv1_2/Conv_output_0' -> (2, 'layer1.0.conv1').

    TriageNet calls each member's layers directly, so the graph's scopes name the layers
    without ``members.i``; the i-th member's call of a layer carries the suffix ``_i``.
    """
    parts, names, prev, member = conv_output.strip("/").split("/")[:-1], [], "", 0
    for part in parts:
        call = _CALL.search(part)
        if call:
            member, part = int(call.group(1)), part[: call.start()]
        names.append(part[len(prev) + 1:] if prev and part.startswith(prev + ".") else part)
        prev = part
    return member, ".".join(names)


def _batch_norm_after(conv: str) -> str:
    """The BatchNorm that follows a convolution in MONAI's ResNet."""
    head, _, last = conv.rpartition(".")
    if last.startswith("conv"):
        return f"{head}.bn{last[4:]}"
    if last == "0" and head.endswith("downsample"):
        return f"{head}.1"
    raise ValueError(f"no BatchNorm known after {conv}")


def torch_from_onnx(onnx_path: Path, cfg):
    """The eager network carrying the registered graph's (BatchNorm-folded) weights.

    Members' convolutions are matched by scope name, their classifier rows (Einsum) and
    biases (ReduceMean over the stacked biases) in graph order; the pixel branch's buffers
    by name, or by the node that uses a folded one (its weights, scales and constant).
    """
    import onnx
    import torch
    from onnx import numpy_helper

    from training.cxr_triage import TriageRecipe

    model = TriageRecipe(cfg=cfg, size=224).empty_model().eval()
    graph = onnx.load(str(onnx_path)).graph
    weights = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in graph.initializer}
    modules = dict(model.named_modules())
    state = model.state_dict()
    loaded: set[str] = set()
    outputs = model.outputs
    with torch.no_grad():
        for node in graph.node:
            if node.op_type != "Conv":
                continue
            member, name = _module_name(node.output[0])
            conv_name = name if name in modules else f"members.{member}.{name}"
            bn_name = _batch_norm_after(conv_name)
            conv, bn = modules[conv_name], modules[bn_name]
            conv.weight.copy_(weights[node.input[1]])
            if conv.bias is not None:
                conv.bias.zero_()
            bn.weight.fill_(1.0)
            bn.bias.copy_(weights[node.input[2]])
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)  # (x - 0) / sqrt(1 - eps + eps) = x
            loaded |= {conv_name, bn_name}
        einsums = [n for n in graph.node if n.op_type == "Einsum"]
        for i, node in enumerate(einsums):  # the classifier rows each member's map uses
            w = next(weights[x] for x in node.input if x in weights)
            state[f"members.{i}.fc.weight"][: w.shape[0]] = w
            loaded.add(f"members.{i}.fc")
        for node in graph.node:
            if node.op_type == "ReduceMean" and node.input[0] in weights:
                b = weights[node.input[0]].reshape(len(einsums), -1)  # the members' biases
                for i in range(len(einsums)):
                    state[f"members.{i}.fc.bias"][: b.shape[1]] = b[i]
        for name, value in weights.items():
            if name in state:  # named parameters and buffers keep their names
                state[name].copy_(value.reshape(state[name].shape))
                loaded.add(name if name.startswith("pixels.") else name.rpartition(".")[0])
        if model.pixels is not None:
            loaded |= _pixel_branch_from_graph(graph, weights, state, outputs)
    kinds = (torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.Linear)
    expected = {n for n, m in modules.items() if isinstance(m, kinds)}
    if model.pixels is not None:
        expected |= {"pixels.weight", "pixels.pixel_scale", "pixels.intercept",
                     "pixels.centre", "pixels.cnn_centre", "pixels.cnn_scale"}
    if expected - loaded:
        raise SystemExit(f"weights missing for {sorted(expected - loaded)}; is the card's "
                         "training config the architecture of model.onnx?")
    return model


def _pixel_branch_from_graph(graph, weights: dict, state: dict, outputs: int) -> set[str]:
    """The pixel branch's folded constants: the Mul under /pixels/ holds its weights; the Div
    of the branch's map (not the upsampled CNN map) its scale; the Add into the blended bias
    the constant (intercept - pixel_centre) / pixel_scale, kept as intercept with centre 0."""
    found: set[str] = set()
    scale = constant = None
    for node in graph.node:
        held = [x for x in node.input if x in weights and not x.startswith("pixels.")]
        if not held:
            continue
        value = weights[held[0]]
        if node.op_type == "Mul" and node.name.startswith("/pixels/"):
            state["pixels.weight"].copy_(value.reshape(state["pixels.weight"].shape))
            found.add("pixels.weight")
        elif node.op_type == "Div" and "Resize" not in node.input[0]:
            scale = value.reshape(outputs)
            state["pixels.pixel_scale"].copy_(scale)
            found.add("pixels.pixel_scale")
        elif node.op_type == "Add" and node.output[0] != "cam" and value.numel() == outputs:
            constant = value.reshape(outputs)
    if scale is not None and constant is not None:
        state["pixels.pixel_centre"].zero_()
        state["pixels.intercept"].copy_(constant * scale)
        found.add("pixels.intercept")
    return found


def graph_flops(onnx_path: Path, size: tuple[int, int]) -> float:
    """Floating-point operations per image in the graph's Conv and Gemm nodes (2 per MAC)."""
    import onnx
    from onnx import shape_inference

    proto = onnx.load(str(onnx_path))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    dims[0].ClearField("dim_param")
    dims[0].dim_value = 1
    proto = shape_inference.infer_shapes(proto)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(proto.graph.value_info) + list(proto.graph.output)}
    inits = {i.name: list(i.dims) for i in proto.graph.initializer}
    macs = 0
    for node in proto.graph.node:
        if node.op_type == "Conv":
            w = inits[node.input[1]]  # [Cout, Cin/groups, kh, kw]
            macs += int(np.prod(shapes[node.output[0]])) * int(np.prod(w[1:]))
        elif node.op_type == "Gemm":
            macs += int(np.prod(inits[node.input[1]]))
    return 2.0 * macs


def fp32_peak(threads: int) -> float | None:
    """GFLOP/s of ``threads`` cores running FMAs at once (peak.c), None without a compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        return None
    exe = Path(tempfile.mkdtemp()) / "peak"
    built = subprocess.run([cc, "-O2", "-march=native", str(Path(__file__).with_name("peak.c")),
                            "-o", str(exe)], capture_output=True)
    if built.returncode:
        return None
    procs = [subprocess.Popen([str(exe)], stdout=subprocess.PIPE, text=True)
             for _ in range(threads)]
    return sum(float(p.communicate()[0].split()[0]) for p in procs)


def int8_extra(onnx_path: Path, spec: dict, threshold: float, threads: int, workdir: Path):
    """Static QDQ int8 copy of the graph + validation AUC of float32 and int8 (not served)."""
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )
    from sklearn.metrics import roc_auc_score

    from serving.imaging.preprocess import array_to_model_input

    data = np.load(DATA)
    rng = np.random.default_rng(0)
    pick = rng.choice(len(data["train_images"]), 256, replace=False)
    calib = np.stack([array_to_model_input(a, spec) for a in data["train_images"][pick]])
    val = np.stack([array_to_model_input(a, spec) for a in data["val_images"]])
    labels = data["val_labels"].ravel()

    class Calibration(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"image": calib[i:i + 32]} for i in range(0, len(calib), 32)])

        def get_next(self):
            return next(self.batches, None)

    pre, q8 = workdir / "pre.onnx", workdir / "model.int8.onnx"
    quant_pre_process(str(onnx_path), str(pre))
    quantize_static(str(pre), str(q8), Calibration(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    fp32 = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    int8 = ort.InferenceSession(str(q8), options, providers=["CPUExecutionProvider"])
    p32 = fp32.run(None, {"image": val})[0].ravel()
    p8 = int8.run(None, {"image": val})[0].ravel()
    quality = {"val_images": int(len(val)), "auc_fp32": float(roc_auc_score(labels, p32)),
               "auc_int8": float(roc_auc_score(labels, p8)),
               "max_abs_diff_probability": float(np.abs(p32 - p8).max()),
               "verdicts_changed": int(((p32 >= threshold) != (p8 >= threshold)).sum())}
    return int8, quality


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
    ap.add_argument("--seconds", type=float, default=3.0, help="per runtime and batch size")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default=MODEL, help="registered model (default cxr-triage)")
    ap.add_argument("--no-int8", action="store_true", help="skip the int8 extra row")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    load_before = os.getloadavg()

    import onnxruntime as ort
    import torch

    from serving.imaging.session import load_from_registry

    torch.set_num_threads(args.threads)
    served = {"onnxruntime CPU (served session)": load_from_registry(
        ROOT / "models", args.model, providers=["CPUExecutionProvider"], threads=args.threads)}
    if "CUDAExecutionProvider" in ort.get_available_providers():
        served["onnxruntime CUDA (served session)"] = load_from_registry(
            ROOT / "models", args.model,
            providers=["CUDAExecutionProvider", "CPUExecutionProvider"],
            threads=args.threads)
    session = next(iter(served.values()))
    card, spec = session.card, session.card.get("input") or {}
    size = tuple(spec.get("size", [28, 28]))
    cfg = network_config(card)
    model = torch_from_onnx(session.onnx_path, cfg)
    flops = graph_flops(session.onnx_path, size)
    images = sample_inputs(spec)

    extra: dict = {}
    if "outputs" in card:
        args.no_int8 = True  # a multi-output graph: the int8 extra is for one-output models
    if not args.no_int8:
        int8_session, extra["int8_quality"] = int8_extra(
            session.onnx_path, spec, float(card["threshold"]), args.threads,
            Path(tempfile.mkdtemp()))

    rows = []
    for batch in (1, 32):
        x = np.ascontiguousarray(np.resize(images, (batch, *images.shape[1:])), np.float32)
        xt = torch.from_numpy(x)
        fns = {"PyTorch eager (CPU)": lambda xt=xt: model(xt)}
        for name, sess in served.items():
            fns[name] = lambda s=sess, x=x: s.run_all(x)
        if not args.no_int8:
            fns["onnxruntime CPU int8 (extra, not served)"] = (
                lambda x=x: int8_session.run(None, {"image": x}))
        with torch.inference_mode():
            reference = [t.numpy() for t in model(xt)]
            median = timed(fns, args.seconds * len(fns))
        torch_ips = batch / median["PyTorch eager (CPU)"]
        for name, sec in median.items():
            if name in served:
                diff = max(float(np.abs(a - b).max())
                           for a, b in zip(served[name].run_all(x), reference, strict=True))
            elif "int8" in name:
                diff = float(np.abs(int8_session.run(None, {"image": x})[0]
                                    - reference[0]).max())
            else:
                diff = 0.0
            rows.append({"runtime": name, "batch": batch, "images_per_s": batch / sec,
                         "ms_per_batch": 1000 * sec, "speedup": batch / sec / torch_ips,
                         "gflops": flops * batch / sec / 1e9, "max_abs_diff": diff})

    peak = fp32_peak(args.threads)
    load_after = os.getloadavg()
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {session.name} {session.version} (sha256 {session.sha256[:12]}…, registered "
          f"model.onnx, served session options) vs the same weights in PyTorch eager: "
          f"{len(cfg.seeds)} x MONAI ResNet widths={cfg.widths} layers={cfg.layers} (logits "
          f"and CAM), input "
          f"{size}, {flops / 1e6:.1f} MFLOP per image; threads={args.threads}; torch "
          f"{torch.__version__}, onnxruntime {ort.__version__}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}; FP32 FMA peak "
          f"of {args.threads} core(s): " + (f"{peak:.0f} GFLOP/s" if peak else "not measured"))
    print("\n| runtime | batch | images/s | median ms per batch | vs PyTorch | GFLOP/s "
          "| % of FP32 peak | max abs diff |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        fp32 = "int8" not in r["runtime"]  # int8 does integer arithmetic: no FP32 figures
        rate = f"{r['gflops']:.0f}" if fp32 else "-"
        share = f"{100 * r['gflops'] / peak:.0f}%" if peak and fp32 else "-"
        print(f"| {r['runtime']} | {r['batch']} | {r['images_per_s']:.0f} | "
              f"{r['ms_per_batch']:.2f} | {r['speedup']:.2f}x | {rate} | {share} | "
              f"{r['max_abs_diff']:.1e} |")
    fp32_diffs = [r["max_abs_diff"] for r in rows if "int8" not in r["runtime"]]
    print(f"\nfloat32 outputs agree with PyTorch within {max(fp32_diffs):.1e} "
          f"(tolerance {PARITY_TOLERANCE:g})")
    if "int8_quality" in extra:
        q = extra["int8_quality"]
        print(f"int8 row is a different model (quantised): validation AUC {q['auc_int8']:.4f} vs "
              f"float32 {q['auc_fp32']:.4f} on {q['val_images']} images, max |probability "
              f"difference| {q['max_abs_diff_probability']:.3f}, {q['verdicts_changed']} verdicts "
              "changed at the card's threshold; not what the service runs")
    if max(fp32_diffs) > PARITY_TOLERANCE:
        print("PARITY FAILED: the runtimes do not compute the same model", file=sys.stderr)
        return 1
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"rows": rows, "params": params, "flops_per_image": flops, "fp32_peak_gflops": peak,
             "load_average": [load_before[0], load_after[0]], **extra}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
