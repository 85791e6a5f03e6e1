"""The prescription knowledge base: drugs, interactions and protocol rules in memory.

Everything clinical lives in reviewable data files (`datasets/knowledge/*.csv`, each row
with its `source`) and in the Ministry of Health list of contraindicated pairs
(`datasets/ddi-vn/`, QĐ 5948/QĐ-BYT). `KnowledgeBase.load()` compiles them once into dict
indexes so that a prescription check is a handful of dictionary look-ups.

Class sides (`class:nsaid`) and combination sides (`atazanavir/ritonavir`) are expanded at
load time: a row naming a class applies to every member the drug dictionary lists for it.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from serving.cdss import names

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_ROOT = REPO_ROOT / "datasets" / "knowledge"
SEVERITIES = ("contraindicated", "major", "moderate", "minor")
QD5948_SOURCE = "QĐ 5948/QĐ-BYT (30/12/2021)"
ANSM_SOURCE = "ANSM, Thésaurus des interactions médicamenteuses (20/10/2020)"
# ANSM's four levels (issue 14). A row with several levels (by dose or route) takes its
# strictest, as the thesaurus' own `max_severity` does.
ANSM_SEVERITY = {
    "contre indication": "contraindicated",
    "association deconseillee": "major",
    "precaution d emploi": "moderate",
    "a prendre en compte": "minor",
    "il convient de prendre en compte": "minor",
}
ANSM_LEVEL_VI = {
    "contraindicated": "Chống chỉ định (CONTRE-INDICATION)",
    "major": "Không nên phối hợp (Association DÉCONSEILLÉE)",
    "moderate": "Thận trọng khi phối hợp (Précaution d'emploi)",
    "minor": "Cần lưu ý (A prendre en compte)",
}
ANSM_LEVEL_EN = {
    "contraindicated": "Contraindicated (CONTRE-INDICATION)",
    "major": "Combination not recommended (Association DÉCONSEILLÉE)",
    "moderate": "Precaution for use (Précaution d'emploi)",
    "minor": "To be taken into account (A prendre en compte)",
}
PENDING_REVIEW = "pending pharmacist review"


class KnowledgeError(ValueError):
    """The data files are inconsistent; the message names the file, row and fix."""


@dataclass(frozen=True)
class Drug:
    inn: str  # canonical key: lowercase English INN, e.g. "amiodarone"
    name_vi: str  # as the MoH list spells it, e.g. "Amiodaron"
    atc_codes: tuple[str, ...]
    classes: frozenset[str]  # tags such as "nsaid", "qt-prolonging", "maoi"
    max_daily_dose_mg: float | None  # adult, oral unless the dose source says otherwise
    source: str
    dose_source: str | None = None
    name_fr: str | None = None  # as the ANSM thesaurus spells it, e.g. "amiodarone"


@dataclass(frozen=True)
class DrugMatch:
    text: str  # the prescribed line as given
    drugs: tuple[Drug, ...]  # several for a combination product
    matched: str  # the name/alias/brand that matched
    strength_mg: float | None  # parsed from the line when present ("200mg")
    # Words of the line that matched nothing (a manufacturer, or an unknown co-ingredient
    # as in "Codein + Terpin"): the checks may show them so a partial match is not silent.
    unmatched: tuple[str, ...] = ()


@dataclass(frozen=True)
class Interaction:
    id: str  # stable: "qd5948-012" or "cur-0003"
    a: str  # side as written in the source: inn, "inn/inn" (combination) or "class:<tag>"
    b: str
    severity: str  # "contraindicated" | "major" | "moderate" | "minor"
    mechanism_vi: str
    consequence_vi: str
    management_vi: str
    mechanism_en: str | None
    consequence_en: str | None
    management_en: str | None
    source: str  # e.g. "QĐ 5948/QĐ-BYT (30/12/2021), STT 12"
    # The original text when the Vietnamese and English are a translation (ANSM, French).
    original: str | None = None


@dataclass(frozen=True)
class IndicationRule:
    id: str
    drug: str  # inn or "class:<tag>"
    icd_ranges: tuple[str, ...]  # "J00-J22", "K25-K28", "I10"
    note_vi: str
    note_en: str
    source: str


@dataclass(frozen=True)
class DiseaseContraindication:
    id: str
    drug: str  # inn or "class:<tag>"
    icd_ranges: tuple[str, ...]
    severity: str  # "contraindicated" | "major" | "moderate"
    message_vi: str
    message_en: str
    source: str


@dataclass(frozen=True)
class PregnancyRule:
    id: str
    drug: str  # inn or "class:<tag>"
    trimesters: frozenset[int]  # {1, 2, 3}: when the risk applies
    severity: str
    message_vi: str
    message_en: str
    source: str


@dataclass(frozen=True)
class DuplicateGroup:
    """A class where two members together are a known hazard (two NSAIDs, two RAS
    blockers...): membership by WHOCC ATC prefix."""

    group: str  # e.g. "M01A"
    atc_prefixes: tuple[str, ...]
    name_vi: str
    name_en: str
    source: str


@dataclass(frozen=True)
class IntendedCombination:
    """A pair prescribed together on purpose by guideline (aspirin + P2Y12 inhibitor, PPI +
    NSAID...): never a duplicate; its interaction severity may be capped where the
    reference itself gives a lower level for the validated indication."""

    id: str
    a: str
    b: str
    max_interaction_severity: str | None
    note_vi: str
    note_en: str
    source: str


@dataclass
class _Index:
    drugs: dict[str, Drug] = field(default_factory=dict)
    names: dict[str, tuple[tuple[str, ...], str]] = field(default_factory=dict)
    classes: dict[str, dict[str, str]] = field(default_factory=dict)
    members: dict[str, set[str]] = field(default_factory=dict)
    brands: dict[str, tuple[str, ...]] = field(default_factory=dict)
    pairs: dict[tuple[str, str], list[Interaction]] = field(default_factory=dict)
    interactions: list[Interaction] = field(default_factory=list)
    indications: dict[str, list[IndicationRule]] = field(default_factory=dict)
    contraindications: dict[str, list[DiseaseContraindication]] = field(default_factory=dict)
    pregnancy: dict[str, PregnancyRule] = field(default_factory=dict)
    qd5948_sides: dict[str, tuple[str, ...]] = field(default_factory=dict)
    qd5948_unmapped: list[str] = field(default_factory=list)
    ansm_sides: dict[str, tuple[str, ...]] = field(default_factory=dict)
    duplicate_groups: list[DuplicateGroup] = field(default_factory=list)
    intended: dict[tuple[str, str], IntendedCombination] = field(default_factory=dict)
    by_atc: dict[str, list[str]] = field(default_factory=dict)


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split("|") if v.strip()]


def _read(path: Path, required: bool = False) -> list[dict[str, str]]:
    """Rows of a data file; blank rows and rows whose first cell starts with `#` are skipped.

    Optional files may be absent (a small knowledge base for tests or a pilot); the drug
    dictionary and class list may not.
    """
    if not path.exists():
        if not required:
            return []
        raise KnowledgeError(f"{path}: missing. The knowledge base needs it (see "
                             "datasets/knowledge/README.md); restore it from git.")
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        first = (reader.fieldnames or [""])[0]
        rows = []
        for number, raw in enumerate(reader, start=2):
            row = {k: (v or "").strip() for k, v in raw.items() if k is not None}
            if not any(row.values()) or row.get(first, "").startswith("#"):
                continue
            row["_where"] = f"{path.name}:{number}"
            rows.append(row)
        return rows


class KnowledgeBase:
    """Compiled drug dictionary, interaction pair index and protocol rules."""

    def __init__(self, index: _Index, root: Path):
        self._ix = index
        self.root = root
        self._cache: dict[str, DrugMatch | None] = {}

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, root: Path | None = None) -> KnowledgeBase:
        """Compile `root` (default `<repo>/datasets/knowledge`) and `root/../ddi-vn`."""
        root = Path(root) if root is not None else DEFAULT_ROOT
        ix = _Index()
        _load_classes(ix, root / "classes.csv")
        _load_drugs(ix, root / "drugs.csv")
        _load_dictionary(ix, root / "dictionary.csv")
        _load_brands(ix, root / "brands.csv")
        _load_qd5948(ix, root / "qd5948-names.csv", root / "qd5948-text-fixes.csv",
                     root.parent / "ddi-vn" / "qd5948-contraindicated-pairs.csv")
        _load_ansm(ix, root / "ansm-names.csv", root / "ansm-translations.csv",
                   root.parent / "ddi-ansm" / "ansm_thesaurus_ddi_2020_10.csv")
        _load_curated(ix, root / "interactions.csv")
        _load_rules(ix, root)
        _load_alert_policy(ix, root)
        for inn, drug in ix.drugs.items():
            for code in drug.atc_codes:
                ix.by_atc.setdefault(code, []).append(inn)
        return cls(ix, root)

    # ------------------------------------------------------------------ look-ups
    def resolve(self, text: str) -> DrugMatch | None:
        """The ingredient(s) a prescribed line names, or None when it is not recognised."""
        if not text:
            return None
        if text in self._cache:
            return self._cache[text]
        match = self._resolve(text)
        if len(self._cache) < 50_000:
            self._cache[text] = match
        return match

    def _lookup(self, span: str) -> tuple[tuple[str, ...], str] | None:
        hit = self._ix.names.get(names.fold(span))
        if hit is None:
            key = names.fold_without_salts(span)
            hit = self._ix.names.get(key) if key else None
        return hit

    def _resolve(self, text: str) -> DrugMatch | None:
        words = names.name_part(text).split()
        if not words:
            return None
        taken = [False] * len(words)
        found: list[tuple[int, tuple[str, ...], str]] = []
        for size in range(len(words), 0, -1):
            for start in range(0, len(words) - size + 1):
                if any(taken[start : start + size]):
                    continue
                hit = self._lookup(" ".join(words[start : start + size]))
                if hit is not None:
                    found.append((start, hit[0], hit[1]))
                    for i in range(start, start + size):
                        taken[i] = True
        if not found:
            return None
        found.sort()
        inns: list[str] = []
        for _, keys, _label in found:
            inns.extend(k for k in keys if k not in inns)
        return DrugMatch(
            text=text,
            drugs=tuple(self._ix.drugs[k] for k in inns),
            matched=" + ".join(label for _, _, label in found),
            strength_mg=names.parse_strength_mg(text),
            unmatched=tuple(w for w, used in zip(words, taken, strict=True)
                            if not used and w not in names.SALT_WORDS),
        )

    def resolve_name(self, text: str) -> list[str]:
        """Ingredient keys a free-text drug name names (combinations split, salts and forms
        dropped); [] when it is not recognised."""
        match = self.resolve(text)
        return [d.inn for d in match.drugs] if match is not None else []

    def ingredient_by_atc(self, code: str) -> list[str]:
        """Ingredient keys of an ATC code: a level-5 code names its substance(s); a shorter
        (level 1-4) code names every ingredient of the group. [] when unknown."""
        code = code.strip().upper()
        if len(code) >= 7:
            return list(self._ix.by_atc.get(code, ()))
        if not code:
            return []
        return sorted({inn for c, inns in self._ix.by_atc.items() if c.startswith(code)
                       for inn in inns})

    def atc_codes(self, ingredient_key: str) -> tuple[str, ...]:
        """WHOCC ATC codes of an ingredient key; () when it has none or is unknown."""
        drug = self._ix.drugs.get(ingredient_key)
        return drug.atc_codes if drug is not None else ()

    def duplicate_group(self, a: Drug, b: Drug) -> DuplicateGroup | None:
        """The hazard class two different ingredients share, or None."""
        if a.inn == b.inn:
            return None
        for group in self._ix.duplicate_groups:
            if _in_group(a, group) and _in_group(b, group):
                return group
        return None

    def intended(self, a: Drug, b: Drug) -> IntendedCombination | None:
        """The guideline combination the pair is, or None."""
        key = (a.inn, b.inn) if a.inn < b.inn else (b.inn, a.inn)
        return self._ix.intended.get(key)

    def ansm_side(self, written: str) -> tuple[str, ...]:
        """Ingredient keys an ANSM side (substance or class, as written) expands to."""
        return self._ix.ansm_sides.get(names.plain(written), ())

    def drug(self, inn: str) -> Drug:
        """The dictionary entry of an INN key; KeyError names the key when it is unknown."""
        return self._ix.drugs[inn]

    @property
    def drugs(self) -> dict[str, Drug]:
        return dict(self._ix.drugs)

    def class_members(self, tag: str) -> frozenset[str]:
        """INN keys of a class tag (`nsaid`, with or without the `class:` prefix)."""
        return frozenset(self._ix.members.get(tag.removeprefix("class:"), ()))

    def class_names(self, tag: str) -> dict[str, str]:
        return dict(self._ix.classes.get(tag.removeprefix("class:"), {}))

    @property
    def brands(self) -> dict[str, tuple[str, ...]]:
        return dict(self._ix.brands)

    @property
    def all_interactions(self) -> list[Interaction]:
        return list(self._ix.interactions)

    def interacting_pairs(self) -> dict[tuple[str, str], list[Interaction]]:
        """Every ingredient pair (sorted keys) the references name, class rows expanded."""
        return dict(self._ix.pairs)

    def interactions(self, a: Drug, b: Drug) -> list[Interaction]:
        """Interactions between two ingredients, either order, class rows expanded."""
        if a.inn == b.inn:
            return []
        key = (a.inn, b.inn) if a.inn < b.inn else (b.inn, a.inn)
        return list(self._ix.pairs.get(key, ()))

    def indications(self, inn: str) -> list[IndicationRule]:
        """ICD-10 ranges the drug is indicated for; empty means no rule, so don't flag."""
        return list(self._ix.indications.get(inn, ()))

    def contraindications(self, inn: str) -> list[DiseaseContraindication]:
        return list(self._ix.contraindications.get(inn, ()))

    def pregnancy_risk(self, inn: str) -> PregnancyRule | None:
        return self._ix.pregnancy.get(inn)

    def qd5948_side(self, written: str) -> tuple[str, ...]:
        """INN keys (or `class:tag`) a QĐ 5948 name maps to; empty when unmapped."""
        return self._ix.qd5948_sides.get(written, ())

    @property
    def qd5948_unmapped(self) -> list[str]:
        return list(self._ix.qd5948_unmapped)

    def expand(self, side: str) -> frozenset[str]:
        """INN keys a side names: an inn, `a/b` combination or `class:<tag>`."""
        return frozenset(_expand(self._ix, side))


