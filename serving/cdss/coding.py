"""Drug identity from codes: which ingredients a FHIR medication concept names.

An EHR sends a drug as codes (ATC, RxNorm, the hospital's QĐ 130 `MA_THUOC`) with or
without a display text. Each coding is tried in the order the EHR sent it; the first one a
code system here resolves decides the ingredients. Only when no code resolves are the
codings' `display` and the concept's `text` read as names. What resolves through none of
these is returned as unresolved, with its codes, so that the card can say exactly which
code was not recognised and that the drug was not checked.

Code systems (URIs an EHR puts in `Coding.system`):
- ATC: `http://www.whocc.no/atc` (WHO Collaborating Centre), full 7-character codes, through
  the dictionary's ATC codes (a group code names a class, not a drug);
- RxNorm: `http://www.nlm.nih.gov/research/umls/rxnorm`, ingredient RXCUIs only
  (`datasets/rxnorm/`, pending pharmacist review);
- MA_THUOC: `urn:haidang:qd130:ma-thuoc` (and any URI the hospital configures), the
  drug/ingredient code of QĐ 130/4750 claims, through the hospital's catalogue
  (`HospitalCatalog.ingredients_of`), when one is loaded.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from serving.cdss.knowledge import REPO_ROOT, KnowledgeBase

ATC_SYSTEM = "http://www.whocc.no/atc"
RXNORM_SYSTEM = "http://www.nlm.nih.gov/research/umls/rxnorm"
MA_THUOC_SYSTEM = "urn:haidang:qd130:ma-thuoc"
RXNORM_MAP = REPO_ROOT / "datasets" / "rxnorm" / "rxnorm-ingredients.csv"


@dataclass(frozen=True, slots=True)
class Code:
    """One FHIR Coding as sent (any of the three may be missing)."""

    system: str | None
    code: str | None
    display: str | None = None

    def label(self) -> str:
        return f"{self.code or '?'} ({self.system or 'no system'})"


@dataclass(frozen=True, slots=True)
class Identity:
    """The ingredients a concept names (empty when unresolved) and how they were found."""

    ingredients: tuple[str, ...]
    via: str  # "atc" | "rxnorm" | "ma-thuoc" | "text" | "" (unresolved)
    codes: tuple[Code, ...] = ()  # every coding sent: named on the card when unresolved
    text: str = ""  # the name that matched, when `via` is "text"


def load_rxnorm(path: Path = RXNORM_MAP) -> dict[str, str]:
    """RXCUI -> ingredient key."""
    if not path.exists():
        return {}
    with path.open(encoding="utf-8", newline="") as handle:
        return {row["rxcui"].strip(): row["inn"].strip() for row in csv.DictReader(handle)
                if row.get("rxcui") and row.get("inn")}


class DrugCoder:
    """Resolves FHIR medication concepts to ingredient keys of the knowledge base.

    `catalog`: the hospital's MA_THUOC catalogue, any object with
    `ingredients_of(ma_thuoc) -> tuple[str, ...] | None` and
    `ingredients_of_brand(name) -> tuple[str, ...] | None` (serving.cdss.catalog)."""

    def __init__(self, kb: KnowledgeBase, catalog=None, rxnorm: dict[str, str] | None = None,
                 ma_thuoc_systems: tuple[str, ...] = (MA_THUOC_SYSTEM,)):
        self.kb = kb
        self.catalog = catalog
        known = kb.drugs
        self._rxnorm = {k: v for k, v in (load_rxnorm() if rxnorm is None else rxnorm).items()
                        if v in known}
        self._ma_thuoc = frozenset(ma_thuoc_systems)

    def by_code(self, code: Code) -> tuple[str, ...]:
        """Ingredient keys of one coding, or () when its system or code is unknown here."""
        value = (code.code or "").strip()
        system = (code.system or "").strip()
        if not value:
            return ()
        if system == ATC_SYSTEM:
            # a full (level-5) code names a substance; a group code (C01BD) names no drug
            return tuple(self.kb.ingredient_by_atc(value)) if len(value) == 7 else ()
        if system == RXNORM_SYSTEM:
            inn = self._rxnorm.get(value)
            return (inn,) if inn else ()
        if system in self._ma_thuoc and self.catalog is not None:
            return tuple(self.catalog.ingredients_of(value) or ())
        return ()

    def by_name(self, text: str) -> tuple[str, ...]:
        """A display or free text: the hospital's brand names first, then the dictionary."""
        text = (text or "").strip()
        if not text:
            return ()
        if self.catalog is not None:
            found = self.catalog.ingredients_of_brand(text)
            if found:
                return tuple(found)
        return self.by_dictionary(text)

    def by_dictionary(self, text: str) -> tuple[str, ...]:
        """Ingredient keys the knowledge base's own name matching finds in a text
        (combinations split, salts and forms dropped)."""
        return tuple(self.kb.resolve_name(text)) if text else ()

    def identify(self, codes: list[Code], texts: list[str | None]) -> Identity:
        """Codes first (in the order sent), then displays, then the texts."""
        for code in codes:
            found = self.by_code(code)
            if found:
                return Identity(found, _system_name(code.system, self._ma_thuoc), tuple(codes))
        for text in [c.display for c in codes] + list(texts):
            found = self.by_name(text or "")
            if found:
                return Identity(found, "text", tuple(codes), text or "")
        return Identity((), "", tuple(codes))


def _system_name(system: str | None, ma_thuoc: frozenset[str]) -> str:
    if system == ATC_SYSTEM:
        return "atc"
    if system == RXNORM_SYSTEM:
        return "rxnorm"
    return "ma-thuoc" if system in ma_thuoc else "code"


def line_text(ingredients: tuple[str, ...]) -> str:
    """The drug line the check engine reads for resolved ingredients: their keys joined,
    which the dictionary resolves back to exactly these ingredients."""
    return " + ".join(ingredients)
