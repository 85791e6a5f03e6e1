"""The prescription checks: a prescription in, a list of alerts out.

`CheckEngine.check` is a pipeline of passes over named facts: the lines (each resolved to
`Item`s, with its unrecognised-drug or dose alert: `LineFacts`), the ingredient pairs
(`PairFacts`: the interactions of every reference, the duplicate-therapy hazard, the
guideline combination), the diagnoses (`CodeFacts`) and each drug against them
(`DrugFacts`). Facts are pure functions of their key, so each pass memoises them (bounded)
and a request repeats no work another request already did; the alerts' wording lives in
`wording.py`. Nothing here reads files or compiles patterns per request. A drug line that
does not resolve is reported, never skipped silently, and a field that cannot be read (a dose
in a shape we do not know) only switches off the check that needs it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from serving.cdss import wording
from serving.cdss.dose import daily_dose_mg
from serving.cdss.knowledge import (
    Drug,
    DuplicateGroup,
    IntendedCombination,
    Interaction,
    KnowledgeBase,
)
from serving.cdss.models import SEVERITY_RANK, InteractionAlert, Prescription

log = logging.getLogger("haidang.cdss")

# Codes that say the patient is pregnant (ICD-10 WHO): pregnancy chapter, supervision of
# pregnancy, pregnant state; used when the request does not say so explicitly.
PREGNANCY_RANGES = ("O00-O99", "Z32.1", "Z33", "Z34-Z36")
# The lowest severity each channel shows unless settings say otherwise (`[cdss]`).
DEFAULT_THRESHOLDS = {"native": "moderate", "cds-hooks": "moderate"}
# Which reference speaks first when two give a pair the same severity: the national list,
# then the curated rules, then the French thesaurus (its text is a translation).
_SOURCE_ORDER = {"qd5948": 0, "cur": 1, "ansm": 2}
_RAS_BLOCKERS = frozenset({"ace-inhibitor", "arb"})
_DIURETICS = frozenset({"thiazide-diuretic", "loop-diuretic", "potassium-sparing-diuretic"})

_MEMO_MAX = 50_000
_NOTHING = ()  # the learned model's answer for a pair: nothing predicted


def _remember(memo: dict, key, value):
    """Bounded memo: answers depend only on the key, so dropping them all is always safe."""
    if len(memo) >= _MEMO_MAX:
        memo.clear()
    memo[key] = value
    return value


@dataclass(frozen=True, slots=True)
class Item:
    """One recognised ingredient of one prescription line."""

    line: int
    drug: Drug
    current: bool  # already taken (not ordered now)
    inn: str  # drug.inn, read once per pair in the hot loop


@dataclass(frozen=True, slots=True)
class LineFacts:
    label: str  # its ingredients joined for `recognised`; "" when not recognised
    items: tuple[Item, ...]
    alert: InteractionAlert | None  # not recognised, or dose above the maximum


@dataclass(slots=True)
class PairFacts:
    """What the knowledge says about two different ingredients, whatever their lines."""

    worst: Interaction | None  # the row whose text is shown
    severity: str | None  # its severity, capped for a guideline combination
    others: tuple[Interaction, ...]  # every other row on the pair: cited as sources
    group: DuplicateGroup | None  # a duplicate-therapy hazard (never for intended pairs)
    intended: bool = False  # a guideline combination (aspirin + P2Y12 inhibitor, PPI + NSAID)
    predicted: tuple | None = None  # the learned model's answer; None until asked
    capped_by: IntendedCombination | None = None  # when `severity` was lowered


# A pair's facts when the knowledge has nothing on it and there is no model to ask (most
# pairs): one identity test skips it. Never modified.
_QUIET = PairFacts(None, None, (), None, False, _NOTHING, None)


@dataclass(frozen=True, slots=True)
class PairToScore:
    """A pair the knowledge base is silent on, for the learned model."""

    pair: tuple[str, str]
    first: Item
    second: Item
    facts: PairFacts


@dataclass(frozen=True, slots=True)
class CodeFacts:
    code: str | None  # normalised, or None when invalid
    alerts: tuple[InteractionAlert, ...]  # invalid or not specific
    pregnancy: bool


@dataclass(slots=True)
class DrugFacts:
    """One ingredient on its line against the prescription's diagnoses."""

    indication: InteractionAlert | None
    contraindications: tuple[InteractionAlert, ...]
    unusual: tuple | None = None  # the learned model's alerts; None until asked


