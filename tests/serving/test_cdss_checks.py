"""The check engine, one alert kind at a time, each with a case that must alert and one
that must not. Runs against a tiny knowledge base in the real data-file format
(`tests/support/fixtures/cdss/kb`), so the expected rows are known here."""

from __future__ import annotations

import pytest

from serving.cdss.dose import daily_dose_mg, parse_daily_amount, parse_strength
from serving.cdss.models import DrugLine, Prescription
from tests.support.cdss_support import fixture_engine


@pytest.fixture(scope="module")
def engine():
    return fixture_engine()


def rx(*drugs, codes=(), sex=None, age_days=None, pregnant=None, current=()):
    lines = [d if isinstance(d, DrugLine) else DrugLine(text=d) for d in drugs]
    lines += [DrugLine(text=c, current=True) for c in current]
    return Prescription(lines=lines, diagnoses=list(codes), sex=sex, age_days=age_days,
                        pregnant=pregnant)


def kinds(result, kind):
    return [a for a in result.alerts if a.kind == kind]


# ---------------------------------------------------------------------- drug-drug
def test_contraindicated_pair_by_vietnamese_and_brand_name(engine):
    result = engine.check(rx("Cordarone 200mg viên", "Levofloxacin 500mg"))
    [alert] = kinds(result, "drug-drug")
    assert alert.severity == "contraindicated"
    assert alert.drugs == ["amiodarone", "levofloxacin"]
    assert alert.lines == [0, 1]
    assert "xoắn đỉnh" in alert.message_vi and "Torsades" in alert.message_en
    assert alert.management_vi == "Chống chỉ định phối hợp"
    assert alert.source == "test fixture row 1"


def test_class_row_expands_to_members(engine):
    [alert] = kinds(engine.check(rx("Ibuprofen 400mg", "Ketorolac 10mg")), "drug-drug")
    assert alert.severity == "contraindicated" and alert.drugs == ["ibuprofen", "ketorolac"]


def test_no_interaction_no_alert(engine):
    result = engine.check(rx("Amiodaron", "Paracetamol 500mg"))
    assert kinds(result, "drug-drug") == []


def test_interaction_with_current_medication(engine):
    result = engine.check(rx("Levofloxacin", current=["Amiodaron"]))
    [alert] = kinds(result, "drug-drug")
    assert alert.severity == "contraindicated"


def test_two_current_medications_are_not_this_prescription(engine):
    result = engine.check(rx("Paracetamol", current=["Amiodaron", "Levofloxacin"]))
    assert kinds(result, "drug-drug") == []


def test_severities_come_from_the_knowledge(engine):
    result = engine.check(rx("Warfarin", "Ciprofloxacin", "Paracetamol"))
    by_pair = {tuple(a.drugs): a.severity for a in kinds(result, "drug-drug")}
    assert by_pair == {
        ("ciprofloxacin", "warfarin"): "major",
        ("paracetamol", "warfarin"): "moderate",
        ("ciprofloxacin", "paracetamol"): "minor",
    }
    assert result.alerts[0].severity == "major"  # worst first


# ---------------------------------------------------------------------- duplicates
def test_same_ingredient_twice_is_a_duplicate(engine):
    [alert] = kinds(engine.check(rx("Paracetamol 500mg", "Acetaminophen 325mg")), "duplicate")
    assert alert.severity == "major" and alert.drugs == ["paracetamol"]
    assert alert.lines == [0, 1]


def test_same_atc_level4_is_a_duplicate(engine):
    [alert] = kinds(engine.check(rx("Levofloxacin", "Ciprofloxacin")), "duplicate")
    assert alert.id.startswith("duplicate:J01MA:")
    assert alert.severity == "moderate"


def test_different_groups_are_not_duplicates(engine):
    assert kinds(engine.check(rx("Levofloxacin", "Amoxicilin", "Paracetamol")), "duplicate") == []


def test_ingredients_of_one_combination_are_not_duplicates_of_each_other(engine):
    assert kinds(engine.check(rx("Augmentin 625mg")), "duplicate") == []


