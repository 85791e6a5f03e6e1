"""Train the interaction-risk model: which drug pairs the knowledge base does not name are
likely to interact anyway.

Ingredients: those with a row in pharmacology.csv and those a QĐ 5948 or curated pair
names (`training_drugs`; about 700 of the 3,535 of the dictionary: the others have no
property and no pair to learn from). Positives: every pair of them the knowledge base
indexes (QĐ 5948/QĐ-BYT with class rows expanded, the curated rules, ANSM). Negatives: pairs
no list names (unlabelled rather than proven safe), sampled. Features:
``serving.cdss.learned.PairFeaturizer`` (the same code serving runs).

Three models: (1) a drug-disjoint evaluation with labels WITHOUT ANSM (the ingredients are
split at random into training and test drugs; trained on pairs of training drugs, scored on
pairs of two unseen drugs; several splits), which is the validation that sets the threshold;
(2) a model trained on all those pairs, still without ANSM, asked about ANSM's pairs that
QĐ 5948 and the curated rules lack (``training/interaction_external.py``: the card's
``external_evaluation``, which serving reads to decide whether the model may run); (3) the
served model, retrained on every label. ``InteractionRiskRecipe`` supplies them to the shared
steps of ``training.pipeline`` (export, parity, threshold, plots, card, register).

    python -m training.interaction_risk --out models/interaction-risk/1.0.0 --promote
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from serving.cdss.knowledge import DEFAULT_ROOT, KnowledgeBase
from serving.cdss.learned import (
    INTERACTION_MODEL,
    PAIR_INPUT,
    PHARMACOLOGY_CSV,
    PairFeaturizer,
    feature_names,
    read_pharmacology,
)
from serving.registry import CARD_FILE, ONNX_FILE, ModelRegistry, ModelVersion
from training import pipeline
from training.export import ParityError
from training.interaction_external import ANSM_DIR, external_card, from_ansm
from training.pipeline import Fitted, Recipe, RunOptions, Validation

PARITY_TOLERANCE = 1e-5


@dataclass
class Config:
    neg_per_pos: int = 4  # sampled unlabelled pairs per positive in training
    test_fraction: float = 0.2  # of the ingredients, per drug-disjoint split
    splits: int = 3  # random drug-disjoint splits evaluated
    max_iter: int = 150  # (with the rates and sizes here: < 10 min on two busy cores)
    learning_rate: float = 0.1
    max_leaf_nodes: int = 15
    min_samples_leaf: int = 10
    subsample: float = 0.8
    target_specificity: float = 0.99  # threshold: predicted alert when above this
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "extra"}


@dataclass
class PairData:
    inns: list[str]
    i: np.ndarray  # index into inns, i < j
    j: np.ndarray
    y: np.ndarray  # 1 when the knowledge base names the pair
    X: np.ndarray  # pair features

    def take(self, mask: np.ndarray) -> PairData:
        return PairData(self.inns, self.i[mask], self.j[mask], self.y[mask], self.X[mask])


def training_drugs(kb: KnowledgeBase, pharmacology: dict[str, frozenset[str]],
                   exclude=from_ansm) -> list[str]:
    """The ingredients the model learns from: those with a row in pharmacology.csv, and
    those named in a reference pair that `exclude` keeps (QĐ 5948 and the curated rules).

    Every pair of the 3,535-ingredient dictionary is 6 million pairs (27 GiB of features),
    almost all of drugs about which the lists and the pharmacology table say nothing: their
    only features are ATC levels, and labelling them all "not interacting" teaches noise.
    The same set is used whatever the labels (with or without ANSM): only labels change."""
    referenced = {inn for key, found in kb.interacting_pairs().items()
                  if any(not exclude(x) for x in found) for inn in key}
    drugs = kb.drugs
    return sorted(inn for inn in set(pharmacology) | referenced if inn in drugs)


def build_pairs(kb: KnowledgeBase, featurizer: PairFeaturizer, inns: list[str],
                exclude=from_ansm) -> PairData:
    """Every unordered pair of the given ingredients (`training_drugs`), labelled from the
    knowledge base's interactions other than those `exclude` picks (default: ANSM's, the
    external reference; `never` for the served model, trained on everything)."""
    drugs = kb.drugs
    n = len(inns)
    i, j = np.triu_indices(n, k=1)
    y = np.fromiter(
        (any(not exclude(x) for x in kb.interactions(drugs[inns[a]], drugs[inns[b]]))
         for a, b in zip(i, j, strict=True)),
        dtype=np.int64, count=len(i),
    )
    rows = featurizer.drug_rows(inns)
    X = featurizer.pairs(rows[i], rows[j])
    return PairData(inns, i, j, y, X)


def never(_interaction) -> bool:
    """No interaction left out of the labels (the served model learns from every list)."""
    return False


def make_model(cfg: Config, seed: int):
    """Gradient-boosted trees (skl2onnx converts these exactly; its HistGradientBoosting
    converter fails with this scikit-learn release)."""
    from sklearn.ensemble import GradientBoostingClassifier

    return GradientBoostingClassifier(
        n_estimators=cfg.max_iter, learning_rate=cfg.learning_rate,
        max_leaf_nodes=cfg.max_leaf_nodes, min_samples_leaf=cfg.min_samples_leaf,
        subsample=cfg.subsample, random_state=seed,
    )


def sample_training(data: PairData, cfg: Config, rng: np.random.Generator) -> PairData:
    pos = np.flatnonzero(data.y == 1)
    neg = np.flatnonzero(data.y == 0)
    k = min(len(neg), cfg.neg_per_pos * max(1, len(pos)))
    keep = np.concatenate([pos, rng.choice(neg, size=k, replace=False)])
    mask = np.zeros(len(data.y), bool)
    mask[keep] = True
    return data.take(mask)


def fit(data: PairData, cfg: Config, seed: int):
    rng = np.random.default_rng(seed)
    train = sample_training(data, cfg, rng)
    model = make_model(cfg, seed)
    model.fit(train.X, train.y)
    return model, train


def split_drugs(data: PairData, cfg: Config, split: int):
    """(test-drug mask, train pairs, test pairs, pairs with one drug of each) for a split."""
    n = len(data.inns)
    rng = np.random.default_rng(cfg.seed + 1000 + split)
    test_drugs = np.zeros(n, bool)
    test_drugs[rng.choice(n, size=round(n * cfg.test_fraction), replace=False)] = True
    in_i, in_j = test_drugs[data.i], test_drugs[data.j]
    return (test_drugs, data.take(~in_i & ~in_j), data.take(in_i & in_j),
            data.take(in_i ^ in_j))


def drug_disjoint_splits(data: PairData, cfg: Config, progress: bool = False) -> dict[str, Any]:
    """Train on pairs of training drugs, score pairs of unseen drugs; repeat ``cfg.splits``."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    runs, pooled_y, pooled_p = [], [], []
    half_y, half_p = [], []
    iterator = range(cfg.splits)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="drug-disjoint splits", unit="split")
    for s in iterator:
        test_drugs, train, test, one_new = split_drugs(data, cfg, s)
        model, _ = fit(train, cfg, cfg.seed + s)
        p = model.predict_proba(test.X)[:, 1]
        p1 = model.predict_proba(one_new.X)[:, 1]
        runs.append({
            "split": s,
            "test_drugs": int(test_drugs.sum()),
            "test_pairs": int(len(test.y)),
            "test_positives": int(test.y.sum()),
            "roc_auc": float(roc_auc_score(test.y, p)),
            "pr_auc": float(average_precision_score(test.y, p)),
            "prevalence": float(test.y.mean()),
            "one_new_drug_roc_auc": float(roc_auc_score(one_new.y, p1)),
        })
        pooled_y.append(test.y)
        pooled_p.append(p)
        half_y.append(one_new.y)
        half_p.append(p1)
    y, p = np.concatenate(pooled_y), np.concatenate(pooled_p)
    roc = np.array([r["roc_auc"] for r in runs])
    pr = np.array([r["pr_auc"] for r in runs])
    return {
        "runs": runs,
        "roc_auc_mean": float(roc.mean()),
        "roc_auc_sd": float(roc.std(ddof=1)) if len(roc) > 1 else 0.0,
        "pr_auc_mean": float(pr.mean()),
        "pr_auc_sd": float(pr.std(ddof=1)) if len(pr) > 1 else 0.0,
        "pooled_y": y,
        "pooled_p": p,
        "pooled_roc_auc": float(roc_auc_score(y, p)),
        "pooled_pr_auc": float(average_precision_score(y, p)),
        "one_new_drug_roc_auc": float(roc_auc_score(np.concatenate(half_y),
                                                    np.concatenate(half_p))),
    }


