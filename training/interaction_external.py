"""External evaluation of the interaction-risk model on a reference it never saw: the French
medicines agency's interaction thesaurus (ANSM, 20/10/2020, `datasets/ddi-ansm/`).

The model learns from QĐ 5948/QĐ-BYT and the curated rules; its drug-disjoint figures only say
how well it finds more of the same lists. Here it is asked about the pairs those lists do NOT
contain, and ANSM says which of them interact:

- ANSM names are mapped to dictionary ingredients with the dictionary's own name resolution
  (French spellings fold onto the INN: "CLARITHROMYCINE" -> clarithromycin); a name that does
  not resolve completely is left out and counted.
- ANSM class rows ("INHIBITEURS PUISSANTS DU CYP3A4") are expanded to their members through
  ANSM's own substance -> class table (`expand_classes=True`, the default and what the card
  reports first), or skipped (`False`, reported beside it).
- The pairs scored: every pair of two dictionary ingredients ANSM lists (as a substance of its
  thesaurus or of its class table) that QĐ 5948 and the curated rules do not name. ANSM pairs
  are the positives; the other pairs are counted as negatives although ANSM's silence is not
  proof of safety, so the precision is a lower bound.
- Interactions whose source is ANSM (the knowledge base carries them) are left out of the
  labels of the model measured here (`training.interaction_risk.build_pairs(...,
  exclude=from_ansm)`), so the reference stays external; `training.interaction_risk` then
  retrains the served model on every label, ANSM's included, and its card keeps these
  figures from the model trained without them.

    python -m training.interaction_external --version 1.0.0 --write-card
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from serving.cdss import names
from serving.cdss.catalog import resolve_ingredient
from serving.cdss.knowledge import DEFAULT_ROOT, KnowledgeBase
from serving.cdss.learned import INTERACTION_MODEL, InteractionRiskModel
from serving.registry import CARD_FILE, ModelRegistry

ANSM_DIR = DEFAULT_ROOT.parent / "ddi-ansm"
THESAURUS = "ansm_thesaurus_ddi_2020_10.csv"
CLASS_TABLE = "ansm_substance_classes_2020_10.csv"
SCORE_BATCH = 100_000
REFERENCE = "ANSM, Thésaurus des interactions médicamenteuses (20/10/2020)"


def from_ansm(interaction) -> bool:
    """Is this knowledge-base interaction taken from ANSM (kept out of training labels)?"""
    return "ANSM" in (interaction.source or "")


@dataclass
class AnsmReference:
    """ANSM's pairs in dictionary keys, and how much of ANSM the dictionary could read."""

    pairs: set[tuple[str, str]] = field(default_factory=set)
    known: set[str] = field(default_factory=set)  # dictionary keys ANSM lists
    rows: int = 0
    class_rows: int = 0  # rows with a class on at least one side
    rows_used: int = 0  # rows whose two sides both mapped (and were not skipped)
    names: int = 0  # distinct substance names (thesaurus sides and class-table entries)
    names_mapped: int = 0
    expand_classes: bool = True

    def summary(self) -> dict[str, Any]:
        return {
            "classes": "expanded through ANSM's substance -> class table" if self.expand_classes
            else "class rows skipped (substance x substance rows only)",
            "rows": self.rows, "class_rows": self.class_rows, "rows_used": self.rows_used,
            "substance_names": self.names, "substance_names_mapped": self.names_mapped,
            "ingredients_listed": len(self.known), "pairs": len(self.pairs),
        }


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def read_ansm(kb: KnowledgeBase, root: Path = ANSM_DIR,
              expand_classes: bool = True) -> AnsmReference:
    ref = AnsmReference(expand_classes=expand_classes)
    mapped: dict[str, tuple[str, ...] | None] = {}

    def substance(name: str) -> tuple[str, ...] | None:
        key = names.plain(name)
        if key not in mapped:
            mapped[key] = resolve_ingredient(kb, name)
        return mapped[key]

    members: dict[str, set[str]] = {}
    for row in _read(root / CLASS_TABLE):
        keys = substance(row["substance"])
        for cls in (row.get("drug_classes") or "").split("|"):
            if cls.strip():
                members.setdefault(names.plain(cls), set()).update(keys or ())
        ref.known.update(keys or ())
    for row in _read(root / THESAURUS):
        ref.rows += 1
        sides = []
        is_class = False
        for name in (row["main_drug"], row["plus_drug"]):
            cls = members.get(names.plain(name))
            if cls is not None:
                is_class = True
                sides.append(cls)
            else:
                keys = substance(name)
                ref.known.update(keys or ())
                sides.append(set(keys or ()))
        ref.class_rows += is_class
        if (is_class and not expand_classes) or not sides[0] or not sides[1]:
            continue
        ref.rows_used += 1
        for a in sides[0]:
            for b in sides[1]:
                if a != b:
                    ref.pairs.add((a, b) if a < b else (b, a))
    ref.names = len(mapped)
    ref.names_mapped = sum(1 for v in mapped.values() if v)
    return ref


