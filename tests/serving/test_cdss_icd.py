"""ICD-10: WHO 2019 validity and specificity, ranges, sex/age edits, MoH catalogue import."""

from __future__ import annotations

import csv

import openpyxl
import pytest

from serving.cdss.icd import Icd10, normalise_sex
from serving.cdss.knowledge import DEFAULT_ROOT, KnowledgeError

EDITS = list(csv.DictReader((DEFAULT_ROOT / "icd-edits.csv").open(encoding="utf-8")))


@pytest.fixture(scope="module")
def icd() -> Icd10:
    return Icd10()


@pytest.mark.parametrize(
    ("raw", "norm"),
    [("j18.9", "J18.9"), ("J189", "J18.9"), (" J18.9 ", "J18.9"), ("A01.0†", "A01.0"),
     ("i10", "I10"), ("E11.9*", "E11.9"), ("k 25.0", "K25.0")],
)
def test_normalise(icd, raw, norm):
    assert icd.normalise(raw) == norm


@pytest.mark.parametrize(
    ("code", "valid", "specific"),
    [("J18.9", True, True), ("J189", True, True), ("J18", True, False), ("I10", True, True),
     ("E11", True, False), ("E11.9", True, True), ("K25", True, False),
     ("O80", True, False), ("O80.0", True, True),
     ("J18.99", False, False), ("Z99.99", False, False), ("XYZ", False, False),
     ("U99", False, False), ("", False, False)],
)
def test_validity_and_specificity(icd, code, valid, specific):
    assert icd.is_valid(code) is valid
    assert icd.is_specific(code) is specific


@pytest.mark.parametrize(
    ("code", "rng", "inside"),
    [("K26.0", "K25-K28", True), ("K25", "K25-K28", True), ("K28.9", "K25-K28", True),
     ("K29.0", "K25-K28", False), ("K24", "K25-K28", False), ("J45.9", "J45", True),
     ("J45", "J45", True), ("J46", "J45", False), ("J450", "J45", True),
     ("N18.5", "N18.4-N18.5", True), ("N18.4", "N18.4-N18.5", True),
     ("N18.3", "N18.4-N18.5", False), ("N18.9", "N18.4-N18.5", False),
     ("O99.8", "O00-O99", True), ("P00.0", "O00-O99", False), ("i10", "I10-I15", True)],
)
def test_in_range(icd, code, rng, inside):
    assert icd.in_range(code, rng) is inside


def test_title_falls_back_to_who_english(icd):
    assert icd.title("J18.9") == "Viêm phổi, không đặc hiệu"  # the shipped MoH catalogue
    assert icd.title("J18.9", lang="en") == "Pneumonia, unspecified"
    assert icd.title("Q99.99") is None
    who_only = Icd10(moh_catalogue=None)
    assert who_only.title("J18.9") == "Pneumonia, unspecified"


def _code_in(rng: str) -> str:
    return rng.split("-")[0]


@pytest.mark.parametrize("rule", [e for e in EDITS if e["sex"]], ids=lambda e: e["id"])
def test_sex_edit(icd, rule):
    code = _code_in(rule["icd_range"])
    other = "male" if rule["sex"] == "female" else "female"
    issues = icd.sex_age_issues(code, other, None)
    assert [(i.rule_id, i.kind) for i in issues] == [(rule["id"], "sex")]
    assert code in issues[0].message_vi and issues[0].source
    # Negative: the right sex, or sex unknown, raises nothing for this rule.
    assert all(i.rule_id != rule["id"] for i in icd.sex_age_issues(code, rule["sex"], None))
    assert all(i.rule_id != rule["id"] for i in icd.sex_age_issues(code, None, None))


@pytest.mark.parametrize("rule", [e for e in EDITS if e["age_min_days"] or e["age_max_days"]],
                         ids=lambda e: e["id"])
