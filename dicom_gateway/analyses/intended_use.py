"""The header half of the intended-use gate: is this image what the model was made for?

Before a model scores an image, its DICOM header is checked against the model card's
``population`` (modalities, body parts, views, photometric interpretations, age range,
smallest image size). The image half (``serving.imaging.gate.ImageGate``) then looks at
the pixels, whatever the header says.

Real PACS headers are often empty or wrong, so the rules are:

* a value that is present and outside the population refuses the image, with a reason
  in Vietnamese and English (a lateral view, a CT, a 9-year-old, a colour image ...);
* a value that is missing defers to the image check (never refused, never assumed);
* a value that is impossible (a PatientAge like ``62`` or ``045X``, a StudyDate in the
  future, a birth date after the study, an age over 130, a zero or absurd PixelSpacing)
  is ignored for the decision, named in ``warnings`` and logged: it is not trusted, it is
  not replaced by a default, and it does not crash the analysis. The image check then
  decides as for a missing value. Refusing these would refuse much real PACS data whose
  pixels are fine; trusting them would make an age check meaningless.

A card without ``population`` gets :data:`CHEST_RADIOGRAPH`, the scope of any chest
X-ray analysis (frontal CR/DX chest, greyscale), with no age limit.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pydicom

LATERAL_VIEWS = frozenset({"LL", "RL", "LATERAL", "LAT", "LLD", "RLD"})
MAX_AGE_YEARS = 130.0
# A plausible detector pixel for projection radiography: 0.02 mm (mammography) to 2 mm.
PIXEL_SPACING_MM = (0.02, 2.0)
_AGE = re.compile(r"^(\d{3})([DWMY])$")
_AGE_UNIT_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}


@dataclass(frozen=True)
class Population:
    """Who and what a model was made for, as its card's ``population`` states it."""

    modalities: tuple[str, ...] = ("CR", "DX")
    body_parts: tuple[str, ...] = ("CHEST", "THORAX", "LUNG")
    views: tuple[str, ...] = ("PA", "AP")
    photometric: tuple[str, ...] = ("MONOCHROME1", "MONOCHROME2")
    age_min: float | None = None  # years
    age_max: float | None = None
    min_size: int = 128  # pixels, the shorter side

    @classmethod
    def from_card(cls, card: Mapping[str, Any]) -> Population:
        """Read ``population``; each key may be plural or singular (``body_part``), and the
        ages may say their unit (``age_min_years``)."""
        data = card.get("population")
        if not isinstance(data, Mapping):
            return CHEST_RADIOGRAPH

        def value(*keys: str) -> Any:
            return next((data[k] for k in keys if data.get(k) is not None), None)

        def codes(key: str, default: tuple[str, ...]) -> tuple[str, ...]:
            found = value(key, key.removesuffix("s"))
            if found is None:
                return default
            values = [found] if isinstance(found, str) else list(found)
            return tuple(str(v).strip().upper() for v in values)

        def years(key: str) -> float | None:
            found = value(key, f"{key}_years")
            return None if found is None else float(found)

        return cls(
            modalities=codes("modalities", cls.modalities),
            body_parts=codes("body_parts", cls.body_parts),
            views=codes("views", cls.views),
            photometric=codes("photometric", cls.photometric),
            age_min=years("age_min"),
            age_max=years("age_max"),
            min_size=int(value("min_size") or cls.min_size),
        )


CHEST_RADIOGRAPH = Population()


@dataclass(frozen=True)
class HeaderVerdict:
    """Same shape as the image gate's ``GateVerdict``, plus what the header could not tell."""

    analysed: bool
    reason: str  # machine code, '' when the header allows the image
    reason_vi: str
    reason_en: str
    warnings: tuple[str, ...] = field(default=())  # impossible values, ignored; no values quoted
    deferred: tuple[str, ...] = field(default=())  # missing attributes: the image check decides


