"""onnxruntime session settings tried against the served ones, on the registered model.

Each variant changes one thing from ``serving.imaging.session.session_options``: spinning
off, denormals as zero, no CPU arena, no memory pattern, EXTENDED instead of ALL
optimisation (no NCHWc layout), a dynamic-block parallel-for, the batch dimension fixed
to the batch size, IOBinding into a pre-allocated numpy output, one thread. Alternating
rounds, median per call (the machine is shared).

    python -m bench.inference.options [--batch 32] [--threads 2] [--seconds 0.4]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from bench.inference import run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=0.4, help="per variant and round")
    args = ap.parse_args()

    import onnxruntime as ort

    from serving.imaging.session import load_from_registry, session_options

    served = load_from_registry(run.ROOT / "models", run.MODEL,
                                providers=["CPUExecutionProvider"], threads=args.threads)
    path = str(served.onnx_path)

    def variant(change) -> ort.InferenceSession:
        options = session_options(args.threads)
        change(options)
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def entry(key: str, value: str):
        return lambda o: o.add_session_config_entry(key, value)

    def attr(name: str, value):
        return lambda o: setattr(o, name, value)

    sessions = {
        "served (session_options)": variant(lambda o: None),
        "spinning off": variant(entry("session.intra_op.allow_spinning", "0")),
        "denormals as zero": variant(entry("session.set_denormal_as_zero", "1")),
        "no CPU memory arena": variant(attr("enable_cpu_mem_arena", False)),
        "no memory pattern": variant(attr("enable_mem_pattern", False)),
        "EXTENDED (no NCHWc)": variant(attr("graph_optimization_level",
                                            ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)),
        "dynamic_block_base 4": variant(entry("session.intra_op.dynamic_block_base", "4")),
        "batch fixed to N": variant(lambda o: o.add_free_dimension_override_by_name(
            "N", args.batch)),
        "1 thread": variant(attr("intra_op_num_threads", 1)),
    }
    images = run.sample_inputs(served.card.get("input") or {})
    x = np.ascontiguousarray(np.resize(images, (args.batch, *images.shape[1:])), np.float32)
    fns = {name: (lambda s=s: s.run([served.output_name], {served.input_name: x}))
           for name, s in sessions.items()}
    base = sessions["served (session_options)"]
    binding = base.io_binding()
    out = np.empty((args.batch, 1), np.float32)
    binding.bind_cpu_input(served.input_name, x)
    binding.bind_output(served.output_name, "cpu", 0, np.float32, list(out.shape),
                        out.ctypes.data)
    fns["IOBinding, pre-allocated output"] = lambda: base.run_with_iobinding(binding)
    fns["ModelSession.run (as served)"] = lambda: served.run(x)

    for fn in fns.values():
        for _ in range(5):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(6):
        for name, fn in fns.items():
            end = time.perf_counter() + args.seconds
            while time.perf_counter() < end:
                t = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t)
    ref = float(np.median(samples["served (session_options)"]))
    print(f"batch {args.batch}, threads {args.threads}, onnxruntime {ort.__version__}\n")
    print("| variant | images/s | median ms | vs served |")
    print("| --- | ---: | ---: | ---: |")
    for name, v in samples.items():
        med = float(np.median(v))
        print(f"| {name} | {args.batch / med:.0f} | {1000 * med:.3f} | {ref / med:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