# ---------------------------------------------------------------------- compile steps
def _expand(ix: _Index, side: str) -> set[str]:
    out: set[str] = set()
    for part in side.split("/"):
        part = part.strip()
        if part.startswith("class:"):
            out |= ix.members.get(part[6:], set())
        elif part in ix.drugs:
            out.add(part)
    return out


def _register_name(ix: _Index, name: str, keys: tuple[str, ...], label: str, where: str):
    # The written name and the name with form words dropped (as prescribed lines are read).
    for key in filter(None, {names.fold(name), names.fold(names.name_part(name))}):
        have = ix.names.get(key)
        if have is not None and have[0] != keys:
            raise KnowledgeError(
                f"{where}: name {name!r} folds to {key!r}, already used for "
                f"{'/'.join(have[0])} ({have[1]!r}); rename or drop one of them."
            )
        if have is None:
            ix.names[key] = (keys, label)


def _load_classes(ix: _Index, path: Path) -> None:
    for row in _read(path, required=True):
        tag = row["tag"]
        ix.classes[tag] = {"vi": row.get("name_vi", ""), "en": row.get("name_en", ""),
                           "source": row.get("source", "")}
        ix.members.setdefault(tag, set())


def _load_drugs(ix: _Index, path: Path) -> None:
    rows = _read(path, required=True)
    for row in rows:
        inn = row["inn"]
        if inn in ix.drugs:
            raise KnowledgeError(f"{row['_where']}: ingredient {inn!r} listed twice.")
        classes = frozenset(_split(row.get("classes")))
        unknown = [c for c in classes if c not in ix.classes]
        if unknown:
            raise KnowledgeError(f"{row['_where']}: class tag(s) {unknown} not in classes.csv.")
        dose = row.get("max_daily_dose_mg") or ""
        ix.drugs[inn] = Drug(
            inn=inn,
            name_vi=row.get("name_vi") or inn,
            atc_codes=tuple(_split(row.get("atc_codes"))),
            classes=classes,
            max_daily_dose_mg=float(dose) if dose else None,
            source=row.get("source", ""),
            dose_source=row.get("dose_source") or None,
        )
        for tag in classes:
            ix.members[tag].add(inn)
    for row in rows:
        inn = row["inn"]
        for name in [inn, ix.drugs[inn].name_vi, *_split(row.get("aliases"))]:
            _register_name(ix, name, (inn,), name, row["_where"])