def test_age_edit(icd, rule):
    code = _code_in(rule["icd_range"])
    low = int(rule["age_min_days"]) if rule["age_min_days"] else None
    high = int(rule["age_max_days"]) if rule["age_max_days"] else None
    sex = rule["sex"] or "female"  # a sex that passes the sex edits of the same range
    inside = (low or 0) + 1 if high is None else (high if low is None else (low + high) // 2)
    assert all(i.rule_id != rule["id"] for i in icd.sex_age_issues(code, sex, inside))
    assert all(i.rule_id != rule["id"] for i in icd.sex_age_issues(code, sex, None))
    if high is not None:
        hits = icd.sex_age_issues(code, sex, high + 1)
        assert (rule["id"], "age") in [(i.rule_id, i.kind) for i in hits]
    if low is not None:
        hits = icd.sex_age_issues(code, sex, low - 1)
        assert (rule["id"], "age") in [(i.rule_id, i.kind) for i in hits]


def test_named_edits(icd):
    assert [i.kind for i in icd.sex_age_issues("O80", 1, 9000)] == ["sex"]  # QĐ 130: 1 = male
    assert icd.sex_age_issues("O80", 2, 9000) == []
    assert [i.kind for i in icd.sex_age_issues("N40", "2", 20000)] == ["sex"]
    assert icd.sex_age_issues("N40", "1", 20000) == []
    assert [i.severity for i in icd.sex_age_issues("P07.3", "1", 400)] == ["info"]
    assert icd.sex_age_issues("P07.3", "1", 10) == []
    assert icd.sex_age_issues("J18.9", "1", 10) == []


def test_normalise_sex():
    assert normalise_sex(1) == "male" and normalise_sex("2") == "female"
    assert normalise_sex("Nữ") == "female" and normalise_sex("M") == "male"
    assert normalise_sex(None) is None and normalise_sex("3") is None


CATALOGUE = [
    ["STT", "Mã chương", "Tên chương", "Mã bệnh", "Tên bệnh", "Tên bệnh tiếng Anh"],
    [1, "X", "Bệnh hệ hô hấp", "J18.9", "Viêm phổi, không đặc hiệu", "Pneumonia, unspecified"],
    [2, "IX", "Bệnh hệ tuần hoàn", "I10", "Bệnh lý tăng huyết áp vô căn (nguyên phát)",
     "Essential (primary) hypertension"],
    [3, "XI", "Bệnh hệ tiêu hóa", "K259", "Loét dạ dày, không xác định cấp hay mạn",
     "Gastric ulcer"],
]


def test_import_moh_catalogue_csv(tmp_path):
    path = tmp_path / "qd4469.csv"
    with path.open("w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.writer(handle, delimiter=";")
        writer.writerow(["DANH MỤC ICD-10 (QĐ 4469/QĐ-BYT)"])
        writer.writerows(CATALOGUE)
    icd = Icd10(moh_catalogue=None)
    assert icd.title("J18.9") == "Pneumonia, unspecified"
    assert icd.load_moh_catalogue(path) == 3
    assert icd.title("J18.9") == "Viêm phổi, không đặc hiệu"
    assert icd.title("j189", lang="vi") == "Viêm phổi, không đặc hiệu"
    assert icd.title("K25.9") == "Loét dạ dày, không xác định cấp hay mạn"
    assert icd.title("J18.9", lang="en") == "Pneumonia, unspecified"
    assert icd.vietnamese_titles == 3


def test_import_moh_catalogue_xlsx(tmp_path):
    path = tmp_path / "qd4469.xlsx"
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["Bảng phân loại quốc tế bệnh tật ICD-10"])
    for row in CATALOGUE:
        sheet.append(row)
    book.save(path)
    icd = Icd10(moh_catalogue=path)
    assert icd.title("I10") == "Bệnh lý tăng huyết áp vô căn (nguyên phát)"
    assert icd.vietnamese_titles == 3


def test_import_picks_the_disease_code_column(tmp_path):
    """The QĐ 4469 layout has category and disease code columns side by side."""
    path = tmp_path / "qd4469-full.xlsx"
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["STT", "MÃ CHƯƠNG", "TÊN CHƯƠNG", "MÃ LOẠI", "TÊN LOẠI", "MÃ BỆNH",
                  "MÃ BỆNH KHÔNG DẤU", "DISEASE NAME", "TÊN BỆNH"])
    sheet.append([1, "X", "Bệnh hệ hô hấp", "J18", "Viêm phổi, tác nhân không xác định",
                  "J18.0", "J180", "Bronchopneumonia, unspecified",
                  "Viêm phế quản phổi, không đặc hiệu"])
    sheet.append([2, "X", "Bệnh hệ hô hấp", "J18", "Viêm phổi, tác nhân không xác định",
                  "J18.9", "J189", "Pneumonia, unspecified", "Viêm phổi, không đặc hiệu"])
    book.save(path)
    icd = Icd10(moh_catalogue=None)
    assert icd.load_moh_catalogue(path) == 2
    assert icd.title("J18.0") == "Viêm phế quản phổi, không đặc hiệu"
    assert icd.title("J18.9") == "Viêm phổi, không đặc hiệu"
    assert icd.title("J18") == "Pneumonia, organism unspecified"  # not in the file: WHO


def test_import_refuses_a_file_without_codes(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("name,title\nfoo,bar\nbaz,qux\n", encoding="utf-8")
    with pytest.raises(KnowledgeError, match="ICD-10 codes"):
        Icd10().load_moh_catalogue(path)


# Dengue was A90-A91 before WHO ICD-10 2019 moved it to A97; MoH catalogues still use them.
PRE_2019_CODES = {"A90", "A91"}


def test_every_rule_range_is_a_who_code(icd):
    """A typo in a rule (or a US ICD-10-CM code) would silently never match."""
    for name, column in (("indications.csv", "icd_ranges"),
                         ("disease-contraindications.csv", "icd_ranges"),
                         ("icd-edits.csv", "icd_range")):
        for row in csv.DictReader((DEFAULT_ROOT / name).open(encoding="utf-8")):
            for rng in row[column].split("|"):
                for end in rng.split("-"):
                    assert icd.is_valid(end) or end in PRE_2019_CODES, (name, row["id"], rng)
                low, _, high = rng.partition("-")
                assert not high or icd.normalise(low) <= icd.normalise(high), (name, rng)


def test_validity_is_the_moh_claim_code_set(icd):
    assert icd.is_valid("M23.02") and icd.is_specific("M23.02")  # MoH fifth character
    assert not icd.is_specific("M23.0")  # WHO leaf, but the MoH lists subcodes
    assert not icd.is_valid("A92.5")  # WHO 2019 (Zika), not in the claim catalogue
    assert Icd10(moh_catalogue=None).is_valid("A92.5")  # WHO alone would accept it


def test_messages_carry_vietnamese_titles():
    from serving.cdss.checks import CheckEngine
    from serving.cdss.knowledge import KnowledgeBase
    from serving.cdss.models import DrugLine, Prescription

    engine = CheckEngine(KnowledgeBase.load(), Icd10())
    alerts = engine.check(Prescription(lines=[DrugLine(text="Ibuprofen 400mg")],
                                       diagnoses=["K25.9", "J18"])).alerts
    by_kind = {a.kind: a for a in alerts}
    assert "Viêm phổi" in by_kind["icd-specificity"].message_vi
    assert "K25.9 (Loét dạ dày" in by_kind["contraindication"].message_vi
