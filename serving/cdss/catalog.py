"""The hospital's own drug catalogue: MA_THUOC and brand names -> the dictionary's ingredients.

Every Vietnamese hospital keeps, for health-insurance claims, a catalogue of the drugs it
stocks in the BHXH template (columns MA_THUOC, TEN_HOAT_CHAT, TEN_THUOC, HAM_LUONG,
DUONG_DUNG, SO_DANG_KY). `haidang cdss import-catalog FILE` resolves each line once to
ingredient keys of the knowledge base and stores the mapping (JSON) in the hospital's data
folder (`serving.drug_catalog`); the service loads it at start, so a request line that only
carries MA_THUOC, or only the brand the hospital stocks, is still checked.

Rules the import keeps:
- TEN_HOAT_CHAT is resolved part by part ("Amoxicilin + Acid clavulanic"); every part must
  be recognised, or the line falls back to TEN_THUOC (a brand the dictionary knows). A half
  recognised combination is never stored as if it were the whole drug.
- MA_THUOC "00.0000" (QĐ 4750: an ingredient outside the insurance list) is shared by many
  drugs: it never identifies one, so such lines are stored by brand name only.
- A code whose lines resolve to different ingredients is ambiguous and is not stored.
- Every line that cannot be used by its code is reported with its reason, never dropped.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from serving.cdss import names
from serving.cdss.models import OUTSIDE_LIST_CODE

COLUMNS = ("MA_THUOC", "TEN_HOAT_CHAT", "TEN_THUOC", "HAM_LUONG", "DUONG_DUNG", "SO_DANG_KY")
REQUIRED = ("MA_THUOC", "TEN_HOAT_CHAT", "TEN_THUOC")
FORMAT = 1
HEADER_SEARCH_ROWS = 20  # the header is looked for in the sheet's first rows
ATC_CODE = re.compile(r"[A-Z]\d\d[A-Z]{2}\d\d")  # a WHO ATC level-5 (substance) code
_BRACKETS = re.compile(r"\([^)]*\)|\[[^\]]*\]")
# how TEN_HOAT_CHAT joins a combination's ingredients ("Amoxicilin + Acid clavulanic")
_PARTS = re.compile(r"\s*(?:\+|;|,|\bvà\b|\band\b)\s*", re.IGNORECASE)


class CatalogError(ValueError):
    """The catalogue file cannot be read; the message says what to fix."""


@dataclass(frozen=True)
class Unresolved:
    line: int  # line of the file (the header is line 1), row of the sheet for XLSX
    reason: str

    def as_dict(self) -> dict:
        return {"line": self.line, "reason": self.reason}


@dataclass
class ImportResult:
    catalog: HospitalCatalog
    lines: int
    resolved: int
    unresolved: list[Unresolved] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"lines": self.lines, "resolved": self.resolved,
                "unresolved": [u.as_dict() for u in self.unresolved]}


def brand_key(name: str) -> str:
    """How a brand is matched: strengths, dosage forms and case folded away."""
    return names.fold(names.name_part(name))


def code_parts(code: str) -> list[str]:
    """A compounded drug's MA_THUOC lists its ingredients' codes joined by "+" (QĐ 130)."""
    return [p.strip() for p in code.split("+") if p.strip()]


class HospitalCatalog:
    """MA_THUOC -> ingredient keys and brand -> ingredient keys, as imported."""

    def __init__(self, codes: dict[str, tuple[str, ...]], brands: dict[str, tuple[str, ...]],
                 meta: dict | None = None):
        self.codes = codes
        self.brands = brands
        self.meta = meta or {}

    @classmethod
    def load(cls, path: Path) -> HospitalCatalog:
        """The mapping `haidang cdss import-catalog` stored."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CatalogError(f"drug catalogue {path} cannot be read ({exc}); import it "
                               "again with `haidang cdss import-catalog FILE`") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CatalogError(f"drug catalogue {path} is not in format {FORMAT}; import it "
                               "again with `haidang cdss import-catalog FILE`")
        meta = {k: v for k, v in data.items() if k not in ("codes", "brands")}
        return cls({k: tuple(v) for k, v in data["codes"].items()},
                   {k: tuple(v) for k, v in data["brands"].items()}, meta)

    def save(self, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {**self.meta, "format": FORMAT,
                "codes": {k: list(v) for k, v in sorted(self.codes.items())},
                "brands": {k: list(v) for k, v in sorted(self.brands.items())}}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
        tmp.replace(path)

    def ingredients_of(self, ma_thuoc: str) -> tuple[str, ...] | None:
        """Ingredient keys of a MA_THUOC; None for an unknown code or "00.0000".

        A compounded code ("40.1+40.2") resolves when every part does."""
        code = (ma_thuoc or "").strip()
        if not code or code == OUTSIDE_LIST_CODE:
            return None
        hit = self.codes.get(code)
        if hit is not None or "+" not in code:
            return hit
        keys: list[str] = []
        for part in code_parts(code):
            sub = self.codes.get(part)
            if sub is None:
                return None
            keys.extend(k for k in sub if k not in keys)
        return tuple(keys)

    def ingredients_of_brand(self, name: str) -> tuple[str, ...] | None:
        """Ingredient keys of a brand the hospital stocks (TEN_THUOC); None if unknown."""
        return self.brands.get(brand_key(name or "")) if name else None

    def stale_keys(self, known: Iterable[str]) -> set[str]:
        """Ingredient keys the current dictionary no longer has (a catalogue imported
        against an older dictionary): the caller drops them and asks for a re-import."""
        known = set(known)
        used = {k for v in (*self.codes.values(), *self.brands.values()) for k in v}
        return used - known

    def without(self, stale: set[str]) -> HospitalCatalog:
        """The catalogue minus every entry naming a stale key (those lines then go
        unrecognised, visibly, instead of being checked against part of the drug)."""
        return HospitalCatalog({c: v for c, v in self.codes.items() if not stale & set(v)},
                               {b: v for b, v in self.brands.items() if not stale & set(v)},
                               self.meta)


class DrugCodes:
    """MA_THUOC -> ingredients as a request line carries it: the hospital's catalogue when
    one is imported, else a full WHO ATC code (some HIS put the ATC code in MA_THUOC; a
    group code such as C10AA names a class, not a drug, and is not taken)."""

    def __init__(self, kb, catalog: HospitalCatalog | None = None):
        self.kb = kb
        self.catalog = catalog

    def ingredients_of(self, ma_thuoc: str) -> tuple[str, ...] | None:
        code = (ma_thuoc or "").strip()
        keys = self.catalog.ingredients_of(code) if self.catalog is not None else None
        if keys is None and ATC_CODE.fullmatch(code.upper()):
            keys = tuple(self.kb.ingredient_by_atc(code)) or None
        return keys

    def ingredients_of_brand(self, name: str) -> tuple[str, ...] | None:
        return self.catalog.ingredients_of_brand(name) if self.catalog is not None else None


def catalog_path(settings) -> Path:
    """Where `import-catalog` stores the mapping: `serving.drug_catalog`."""
    return Path(settings.serving.drug_catalog)


def load_if_present(settings) -> HospitalCatalog | None:
    path = catalog_path(settings)
    return HospitalCatalog.load(path) if path.is_file() else None


# ---------------------------------------------------------------- reading the file
def _header(cells: Iterable) -> dict[str, int]:
    out: dict[str, int] = {}
    for i, cell in enumerate(cells):
        name = re.sub(r"\s+", "_", str(cell or "").strip()).upper()
        if name in COLUMNS and name not in out:
            out[name] = i
    return out


def _rows(header_and_rows: Iterable[tuple[int, list]], source: Path) -> list[tuple[int, dict]]:
    it = iter(header_and_rows)
    first: tuple[int, dict[str, int]] | None = None
    for number, cells in it:  # title rows above the header are common in exported sheets
        if not any(str(c or "").strip() for c in cells):
            continue
        header_line, columns = number, _header(cells)
        first = first or (header_line, columns)
        if "MA_THUOC" in columns or number >= HEADER_SEARCH_ROWS:
            break
    else:
        if first is None:
            raise CatalogError(f"{source}: the file is empty; expected a header row with "
                               f"{', '.join(COLUMNS)}")
    if "MA_THUOC" not in columns and first is not None:
        header_line, columns = first
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise CatalogError(f"{source}: header row (line {header_line}) lacks {', '.join(missing)}; "
                           f"the BHXH template columns are {', '.join(COLUMNS)} "
                           "(any case, other columns ignored)")
    out = []
    for number, cells in it:
        if not any(str(c or "").strip() for c in cells):
            continue  # a blank row is not a line of the catalogue
        row = {name: str(cells[i]).strip() if i < len(cells) and cells[i] is not None else ""
               for name, i in columns.items()}
        out.append((number, row))
    return out


def read_catalog_file(path: Path) -> list[tuple[int, dict[str, str]]]:
    """(line number, {column: text}) per non-blank line of a CSV or XLSX catalogue."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".xlsx":
        from openpyxl import load_workbook

        try:
            book = load_workbook(path, read_only=True, data_only=True)
        except Exception as exc:  # noqa: BLE001 - openpyxl raises many kinds on a bad file
            raise CatalogError(f"{path}: not a readable .xlsx workbook ({exc})") from None
        try:
            sheet = book.worksheets[0]
            return _rows(((n, list(r)) for n, r in
                          enumerate(sheet.iter_rows(values_only=True), start=1)), path)
        finally:
            book.close()
    if suffix not in (".csv", ".txt"):
        raise CatalogError(f"{path}: expected a .csv or .xlsx file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise CatalogError(f"{path}: not UTF-8 text; save the sheet as CSV UTF-8 "
                           "(or import the .xlsx itself)") from None
    first = text.split("\n", 1)[0]
    delimiter = max((";", ",", "\t"), key=first.count)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    return _rows(((reader.line_num, r) for r in reader), path)


# ---------------------------------------------------------------- resolving a line
def resolve_ingredient(kb, text: str) -> tuple[str, ...] | None:
    """Ingredient keys of one name, or None; every word must be accounted for.

    `kb.resolve_name` reads past words it does not know ("Codein + Eucalyptol" gives
    codeine alone); a catalogue line is stored as the whole drug, so a name with an
    unknown word (bracketed notes aside) is not taken."""
    text = _BRACKETS.sub(" ", text)
    keys = kb.resolve_name(text)
    if not keys or kb.resolve(text).unmatched:
        return None
    return tuple(keys)


def resolve_active(kb, active: str) -> tuple[tuple[str, ...] | None, list[str]]:
    """(keys, []) when every part of TEN_HOAT_CHAT ("A + B") is recognised, else
    (None, the parts that are not). The whole name is tried first: the dictionary knows
    combinations whose parts mean nothing alone ("Vitamin B1 + B6 + B12")."""
    whole = resolve_ingredient(kb, active)
    if whole is not None:
        return whole, []
    parts = [p.strip() for p in _PARTS.split(_BRACKETS.sub(" ", active))]
    missing = [p for p in parts if names.name_part(p) and resolve_ingredient(kb, p) is None]
    return None, missing or [active.strip()]


def resolve_line(kb, active: str, brand: str) -> tuple[tuple[str, ...] | None, str]:
    """(ingredient keys, '') or (None, the reason in words)."""
    reasons = []
    if active:
        keys, missing = resolve_active(kb, active)
        if keys is not None:
            return keys, ""
        reasons.append(f"TEN_HOAT_CHAT: {', '.join(repr(m) for m in missing)} not recognised")
    else:
        reasons.append("TEN_HOAT_CHAT is empty")
    if brand:
        found = resolve_ingredient(kb, brand)
        if found:
            return found, ""
        reasons.append(f"TEN_THUOC {brand!r} not recognised")
    else:
        reasons.append("TEN_THUOC is empty")
    return None, "; ".join(reasons)


def import_catalog(path: Path, kb) -> ImportResult:
    """Read and resolve a catalogue file; the caller stores `result.catalog`."""
    path = Path(path)
    rows = read_catalog_file(path)
    unresolved: list[Unresolved] = []
    code_lines: dict[str, list[tuple[int, tuple[str, ...]]]] = {}
    brand_lines: dict[str, list[tuple[int, tuple[str, ...]]]] = {}
    usable: list[int] = []
    for number, row in rows:
        code = row.get("MA_THUOC", "")
        keys, reason = resolve_line(kb, row.get("TEN_HOAT_CHAT", ""), row.get("TEN_THUOC", ""))
        if keys is None:
            unresolved.append(Unresolved(number, reason))
            continue
        if row.get("TEN_THUOC") and brand_key(row["TEN_THUOC"]):
            brand_lines.setdefault(brand_key(row["TEN_THUOC"]), []).append((number, keys))
        if not code:
            unresolved.append(Unresolved(number, "MA_THUOC is empty: the drug is identified "
                                         "by its TEN_THUOC only"))
        elif code == OUTSIDE_LIST_CODE:
            usable.append(number)  # by brand only: "00.0000" names no single drug
        else:
            code_lines.setdefault(code, []).append((number, keys))
            usable.append(number)
    codes: dict[str, tuple[str, ...]] = {}
    for code, hits in code_lines.items():
        if len({keys for _, keys in hits}) == 1:
            codes[code] = hits[0][1]
            continue
        seen = ", ".join(f"line {n}: {' + '.join(keys)}" for n, keys in hits)
        for number, _ in hits:
            usable.remove(number)
            unresolved.append(Unresolved(number, (
                f"MA_THUOC {code} is ambiguous ({seen}); drugs sent with this code are "
                "identified by name only")))
    brands = {b: hits[0][1] for b, hits in brand_lines.items()
              if len({keys for _, keys in hits}) == 1}
    unresolved.sort(key=lambda u: u.line)
    meta = {
        "source": path.name,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "imported": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "knowledge_version": getattr(kb, "version", None),
        "lines": len(rows),
        "resolved": len(usable),
        "unresolved": [u.as_dict() for u in unresolved],
    }
    return ImportResult(HospitalCatalog(codes, brands, meta), len(rows), len(usable), unresolved)