def _load_dictionary(ix: _Index, path: Path) -> None:
    """The compiled dictionary (`build.py`): new ingredients, and for curated ones the
    spellings, ATC codes and class tags the build added (the curated row keeps its dose)."""
    rows = _read(path)
    for row in rows:
        inn = row["inn"]
        classes = frozenset(_split(row.get("classes")))
        unknown = [c for c in classes if c not in ix.classes]
        if unknown:
            raise KnowledgeError(f"{row['_where']}: class tag(s) {unknown} not in classes.csv.")
        have = ix.drugs.get(inn)
        codes = tuple(_split(row.get("atc_codes")))
        if have is not None:
            codes = have.atc_codes + tuple(c for c in codes if c not in have.atc_codes)
        drug = Drug(
            inn=inn,
            name_vi=have.name_vi if have else (row.get("name_vi") or inn),
            atc_codes=codes,
            classes=(have.classes if have else frozenset()) | classes,
            max_daily_dose_mg=have.max_daily_dose_mg if have else None,
            source=have.source if have else row.get("source", ""),
            dose_source=have.dose_source if have else None,
            name_fr=row.get("name_fr") or None,
        )
        ix.drugs[inn] = drug
        for tag in drug.classes:
            ix.members[tag].add(inn)
    for row in rows:
        inn = row["inn"]
        extra = [row.get("name_vi", ""), row.get("name_fr", ""), *_split(row.get("aliases"))]
        for name in [inn, *filter(None, extra)]:
            _register_name(ix, name, (inn,), name, row["_where"])