# ---------------------------------------------------------------------- dose
@pytest.mark.parametrize(
    ("strength", "dosage", "expected"),
    [
        ("200mg", "1 viên/lần * 2 lần/ngày", 400),
        ("200 mg", "Ngày uống 2 lần, mỗi lần 1 viên", 400),
        ("0,5g", "Sáng 1 viên, tối 1 viên", 1000),
        ("500mg", "500mg x 3 lần/ngày", 1500),
        ("250mg/5ml", "10ml x 3 lần/ngày", 1500),
        ("200mg", "1/2 viên x 2 lần/ngày", 200),
        ("200mg", "2 lần/ngày, mỗi lần 2 viên", 800),
        (None, "1000mg/ngày", 1000),
    ],
)
def test_daily_dose_is_read_from_common_shapes(strength, dosage, expected):
    assert daily_dose_mg(strength, dosage) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("strength", "dosage"),
    [("5mg", "uống khi đau"), ("abc", "1 vien x 2 lan/ngay"), ("200mg", ""), ("", None),
     ("5mg/ml", "2 viên x 2 lần/ngày"), ("200mg", "1 viên x 0 lần/ngày"), ("1/0 mg", "1/0 viên")],
)
def test_unreadable_dose_gives_none(strength, dosage):
    assert daily_dose_mg(strength, dosage) is None


def test_parsers_never_raise_on_garbage():
    for text in ["", "x", "1/0", "½½½", "9" * 400, "lần/ngày " * 50, "sáng tối trưa", "1e309 mg"]:
        parse_strength(text)
        parse_daily_amount(text)
        daily_dose_mg(text, text)


def test_dose_above_maximum_alerts(engine):
    line = DrugLine(text="Amiodaron", strength="200mg", dosage="4 viên x 2 lần/ngày")
    [alert] = kinds(engine.check(rx(line)), "dose")
    assert alert.drugs == ["amiodarone"] and "1600" in alert.message_vi
    assert alert.source == "test fixture dose"


def test_dose_within_maximum_does_not_alert(engine):
    line = DrugLine(text="Amiodaron", strength="200mg", dosage="1 viên x 3 lần/ngày")
    assert kinds(engine.check(rx(line)), "dose") == []


def test_strength_from_the_drug_name_is_used(engine):
    line = DrugLine(text="Amiodaron 200mg", dosage="4 viên x 2 lần/ngày")
    assert len(kinds(engine.check(rx(line)), "dose")) == 1


def test_unparseable_dose_never_alerts_nor_crashes(engine):
    line = DrugLine(text="Amiodaron", strength="theo chỉ định", dosage="theo y lệnh", quantity=9e9)
    result = engine.check(rx(line))
    assert kinds(result, "dose") == [] and result.recognised == ["amiodarone"]


def test_structured_daily_dose_from_fhir_is_used(engine):
    line = DrugLine(text="Ketorolac", daily_dose_mg=120.0)
    assert len(kinds(engine.check(rx(line)), "dose")) == 1


# ---------------------------------------------------------------------- ICD-10
def test_invalid_icd_code(engine):
    result = engine.check(rx("Paracetamol", codes=["J18.9", "XYZ", "J99.9"]))
    assert sorted(a.icd[0] for a in kinds(result, "icd-invalid")) == ["J99.9", "XYZ"]


def test_category_with_subcodes_is_not_specific(engine):
    result = engine.check(rx("Paracetamol", codes=["J18", "I10"]))
    assert [a.icd for a in kinds(result, "icd-specificity")] == [["J18"]]


def test_lowercase_and_dotless_codes_are_normalised(engine):
    result = engine.check(rx("Paracetamol", codes=["j189"]))
    assert kinds(result, "icd-invalid") == [] and kinds(result, "icd-specificity") == []


def test_sex_edit(engine):
    male = engine.check(rx("Paracetamol", codes=["O80.0"], sex="male"))
    [alert] = kinds(male, "sex-age")
    assert alert.icd == ["O80.0"] and "nữ" in alert.message_vi
    assert kinds(engine.check(rx("Paracetamol", codes=["O80.0"], sex="female")), "sex-age") == []
    assert kinds(engine.check(rx("Paracetamol", codes=["N40"], sex="female")), "sex-age")


def test_age_edit(engine):
    assert kinds(engine.check(rx("Paracetamol", codes=["P07.3"], age_days=40 * 365)), "sex-age")
    assert kinds(engine.check(rx("Paracetamol", codes=["P07.3"], age_days=5)), "sex-age") == []


# ---------------------------------------------------------------------- protocol rules
def test_drug_without_matching_indication(engine):
    [alert] = kinds(engine.check(rx("Levofloxacin", codes=["I10"])), "indication")
    assert alert.drugs == ["levofloxacin"] and "J00-J22" in alert.message_en


def test_drug_with_matching_indication(engine):
    assert kinds(engine.check(rx("Levofloxacin", codes=["I10", "J18.9"])), "indication") == []


def test_no_diagnosis_no_indication_alert(engine):
    assert kinds(engine.check(rx("Levofloxacin")), "indication") == []


