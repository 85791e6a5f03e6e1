"""Drug-name normalisation: how a prescribed line is turned into a dictionary key.

Vietnamese prescriptions spell the same ingredient many ways (`Amiodaron`, `amiodarone`,
`AMIODARON 200MG VIÊN`, `Acid tranexamic` / `tranexamic acid`, `Clorpromazin` /
`chlorpromazine`). Matching here is deterministic folding of *known* names: both the
dictionary's names and the prescribed text are folded with the same rules, and only an
exact folded match counts. Nothing is guessed by edit distance: a name that does not fold
onto a known one is "not recognised", which the checks report instead of passing silently.
"""

from __future__ import annotations

import re
import unicodedata

# Dosage-form and packaging words (Vietnamese and English) that carry no identity.
FORM_WORDS = frozenset(
    """
    vien nen nang bao phim duong tieu hoa sui dai phong thich keo kep mem cung
    ong lo chai goi tuyp hop vi binh tui
    tiem truyen uong ngam nho dat boi xit hit dung dich hon dich nhu tuong thuoc
    siro sirô kem mo gel bot pha cot tinh vo khuan
    tablet tablets tab tabs film coated capsule capsules cap caps sachet sachets
    injection inj infusion oral solution suspension syrup cream ointment drops
    vial ampoule amp bottle powder for granules eye ear nasal spray inhaler
    iv im po sc ml x
    """.split()
)

# Words that name a salt or ester; tried away only when the full name is unknown.
SALT_WORDS = frozenset(
    """
    hydroclorid hydrochlorid hydrocloride hcl natri sodium kali potassium magnesi
    magnesium calci calcium maleat maleate besylat besilat mesylat mesilat fumarat
    tartrat succinat sulfat sulphate sulfate phosphat phosphate acetat acetate citrat
    citrate bromid bromide dihydrat monohydrat trihydrat hydrat clorid chloride
    dipropionat propionat valerat butyrat furoat trometamol arginin lysin axetil
    pivoxil proxetil disoproxil alafenamid dimaleat hemifumarat
    """.split()
)

# Vietnamese element/salt words folded onto their English counterpart before spelling folds.
WORD_EQUIVALENTS = {
    "axit": "acid",
    "natri": "sodium",
    "kali": "potassium",
    "calci": "calcium",
    "canxi": "calcium",
    "magnesi": "magnesium",
    "sat": "iron",
    "clorid": "chloride",
    "hydroclorid": "hydrochloride",
    "sulfat": "sulfate",
    "sulphate": "sulfate",
}

STRENGTH = re.compile(
    r"(?<![a-z0-9])(\d+(?:[.,]\d+)?)\s*(mg|g|gam|mcg|µg|μg|ug|microgam|microgram|iu|ui|ml|%)"
    r"(?![a-z])",
    re.IGNORECASE,
)
_UNIT_TO_MG = {"mg": 1.0, "g": 1000.0, "gam": 1000.0, "mcg": 0.001, "µg": 0.001,
               "μg": 0.001, "ug": 0.001, "microgam": 0.001, "microgram": 0.001}

_NON_WORD = re.compile(r"[^a-z0-9]+")
_DOUBLE = re.compile(r"([a-z])\1+")


def strip_diacritics(text: str) -> str:
    """`Amiodaron viên nén` -> `Amiodaron vien nen`; `đ` -> `d` (NFD leaves it alone)."""
    text = text.replace("đ", "d").replace("Đ", "D")
    decomposed = unicodedata.normalize("NFD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def plain(text: str) -> str:
    """Lowercase, no diacritics, punctuation as single spaces: the display-independent form."""
    return " ".join(_NON_WORD.sub(" ", strip_diacritics(text).lower()).split())


def _fold_word(word: str) -> str:
    word = WORD_EQUIVALENTS.get(word, word)
    if word.isdigit():
        return word
    # English and Vietnamese INN spellings: chlorpromazine/clorpromazin, phenytoin/fenytoin,
    # cyclosporine/ciclosporin, amiodarone/amiodaron, omeprazole/omeprazol.
    word = word.replace("ph", "f").replace("th", "t").replace("ch", "c").replace("y", "i")
    word = word.replace("k", "c").replace("qu", "c").replace("z", "s")
    word = _DOUBLE.sub(r"\1", word)
    if len(word) > 4 and word.endswith("e"):
        word = word[:-1]
    return word


def fold(text: str) -> str:
    """The matching key of a name: plain form, spelling-folded, `acid` moved last.

    `Acid tranexamic` and `tranexamic acid` give the same key, as do `Amiodaron` and
    `AMIODARONE`. Two different ingredients must never share a key; the knowledge base
    checks this when it compiles its index and refuses the data otherwise.
    """
    words = plain(text).split()
    folded = [_fold_word(w) for w in words]
    if "acid" in folded and len(folded) > 1:
        folded = [w for w in folded if w != "acid"] + ["acid"]
    return " ".join(folded)


def fold_without_salts(text: str) -> str | None:
    """The key with salt words dropped (`Metformin hydroclorid` -> `metformin`), or None."""
    words = [w for w in plain(text).split() if w not in SALT_WORDS]
    if not words or len(words) == len(plain(text).split()):
        return None
    return fold(" ".join(words))


def parse_strength_mg(text: str) -> float | None:
    """First mass strength in a line in mg (`200mg` -> 200, `1 g` -> 1000, `500mcg` -> 0.5)."""
    for match in STRENGTH.finditer(text):
        unit = match.group(2).lower()
        if unit in _UNIT_TO_MG:
            return float(match.group(1).replace(",", ".")) * _UNIT_TO_MG[unit]
    return None


def name_part(text: str) -> str:
    """The line without strengths, bracketed notes and dosage-form words."""
    text = STRENGTH.sub(" ", text)
    text = re.sub(r"\d+(?:[.,]\d+)?\s*(?=/)", " ", text)  # "500/125"
    words = [w for w in plain(text).split() if w not in FORM_WORDS and not w.isdigit()]
    return " ".join(words)


def candidate_spans(text: str) -> list[str]:
    """Contiguous word spans of the name part, longest first, leftmost first."""
    words = name_part(text).split()
    spans = []
    for size in range(len(words), 0, -1):
        for start in range(0, len(words) - size + 1):
            spans.append(" ".join(words[start : start + size]))
    return spans


def split_combination(text: str) -> list[str]:
    """`Amoxicilin + Acid clavulanic 500mg/125mg` -> the two ingredient parts."""
    stripped = STRENGTH.sub(" ", text)
    parts = re.split(r"\s*(?:\+|/|;|,|\bvà\b|\bva\b|\band\b|\bwith\b)\s*", stripped)
    return [p for p in (part.strip() for part in parts) if name_part(p)]