def _load_brands(ix: _Index, path: Path) -> None:
    for row in _read(path):
        keys = tuple(_split(row["ingredients"]))
        missing = [k for k in keys if k not in ix.drugs]
        if missing:
            raise KnowledgeError(f"{row['_where']}: brand {row['brand']!r} names unknown "
                                 f"ingredient(s) {missing}; add them to drugs.csv.")
        ix.brands[row["brand"]] = keys
        _register_name(ix, row["brand"], keys, row["brand"], row["_where"])


def _clean_text(text: str, fixes: list[tuple[str, str]]) -> str:
    text = re.sub(r"\s*\n\s*", " ", text)
    for wrong, right in fixes:
        text = text.replace(wrong, right)
    return re.sub(r"\s{2,}", " ", text).strip()


def _load_qd5948(ix: _Index, names_path: Path, fixes_path: Path, list_path: Path) -> None:
    sides: dict[str, tuple[str, ...]] = {}
    index_on: dict[str, str] = {}
    for row in _read(names_path):
        keys = tuple(_split(row["ingredients"]))
        bad = [k for k in keys if not (k in ix.drugs or k[6:] in ix.classes)]
        if bad:
            raise KnowledgeError(f"{row['_where']}: {row['name_as_written']!r} maps to "
                                 f"unknown {bad}; add them to drugs.csv or classes.csv.")
        sides[row["name_as_written"]] = keys
        on = _split(row.get("index_on"))
        index_on[row["name_as_written"]] = "/".join(on or keys)
        combo = tuple(k for k in keys if not k.startswith("class:"))
        if len(combo) > 1:  # "Atazanavir/ritonavir" as a prescribed line
            _register_name(ix, row["name_as_written"], combo, row["name_as_written"],
                           row["_where"])
    ix.qd5948_sides = sides
    fixes = [(r["wrong"], r["right"]) for r in _read(fixes_path)]
    for row in _read(list_path, required=bool(sides)):
        stt = int(row["STT"])
        one, two = row["HOAT_CHAT_1"], row["HOAT_CHAT_2"]
        missing = [n for n in (one, two) if n not in sides]
        if missing:
            ix.qd5948_unmapped.append(f"STT {stt}: {missing}")
            continue
        _add_interaction(ix, Interaction(
            id=f"qd5948-{stt:03d}",
            a="/".join(sides[one]),
            b="/".join(sides[two]),
            severity="contraindicated",
            mechanism_vi=_clean_text(row["CO_CHE"], fixes),
            consequence_vi=_clean_text(row["HAU_QUA"], fixes),
            management_vi=_clean_text(row["XU_TRI"], fixes),
            mechanism_en=None,
            consequence_en=None,
            management_en=None,
            source=f"{QD5948_SOURCE}, STT {stt}",
        ), index_on[one], index_on[two])