def _text(ds: pydicom.Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    if isinstance(value, pydicom.multival.MultiValue):
        value = "\\".join(str(v) for v in value)
    return str(value or "").strip().upper()


def _date(value: str) -> dt.date | None:
    try:
        return dt.datetime.strptime(value.strip(), "%Y%m%d").date()
    except ValueError:
        return None


def _age_from_patient_age(value: str, warnings: list[str]) -> float | None:
    match = _AGE.match(value)
    if not match:
        warnings.append("PatientAge is not nnnD, nnnW, nnnM or nnnY: ignored")
        return None
    years = int(match.group(1)) * _AGE_UNIT_YEARS[match.group(2)]
    if years > MAX_AGE_YEARS:
        warnings.append(f"PatientAge is over {MAX_AGE_YEARS:g} years: ignored")
        return None
    return years


def _study_date(ds: pydicom.Dataset, today: dt.date, warnings: list[str]) -> dt.date | None:
    text = _text(ds, "StudyDate")
    if not text:
        return None
    study = _date(text)
    if study is None:
        warnings.append("StudyDate is not a valid YYYYMMDD date: ignored")
    elif study > today:
        warnings.append("StudyDate is in the future: ignored")
        return None
    return study


def patient_age(ds: pydicom.Dataset, today: dt.date, warnings: list[str]) -> float | None:
    """Age in years at the study, from PatientAge, else PatientBirthDate with StudyDate.

    ``None`` when neither gives a believable age; each impossible value adds a warning.
    """
    study = _study_date(ds, today, warnings)
    age_text = _text(ds, "PatientAge")
    if age_text:
        age = _age_from_patient_age(age_text, warnings)
        if age is not None:
            return age
    birth_text = _text(ds, "PatientBirthDate")
    if not birth_text:
        return None
    birth = _date(birth_text)
    if birth is None:
        warnings.append("PatientBirthDate is not a valid YYYYMMDD date: ignored")
        return None
    if birth > today:
        warnings.append("PatientBirthDate is in the future: ignored")
        return None
    if study is None:
        return None
    if birth > study:
        warnings.append("PatientBirthDate is after StudyDate: ignored")
        return None
    years = (study - birth).days / 365.25
    if years > MAX_AGE_YEARS:
        warnings.append(f"PatientBirthDate gives an age over {MAX_AGE_YEARS:g} years: ignored")
        return None
    return years


def _check_pixel_spacing(ds: pydicom.Dataset, warnings: list[str]) -> None:
    """Pixel spacing does not decide the verdict, but an absurd one must not pass unseen."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        try:  # pydicom converts DS on first access: a malformed file raises here
            value = ds.get(keyword)
            if value in (None, ""):
                continue
            multiple = isinstance(value, pydicom.multival.MultiValue | list)
            values = [float(v) for v in (value if multiple else [value])]
        except (TypeError, ValueError):
            warnings.append(f"{keyword} is not numeric: ignored")
            continue
        lo, hi = PIXEL_SPACING_MM
        if len(values) != 2 or not all(lo <= v <= hi for v in values):
            warnings.append(f"{keyword} is not two values within {lo:g}-{hi:g} mm: ignored")


def _age_words(years: float) -> tuple[str, str]:
    if years >= 2:
        return f"{int(years)} tuổi", f"aged {int(years)} years"
    months = int(years * 12)
    return f"{months} tháng tuổi", f"aged {months} months"


def judge_header(ds: pydicom.Dataset, population: Population = CHEST_RADIOGRAPH, *,
                 today: dt.date | None = None) -> HeaderVerdict:
    """Refuse an image whose header says it is outside ``population``; see the module doc."""
    today = today or dt.date.today()
    warnings: list[str] = []
    deferred: list[str] = []

    def missing(keyword: str) -> bool:
        if _text(ds, keyword):
            return False
        deferred.append(keyword)
        return True

    def no(reason: str, vi: str, en: str) -> HeaderVerdict:
        return HeaderVerdict(False, reason, vi, en, tuple(warnings), tuple(deferred))

    _check_pixel_spacing(ds, warnings)
    modality = _text(ds, "Modality")
    if not missing("Modality") and modality not in population.modalities:
        allowed = "/".join(population.modalities)
        return no("modality", f"ảnh {modality}, không phải X-quang ({allowed})",
                  f"{modality} image, not a radiograph ({allowed})")
    body_part = _text(ds, "BodyPartExamined")
    if not missing("BodyPartExamined") and body_part not in population.body_parts:
        return no("not_chest", f"vùng chụp {body_part}, không phải ngực",
                  f"body part {body_part}, not the chest")
    view = _text(ds, "ViewPosition")
    if not missing("ViewPosition") and view not in population.views:
        if view in LATERAL_VIEWS:
            return no("lateral", "phim nghiêng, không phải phim thẳng",
                      "lateral view, not a frontal view")
        allowed = "/".join(population.views)
        return no("view", f"tư thế chụp {view}, không phải phim thẳng ({allowed})",
                  f"view {view}, not a frontal view ({allowed})")
    photometric = _text(ds, "PhotometricInterpretation")
    if not missing("PhotometricInterpretation") and photometric not in population.photometric:
        return no("photometric", f"ảnh {photometric}, không phải ảnh xám X-quang",
                  f"{photometric} image, not a greyscale radiograph")
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        return no("multiframe", "ảnh nhiều khung hình, không phải một phim X-quang",
                  "multi-frame image, not a single radiograph")
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows and columns and min(rows, columns) < population.min_size:
        return no("image_size", f"ảnh {rows}×{columns} điểm, nhỏ hơn {population.min_size} điểm",
                  f"image {rows}x{columns} pixels, smaller than {population.min_size}")
    age = patient_age(ds, today, warnings)
    if age is None:
        deferred.append("PatientAge")
    else:
        vi, en = _age_words(age)
        if population.age_min is not None and age < population.age_min:
            return no("age", f"bệnh nhân {vi}, mô hình dành cho người từ "
                             f"{population.age_min:g} tuổi",
                      f"patient {en}, the model is for patients aged {population.age_min:g} "
                      "or over")
        if population.age_max is not None and age > population.age_max:
            return no("age", f"bệnh nhân {vi}, mô hình dành cho người đến "
                             f"{population.age_max:g} tuổi",
                      f"patient {en}, the model is for patients aged up to "
                      f"{population.age_max:g}")
    return HeaderVerdict(True, "", "", "", tuple(warnings), tuple(deferred))