def test_drug_disease_contraindication(engine):
    [alert] = kinds(engine.check(rx("Ibuprofen 400mg", codes=["K25.0"])), "contraindication")
    assert alert.severity == "contraindicated" and alert.icd == ["K25.0"]
    [asthma] = kinds(engine.check(rx("Propranolol", codes=["J45.9"])), "contraindication")
    assert asthma.drugs == ["propranolol"]


def test_no_disease_contraindication(engine):
    assert kinds(engine.check(rx("Ibuprofen", codes=["J18.9"])), "contraindication") == []
    assert kinds(engine.check(rx("Paracetamol", codes=["K25.0"])), "contraindication") == []


def test_pregnancy_explicit_and_from_icd(engine):
    [alert] = kinds(engine.check(rx("Isotretinoin", pregnant=True)), "pregnancy")
    assert alert.severity == "contraindicated"
    assert kinds(engine.check(rx("Isotretinoin", codes=["Z34.9"], sex="female")), "pregnancy")


def test_no_pregnancy_no_alert(engine):
    assert kinds(engine.check(rx("Isotretinoin", sex="female")), "pregnancy") == []
    assert kinds(engine.check(rx("Isotretinoin", pregnant=False, codes=["Z34.9"])),
                 "pregnancy") == []
    assert kinds(engine.check(rx("Paracetamol", pregnant=True)), "pregnancy") == []


# ---------------------------------------------------------------------- unrecognised
def test_unrecognised_drug_is_reported_never_silent(engine):
    result = engine.check(rx("Thuốc bắc gia truyền", "Amiodaron"))
    [alert] = kinds(result, "unrecognised-drug")
    assert alert.lines == [0] and "Thuốc bắc gia truyền" in alert.message_vi
    assert result.recognised == ["", "amiodarone"]


def test_recognised_drugs_give_no_unrecognised_alert(engine):
    assert kinds(engine.check(rx("Amiodaron", "AUGMENTIN 625MG")), "unrecognised-drug") == []


def test_clean_prescription_has_no_alerts(engine):
    assert engine.check(rx("Paracetamol 500mg", "Amoxicilin 500mg", codes=["J02.9"])).alerts == []


# ---------------------------------------------------------------------- learned hook
class _Predicted:
    """Stands in for serving.cdss.learned.LearnedChecks at the engine's boundary."""

    def __init__(self, fail=False):
        self.fail = fail
        self.calls = []

    def predicted_interactions(self, drugs, lines, current):
        self.calls.append(tuple(d.inn for d in drugs))
        if self.fail:
            raise RuntimeError("onnxruntime session died")
        if {d.inn for d in drugs} != {"amiodarone", "paracetamol"}:
            return []
        return [_Alert(id="ddi-predicted:amiodarone+paracetamol", kind="drug-drug-predicted",
                       severity="major", drugs=[drugs[0].inn, drugs[1].inn], lines=[0, 1])]

    def unusual_drugs(self, drugs, codes, lines):
        return []


class _Alert:
    def __init__(self, **fields):
        self.fields = {"icd": [], "management_vi": None, "management_en": None,
                       "message_vi": "dự đoán", "message_en": "predicted",
                       "source": "test model", **fields}

    def as_dict(self):
        return dict(self.fields)


def test_learned_alerts_are_added_to_the_kb_alerts():
    from serving.cdss.checks import CheckEngine
    from serving.cdss.icd import Icd10
    from tests.support.cdss_support import FIXTURE_KB, fixture_kb

    learned = _Predicted()
    eng = CheckEngine(fixture_kb(), Icd10(edits=FIXTURE_KB / "icd-edits.csv"), learned=learned)
    for _ in range(2):  # the second time from the memo: no new model calls
        result = eng.check(rx("Paracetamol", "Amiodaron", current=["Warfarin"]))
        [predicted] = [a for a in result.alerts if a.kind == "drug-drug-predicted"]
        assert predicted.lines == [0, 1] and predicted.severity == "major"
    # pairs the KB knows (paracetamol + warfarin) and repeated pairs are not scored
    assert sorted(learned.calls) == [("amiodarone", "paracetamol"), ("amiodarone", "warfarin")]


def test_a_failing_model_never_breaks_the_kb_checks():
    from serving.cdss.checks import CheckEngine
    from serving.cdss.icd import Icd10
    from tests.support.cdss_support import FIXTURE_KB, fixture_kb

    eng = CheckEngine(fixture_kb(), Icd10(edits=FIXTURE_KB / "icd-edits.csv"),
                      learned=_Predicted(fail=True))
    result = eng.check(rx("Cordarone", "Levofloxacin"))
    assert [a.kind for a in result.alerts] == ["drug-drug"]