def _translations(path: Path) -> dict[str, tuple[str, str]]:
    """French ANSM sentence (whitespace collapsed) -> (Vietnamese, English)."""
    return {" ".join(r["fr"].split()): (r["vi"], r["en"]) for r in _read(path)}


def _translate(text: str, table: dict[str, tuple[str, str]]) -> tuple[str, str] | None:
    """A text's translation, sentence by sentence; None unless every sentence has one."""
    text = " ".join(text.split())
    if not text:
        return "", ""
    whole = table.get(text)
    if whole is not None:
        return whole
    parts = [p for p in re.split(r"(?<=[.!?])\s+", text) if p]
    found = [table.get(p) for p in parts]
    if any(f is None for f in found):
        return None
    return " ".join(f[0] for f in found), " ".join(f[1] for f in found)


def _load_ansm(ix: _Index, names_path: Path, translations_path: Path, list_path: Path) -> None:
    """ANSM rows: sides through `ansm-names.csv` (classes expanded by ANSM's own substance
    index at build time), severities mapped, French text carried over: the Vietnamese and
    English are translations marked for pharmacist review, the French is kept as written.
    The thesaurus lists most pairs under both substances: the twin row is read once.

    A row with several levels gives each level its condition in `severity_info` (one
    segment per level). A segment that names members of the row ("avec la rifampicine")
    applies its level to their pairs only; the other pairs take the general level: the
    lowest level whose segment names no member ("pour tous les médicaments sédatifs entre
    eux"), else the row's lowest. So "sedatives + other sedatives" is `minor` for every
    pair but contraindicated with sodium oxybate, as ANSM writes it.
    """
    for row in _read(names_path):
        ix.ansm_sides[names.plain(row["name_as_written"])] = tuple(_split(row["ingredients"]))
    if not ix.ansm_sides:
        return
    table = _translations(translations_path)
    seen: set[tuple] = set()
    for number, row in enumerate(_read(list_path, required=True), start=1):
        one = ix.ansm_sides.get(names.plain(row["main_drug"]), ())
        two = ix.ansm_sides.get(names.plain(row["plus_drug"]), ())
        if not one or not two:
            continue
        risk = " ".join(row["mechanism"].split())
        key = (frozenset((names.plain(row["main_drug"]), names.plain(row["plus_drug"]))),
               row["severity_levels"], risk)
        if key in seen:
            continue
        seen.add(key)
        levels = [_ansm_severity(level, row["_where"]) for level in
                  row["severity_levels"].split(" | ")]
        advice = [" ".join(a.split()) for a in row["severity_info"].split(" | ")]
        if len(advice) != len(levels):
            advice = [" ".join(row["severity_info"].split())] * len(levels)
        pairs = {(x, y) if x < y else (y, x) for x in one for y in two if x != y}
        by_level = _ansm_levels(ix, levels, advice, pairs, (one, two))
        original = f"{row['severity_levels']}. {risk} " + " | ".join(advice)
        for part, (level, text, level_pairs) in enumerate(by_level):
            if not level_pairs:
                continue
            item = _ansm_interaction(
                f"ansm-{number:04d}" + (f"-{part}" if part else ""), row, one, two, level,
                risk, text, table, original.strip())
            ix.interactions.append(item)
            for pair in level_pairs:
                ix.pairs.setdefault(pair, []).append(item)


