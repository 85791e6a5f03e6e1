"""Train the protocol-anomaly model: how often each drug group is prescribed for each
diagnosis group, learned from QĐ 130 XML exports.

Drug group: ATC level 4 (``C09AA``) of each recognised ingredient (all of its codes).
Diagnosis group: the WHO ICD-10 block (``I10-I15``) of the main and secondary diagnoses.
``frequency[g, b]`` = share of the records carrying a diagnosis in block ``b`` whose
prescription holds a drug of group ``g``; ``support[b]`` = number of such records. A drug is
unusual when, for every diagnosis block of the patient, its frequency is below the threshold
while the block has enough support to say so.

The table is exported as a small ONNX graph (Gather on the flattened table, a comparison for
the decision) so serving runs it with onnxruntime like the other models; parity against the
numpy table is checked exactly.

Evaluation (data-agnostic, no labels needed): records are split 80/20 by their ``MA_LK``;
on the held-out records every real drug line is a negative, and each record also gets one
random dictionary ingredient swapped in as an injected positive. ``ProtocolRecipe`` supplies
the data, table and metrics to the shared steps of ``training.pipeline``.

    python -m training.protocol --data 'exports/*.xml' --out models/protocol-anomaly/1.0.0
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from serving.cdss.knowledge import KnowledgeBase
from serving.cdss.learned import PROTOCOL_MODEL, diagnosis_group, drug_groups
from serving.cdss.xml130 import Xml130Error, parse_xml130
from training import pipeline
from training.pipeline import Fitted, Recipe, RunOptions, Validation
from training.xml130_synth import SYNTHETIC_FACILITY

THRESHOLDS = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05)
MIN_SUPPORT = 30
TARGET_SPECIFICITY = 0.99


@dataclass
class Record:
    key: str
    blocks: list[str]
    groups: list[list[str]]  # per recognised ingredient: its ATC level-4 groups
    facility: str | None


class DataError(ValueError):
    """The exports cannot be used; the message says which file and why."""


SERVING_DEMO = ("DEMO model (synthetic data): not served with learned.protocol_anomaly = auto "
                "(the default); forced on, every alert is labelled 'DEMO MODEL, synthetic "
                "data'; no clinician should see its counts")
SERVING_OWN = ("served with learned.protocol_anomaly = auto (the default) once promoted; "
               "'off' switches it off")


def _records_of(path: Path) -> list[tuple[bytes, str | None]]:
    """Split an export into single-HOSO documents (parse_xml130 reads one record)."""
    from xml.etree.ElementTree import tostring

    import defusedxml.ElementTree as DET

    try:
        root = DET.parse(str(path), forbid_dtd=True, forbid_entities=True,
                         forbid_external=True).getroot()
    except Exception as exc:  # noqa: BLE001 - any parse failure names the file
        raise DataError(f"{path}: not readable XML 130 ({exc})") from None
    facility = None
    for el in root.iter():
        if el.tag.rsplit("}", 1)[-1].upper() == "MACSKCB":
            facility = (el.text or "").strip() or None
            break
    hosos = [el for el in root.iter() if el.tag.rsplit("}", 1)[-1].upper() == "HOSO"]
    if not hosos:
        return [(path.read_bytes(), facility)]
    return [(tostring(h, encoding="utf-8"), facility) for h in hosos]


def read_exports(pattern: str | Path, kb: KnowledgeBase,
                 progress: bool = False) -> tuple[list[Record], dict[str, int], list[str]]:
    """Records from every file matching ``pattern`` (a glob, a file or a folder)."""
    pattern = str(pattern)
    if Path(pattern).is_dir():
        files = sorted(Path(pattern).glob("*.xml"))
    else:
        files = sorted(Path(p) for p in glob.glob(pattern))
    if not files:
        raise DataError(f"no XML 130 files match {pattern!r}: give a glob such as "
                        "'exports/*.xml' (quoted) or a folder")
    records: list[Record] = []
    stats = {"files": len(files), "records": 0, "lines": 0, "unrecognised_lines": 0,
             "records_without_valid_icd": 0, "unreadable_records": 0}
    iterator = files
    if progress:
        from tqdm import tqdm

        iterator = tqdm(files, desc="reading exports", unit="file")
    for path in iterator:
        for doc, facility in _records_of(path):
            try:
                rec = parse_xml130(doc)
            except Xml130Error:
                stats["unreadable_records"] += 1
                continue
            stats["records"] += 1
            codes = [rec.get("MA_BENH_CHINH") or ""]
            codes += [c for c in (rec.get("MA_BENH_KT") or "").replace(",", ";").split(";")]
            blocks = sorted({b for c in codes if c.strip() and (b := diagnosis_group(c))})
            groups = []
            for line in rec.get("THUOC", []):
                stats["lines"] += 1
                match = kb.resolve(line.get("TEN_THUOC", ""))
                if match is None:
                    stats["unrecognised_lines"] += 1
                    continue
                groups.extend(drug_groups(d) for d in match.drugs)
            if not blocks:
                stats["records_without_valid_icd"] += 1
                continue
            key = rec.get("MA_LK") or hashlib.sha256(doc).hexdigest()
            records.append(Record(key, blocks, [g for g in groups if g], facility))
    return records, stats, [str(f) for f in files]


@dataclass
class Table:
    drug_groups: list[str]
    diagnosis_groups: list[str]
    counts: np.ndarray  # [G+1, B+1] records of block b holding a drug of group g
    support: np.ndarray  # [B+1] records with block b (last: unknown -> 0)

    @property
    def frequency(self) -> np.ndarray:
        return (self.counts / np.maximum(self.support, 1)[None, :]).astype(np.float32)


def build_table(records: list[Record]) -> Table:
    groups = sorted({g for r in records for gs in r.groups for g in gs})
    blocks = sorted({b for r in records for b in r.blocks})
    gi = {g: i for i, g in enumerate(groups)}
    bi = {b: i for i, b in enumerate(blocks)}
    counts = np.zeros((len(groups) + 1, len(blocks) + 1), dtype=np.float64)
    support = np.zeros(len(blocks) + 1, dtype=np.float64)
    for r in records:
        present = sorted({gi[g] for gs in r.groups for g in gs})
        cols = [bi[b] for b in r.blocks]
        support[cols] += 1
        for g in present:
            counts[g, cols] += 1
    return Table(groups, blocks, counts, support)


def lookup(table: Table, drug_idx: np.ndarray, dx_idx: np.ndarray, threshold: float,
           min_support: float):
    """The numpy reference the ONNX graph must match exactly."""
    freq = table.frequency.reshape(-1)[drug_idx * (len(table.diagnosis_groups) + 1) + dx_idx]
    support = table.support.astype(np.float32)[dx_idx]
    unusual = (freq < np.float32(threshold)) & (support >= np.float32(min_support))
    return freq, support, unusual


def export_onnx(table: Table, threshold: float, min_support: float, path: Path) -> Path:
    """Inputs ``drug_group``, ``diagnosis_group`` int64 [N]; outputs ``frequency``,
    ``support`` float32 [N] and ``unusual`` bool [N]. Unknown index = len(vocabulary)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n_dx = len(table.diagnosis_groups) + 1
    g_max = len(table.drug_groups)
    b_max = len(table.diagnosis_groups)
    inits = [
        numpy_helper.from_array(table.frequency.reshape(-1), "frequency_table"),
        numpy_helper.from_array(table.support.astype(np.float32), "support_table"),
        numpy_helper.from_array(np.array(n_dx, dtype=np.int64), "n_dx"),
        numpy_helper.from_array(np.array(0, dtype=np.int64), "zero"),
        numpy_helper.from_array(np.array(g_max, dtype=np.int64), "g_max"),
        numpy_helper.from_array(np.array(b_max, dtype=np.int64), "b_max"),
        numpy_helper.from_array(np.array(threshold, dtype=np.float32), "threshold"),
        numpy_helper.from_array(np.array(min_support, dtype=np.float32), "min_support"),
    ]
    nodes = [  # out-of-range indexes are clipped onto the "unknown" row/column
        helper.make_node("Clip", ["drug_group", "zero", "g_max"], ["g"]),
        helper.make_node("Clip", ["diagnosis_group", "zero", "b_max"], ["b"]),
        helper.make_node("Mul", ["g", "n_dx"], ["row"]),
        helper.make_node("Add", ["row", "b"], ["flat"]),
        helper.make_node("Gather", ["frequency_table", "flat"], ["frequency"], axis=0),
        helper.make_node("Gather", ["support_table", "b"], ["support"], axis=0),
        helper.make_node("Less", ["frequency", "threshold"], ["rare"]),
        helper.make_node("GreaterOrEqual", ["support", "min_support"], ["enough"]),
        helper.make_node("And", ["rare", "enough"], ["unusual"]),
    ]
    graph = helper.make_graph(
        nodes, "protocol_anomaly",
        [helper.make_tensor_value_info("drug_group", TensorProto.INT64, ["N"]),
         helper.make_tensor_value_info("diagnosis_group", TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info("frequency", TensorProto.FLOAT, ["N"]),
         helper.make_tensor_value_info("support", TensorProto.FLOAT, ["N"]),
         helper.make_tensor_value_info("unusual", TensorProto.BOOL, ["N"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="haidang-training")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


def parity(table: Table, path: Path, threshold: float, min_support: float) -> dict[str, Any]:
    """Every (group, block) cell plus out-of-range indexes: onnxruntime vs numpy."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    g, b = np.meshgrid(np.arange(len(table.drug_groups) + 1),
                       np.arange(len(table.diagnosis_groups) + 1), indexing="ij")
    g, b = g.reshape(-1), b.reshape(-1)
    freq, support, unusual = sess.run(["frequency", "support", "unusual"],
                                      {"drug_group": g, "diagnosis_group": b})
    ref = lookup(table, g, b, threshold, min_support)
    diff = float(max(np.abs(freq - ref[0]).max(), np.abs(support - ref[1]).max()))
    differ = int((unusual != ref[2]).sum())
    wild = sess.run(["frequency"], {"drug_group": np.array([-5, 10**6], dtype=np.int64),
                                    "diagnosis_group": np.array([10**6, -1], dtype=np.int64)})[0]
    if diff > 1e-6 or differ or np.any(wild != 0):
        raise RuntimeError(f"protocol ONNX parity failed: max diff {diff}, {differ} decisions "
                           f"differ, out-of-range lookups {wild}")
    return {"max_abs_diff": diff, "labels_differing": differ, "cells": int(len(g)),
            "compared": "frequency, support and unusual for every table cell, onnxruntime vs "
                        "the numpy table"}


def _split(records: list[Record], fraction: float = 0.2):
    def held(r: Record) -> bool:
        return int(hashlib.sha256(r.key.encode()).hexdigest()[:8], 16) % 1000 < fraction * 1000

    return [r for r in records if not held(r)], [r for r in records if held(r)]


def evaluate(table: Table, held: list[Record], kb: KnowledgeBase, seed: int = 0):
    """Scores (max frequency over the record's blocks) for real lines (0) and injected (1)."""
    rng = np.random.default_rng(seed)
    pool = sorted({tuple(drug_groups(d)) for d in kb.drugs.values() if drug_groups(d)})
    gi = {g: i for i, g in enumerate(table.drug_groups)}
    bi = {b: i for i, b in enumerate(table.diagnosis_groups)}
    freq, support = table.frequency, table.support
    unknown_g, unknown_b = len(table.drug_groups), len(table.diagnosis_groups)

    def score(groups, blocks) -> tuple[float, float]:
        best, sup = 0.0, 0.0
        for b in blocks:
            j = bi.get(b, unknown_b)
            for g in groups or ["?"]:
                f = float(freq[gi.get(g, unknown_g), j])
                if f >= best:
                    best, sup = f, float(support[j])
        return best, sup

    y, s, sup = [], [], []
    for r in held:
        for groups in r.groups:
            f, n = score(groups, r.blocks)
            y.append(0)
            s.append(f)
            sup.append(n)
        mine = {g for gs in r.groups for g in gs}
        for _ in range(20):  # a random ingredient not of the record's own groups
            cand = pool[rng.integers(len(pool))]
            if not mine & set(cand):
                f, n = score(list(cand), r.blocks)
                y.append(1)
                s.append(f)
                sup.append(n)
                break
    return np.array(y), np.array(s, dtype=np.float32), np.array(sup, dtype=np.float32)


def choose_threshold(y, s, sup, min_support: float) -> tuple[float, dict[str, float]]:
    """The largest candidate threshold keeping specificity ≥ TARGET on real lines."""
    best = THRESHOLDS[0]
    for t in THRESHOLDS:
        flagged = (s < t) & (sup >= min_support)
        spec = 1 - flagged[y == 0].mean()
        if spec >= TARGET_SPECIFICITY:
            best = t
    return best, metrics_at(y, s, sup, best, min_support)


def metrics_at(y, s, sup, threshold: float, min_support: float) -> dict[str, float]:
    """Injected lines found and real lines left alone when ``unusual`` = frequency <
    ``threshold`` with support ≥ ``min_support``."""
    from sklearn.metrics import roc_auc_score

    flagged = (s < threshold) & (sup >= min_support)
    tp = int((flagged & (y == 1)).sum())
    fp = int((flagged & (y == 0)).sum())
    return {
        "auc": round(float(roc_auc_score(y, -s)), 4),
        "sensitivity": round(tp / max(1, int((y == 1).sum())), 4),
        "specificity": round(1 - fp / max(1, int((y == 0).sum())), 4),
        "accuracy": round(float((flagged == (y == 1)).mean()), 4),
        "ppv_at_1_to_1": round(tp / max(1, tp + fp), 4),
        "n_real_lines": int((y == 0).sum()),
        "n_injected": int((y == 1).sum()),
    }


class ProtocolRecipe(Recipe):
    """``protocol-anomaly`` for ``training.pipeline.run``. Validation: a table built on 80% of
    the records scores the held-out 20% (real lines and injected ones), which sets the
    threshold; the shipped table counts every record and carries the threshold in its graph."""

    name = PROTOCOL_MODEL
    outputs = ("unusual",)

    def __init__(self, data: str | Path, kb_root: Path | None = None,
                 min_support: float = MIN_SUPPORT, progress: bool = True):
        self.data, self.kb_root = data, kb_root
        self.min_support = min_support
        self.progress = progress

    def load(self) -> tuple[list[Record], Validation]:
        self.kb = KnowledgeBase.load(self.kb_root)
        self.records, self.stats, self.files = read_exports(self.data, self.kb, self.progress)
        if len(self.records) < 100:
            raise DataError(f"only {len(self.records)} usable records in {self.data}: need at "
                            "least 100 records with a valid ICD-10 code")
        train, held = _split(self.records)
        y, s, sup = evaluate(build_table(train), held, self.kb)
        return self.records, Validation(None, y[:, None], data=sup, scores=s[:, None])

    def fit(self, train: list[Record], progress: bool) -> Fitted:
        started = time.monotonic()
        return Fitted(build_table(train), {}, time.monotonic() - started)

    def thresholds(self, val: Validation, prob: np.ndarray) -> np.ndarray:
        best, _ = choose_threshold(val.labels[:, 0], prob[:, 0], val.data, self.min_support)
        return np.asarray([best])

    def export(self, fitted: Fitted, path: Path, thresholds: np.ndarray) -> Path:
        return export_onnx(fitted.model, float(thresholds[0]), self.min_support, path)

    def parity(self, fitted: Fitted, onnx_path: Path, val: Validation,
               thresholds: np.ndarray) -> dict[str, Any]:
        return parity(fitted.model, onnx_path, float(thresholds[0]), self.min_support)

    def describe(self, fitted: Fitted, thresholds: np.ndarray, calibration) -> dict[str, Any]:
        table: Table = fitted.model
        return {
            "task": "prescription anomaly: how often a drug group (ATC level 4) is prescribed "
            "with a diagnosis group (ICD-10 block); flags a drug very unusual for every "
            "diagnosis of the patient (info alert with the observed frequency)",
            "input": {
                "drug_group": "int64 [N]: index into drug_groups (ATC level 4); "
                "len(drug_groups) = unknown",
                "diagnosis_group": "int64 [N]: index into diagnosis_groups (WHO ICD-10 block); "
                "len(diagnosis_groups) = unknown (support 0, never unusual)",
                "drug_groups": table.drug_groups,
                "diagnosis_groups": table.diagnosis_groups,
            },
            "output": {
                "frequency": "float32 [N]: share of records of the block holding the group",
                "support": "float32 [N]: records of the block",
                "unusual": "bool [N]: frequency < threshold and support >= min_support",
            },
            "threshold": float(thresholds[0]),
            "min_support": self.min_support,
            "threshold_method": f"largest of {list(THRESHOLDS)} keeping specificity ≥ "
            f"{TARGET_SPECIFICITY} on the real drug lines of held-out records (20% by MA_LK); "
            "serving flags a drug only when it is unusual for EVERY diagnosis block of the "
            "patient",
        }

    def metrics(self, val: Validation, prob: np.ndarray, thresholds: np.ndarray) -> dict:
        return {
            **metrics_at(val.labels[:, 0], prob[:, 0], val.data, float(thresholds[0]),
                         self.min_support),
            "what": "held-out 20% of records (by MA_LK): real drug lines (negatives) vs one "
            "random dictionary ingredient of another ATC group injected per record "
            "(positives); score = highest frequency over the record's blocks",
        }

    def card(self, val: Validation, fitted: Fitted) -> dict[str, Any]:
        records, data = self.records, self.data
        facilities = {r.facility for r in records}
        synthetic = facilities == {SYNTHETIC_FACILITY}
        return {
            "model": {"kind": "lookup table as an ONNX graph (Clip, Gather, Less, And), opset 17",
                      "cells": int(fitted.model.counts.size)},
            "training": {
                "files": len(self.files),
                **self.stats,
                "n_records_used": len(records),
                "n_records": len(records),
            },
            "data": {
                "kind": "SYNTHETIC XML 130 exports (training/xml130_synth.py); no real patients, "
                "no real hospital" if synthetic else "XML 130 exports (facility codes: "
                f"{', '.join(sorted(str(f) for f in facilities))[:200]})",
                "synthetic": synthetic,
                "pattern": str(data),
                **({"regenerate": "python -m training.xml130_synth --out var/exports --records "
                    "6000 --per-file 500 --seed 0 (deterministic for a seed and a dictionary)"}
                   if synthetic else {}),
            },
            "intended_use": "Decision support at prescribing: an info alert when a drug is "
            "rarely prescribed for the patient's diagnoses in the prescribing history the model "
            "learned. Retrain on the hospital's own XML 130 exports before relying on it.",
            "serving": SERVING_DEMO if synthetic else SERVING_OWN,
            "limitations": [
                "trained on SYNTHETIC visits whose regimens were written by the developers: the "
                "frequencies show the generator's habits, not any hospital's" if synthetic else
                "frequencies show this hospital's habits, which may themselves be wrong",
                "ATC level-4 and ICD-10 block granularity; drugs without an ATC code fall in the "
                "unknown group",
                "a rare drug is not a wrong drug: the alert is information, never a block",
                "NOT FOR CLINICAL USE: not a medical device",
            ],
        }

    def frameworks(self) -> str:
        return f"onnx {__import__('onnx').__version__}"


def train_and_register(data: str | Path, out: Path, kb_root: Path | None = None,
                       command: str | None = None, promote: bool = False,
                       progress: bool = True, min_support: float = MIN_SUPPORT) -> dict[str, Any]:
    recipe = ProtocolRecipe(data, kb_root, min_support, progress)
    return pipeline.run(recipe, Path(out), RunOptions(
        command=command or f"python -m training.protocol --data '{data}' --out {out}",
        progress=progress, promote=promote))


def summary(card: dict[str, Any]) -> str:
    m = card["metrics"]["validation"]
    return (f"{card['name']} {card['version']}: {card['training']['n_records']} records "
            f"({'synthetic' if card['data']['synthetic'] else 'real'}), injected-anomaly AUC "
            f"{m['auc']:.3f}, sensitivity {m['sensitivity']:.3f}, specificity "
            f"{m['specificity']:.3f} at frequency < {card['threshold']} (support ≥ "
            f"{card['min_support']}); parity max diff {card['parity']['max_abs_diff']:.2g}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="XML 130 exports: a quoted glob "
                   "('exports/*.xml'), a file or a folder")
    p.add_argument("--out", type=Path, help="new version folder, e.g. "
                   "models/protocol-anomaly/1.1.0 (default: next minor version)")
    p.add_argument("--models-dir", type=Path, default=None)
    p.add_argument("--knowledge", type=Path, default=None)
    p.add_argument("--min-support", type=float, default=MIN_SUPPORT)
    p.add_argument("--promote", action="store_true", help="make the new version current")
    p.add_argument("--no-progress", action="store_true")


def run(args) -> int:
    from training.interaction_risk import next_version

    out = args.out or next_version(args.models_dir or Path("models"), PROTOCOL_MODEL)
    try:
        card = train_and_register(str(args.data), out, getattr(args, "knowledge", None),
                                  command=_command(), promote=args.promote,
                                  progress=not args.no_progress,
                                  min_support=getattr(args, "min_support", MIN_SUPPORT))
    except (FileExistsError, DataError) as exc:
        print(f"train protocol: {exc}", file=sys.stderr)
        return 1
    print(summary(card) + f"; written to {out}" + ("; promoted" if args.promote else ""))
    return 0


def _command() -> str:
    return "python -m training.protocol " + " ".join(shlex.quote(a) for a in sys.argv[1:])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
