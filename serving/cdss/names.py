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
    dihydroclorid dihydrochlorid bisulfat hemihydrat sesquihydrat
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
    "acide": "acid",
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


_ZINC = re.compile(r"\bk[ẽẼ]m\b|\bK[ẽẼ]m\b", re.IGNORECASE)


def strip_diacritics(text: str) -> str:
    """`Amiodaron viên nén` -> `Amiodaron vien nen`; `đ` -> `d` (NFD leaves it alone).
    `kẽm` (zinc) becomes `zinc` first: without its tilde it would read as `kem` (cream)."""
    text = _ZINC.sub("zinc", text.replace("đ", "d").replace("Đ", "D"))
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


# English element and salt words -> the Vietnamese word the MoH lists use.
VIETNAMESE_WORDS = {
    "sodium": "natri", "potassium": "kali", "calcium": "calci", "magnesium": "magnesi",
    "chloride": "clorid", "hydrochloride": "hydroclorid", "sulfate": "sulfat",
    "sulphate": "sulfat", "iron": "sắt",
}


def _vietnamese_word(word: str) -> str:
    if word in VIETNAMESE_WORDS:
        return VIETNAMESE_WORDS[word]
    word = word.replace("chl", "cl").replace("sulph", "sulf").replace("ae", "e")
    word = word.replace("ll", "l")
    # final -e dropped after a consonant other than s: amiodarone -> amiodaron,
    # furosemide -> furosemid, omeprazole -> omeprazol; glucose and alteplase keep it.
    if len(word) > 3 and word.endswith("e") and word[-2] not in "aeiouys":
        word = word[:-1]
    return word


def vietnamese_spelling(inn: str) -> str:
    """The MoH (Dược thư quốc gia) spelling of an English INN, by its transliteration rules.

    `amiodarone` -> `Amiodaron`, `chlorpromazine` -> `Clorpromazin`, `amoxicillin` ->
    `Amoxicilin`, `tranexamic acid` -> `Acid tranexamic`, `potassium chloride` -> `Kali
    clorid`. ph, th and y stay as the MoH lists keep them (`Phenytoin`, `Methotrexat`);
    the matcher (`fold`) treats ph/f, th/t, y/i, c/k as the same anyway.
    """
    words = inn.lower().split()
    if len(words) > 1 and words[-1] == "acid":
        words = ["acid", *words[:-1]]
    out = " ".join(_vietnamese_word(w) for w in words)
    return out[:1].upper() + out[1:]