def _ansm_severity(level: str, where: str) -> str:
    severity = ANSM_SEVERITY.get(names.plain(level))
    if severity is None:
        raise KnowledgeError(f"{where}: ANSM level {level!r} is not one of "
                             f"{sorted(ANSM_SEVERITY)}.")
    return severity


def _ansm_levels(ix: _Index, levels: list[str], advice: list[str],
                 pairs: set[tuple[str, str]], sides: tuple[tuple[str, ...], ...]
                 ) -> list[tuple[str, str, set]]:
    """[(severity, its advice, the pairs it applies to)], the general level first."""
    if len(levels) == 1:
        return [(levels[0], advice[0], pairs)]
    members = {k for pair in pairs for k in pair}
    named = [{k for k in members if _names_in(ix.drugs[k], advice[i])}
             for i in range(len(levels))]
    # A substance every pair has (a one-substance side: "des doses anti-inflammatoires
    # d'acide acétylsalicylique"), or one every segment names, tells no pair apart.
    constant = set.intersection(*named) | {k for side in sides if len(side) == 1
                                           for k in side}
    named = [n - constant for n in named]
    general_at = [i for i in range(len(levels)) if not named[i]] or list(range(len(levels)))
    general = max(general_at, key=lambda i: SEVERITIES.index(levels[i]))  # the lowest
    out = [(levels[general], advice[general], set())]
    specific: dict[tuple[str, str], int] = {}
    for i in range(len(levels)):
        if i == general or not named[i]:
            continue
        for pair in pairs:
            if pair[0] in named[i] or pair[1] in named[i]:
                have = specific.get(pair)
                if have is None or SEVERITIES.index(levels[i]) < SEVERITIES.index(levels[have]):
                    specific[pair] = i
    for i in range(len(levels)):
        if i != general:
            out.append((levels[i], advice[i], {p for p, at in specific.items() if at == i}))
    out[0][2].update(p for p in pairs if p not in specific)
    return out


