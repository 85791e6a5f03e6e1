"""CLI glue for the learned CDSS models: ``haidang train interaction-risk`` and
``haidang train protocol --data 'exports/*.xml'``.

``training/cli.py`` owns the ``train`` command (one parser with a model-name argument); it
dispatches these names here with ``learned_cli.train(args)``. ``register`` adds only the
synthetic-export generator (``haidang xml130-synth``). Each trainer also runs on its own:
``python -m training.interaction_risk`` and ``python -m training.protocol``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

MODELS = ("interaction-risk", "protocol")


def train(args) -> int:
    """Run the trainer named by ``args.model`` with whatever options the parser gave."""
    opts = SimpleNamespace(
        out=getattr(args, "out", None),
        models_dir=getattr(args, "models_dir", None),
        knowledge=getattr(args, "knowledge", None),
        pharmacology=getattr(args, "pharmacology", None),
        splits=getattr(args, "splits", None),
        promote=bool(getattr(args, "promote", False)),
        no_progress=bool(getattr(args, "no_progress", False)),
        data=getattr(args, "data", None),
        min_support=getattr(args, "min_support", None),
    )
    if args.model == "interaction-risk":
        from training import interaction_risk

        return interaction_risk.run(opts)
    if args.model == "protocol":
        from training import protocol

        if opts.data is None:
            print("train protocol: give the XML 130 exports with --data 'exports/*.xml'")
            return 2
        if opts.min_support is None:
            opts.min_support = protocol.MIN_SUPPORT
        return protocol.run(opts)
    raise ValueError(f"unknown learned model {args.model!r}; known: {', '.join(MODELS)}")


def register(sub) -> None:
    p = sub.add_parser("xml130-synth", help="write synthetic XML 130 exports (no real patients) "
                       "for the protocol model, tests and the demo")
    p.add_argument("--out", type=Path, required=True, help="folder for the XML files")
    p.add_argument("--records", type=int, default=6000)
    p.add_argument("--per-file", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_synth)


def _synth(args) -> int:
    from training.xml130_synth import generate

    paths = generate(args.out, args.records, args.per_file, args.seed)
    print(f"wrote {args.records} synthetic records in {len(paths)} files under {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    parser = argparse.ArgumentParser()
    parser.add_argument("model", choices=MODELS)
    parser.add_argument("--data")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--promote", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    raise SystemExit(train(parser.parse_args()))