def evaluate(model: InteractionRiskModel, kb: KnowledgeBase, ref: AnsmReference,
             unknown: set[tuple[str, str]] = frozenset()) -> dict[str, Any]:
    """Recall and precision at the served threshold on the pairs QĐ 5948 and the curated
    rules do not name, among ingredients ANSM lists; `unknown` pairs (ANSM names them only
    through a class row that this reading skips) are neither positive nor negative."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    drugs = kb.drugs
    keys = sorted(k for k in ref.known if k in drugs)
    pairs = [(a, b) for i, a in enumerate(keys) for b in keys[i + 1:]
             if (a, b) not in unknown
             and not [x for x in kb.interactions(drugs[a], drugs[b]) if not from_ansm(x)]]
    y = np.fromiter(((a, b) in ref.pairs for a, b in pairs), dtype=bool, count=len(pairs))
    p = np.concatenate([np.zeros(0, np.float32)] + [  # in slices: 1M pairs x 300 features
        model.score_pairs(pairs[k:k + SCORE_BATCH]) for k in range(0, len(pairs), SCORE_BATCH)])
    pred = p >= model.threshold
    tp = int((pred & y).sum())
    out = {
        "pairs_scored": len(pairs),
        "ansm_pairs": int(y.sum()),
        "predicted": int(pred.sum()),
        "true_positives": tp,
        "threshold": model.threshold,
        "recall": round(tp / max(1, int(y.sum())), 4),
        "precision": round(tp / max(1, int(pred.sum())), 4),
        "prevalence": round(float(y.mean()), 4) if len(y) else 0.0,
    }
    if y.any() and not y.all():
        out["roc_auc"] = round(float(roc_auc_score(y, p)), 4)
        out["pr_auc"] = round(float(average_precision_score(y, p)), 4)
    return out


def external_card(model: InteractionRiskModel, kb: KnowledgeBase,
                  root: Path = ANSM_DIR) -> dict[str, Any]:
    """The card's `external_evaluation`: class rows expanded first, then skipped."""
    block: dict[str, Any] = {
        "reference": f"{REFERENCE}, datasets/ddi-ansm (not used in training)",
        "what": "pairs of two dictionary ingredients that ANSM lists and that neither QĐ 5948 "
        "nor the curated rules name; positives = pairs ANSM names (any of its 4 levels), "
        "every other pair counted negative (ANSM's silence is not proof of safety: the "
        "precision is a lower bound); at the served threshold",
        "names": "ANSM names mapped with the dictionary's name resolution; a name that does "
        "not resolve completely is left out (see mapping)",
    }
    expanded = read_ansm(kb, root, True)
    substances = read_ansm(kb, root, False)
    block["class_rows_expanded"] = {**evaluate(model, kb, expanded),
                                    "mapping": expanded.summary()}
    block["substance_rows_only"] = {
        **evaluate(model, kb, substances, expanded.pairs - substances.pairs),
        "mapping": substances.summary(),
        "note": "pairs ANSM names only through a class row are left out (neither positive "
        "nor negative)"}
    # What `learned.interaction_risk = auto` reads: the lower of the two readings.
    worst = min(block["class_rows_expanded"], block["substance_rows_only"],
                key=lambda m: m["precision"])
    block["precision"] = worst["precision"]
    block["recall"] = worst["recall"]
    block["decision"] = "precision and recall: the reading with the lower precision"
    return block


def write_card(version_dir: Path, block: dict[str, Any]) -> None:
    path = Path(version_dir) / CARD_FILE
    card = yaml.safe_load(path.read_text(encoding="utf-8"))
    card["external_evaluation"] = block
    path.write_text(yaml.safe_dump(card, sort_keys=False, allow_unicode=True, width=100),
                    encoding="utf-8")


def run(args) -> int:
    registry = ModelRegistry(args.models_dir)
    version = registry.version(INTERACTION_MODEL, args.version) if args.version \
        else registry.current(INTERACTION_MODEL)
    kb = KnowledgeBase.load(args.knowledge)
    block = external_card(InteractionRiskModel(version, kb), kb, args.ansm)
    for label in ("class_rows_expanded", "substance_rows_only"):
        m = block[label]
        print(f"{version.name} {version.version} on ANSM ({label}): {m['ansm_pairs']} ANSM "
              f"pairs among {m['pairs_scored']} pairs the lists lack; recall {m['recall']:.3f}, "
              f"precision {m['precision']:.3f} at threshold {m['threshold']:.4f}; "
              f"PR-AUC {m.get('pr_auc', float('nan')):.3f}; mapped {m['mapping']}")
    if args.write_card:
        write_card(version.path, block)
        print(f"written to {version.path / CARD_FILE}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models-dir", type=Path, default=Path("models"))
    p.add_argument("--version", default=None, help="default: the current version")
    p.add_argument("--knowledge", type=Path, default=None)
    p.add_argument("--ansm", type=Path, default=ANSM_DIR)
    p.add_argument("--write-card", action="store_true",
                   help="store the figures as external_evaluation in the version's card")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