def _tidy(text: str) -> str:
    """Advice as shown: without the thesaurus' list punctuation (": - avec ...")."""
    return re.sub(r"^[:\-\s]+", "", text)


def _french(text: str, lang: str) -> str:
    """An untranslated ANSM text, shown as French and saying so."""
    if not text:
        return ""
    return (f"Nguyên văn tiếng Pháp: {text}" if lang == "vi" else f"French original: {text}")


def _names_in(drug: Drug, text: str) -> bool:
    """Does the (French) text name this ingredient, by its French or international name?"""
    words = f" {names.plain(text)} "
    return any(f" {names.plain(n)} " in words for n in filter(None, (drug.name_fr, drug.inn)))


def _ansm_interaction(id_: str, row: dict, one: tuple, two: tuple, severity: str, risk: str,
                      advice: str, table: dict, original: str) -> Interaction:
    risk_t, advice_t = _translate(risk, table), _translate(advice, table)
    level_vi, level_en = ANSM_LEVEL_VI[severity], ANSM_LEVEL_EN[severity]
    return Interaction(
        id=id_,
        a="/".join(one),
        b="/".join(two),
        severity=severity,
        mechanism_vi="",
        consequence_vi=(risk_t[0] if risk_t else "Xem nguyên văn tiếng Pháp (ANSM): " + risk)
        + f" [{PENDING_REVIEW}]",
        management_vi=f"{level_vi}: {_tidy(advice_t[0] if advice_t else _french(advice, 'vi'))}"
        .rstrip(": "),
        mechanism_en=None,
        consequence_en=(risk_t[1] if risk_t else "See the French original (ANSM): " + risk)
        + f" [{PENDING_REVIEW}]",
        management_en=f"{level_en}: {_tidy(advice_t[1] if advice_t else _french(advice, 'en'))}"
        .rstrip(": "),
        source=f"{ANSM_SOURCE}: {row['main_drug']} + {row['plus_drug']}",
        original=original,
    )


def _add_interaction(
    ix: _Index, item: Interaction, on_a: str | None = None, on_b: str | None = None
) -> None:
    """Index `item` under every ingredient pair its sides expand to (or `on_a`/`on_b`)."""
    ix.interactions.append(item)
    for x in _expand(ix, on_a or item.a):
        for y in _expand(ix, on_b or item.b):
            if x == y:
                continue
            bucket = ix.pairs.setdefault((x, y) if x < y else (y, x), [])
            if all(existing.id != item.id for existing in bucket):
                bucket.append(item)


