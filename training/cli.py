"""``haidang train``, ``haidang evaluate``, ``haidang learning-curve``,
``haidang models list|promote``.

Registration is cheap; torch, MONAI and onnxruntime are imported inside the handlers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# cxr-triage: the adult chest X-ray model (training.pipeline + training.cxr_triage);
# cxr-gate: the image gate beside a cxr-triage version (training.gate);
# cxr-pneumonia: the retired paediatric 28-px model; interaction-risk and protocol: the
# learned CDSS models (training.learned_cli).
MODELS = ("cxr-triage", "cxr-gate", "cxr-pneumonia", "interaction-risk", "protocol")


def register(sub) -> None:
    p = sub.add_parser(
        "train", help="train a model, export ONNX (parity-checked) and write its card"
    )
    p.add_argument("model", choices=MODELS, help="which model to train")
    p.add_argument(
        "--data",
        type=Path,
        help="cxr-triage: a folder with images/ and labels.csv (default datasets/nih-cxr); "
        "cxr-pneumonia: MedMNIST .npz (train/val splits) or a folder of DICOM files; "
        "protocol: XML 130 exports, e.g. 'exports/*.xml'",
    )
    p.add_argument(
        "--labels",
        type=Path,
        help="labels CSV for a DICOM folder "
        "(columns: SOPInstanceUID or path, label, optional split=train/val)",
    )
    p.add_argument(
        "--out",
        type=Path,
        help="new version folder, e.g. models/cxr-triage/1.2.0 "
        "(required for the imaging models; the learned CDSS models default to the next version)",
    )
    p.add_argument(
        "--resume-fit",
        type=Path,
        help="cxr-triage: skip the fit and use the weights an earlier run saved "
        "(var/train/cxr-triage-VERSION.pt); every later step runs again",
    )
    p.add_argument("--epochs", type=int, default=None, help="epochs per seed (default 12)")
    p.add_argument(
        "--seeds",
        default=None,
        help="comma-separated seeds; one ensemble member each (default 0)",
    )
    p.add_argument(
        "--time-budget-min",
        type=float,
        default=None,
        help="stop adding epochs after this many minutes in all (default 13); keeps the best",
    )
    p.add_argument(
        "--pretrain-epochs",
        type=int,
        default=None,
        help="cxr-triage: epochs of contrastive pretraining on the training films before the "
        "fit (default 60, about 25 min on 2 cores; 0: train from scratch)",
    )
    p.add_argument(
        "--size", type=int, default=28, help="cxr-pneumonia input size in pixels (default 28)"
    )
    p.add_argument("--promote", action="store_true", help="make the new version current")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=_train)

    p = sub.add_parser(
        "evaluate",
        help="evaluate a model version with onnxruntime (what serving runs) on labelled images",
    )
    p.add_argument("model_dir", type=Path, help="a version folder, e.g. models/cxr-triage/1.0.0")
    p.add_argument(
        "--data",
        required=True,
        type=Path,
        help="a folder with images/ (PNG, JPEG or DICOM) and labels.csv (column image, optional "
        "findings, view, age, sex), or a MedMNIST .npz",
    )
    p.add_argument(
        "--split", default="test", help=".npz: split prefix (default test)"
    )
    p.add_argument("--labels", type=Path, help="labels CSV (default DIR/labels.csv)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--predictions", type=Path, help="write one CSV row per image (image, analysed, reason, "
        "one probability column per output, flagged)"
    )
    p.add_argument(
        "--plots", type=Path, help="write ROC/PR/confusion/calibration PNGs into this folder "
        "(nothing is written into the model folder otherwise)"
    )
    p.set_defaults(handler=_evaluate)

    p = sub.add_parser(
        "learning-curve",
        help="cxr-triage: validation AUC against the share of training patients labelled, and "
        "the labelled films a target needs at that slope (JSON and a plot)",
    )
    p.add_argument("model", choices=("cxr-triage",))
    p.add_argument("--data", type=Path, help="images/ and labels.csv (default datasets/nih-cxr)")
    p.add_argument("--out", type=Path, required=True,
                   help="folder for learning-curve.json and learning-curve.png")
    p.add_argument("--shares", default="0.25,0.5,1",
                   help="shares of the training patients, comma-separated (default 0.25,0.5,1)")
    p.add_argument("--draws", type=int, default=2,
                   help="random patient subsets per share; also the member's seed (default 2)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per fit (default 30)")
    p.add_argument("--pretrain-epochs", type=int, default=None,
                   help="contrastive pretraining on all training films, once (default 60)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=_learning_curve)

    p = sub.add_parser("models", help="the model registry: list versions, promote one to current")
    p.add_argument(
        "--models-dir", type=Path, help="registry root (default: settings serving.models_dir)"
    )
    msub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    q = msub.add_parser("list", help="every version with its validation metrics")
    q.add_argument("--json", action="store_true")
    q.set_defaults(handler=_models_list)
    q = msub.add_parser("promote", help="make VERSION the one serving uses")
    q.add_argument("name")
    q.add_argument("version")
    q.set_defaults(handler=_models_promote)


def _models_dir(args) -> Path:
    if getattr(args, "models_dir", None):
        return args.models_dir
    from haidang.ground.settings import load_settings

    return Path(load_settings(args.config).serving.models_dir)


def _train(args) -> int:
    if args.model == "cxr-triage":
        return _train_triage(args)
    if args.model == "cxr-gate":
        return _train_gate(args)
    if args.model != "cxr-pneumonia":
        from training import learned_cli

        return learned_cli.train(args)
    if args.data is None or args.out is None:
        print("haidang train cxr-pneumonia: give --data (npz or DICOM folder) and --out "
              "(new version folder)", file=sys.stderr)
        return 2
    from training.cxr_pneumonia import TrainConfig, train_and_register
    from training.pipeline import command_line

    cfg = _with_run_flags(TrainConfig(), args)
    if args.data.is_dir() and not args.labels:
        print(
            f"haidang train: {args.data} is a folder; give its labels with --labels FILE.csv",
            file=sys.stderr,
        )
        return 2
    try:
        card = train_and_register(
            args.data,
            args.out,
            cfg,
            labels_csv=args.labels,
            size=args.size,
            command=command_line(),
            progress=not args.no_progress,
        )
    except (FileExistsError, ValueError, RuntimeError) as exc:
        print(f"haidang train: {exc}", file=sys.stderr)
        return 1
    m = card["metrics"]["validation"]
    print(
        f"{card['name']} {card['version']}: val AUC {m['auc']:.4f}, accuracy {m['accuracy']:.4f}, "
        f"sensitivity {m['sensitivity']:.4f}, specificity {m['specificity']:.4f} at threshold "
        f"{card['threshold']:.4f}; parity {card['parity']['max_abs_diff']:.2g}; "
        f"written to {args.out}"
    )
    if args.promote:
        from serving.registry import ModelRegistry

        ModelRegistry(args.out.parent.parent).promote(args.out.parent.name, args.out.name)
        print(f"current {args.out.parent.name} -> {args.out.name}")
    return 0


def _with_run_flags(cfg, args):
    """The flags every image trainer shares: ``--epochs``, ``--seeds``, ``--time-budget-min``."""
    if args.epochs:
        cfg.epochs = args.epochs
    if args.seeds:
        cfg.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if args.time_budget_min:
        cfg.time_budget_s = args.time_budget_min * 60
    return cfg


def _train_triage(args) -> int:
    if args.out is None:
        print("haidang train cxr-triage: give --out (new version folder, e.g. "
              "models/cxr-triage/1.2.0)", file=sys.stderr)
        return 2
    from training.cxr_triage import DATA, TriageConfig, TriageRecipe
    from training.pipeline import RunOptions, command_line, run

    cfg = _with_run_flags(TriageConfig(), args)
    if args.pretrain_epochs is not None:
        cfg.pretrain_epochs = args.pretrain_epochs
    options = RunOptions(command=command_line(), progress=not args.no_progress,
                         promote=args.promote, resume_fit=args.resume_fit)
    try:
        card = run(TriageRecipe(args.data or DATA, cfg), args.out, options)
    except (FileExistsError, ValueError, RuntimeError, OSError) as exc:
        print(f"haidang train: {exc}", file=sys.stderr)
        return 1
    m = card["metrics"]["validation"]
    for output in card["outputs"]:
        name = output["name"]
        all_ = m[name]["auc_by_stratum"]["all"]
        print(f"{card['name']} {card['version']} {name}: val AUC {all_['auc']} "
              f"(95% CI {all_.get('ci95')}), threshold {output['threshold']}, "
              f"sensitivity {m[name]['sensitivity']}, specificity {m[name]['specificity']}, "
              f"ECE {m[name]['ece']}")
    print(f"written to {args.out}" + (" (current)" if args.promote else ""))
    return 0


def _learning_curve(args) -> int:
    from training.cxr_triage import DATA, TriageConfig
    from training.learning_curve import CurveConfig, learning_curve, write

    try:
        shares = [float(s) for s in args.shares.split(",") if s.strip()]
        # budgets that do not bind on 2 cores: every point runs its full schedule
        triage = TriageConfig(time_budget_s=3600.0, pretrain_budget_s=3600.0)
        if args.epochs:
            triage.epochs = args.epochs
        if args.pretrain_epochs is not None:
            triage.pretrain_epochs = args.pretrain_epochs
        cfg = CurveConfig(shares=shares, draws=args.draws, triage=triage)
    except ValueError as exc:
        print(f"haidang learning-curve: {exc}", file=sys.stderr)
        return 2
    data = args.data or DATA
    if not (Path(data) / "labels.csv").is_file():
        print(f"haidang learning-curve: {data}/labels.csv not found: give --data, a folder "
              "with images/ and labels.csv", file=sys.stderr)
        return 2
    result = learning_curve(data, cfg, progress=not args.no_progress)
    for kind, fits in result["fit_log2_films"].items():
        for score, f in fits.items():
            print(f"{kind} {score}: {f['per_doubling']:+.4f} AUC per doubling "
                  f"(SE {f['standard_error']}); {f['target']} needs ~{f['films_for_target']} "
                  f"labelled films ({f['films_for_target_at_steepest_slope']} at the steepest "
                  "slope in its 95% range)")
    for path in write(result, args.out):
        print(f"written {path}")
    return 0


def _train_gate(args) -> int:
    if args.out is None or not (args.out / "card.yaml").is_file():
        print("haidang train cxr-gate: give --out, an existing cxr-triage version folder",
              file=sys.stderr)
        return 2
    from training.gate import train_gate

    config = train_gate(args.out, progress=not args.no_progress)
    for kind, m in config["held_out"].items():
        print(f"{kind}: {m['accepted']}/{m['n']} accepted; {m['verdicts']}")
    return 0


def _evaluate(args) -> int:
    import json

    from serving.imaging.preprocess import PreprocessError
    from serving.registry import RegistryError
    from training.data import DataError
    from training.evaluate import evaluate

    try:
        result = evaluate(args.model_dir, args.data, split=args.split, labels_csv=args.labels,
                          predictions=args.predictions, plots=args.plots)
    except (RegistryError, DataError, PreprocessError, FileNotFoundError, ValueError) as exc:
        print(f"haidang evaluate: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, ensure_ascii=False, allow_nan=False))
        return 0
    print(f"{result['model']} {result['version']} on {result['data']} "
          f"({result['images']} images, {result['analysed']} analysed)")
    for name, m in (result.get("outputs") or {}).items():
        print(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in m.items()))
    for path in result.get("plots", []):
        print(f"  plot {path}")
    return 0


def _models_list(args) -> int:
    import json

    from serving.registry import ModelRegistry, RegistryError

    reg = ModelRegistry(_models_dir(args))
    rows = []
    for name in reg.names():
        try:
            current = reg.current_version(name)
        except RegistryError:
            current = None
        for version in reg.versions(name):
            try:
                mv = reg.version(name, version)
                m = headline_metrics(mv.card)
                status = "ok"
            except RegistryError as exc:
                m, status = {}, f"INVALID: {exc}"
                mv = None
            rows.append(
                {
                    "name": name,
                    "version": version,
                    "current": version == current,
                    "auc": m.get("auc"),
                    "accuracy": m.get("accuracy"),
                    "sensitivity": m.get("sensitivity"),
                    "specificity": m.get("specificity"),
                    "threshold": m.get("threshold") if mv else None,
                    "created": mv.card.get("created") if mv else None,
                    "status": status,
                }
            )
    if args.json:
        print(json.dumps(rows, ensure_ascii=False))
        return 0
    if not rows:
        print(f"no models under {reg.root}")
        return 0
    w = max(len(r['name']) for r in rows) + 2
    print(
        f"{'':2}{'NAME':<{w}}{'VERSION':<10}{'VAL AUC':>8}{'ACC':>8}{'SENS':>8}{'SPEC':>8}"
        f"{'THRESH':>9}  CREATED / STATUS"
    )
    for r in rows:

        def f(v):
            return f"{v:.4f}" if isinstance(v, int | float) else "-"

        print(
            f"{'*' if r['current'] else ' ':2}{r['name']:<{w}}{r['version']:<10}{f(r['auc']):>8}"
            f"{f(r['accuracy']):>8}{f(r['sensitivity']):>8}{f(r['specificity']):>8}"
            f"{f(r['threshold']):>9}  {r['created'] or ''} "
            f"{'' if r['status'] == 'ok' else r['status']}"
        )
    return 0


def headline_metrics(card: dict) -> dict:
    """Validation metrics to list: the card's own, or its first urgent output's."""
    validation = (card.get("metrics") or {}).get("validation") or {}
    outputs = card.get("outputs")
    if not outputs:
        return {**validation, "threshold": card.get("threshold")}
    name = (card.get("urgent") or [outputs[0]["name"]])[0]
    m = dict(validation.get(name) or {})
    m["auc"] = ((m.get("auc_by_stratum") or {}).get("all") or {}).get("auc", m.get("auc"))
    return m


def _models_promote(args) -> int:
    from serving.registry import ModelRegistry, RegistryError

    reg = ModelRegistry(_models_dir(args))
    try:
        before = reg.current_version(args.name)
    except RegistryError:
        before = None
    try:
        reg.promote(args.name, args.version)
    except RegistryError as exc:
        print(f"haidang models promote: {exc}", file=sys.stderr)
        return 1
    print(f"{args.name}: current {before or '(none)'} -> {args.version}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(required=True)
    register(sub)
    ns = parser.parse_args()
    sys.exit(ns.handler(ns))