def threshold_at_specificity(y: np.ndarray, p: np.ndarray, specificity: float) -> float:
    """Smallest score whose false-positive rate on unlabelled pairs is ≤ 1 - specificity."""
    neg = np.sort(p[y == 0])
    k = int(np.ceil(specificity * len(neg)))
    if k >= len(neg):
        return float(np.nextafter(neg[-1], np.inf))
    return float((neg[k - 1] + neg[k]) / 2) if k > 0 else float(neg[0])


def binary_at(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    pred = p >= threshold
    tp = int((pred & (y == 1)).sum())
    fp = int((pred & (y == 0)).sum())
    tn = int((~pred & (y == 0)).sum())
    fn = int((~pred & (y == 1)).sum())
    return {
        "sensitivity": tp / max(1, tp + fn),
        "specificity": tn / max(1, tn + fp),
        "ppv": tp / max(1, tp + fp),
        "accuracy": (tp + tn) / max(1, len(y)),
    }


def export(model, n_features: int, path: Path) -> Path:
    """skl2onnx: float input ``pair_features`` [N, F]; outputs ``label``, ``probabilities``."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    onx = to_onnx(
        model,
        initial_types=[(PAIR_INPUT, FloatTensorType([None, n_features]))],
        options={id(model): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(onx.SerializeToString())
    return path


def parity(model, onnx_path: Path, X: np.ndarray, tolerance: float = PARITY_TOLERANCE):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    X = np.ascontiguousarray(X, dtype=np.float32)
    labels, probs = sess.run(["label", "probabilities"], {PAIR_INPUT: X})
    ref_p = model.predict_proba(X)
    ref_l = model.predict(X)
    diff = float(np.abs(probs - ref_p).max())
    mismatched = int((labels != ref_l).sum())
    if diff > tolerance or mismatched:
        raise ParityError(f"onnxruntime vs scikit-learn: max |Δp| {diff:.3g} (tolerance "
                          f"{tolerance}), {mismatched} labels differ")
    return {"max_abs_diff": float(f"{diff:.3g}"), "labels_differing": mismatched,
            "tolerance": tolerance, "pairs": int(len(X)),
            "compared": "predict_proba and predict, scikit-learn vs onnxruntime CPU, "
                        "every pair of the training ingredients"}


class InteractionRiskRecipe(Recipe):
    """``interaction-risk`` for ``training.pipeline.run``. Validation is the pooled
    drug-disjoint evaluation (labels without ANSM), which sets the threshold; the served model
    is fitted on every label; with ``ansm`` the card gets its ``external_evaluation``."""

    name = INTERACTION_MODEL
    outputs = ("interacting pair",)

    def __init__(self, kb_root: Path | None = None, cfg: Config | None = None,
                 pharmacology: Path | None = None, ansm: Path | None = ANSM_DIR,
                 progress: bool = True):
        self.kb_root, self.pharmacology, self.ansm = kb_root, pharmacology, ansm
        self.cfg = cfg or Config()
        self.progress = progress

    def load(self) -> tuple[PairData, Validation]:
        self.kb = KnowledgeBase.load(self.kb_root)
        self.pharm = read_pharmacology(self.pharmacology)
        self.names = feature_names(self.kb)
        featurizer = PairFeaturizer(self.kb, self.names, self.pharm)
        inns = training_drugs(self.kb, self.pharm)
        self.data = build_pairs(self.kb, featurizer, inns)  # without ANSM: the external reference
        self.evaluation = drug_disjoint_splits(self.data, self.cfg, progress=self.progress)
        y, p = self.evaluation.pop("pooled_y"), self.evaluation.pop("pooled_p")
        self.served = build_pairs(self.kb, featurizer, inns, exclude=never)  # then: every list
        return self.served, Validation(None, y[:, None], scores=p[:, None])

    def fit(self, train: PairData, progress: bool) -> Fitted:
        started = time.monotonic()
        model, sample = fit(train, self.cfg, self.cfg.seed)
        return Fitted(model, {"n_train_final": int(len(sample.y))}, time.monotonic() - started)

    def thresholds(self, val: Validation, prob: np.ndarray) -> np.ndarray:
        self.threshold = threshold_at_specificity(val.labels[:, 0], prob[:, 0],
                                                  self.cfg.target_specificity)
        return np.asarray([self.threshold])

    def export(self, fitted: Fitted, path: Path, thresholds) -> Path:
        return export(fitted.model, len(self.names), path)

    def parity(self, fitted: Fitted, onnx_path: Path, val: Validation, thresholds) -> dict:
        return parity(fitted.model, onnx_path, self.served.X)

    def describe(self, fitted: Fitted, thresholds: np.ndarray, calibration) -> dict[str, Any]:
        return {
            "task": "binary classification of an ingredient pair: is it likely to interact "
            "(a pair the knowledge base names) although no list names it",
            "labels": ["not named by the knowledge base", "interacting pair"],
            "positive_label": "interacting pair",
            "input": {
                "name": PAIR_INPUT,
                "dtype": "float32",
                "shape": [-1, len(self.names)],
                "builder": "serving.cdss.learned.PairFeaturizer (same code in training and "
                "serving); both:X = a*b, sum:X = a+b, cross:X*Y = min(1, a_X*b_Y + a_Y*b_X), "
                "same:aN = the drugs share an ATC level-N group; symmetric in the two drugs",
                "per_drug_attributes": "p: properties from datasets/knowledge/pharmacology.csv; "
                "c: class tags from drugs.csv; a1..a4: ATC levels 1-4 of the drug's codes",
                "features": self.names,
            },
            "output": {"name": "probabilities", "shape": [-1, 2], "dtype": "float32",
                       "meaning": "column 1: probability that the pair interacts; "
                                  "'label' holds the argmax (0.5), not the serving threshold"},
            "threshold": round(float(thresholds[0]), 6),
            "threshold_method": f"specificity {self.cfg.target_specificity} on the pooled "
            "drug-disjoint test pairs of the evaluation without ANSM labels (at most 1% of "
            "unlabelled pairs of unseen drugs alerted); the served model, retrained with "
            "ANSM's labels too, keeps it",
            "severity": {
                "served": "info",
                "rule": "probability ≥ threshold -> an info alert labelled 'predicted, not from "
                "a reference'; served only when external_evaluation.precision ≥ 0.5 or the "
                "hospital sets learned.interaction_risk = on",
            },
        }

    def metrics(self, val: Validation, prob: np.ndarray, thresholds: np.ndarray) -> dict:
        """What `haidang models list` shows: drug-disjoint, pooled."""
        at_thr = binary_at(val.labels[:, 0], prob[:, 0], thresholds[0])
        return {
            "auc": round(self.evaluation["pooled_roc_auc"], 4),
            "pr_auc": round(self.evaluation["pooled_pr_auc"], 4),
            **{k: round(at_thr[k], 4) for k in ("accuracy", "sensitivity", "specificity", "ppv")},
            "what": "pairs whose two drugs were both unseen in training, pooled over "
            f"{self.cfg.splits} random drug-disjoint splits; labels without ANSM (QĐ 5948 and "
            "the curated rules)",
        }

    def card(self, val: Validation, fitted: Fitted) -> dict[str, Any]:
        cfg, evaluation, data = self.cfg, self.evaluation, self.data
        card: dict[str, Any] = {
            "metrics": {"drug_disjoint": {
                "roc_auc_mean": round(evaluation["roc_auc_mean"], 4),
                "roc_auc_sd": round(evaluation["roc_auc_sd"], 4),
                "pr_auc_mean": round(evaluation["pr_auc_mean"], 4),
                "pr_auc_sd": round(evaluation["pr_auc_sd"], 4),
                "target_roc_auc": 0.85,
                "split": f"the {len(data.inns)} training ingredients are split at random, "
                f"{cfg.test_fraction:.0%} test drugs per split; training uses only pairs of two "
                "training drugs, the test only pairs of two test drugs; pairs with one drug of "
                f"each are left out (scored separately below); {cfg.splits} splits, seeds "
                f"{cfg.seed + 1000}..{cfg.seed + 1000 + cfg.splits - 1}",
                "one_new_drug_roc_auc": round(evaluation["one_new_drug_roc_auc"], 4),
                "runs": [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}
                         for r in evaluation["runs"]],
            }},
            "model": {
                "estimator": "sklearn.ensemble.GradientBoostingClassifier",
                "exported_with": "skl2onnx (opset 17, ai.onnx.ml 3, zipmap off)",
                "n_features": len(self.names),
            },
            "training": {
                "n_pairs": int(len(self.served.y)),
                "n_positive_pairs": int(self.served.y.sum()),
                "n_positive_pairs_without_ansm": int(data.y.sum()),
                "n_train_final": fitted.report["n_train_final"],
                "config": cfg.as_dict(),
            },
            "data": {
                "kind": "knowledge-base pairs (no patient data)",
                "positives": "every pair of training ingredients the knowledge base indexes: "
                "QĐ 5948/QĐ-BYT (30/12/2021) contraindicated pairs with class rows expanded to "
                "their members, the curated class rules and pairs of "
                "datasets/knowledge/interactions.csv, and (served model only) ANSM's thesaurus; "
                "the drug-disjoint evaluation and the external evaluation use a model trained "
                "without ANSM's labels, the served model is then retrained on every label",
                "ingredients": "the training ingredients: those with a row in pharmacology.csv "
                "and those named in a QĐ 5948 or curated pair (not ANSM-only), so that both "
                "models see the same drugs; the other dictionary ingredients have only ATC "
                "codes as features and no reference pair to learn from",
                "negatives": f"{cfg.neg_per_pos} sampled pairs per positive among dictionary "
                "pairs that no list names (unlabelled, not proven safe)",
                "knowledge_root": str(self.kb_root
                                      or DEFAULT_ROOT.relative_to(DEFAULT_ROOT.parents[1])),
                "pharmacology": str(self.pharmacology or PHARMACOLOGY_CSV.relative_to(
                    PHARMACOLOGY_CSV.parents[2])),
                "n_ingredients": len(data.inns),
                "n_dictionary_ingredients": len(self.kb.drugs),
            },
            "intended_use": "Decision support at prescribing: flag ingredient pairs that the "
            "knowledge base does not name but resemble interacting pairs, as a predicted alert "
            "(kind drug-drug-predicted, severity info, labelled 'predicted, not from a "
            "reference') that names the features that drove it. A pharmacist reviews; never a "
            "reason to combine or stop drugs on its own.",
            "limitations": [
                "negatives are pairs no list names, not pairs shown to be safe: some 'false "
                "positives' are real interactions missing from the lists",
                "class rows of QĐ 5948 expand to every member, so a test drug from a class with "
                "known class-level interactions is easier to score than a drug with a new "
                "mechanism; the drug-disjoint figures hold for drugs like the dictionary's, not "
                "novel classes",
                "pharmacology.csv is curated from public references and awaits pharmacist "
                "review; a drug with no properties listed is scored from its class tags and ATC "
                "codes only",
                "no dose, route, duration or patient factors: the score is about the pair only",
                "NOT FOR CLINICAL USE without local validation: not a medical device",
            ],
        }
        if self.ansm is not None:  # the model trained without ANSM, asked about ANSM's pairs
            held_out, _ = fit(data, cfg, cfg.seed)
            card["external_evaluation"] = external_of(held_out, self.names, self.threshold,
                                                      self.kb, self.pharm, self.ansm)
        return card

    def frameworks(self) -> str:
        return (f"scikit-learn {__import__('sklearn').__version__}, "
                f"skl2onnx {__import__('skl2onnx').__version__}")

    def plot(self, k: int, version: str, n: int) -> tuple[str, str, list[str]]:
        return ("drug-disjoint", f"{INTERACTION_MODEL} {version}: pooled drug-disjoint test pairs",
                ["no interaction", "interaction"])


def train_and_register(out: Path, kb_root: Path | None = None, cfg: Config | None = None,
                       pharmacology: Path | None = None, command: str | None = None,
                       promote: bool = False, progress: bool = True,
                       plots: bool = True, ansm: Path | None = ANSM_DIR) -> dict[str, Any]:
    """Write ``out`` (a new ``models/interaction-risk/<version>`` folder); ``promote`` moves
    ``current`` through the registry, nothing else does. With ``ansm`` (the thesaurus folder)
    the card gets its ``external_evaluation``."""
    recipe = InteractionRiskRecipe(kb_root, cfg, pharmacology, ansm, progress)
    return pipeline.run(recipe, Path(out), RunOptions(
        command=command or f"python -m training.interaction_risk --out {out}",
        progress=progress, plots=plots, promote=promote))


def external_of(model, names: list[str], threshold: float, kb: KnowledgeBase,
                pharm: dict[str, frozenset[str]], ansm: Path) -> dict[str, Any]:
    """`external_evaluation` of a model trained without ANSM's labels: exported and loaded
    as serving loads a version (a scratch folder), scored on ANSM's pairs at `threshold`."""
    import tempfile

    from serving.cdss.learned import InteractionRiskModel
    from training.export import sha256_of

    with tempfile.TemporaryDirectory(prefix="interaction-risk-external-") as tmp:
        folder = Path(tmp) / "without-ansm"
        onnx_path = export(model, len(names), folder / ONNX_FILE)
        card = {"name": INTERACTION_MODEL, "version": "without-ansm", "threshold": threshold,
                "input": {"name": PAIR_INPUT, "features": names},
                "sha256": sha256_of(onnx_path)}
        (folder / CARD_FILE).write_text(yaml.safe_dump(card), encoding="utf-8")
        block = external_card(InteractionRiskModel(ModelVersion.load(folder), kb, pharm),
                              kb, ansm)
    block["model"] = ("trained on the same ingredients, features and configuration without "
                      "ANSM's labels; the served model is then retrained with them, so these "
                      "figures are the last external ones it has")
    return block


def summary(card: dict[str, Any]) -> str:
    m, d = card["metrics"]["validation"], card["metrics"]["drug_disjoint"]
    text = (f"{card['name']} {card['version']}: drug-disjoint ROC-AUC {d['roc_auc_mean']:.3f} "
            f"± {d['roc_auc_sd']:.3f}, PR-AUC {d['pr_auc_mean']:.3f} ± {d['pr_auc_sd']:.3f} "
            f"(pooled {m['auc']:.3f} / {m['pr_auc']:.3f}); at threshold {card['threshold']:.4f}: "
            f"sensitivity {m['sensitivity']:.3f}, specificity {m['specificity']:.3f}; "
            f"parity max |Δp| {card['parity']['max_abs_diff']:.2g}")
    ext = card.get("external_evaluation")
    if ext:
        text += (f"; external (ANSM, not trained on): recall {ext['recall']:.3f}, precision "
                 f"{ext['precision']:.3f}")
    return text


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, help="new version folder, e.g. "
                   "models/interaction-risk/1.1.0 (default: next minor version)")
    p.add_argument("--models-dir", type=Path, default=None,
                   help="registry root when --out is not given (default: models)")
    p.add_argument("--knowledge", type=Path, default=None,
                   help="knowledge folder (default datasets/knowledge)")
    p.add_argument("--pharmacology", type=Path, default=None,
                   help="pharmacology.csv (default datasets/knowledge/pharmacology.csv)")
    p.add_argument("--splits", type=int, default=None, help="drug-disjoint splits (default 5)")
    p.add_argument("--promote", action="store_true", help="make the new version current")
    p.add_argument("--no-progress", action="store_true")


def next_version(root: Path, name: str) -> Path:
    versions = ModelRegistry(root).versions(name)
    if not versions:
        return root / name / "1.0.0"
    major, minor, *_ = (versions[-1].split(".") + ["0", "0"])[:3]
    return root / name / f"{int(major)}.{int(minor) + 1}.0"


def run(args) -> int:
    cfg = Config()
    if getattr(args, "splits", None):
        cfg.splits = args.splits
    out = args.out or next_version(args.models_dir or Path("models"), INTERACTION_MODEL)
    try:
        card = train_and_register(out, getattr(args, "knowledge", None), cfg,
                                  getattr(args, "pharmacology", None), command=_command(),
                                  promote=args.promote, progress=not args.no_progress)
    except (FileExistsError, ValueError, ParityError) as exc:
        print(f"train interaction-risk: {exc}", file=sys.stderr)
        return 1
    print(summary(card) + f"; written to {out}" + ("; promoted" if args.promote else ""))
    return 0


def _command() -> str:
    return "python -m training.interaction_risk " + " ".join(shlex.quote(a) for a in sys.argv[1:])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