def _check_side(ix: _Index, side: str, where: str) -> None:
    for part in side.split("/"):
        if not (part in ix.drugs or (part.startswith("class:") and part[6:] in ix.classes)):
            raise KnowledgeError(f"{where}: {part!r} is neither an ingredient in drugs.csv "
                                 "nor a class:<tag> in classes.csv.")


def _load_curated(ix: _Index, path: Path) -> None:
    for row in _read(path):
        for side in (row["a"], row["b"]):
            _check_side(ix, side, row["_where"])
        if row["severity"] not in SEVERITIES:
            raise KnowledgeError(f"{row['_where']}: severity {row['severity']!r} is not one "
                                 f"of {SEVERITIES}.")
        _add_interaction(ix, Interaction(
            id=row["id"], a=row["a"], b=row["b"], severity=row["severity"],
            mechanism_vi=row["mechanism_vi"], consequence_vi=row["consequence_vi"],
            management_vi=row["management_vi"],
            mechanism_en=row.get("mechanism_en") or None,
            consequence_en=row.get("consequence_en") or None,
            management_en=row.get("management_en") or None,
            source=row["source"],
        ))


def _by_drug(ix: _Index, side: str, where: str) -> Iterable[str]:
    _check_side(ix, side, where)
    return sorted(_expand(ix, side))


def _load_rules(ix: _Index, root: Path) -> None:
    """Indications and contraindications accumulate; for pregnancy the first row that names
    a drug (directly or through its class) wins, so a drug's own row goes before its class."""
    for row in _read(root / "indications.csv"):
        rule = IndicationRule(
            id=row["id"], drug=row["drug"], icd_ranges=tuple(_split(row["icd_ranges"])),
            note_vi=row.get("note_vi", ""), note_en=row.get("note_en", ""),
            source=row["source"],
        )
        for inn in _by_drug(ix, row["drug"], row["_where"]):
            ix.indications.setdefault(inn, []).append(rule)
    for row in _read(root / "disease-contraindications.csv"):
        rule = DiseaseContraindication(
            id=row["id"], drug=row["drug"], icd_ranges=tuple(_split(row["icd_ranges"])),
            severity=row["severity"], message_vi=row["message_vi"],
            message_en=row["message_en"], source=row["source"],
        )
        for inn in _by_drug(ix, row["drug"], row["_where"]):
            ix.contraindications.setdefault(inn, []).append(rule)
    for row in _read(root / "pregnancy.csv"):
        rule = PregnancyRule(
            id=row["id"], drug=row["drug"],
            trimesters=frozenset(int(t) for t in _split(row["trimesters"])),
            severity=row["severity"], message_vi=row["message_vi"],
            message_en=row["message_en"], source=row["source"],
        )
        for inn in _by_drug(ix, row["drug"], row["_where"]):
            ix.pregnancy.setdefault(inn, rule)


def _in_group(drug: Drug, group: DuplicateGroup) -> bool:
    return any(code.startswith(group.atc_prefixes) for code in drug.atc_codes)


def _load_alert_policy(ix: _Index, root: Path) -> None:
    """Duplicate-therapy hazard classes and the guideline combinations that are never
    duplicates (both curated, each row with its source)."""
    for row in _read(root / "duplicate-groups.csv"):
        ix.duplicate_groups.append(DuplicateGroup(
            group=row["group"], atc_prefixes=tuple(_split(row["atc_prefixes"])),
            name_vi=row["name_vi"], name_en=row["name_en"], source=row["source"]))
    for row in _read(root / "intended-combinations.csv"):
        cap = row.get("max_interaction_severity") or None
        if cap is not None and cap not in SEVERITIES:
            raise KnowledgeError(f"{row['_where']}: max_interaction_severity {cap!r} is not "
                                 f"one of {SEVERITIES}.")
        item = IntendedCombination(
            id=row["id"], a=row["a"], b=row["b"], max_interaction_severity=cap,
            note_vi=row["note_vi"], note_en=row["note_en"], source=row["source"])
        for x in _by_drug(ix, row["a"], row["_where"]):
            for y in _by_drug(ix, row["b"], row["_where"]):
                if x != y:
                    ix.intended.setdefault((x, y) if x < y else (y, x), item)
