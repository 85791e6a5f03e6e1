"""GPU figures for bench/inference: onnxruntime CUDA provider (as served) vs PyTorch eager CUDA.

Same model, same inputs and the same two sides as ``run.py`` (whose helpers it imports):

* onnxruntime: the session the imaging service builds. ``load_from_registry`` on
  ``models/cxr-pneumonia/current`` with ``providers=None``, exactly as
  ``serving/imaging_service.py`` calls it, so ``choose_providers`` picks CUDA by itself;
  called through ``ModelSession.run`` (numpy in, numpy out: the host-to-device copy of the
  batch and the copy of the result back are inside every call, as in the service). The
  script fails unless the session reports ``CUDAExecutionProvider``.
* PyTorch: the network ``training.cxr_pneumonia`` builds, carrying the registered graph's
  weights (``run.torch_from_onnx``), on ``cuda``, eager, ``torch.inference_mode``, float32,
  default settings (no compile, no CUDA graphs, ``cudnn.benchmark`` off). Its peer row
  takes the same numpy batch, copies it to the GPU and the result back.

Both sides compute in strict float32: the service sets the CUDA provider's ``use_tf32`` to 0
(``serving.imaging.session.CUDA_OPTIONS``: a verdict must not depend on the GPU), so the
PyTorch peer runs with ``cudnn.allow_tf32`` and ``matmul.allow_tf32`` off. Extra rows (not
what the service runs) show both libraries' defaults (TF32 allowed), device-resident inputs
(PyTorch tensors already on the GPU; onnxruntime IOBinding), onnxruntime's CUDA graph
replay, and both runtimes on the machine's CPU cores for context. Every row's output is
compared with the CPU float32 result of the registered model (``run.py`` shows that
PyTorch and onnxruntime agree on CPU within 1.2e-7).

Needs onnxruntime with the CUDA provider (``onnxruntime-gpu``; for the lent machine, the
sm_90 copy made by ``strip_fatbin.py``), torch with CUDA, MONAI, pydicom, PyYAML.

    python -m bench.inference.cuda [--seconds 2] [--batches 1,32,256,1024] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.inference import run as base

HERE = Path(__file__).resolve().parent

ROOT, MODEL = base.ROOT, base.MODEL
PARITY_TOLERANCE = base.PARITY_TOLERANCE  # strict float32 rows
PEER = "PyTorch eager CUDA (strict float32)"
SERVED = "onnxruntime CUDA (served session, strict float32)"


def gpu_name() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "nvidia-smi not available"


def providers_by_node(onnx_path: Path, providers, x: np.ndarray) -> dict[str, int]:
    """How many graph nodes each execution provider ran (from an onnxruntime profile)."""
    import onnxruntime as ort

    from serving.imaging.session import session_options

    options = session_options()
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "ort")
    sess = ort.InferenceSession(str(onnx_path), options, providers=providers)
    sess.run(None, {sess.get_inputs()[0].name: x})
    events = json.loads(Path(sess.end_profiling()).read_text())
    counts: dict[str, int] = {}
    for ev in events:
        args = ev.get("args") or {}
        if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time"):
            p = args.get("provider", "?")
            counts[p] = counts.get(p, 0) + 1
    return counts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=2.0, help="per runtime and batch size")
    ap.add_argument("--batches", default="1,32,256,1024")
    ap.add_argument("--cpu-threads", type=int, default=os.cpu_count() or 1,
                    help="threads for the CPU context rows")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--device", default="cuda",
                    help="'cpu' only smoke-tests this script on a machine without a GPU")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]

    import onnxruntime as ort
    import torch

    from serving.imaging.session import load_from_registry, session_options

    print(f"onnxruntime {ort.__version__} from {Path(ort.__file__).parent}; available providers "
          f"{ort.get_available_providers()}; torch {torch.__version__}, CUDA "
          f"{torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}; GPU {gpu_name()}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs", flush=True)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("torch sees no CUDA device")

    # The service's own call (serving/imaging_service.py): providers=None -> automatic choice.
    served = load_from_registry(ROOT / "models", MODEL, providers=None)
    info = served.info()
    print(f"served session: {info} ; session providers {served._session.get_providers()}",
          flush=True)
    try:
        from serving.imaging.predictor import Predictor

        described = Predictor(served).describe()
        print("Predictor.describe() (the /info endpoint's body): "
              f"provider={described['provider']} model={described['model']} "
              f"version={described['version']} sha256={described['sha256'][:12]}…", flush=True)
    except ImportError as exc:  # pydantic missing: the session's info() is what it reports
        print(f"Predictor not importable here ({exc}); session.info() above is what it reports")
    if args.device == "cuda" and info["provider"] != "CUDAExecutionProvider":
        raise SystemExit(f"the served session runs on {info['provider']}, not CUDA: is "
                         "onnxruntime-gpu installed and are the CUDA/cuDNN libraries found?")

    cpu_served = load_from_registry(ROOT / "models", MODEL, providers=["CPUExecutionProvider"],
                                    threads=args.cpu_threads)
    card, spec = served.card, served.card.get("input") or {}
    cfg = base.network_config(card)
    flops = base.graph_flops(served.onnx_path, tuple(spec.get("size", [28, 28])))
    images = base.sample_inputs(spec)

    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    torch.set_num_threads(args.cpu_threads)
    cpu_model = base.torch_from_onnx(served.onnx_path, cfg)
    gpu_model = base.torch_from_onnx(served.onnx_path, cfg).to(dev)

    def ort_session(provider_options: dict):
        opts = session_options()
        return ort.InferenceSession(str(served.onnx_path), opts, providers=[
            ("CUDAExecutionProvider", provider_options), "CPUExecutionProvider"])

    extras_failed: dict[str, str] = {}
    try:
        tf32 = ort_session({"use_tf32": 1})
    except Exception as exc:  # noqa: BLE001 - an extra row; report why it is missing
        tf32, extras_failed["use_tf32=1"] = None, repr(exc)[:300]
    node_providers = providers_by_node(
        served.onnx_path, ["CUDAExecutionProvider", "CPUExecutionProvider"],
        np.ascontiguousarray(np.resize(images, (32, *images.shape[1:])), np.float32))
    print(f"nodes per provider in the CUDA session (batch 32 profile): {node_providers}",
          flush=True)

    default_tf32 = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    print(f"PyTorch defaults: cudnn.allow_tf32={default_tf32[0]} "
          f"matmul.allow_tf32={default_tf32[1]} cudnn.benchmark="
          f"{torch.backends.cudnn.benchmark}; the peer runs with both off (strict float32)",
          flush=True)
    strict_tf32 = (False, False)
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = strict_tf32

    rows = []
    for batch in batches:
        x = np.ascontiguousarray(np.resize(images, (batch, *images.shape[1:])), np.float32)
        xt = torch.from_numpy(x)
        xd = xt.to(dev)

        def torch_host(model=gpu_model, xt=xt):
            return model(xt.to(dev, non_blocking=False)).cpu().numpy()

        def torch_device(model=gpu_model, xd=xd):
            y = model(xd)
            sync()
            return y

        def torch_tf32(model=gpu_model, xt=xt):
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = \
                default_tf32
            try:
                return model(xt.to(dev)).cpu().numpy()
            finally:
                torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = \
                    strict_tf32

        fns = {
            PEER: torch_host,
            SERVED: lambda x=x: served.run(x),
            "PyTorch eager CUDA, TF32 allowed (default; extra)": torch_tf32,
            "PyTorch eager CUDA, input already on GPU (extra)": torch_device,
        }
        if tf32 is not None:
            fns["onnxruntime CUDA, TF32 allowed use_tf32=1 (default; extra)"] = (
                lambda x=x: tf32.run(None, {"image": x})[0])
        outputs: dict = {
            PEER: torch_host,
            "PyTorch eager CUDA, TF32 allowed (default; extra)": torch_tf32,
            "PyTorch eager CUDA, input already on GPU (extra)":
                lambda xd=xd: gpu_model(xd).cpu().numpy(),
        }

        # onnxruntime with the input and output left on the GPU (IOBinding).
        try:
            xo = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
            binding = served._session.io_binding()
            binding.bind_ortvalue_input(served.input_name, xo)
            binding.bind_output(served.output_name, "cuda", 0)

            def ort_bound(s=served._session, b=binding):
                s.run_with_iobinding(b)
                b.synchronize_outputs()

            def ort_bound_out(s=served._session, b=binding):
                s.run_with_iobinding(b)
                return b.copy_outputs_to_cpu()[0]

            fns["onnxruntime CUDA, IOBinding input on GPU (extra)"] = ort_bound
            outputs["onnxruntime CUDA, IOBinding input on GPU (extra)"] = ort_bound_out
        except Exception as exc:  # noqa: BLE001 - an extra row; report why it is missing
            extras_failed["IOBinding"] = repr(exc)

        # onnxruntime replaying a captured CUDA graph (fixed shapes and addresses).
        try:
            graph_sess = ort_session({"enable_cuda_graph": 1, "use_tf32": 0})
            gx = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
            gy = ort.OrtValue.ortvalue_from_shape_and_type([batch, 1], np.float32, "cuda", 0)
            gb = graph_sess.io_binding()
            gb.bind_ortvalue_input("image", gx)
            gb.bind_ortvalue_output(graph_sess.get_outputs()[0].name, gy)
            graph_sess.run_with_iobinding(gb)  # captures the graph

            def ort_graph(s=graph_sess, b=gb):
                s.run_with_iobinding(b)
                b.synchronize_outputs()

            def ort_graph_out(s=graph_sess, b=gb, gy=gy):
                s.run_with_iobinding(b)
                return gy.numpy()

            fns["onnxruntime CUDA graph replay, IOBinding (extra)"] = ort_graph
            outputs["onnxruntime CUDA graph replay, IOBinding (extra)"] = ort_graph_out
        except Exception as exc:  # noqa: BLE001
            extras_failed[f"CUDA graph batch {batch}"] = repr(exc)[:300]

        fns["onnxruntime CPU (served session, CPU context)"] = lambda x=x: cpu_served.run(x)
        fns["PyTorch eager CPU (CPU context)"] = lambda xt=xt: cpu_model(xt)

        with torch.inference_mode():
            reference = cpu_served.run(x)  # the registered model's float32 result on CPU
            # GPU rows alternate among themselves; the CPU context rows run apart, so that
            # their spinning thread pools never compete with the thread launching GPU work.
            on_cpu = {k: v for k, v in fns.items() if "CPU context" in k}
            median = base.timed({k: v for k, v in fns.items() if k not in on_cpu}, args.seconds)
            median |= base.timed(on_cpu, args.seconds)
            diffs = {}
            for name in fns:
                if name in outputs:
                    out = outputs[name]()
                elif name.startswith("onnxruntime"):
                    out = fns[name]()
                elif "CPU" in name:
                    out = cpu_model(xt).numpy()
                else:
                    continue
                diffs[name] = float(np.abs(np.asarray(out) - reference).max())
            ort_vs_torch = float(np.abs(served.run(x) - torch_host()).max())
        peer_ips = batch / median[PEER]
        for name, sec in median.items():
            rows.append({"runtime": name, "batch": batch, "images_per_s": batch / sec,
                         "ms_per_batch": 1000 * sec, "vs_pytorch_cuda": batch / sec / peer_ips,
                         "gflops": flops * batch / sec / 1e9,
                         "max_abs_diff_vs_cpu_fp32": diffs.get(name, float("nan"))})
        rows.append({"runtime": "(parity) served ORT CUDA vs PyTorch eager CUDA", "batch": batch,
                     "max_abs_diff": ort_vs_torch})
        served_ips = batch / median[SERVED]
        print(f"batch {batch}: onnxruntime CUDA (served) {served_ips:,.0f} images/s, PyTorch "
              f"eager CUDA {peer_ips:,.0f} images/s", flush=True)

    print(f"\nmodel: {served.name} {served.version} (sha256 {served.sha256[:12]}…), "
          f"{flops / 1e6:.1f} MFLOP per image; GPU {gpu_name()}; load average "
          f"{os.getloadavg()[0]:.2f}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("\n| runtime | batch | images/s | median ms per batch | vs PyTorch eager CUDA "
          "| GFLOP/s | max abs diff vs CPU fp32 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        if "images_per_s" not in r:
            continue
        print(f"| {r['runtime']} | {r['batch']} | {r['images_per_s']:,.0f} | "
              f"{r['ms_per_batch']:.3f} | {r['vs_pytorch_cuda']:.2f}x | {r['gflops']:,.0f} | "
              f"{r['max_abs_diff_vs_cpu_fp32']:.1e} |")
    for r in rows:
        if "max_abs_diff" in r:
            print(f"batch {r['batch']}: served onnxruntime CUDA vs PyTorch eager CUDA, max |diff| "
                  f"{r['max_abs_diff']:.1e}")
    if extras_failed:
        print(f"extra rows that could not run: {extras_failed}")
    strict_diffs = [r["max_abs_diff_vs_cpu_fp32"] for r in rows
                    if "strict" in r.get("runtime", "") or "CPU" in r.get("runtime", "")]
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"rows": rows, "served_info": info, "nodes_per_provider": node_providers,
             "gpu": gpu_name(), "onnxruntime": ort.__version__, "torch": torch.__version__,
             "flops_per_image": flops, "extras_failed": extras_failed}, indent=2))
    if max(strict_diffs) > PARITY_TOLERANCE:
        print(f"PARITY FAILED: a strict float32 or CPU row differs by {max(strict_diffs):.1e}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
