"""Reading a daily dose out of free-text QĐ 130 fields, conservatively.

HIS send `HAM_LUONG` ("200mg", "0,5 g", "250mg/5ml") and `LIEU_DUNG` in many shapes
("1 viên/lần * 2 lần/ngày", "Ngày uống 2 lần, mỗi lần 1 viên", "Sáng 1 viên, tối 1 viên",
"500mg x 3 lần/ngày"). Only the shapes below are read; anything else gives ``None`` so the
dose check stays silent rather than guessing (a wrong dose alert costs trust).
"""

from __future__ import annotations

import re
import unicodedata

_NUM = r"(\d+(?:[.,]\d+)?(?:/\d+)?|½)"
_COUNT = (
    r"(?:vien(?: nang| nen| sui)?|goi|ong|lo|chai|giot|nhat|xit|mieng|but|tuyp|"
    r"tablets?|tabs?|capsules?|caps?|sachets?|puffs?|drops?|units?)"
)
_MASS = r"(?:mg|g|gam|mcg|ug|µg|microgam|ml)"
_UNIT = rf"(?:{_MASS}|{_COUNT})"
_PER_DAY = (
    r"(?:\s*/\s*ngay|\s*/\s*24\s*h|\s*(?:mot|moi|trong|1)\s*ngay|\s*a day|\s*/\s*day|\s*daily)"
)

# "1 viên/lần * 2 lần/ngày", "500mg x 3 lần/ngày", "1 vien x 2 lan"
_EACH_TIMES = re.compile(
    rf"{_NUM}\s*({_UNIT})?\s*(?:/\s*lan)?\s*[x*×]\s*{_NUM}\s*(?:lan|times?){_PER_DAY}?"
)
# "Ngày uống 2 lần, mỗi lần 1 viên", "ngay 3 lan moi lan 500mg"
_TIMES_EACH = re.compile(
    rf"ngay\s*(?:uong|dung|tiem|nho|boi)?\s*{_NUM}\s*lan\s*,?\s*(?:moi\s*)?lan\s*"
    rf"(?:uong|dung)?\s*{_NUM}\s*({_UNIT})?"
)
# "2 lần/ngày, mỗi lần 1 viên"
_TIMES_PER_DAY_EACH = re.compile(
    rf"{_NUM}\s*lan{_PER_DAY}\s*,?\s*(?:moi\s*)?lan\s*(?:uong|dung)?\s*{_NUM}\s*({_UNIT})?"
)
# "2 viên/ngày", "1000mg/ngày"
_PER_DAY_ONLY = re.compile(rf"{_NUM}\s*({_UNIT}){_PER_DAY}")
# "Ngày uống 2 viên", "ngay 1000mg"
_DAY_FIRST = re.compile(rf"ngay\s*(?:uong|dung|tiem)?\s*{_NUM}\s*({_UNIT})(?!\s*/\s*lan)")
# "Sáng 1 viên, trưa 1 viên, chiều 1 viên, tối 1 viên"
_PART_OF_DAY = re.compile(rf"(?:sang|trua|chieu|toi|dem)\s*:?\s*{_NUM}\s*({_UNIT})?")
_FORBID_PARTS = re.compile(r"lan|[x*×]")

_STRENGTH = re.compile(rf"^\s*{_NUM}\s*(mg|g|gam|mcg|ug|µg|microgam)\s*(?:/\s*{_NUM}?\s*(ml))?\s*$")
_TO_MG = {"mg": 1.0, "g": 1000.0, "gam": 1000.0, "mcg": 0.001, "ug": 0.001, "µg": 0.001,
          "microgam": 0.001}


def fold(text: str) -> str:
    text = text.replace("đ", "d").replace("Đ", "D")
    text = "".join(c for c in unicodedata.normalize("NFD", text) if not unicodedata.combining(c))
    return " ".join(text.lower().split())


def _num(s: str) -> float:
    if s == "½":
        return 0.5
    s = s.replace(",", ".")
    if "/" in s:
        a, b = s.split("/", 1)
        return float(a) / float(b) if float(b) else float("nan")
    return float(s)


def _unit_kind(u: str | None) -> str:
    if not u:
        return "count"
    if u == "ml":
        return "ml"
    if u in _TO_MG:
        return "mg"
    return "count"


def parse_strength(text: str | None) -> tuple[float, str] | None:
    """`200mg` -> (200.0, "count"); `250mg/5ml` -> (50.0, "ml"): mg per count unit or per ml."""
    if not text:
        return None
    m = _STRENGTH.match(fold(text))
    if not m:
        return None
    amount = _num(m.group(1)) * _TO_MG[m.group(2)]
    if m.group(4):  # concentration per ml
        per = _num(m.group(3)) if m.group(3) else 1.0
        if not per:
            return None
        return amount / per, "ml"
    return amount, "count"


def parse_daily_amount(text: str | None) -> tuple[float, str, float] | None:
    """How much per day: (amount, unit kind "count"|"mg"|"ml", mg factor) or None."""
    if not text:
        return None
    t = fold(text)
    for pattern, each_first in ((_EACH_TIMES, True), (_TIMES_EACH, False),
                                (_TIMES_PER_DAY_EACH, False)):
        m = pattern.search(t)
        if m:
            if each_first:
                each, unit, times = m.group(1), m.group(2), m.group(3)
            else:
                times, each, unit = m.group(1), m.group(2), m.group(3)
            return _result(_num(each) * _num(times), unit)
    m = _PER_DAY_ONLY.search(t) or _DAY_FIRST.search(t)
    if m:
        return _result(_num(m.group(1)), m.group(2))
    parts = _PART_OF_DAY.findall(t)
    if parts and not _FORBID_PARTS.search(t):
        units = {u for _, u in parts if u}
        if len(units) <= 1:
            return _result(sum(_num(n) for n, _ in parts), next(iter(units), None))
    return None


def _result(amount: float, unit: str | None) -> tuple[float, str, float] | None:
    if amount != amount or amount <= 0:  # NaN or nothing
        return None
    kind = _unit_kind(unit)
    if kind == "count" and amount > 100:  # not a plausible count of tablets a day
        return None
    return amount, kind, _TO_MG.get(unit or "", 1.0)


def daily_dose_mg(
    strength: str | None, dosage: str | None, strength_from_name: float | None = None
) -> float | None:
    """The daily dose in mg when both fields can be read without guessing, else None."""
    daily = parse_daily_amount(dosage)
    if daily is None:
        return None
    amount, kind, factor = daily
    if kind == "mg":
        return amount * factor
    per_unit = parse_strength(strength)
    if per_unit is None and strength_from_name and not strength:
        per_unit = (strength_from_name, "count")
    if per_unit is None:
        return None
    mg, per = per_unit
    if per != kind:
        return None
    return amount * mg