@dataclass(slots=True)
class CheckResult:
    alerts: list[InteractionAlert]
    recognised: list[str]


def shown(alerts: Iterable[InteractionAlert], min_severity: str) -> list[InteractionAlert]:
    """The alerts a channel shows: those at or above its threshold (`minor` hidden by
    default, `[cdss]` settings). `info` is not a rung of that ladder but a note (an ICD-10
    remark, a predicted interaction the hospital switched on): always shown, so switching a
    learned model on is never silently undone by the threshold."""
    floor = SEVERITY_RANK[min_severity]
    return [a for a in alerts if a.severity == "info" or SEVERITY_RANK[a.severity] >= floor]


def channel_thresholds(cdss) -> dict[str, str]:
    """The engine's `thresholds` from the `[cdss]` settings section (`CdssSettings`)."""
    return {"native": cdss.min_severity_native, "cds-hooks": cdss.min_severity_cds_hooks}


class CheckEngine:
    """Holds the knowledge base and the ICD-10 helper; `check` is pure and thread-safe."""

    def __init__(self, kb: KnowledgeBase, icd=None, learned=None,
                 thresholds: Mapping[str, str] | None = None):
        self.kb = kb
        # Optional learned checks (`serving.cdss.learned.LearnedChecks`): predicted
        # interactions for pairs the KB lacks, unusual drugs for the diagnoses. Fixed for
        # the engine's life: the pair memo records whether a model was there to ask.
        self.learned = learned
        if icd is None:
            icd = getattr(kb, "icd", None)
        if icd is None:
            from serving.cdss.icd import Icd10

            icd = Icd10()
        self.icd = icd
        self.thresholds = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
        # Memos, each keyed by what its facts depend on (never a whole prescription).
        self._lines: dict[tuple, LineFacts] = {}
        self._pairs: dict[str, dict[str, PairFacts]] = {}  # inn -> partner -> facts
        self._pair_count = 0
        self._codes: dict[str, CodeFacts] = {}
        self._edits: dict[tuple, tuple[InteractionAlert, ...]] = {}
        self._ranges: dict[tuple, bool] = {}
        self._drugs: dict[tuple, DrugFacts] = {}
        self._alerts: dict[tuple, InteractionAlert | None] = {}
        self._predicted: dict[tuple, tuple] = {}

    # ------------------------------------------------------------------ entry point
    def check(self, rx: Prescription, channel: str | None = None) -> CheckResult:
        """Every check, every time. Alerts are gathered per pass (lines and doses, pairs,
        ICD-10, indications, contraindications, pregnancy, learned), then ordered by severity
        (a stable sort: the order within a severity is that order). With a `channel`
        ("native", "cds-hooks"), alerts below its threshold are left out."""
        alerts: list[InteractionAlert] = []
        items: list[Item] = []
        recognised: list[str] = []
        firsts: list[Item] = []  # the first line of each ingredient newly ordered
        seen: set[str] = set()
        for index, line in enumerate(rx.lines):
            key = (line.text, index, line.current, line.strength, line.dosage,
                   line.daily_dose_mg)
            facts = self._lines.get(key)
            if facts is None:
                facts = _remember(self._lines, key, self._line_facts(index, line))
            recognised.append(facts.label)
            if facts.alert is not None:
                alerts.append(facts.alert)
            items.extend(facts.items)
            if not line.current:
                for item in facts.items:
                    if item.inn not in seen:
                        seen.add(item.inn)
                        firsts.append(item)
        intended: set[str] = set()  # ingredients prescribed as part of a guideline pair
        to_score = self._pair_pass(alerts, items, intended)
        if firsts:
            self._triple_whammy(alerts, items)
        codes, pregnancy_code = self._icd_pass(alerts, rx)
        drug_facts: list[DrugFacts] = []
        if codes:
            codes_key = tuple(codes)
            contra: list[InteractionAlert] = []
            for item in firsts:
                key = (item.inn, item.line, codes_key)
                facts = self._drugs.get(key)
                if facts is None:
                    facts = _remember(self._drugs, key, self._drug_facts(item, codes))
                if facts.indication is not None and item.inn not in intended:
                    alerts.append(facts.indication)  # (a PPI for gastroprotection: silent)
                contra.extend(facts.contraindications)
                drug_facts.append(facts)
            alerts.extend(contra)
        pregnant = rx.pregnant
        if pregnant is None:
            pregnant = rx.sex != "male" and pregnancy_code
        if pregnant:
            self._pregnancy_pass(alerts, firsts)
        if self.learned is not None and (to_score or firsts):
            self._learned_pass(alerts, to_score, firsts, drug_facts, codes)
        alerts.sort(key=_by_severity)
        if channel is not None:
            alerts = shown(alerts, self.thresholds.get(channel, "moderate"))
        return CheckResult(alerts=alerts, recognised=recognised)

    # ------------------------------------------------------------------ lines
    def _line_facts(self, index: int, line) -> LineFacts:
        text = line.text
        match = self.kb.resolve(text) if text else None
        if match is None or not match.drugs:
            return LineFacts("", (), wording.unrecognised(index, text))
        drugs = match.drugs
        alert = None
        if not line.current and len(drugs) == 1:
            alert = self._dose_alert(index, line, drugs[0], match.strength_mg)
        return LineFacts("/".join(d.inn for d in drugs),
                         tuple(Item(index, d, line.current, d.inn) for d in drugs), alert)

    def _dose_alert(self, index, line, drug: Drug, strength_from_name) -> InteractionAlert | None:
        limit = drug.max_daily_dose_mg
        if not limit:
            return None
        daily = line.daily_dose_mg
        if daily is None:
            try:
                daily = daily_dose_mg(line.strength, line.dosage, strength_from_name)
            except (ValueError, ZeroDivisionError, OverflowError):
                daily = None
        if daily is None or daily <= limit * (1 + 1e-9):
            return None
        return wording.dose(drug, index, daily, limit)

    # ------------------------------------------------------------------ pairs
    def _pair_pass(self, alerts: list[InteractionAlert], items: list[Item],
                   intended: set[str]) -> list[PairToScore]:
        """Drug-drug interactions and duplicate therapy: one memo look-up per pair, one
        alert per pair (its worst severity, all its sources). Adds to `intended` the
        ingredients of guideline pairs; returns the pairs the knowledge base is silent on
        that the learned model may still score."""
        to_score: list[PairToScore] = []
        seen: set[tuple[str, str]] = set()
        scoring = self._scoring()
        for i, x in enumerate(items):
            xi = x.inn
            row = self._pairs.get(xi)
            if row is None:
                row = self._pairs[xi] = {}
            for y in items[i + 1:]:
                yi = y.inn
                facts = row.get(yi)
                if facts is _QUIET:
                    continue  # nothing known, nothing predicted: most pairs
                if x.current and y.current:
                    continue  # both already taken together: not this prescriber's decision
                if xi == yi:
                    if x.line != y.line:
                        alerts.append(self._alert(("same", xi, x.line, y.line),
                                                  wording.same_ingredient, x.drug, x.line,
                                                  y.line))
                    continue
                pair = (xi, yi) if xi < yi else (yi, xi)
                if facts is None:
                    facts = self._set_pair(pair, self._pair_facts(x.drug, y.drug, scoring))
                if facts.intended:
                    intended.update(pair)
                if pair in seen:
                    continue
                a, b = (x, y) if xi < yi else (y, x)
                lines = [a.line] if a.line == b.line else sorted((a.line, b.line))
                if facts.worst is not None:
                    seen.add(pair)
                    alerts.append(self._alert(
                        ("ddi", pair, *lines), wording.interaction, facts.worst,
                        facts.severity, a.drug, b.drug, lines, facts.others,
                        facts.capped_by))
                elif scoring and facts.predicted is not _NOTHING and not facts.intended:
                    to_score.append(PairToScore(pair, a, b, facts))
                if facts.group is not None and x.line != y.line:
                    seen.add(pair)
                    alerts.append(self._alert(("group", pair, *lines), wording.same_group,
                                              facts.group, a.drug, b.drug, lines))
        return to_score

    def _pair_facts(self, a: Drug, b: Drug, scoring: bool) -> PairFacts:
        found = sorted(self.kb.interactions(a, b), key=_strictest_first)
        intended = self.kb.intended(a, b)
        group = None if intended is not None else self.kb.duplicate_group(a, b)
        if not found and group is None and intended is None and not scoring:
            return _QUIET
        if not found:
            return PairFacts(None, None, (), group, intended is not None)
        sev = wording.severity(found[0].severity)
        cap = intended.max_interaction_severity if intended is not None else None
        capped_by = None
        if cap is not None and SEVERITY_RANK[cap] < SEVERITY_RANK[sev]:
            sev, capped_by = cap, intended
        return PairFacts(found[0], sev, tuple(found[1:]), group, intended is not None,
                         capped_by=capped_by)

    def _set_pair(self, pair: tuple[str, str], facts: PairFacts) -> PairFacts:
        """Remember a pair's facts both ways round (bounded: all dropped at _MEMO_MAX)."""
        if self._pair_count >= _MEMO_MAX:
            self._pairs.clear()
            self._pair_count = 0
        a, b = pair
        row = self._pairs.setdefault(a, {})
        if b not in row:
            self._pair_count += 1
        row[b] = facts
        self._pairs.setdefault(b, {})[a] = facts
        return facts

    def _triple_whammy(self, alerts: list[InteractionAlert], items: list[Item]) -> None:
        """NSAID + ACE inhibitor/ARB + diuretic: a risk of the three together, beyond its
        pairs; alerted when at least one of the three is ordered now. It takes the place of
        the NSAID's two pair alerts (their sources cited), so the prescriber reads one."""
        found: dict[str, Item] = {}
        for item in items:
            classes = item.drug.classes
            if "nsaid" in classes and "antiplatelet" not in classes:
                found.setdefault("nsaid", item)
            if classes & _RAS_BLOCKERS:
                found.setdefault("blocker", item)
            if classes & _DIURETICS:
                found.setdefault("diuretic", item)
        if len(found) < 3:
            return
        trio = (found["nsaid"], found["blocker"], found["diuretic"])
        if all(item.current for item in trio):
            return
        nsaid = trio[0].inn
        pairs = ({nsaid, trio[1].inn}, {nsaid, trio[2].inn})
        subsumed = [a for a in alerts if a.kind == "drug-drug" and set(a.drugs) in pairs]
        for alert in subsumed:
            alerts.remove(alert)
        lines = sorted({item.line for item in trio})
        sources = tuple(a.source for a in subsumed)
        alerts.append(self._alert(("triple", *(i.inn for i in trio), *lines, sources),
                                  wording.triple_whammy, *(i.drug for i in trio), lines,
                                  sources))

    def _scoring(self) -> bool:
        """Is there an interaction model to ask about pairs the knowledge base lacks?"""
        return self.learned is not None and \
            getattr(self.learned, "interaction", True) is not None

    def _alert(self, key: tuple, build, *args) -> InteractionAlert:
        """An alert built once per key (its wording depends only on the key's facts)."""
        alert = self._alerts.get(key)
        if alert is None:
            alert = _remember(self._alerts, key, build(*args))
        return alert

    # ------------------------------------------------------------------ ICD-10
    def _icd_pass(self, alerts: list[InteractionAlert], rx: Prescription
                  ) -> tuple[list[str], bool]:
        """Validate the codes; return the valid ones (normalised) for the protocol checks,
        and whether one of them says the patient is pregnant."""
        valid: list[str] = []
        pregnancy = False
        sex, age = rx.sex, rx.age_days
        for raw in rx.diagnoses:
            facts = self._codes.get(raw)
            if facts is None:
                facts = _remember(self._codes, raw, self._code_facts(raw))
            alerts.extend(facts.alerts)
            code = facts.code
            if code is None:
                continue
            if code not in valid:
                valid.append(code)
                pregnancy = pregnancy or facts.pregnancy
            edit_key = (code, sex, age)
            edits = self._edits.get(edit_key)
            if edits is None:
                edits = _remember(self._edits, edit_key, tuple(
                    wording.sex_age(edit, code)
                    for edit in self.icd.sex_age_issues(code, sex, age)))
            alerts.extend(edits)
        return valid, pregnancy

    def _code_facts(self, raw: str) -> CodeFacts:
        norm = self.icd.normalise(raw) or raw
        if not self.icd.is_valid(norm):
            return CodeFacts(None, (wording.icd_invalid(raw),), False)
        unspecific: tuple = ()
        if not self.icd.is_specific(norm):
            unspecific = (wording.icd_specificity(norm, self.icd.title(norm)),)
        return CodeFacts(norm, unspecific, self._hit(("pregnancy",), PREGNANCY_RANGES, norm))

    def _in_range(self, code: str, rng: str) -> bool:
        hit = self._ranges.get((code, rng))
        if hit is None:
            hit = _remember(self._ranges, (code, rng), self.icd.in_range(code, rng))
        return hit

    def _hit(self, key: tuple, ranges: Iterable[str], code: str) -> bool:
        """Does `code` fall in any of `ranges`? Memoised under (key, code): `key` names the
        rule the ranges belong to, so a rule with fifty ranges costs one look-up per code."""
        hit = self._ranges.get((key, code))
        if hit is None:
            hit = _remember(self._ranges, (key, code),
                            any(self._in_range(code, r) for r in ranges))
        return hit

    # ------------------------------------------------------------------ drug and diagnoses
    def _drug_facts(self, item: Item, codes: list[str]) -> DrugFacts:
        return DrugFacts(self._indication(item, codes), self._contraindications(item, codes))

    def _indication(self, item: Item, codes: list[str]) -> InteractionAlert | None:
        rules = self.kb.indications(item.inn)
        if not rules:
            return None  # no rule: silence, not noise
        ranges = [rng for r in rules for rng in r.icd_ranges]
        if any(self._hit(("indication", item.inn), ranges, c) for c in codes):
            return None
        return wording.indication(item.drug, item.line, codes, rules)

    def _contraindications(self, item: Item, codes: list[str]) -> tuple[InteractionAlert, ...]:
        out = []
        for rule in self.kb.contraindications(item.inn):
            hit = [c for c in codes
                   if any(self._in_range(c, rng) for rng in rule.icd_ranges)]
            if hit:
                out.append(wording.contraindication(rule, item.drug, item.line, hit,
                                                    [self.icd.title(c) for c in hit]))
        return tuple(out)

    def _pregnancy_pass(self, alerts: list[InteractionAlert], firsts: list[Item]) -> None:
        for item in firsts:
            rule = self.kb.pregnancy_risk(item.inn)
            if rule is not None:
                alerts.append(self._alert(("pregnancy", item.inn, item.line),
                                          wording.pregnancy, rule, item.drug, item.line))

    # ------------------------------------------------------------------ learned
    def _learned_pass(self, alerts, to_score: list[PairToScore], firsts: list[Item],
                      drug_facts: list[DrugFacts], codes) -> None:
        """Model-based alerts; a failing model costs its alerts, never the whole check.

        Both models score one pair / one drug-with-diagnoses at a time, independently of the
        rest of the prescription, so their answers are memoised per pair and per (drug,
        diagnoses): in steady state a prescription costs dictionary look-ups, not inference.
        """
        try:
            for it in to_score:
                facts = it.facts
                hit = facts.predicted
                if hit is None:
                    hit = tuple(p.as_dict() for p in self.learned.predicted_interactions(
                        [it.first.drug, it.second.drug], [0, 1], [False, False]))
                    facts.predicted = hit or _NOTHING
                    if not hit and facts.group is None and not facts.intended:
                        self._set_pair(it.pair, _QUIET)
                if not hit:
                    continue
                key = (it.pair, it.first.line, it.second.line)
                found = self._predicted.get(key)
                if found is None:
                    lines = sorted({it.first.line, it.second.line})
                    found = _remember(self._predicted, key, tuple(
                        InteractionAlert(**{**fields, "lines": lines}) for fields in hit))
                alerts.extend(found)
            if codes and firsts and getattr(self.learned, "protocol", True) is not None:
                for item, facts in zip(firsts, drug_facts, strict=True):
                    if facts.unusual is None:
                        facts.unusual = tuple(
                            InteractionAlert(**{**u.as_dict(), "lines": [item.line]})
                            for u in self.learned.unusual_drugs([item.drug], codes, [0]))
                    alerts.extend(facts.unusual)
        except Exception as exc:  # noqa: BLE001 - a model must not break the KB checks
            log.warning("learned checks skipped: %s", type(exc).__name__)


def _strictest_first(it: Interaction) -> tuple[int, int]:
    return -SEVERITY_RANK.get(it.severity, 0), _SOURCE_ORDER.get(it.id.split("-")[0], 1)


def _by_severity(alert: InteractionAlert) -> int:
    return -SEVERITY_RANK[alert.severity]
