"""The national-scale knowledge: every ANSM row alerts by its French, Vietnamese and
international spellings; class rows expand through ANSM's class table; the strictest
severity wins across references and every reference is cited; duplicate therapy spares the
guideline combinations; the classics an independent check found missing now alert."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from functools import lru_cache

import pytest

from serving.cdss import names
from serving.cdss.checks import CheckEngine, shown
from serving.cdss.icd import Icd10
from serving.cdss.knowledge import ANSM_SEVERITY, DEFAULT_ROOT
from serving.cdss.models import SEVERITY_RANK, DrugLine, Prescription
from tests.support.cdss_support import real_kb

ANSM_ROWS = list(csv.DictReader(
    (DEFAULT_ROOT.parent / "ddi-ansm" / "ansm_thesaurus_ddi_2020_10.csv").open(encoding="utf-8")))
QD5948_NAMES = list(csv.DictReader((DEFAULT_ROOT / "qd5948-names.csv").open(encoding="utf-8")))


@lru_cache(maxsize=1)
def engine() -> CheckEngine:
    return CheckEngine(real_kb(), Icd10())


def rx(*lines: str) -> Prescription:
    return Prescription(lines=[DrugLine(text=t) for t in lines])


def ddi(result, a: str, b: str):
    return [x for x in result.alerts if x.kind == "drug-drug" and set(x.drugs) == {a, b}]


def _row_items(kb, row, a: str, b: str):
    """The interactions this row (or its twin, listed under the other substance) put on
    the pair."""
    main, plus = row["main_drug"], row["plus_drug"]
    ends = (f": {main} + {plus}", f": {plus} + {main}")
    return [i for i in kb.interactions(kb.drug(a), kb.drug(b))
            if i.id.startswith("ansm-") and i.source.endswith(ends)]


def _pick(kb, row) -> tuple[str, str] | None:
    """One ingredient for each side of an ANSM row (distinct, the pair carrying the row)."""
    one, two = kb.ansm_side(row["main_drug"]), kb.ansm_side(row["plus_drug"])
    for a in one:
        for b in two:
            if a != b and _row_items(kb, row, a, b):
                return a, b
    return None


def _expected(kb, row, a: str, b: str) -> str:
    """The alert's severity: the row's level for this pair (one level, or the one its
    condition gives the pair), or stricter when another reference is; capped only for a
    guideline combination."""
    levels = [ANSM_SEVERITY[names.plain(x)] for x in row["severity_levels"].split(" | ")]
    mine = {i.severity for i in _row_items(kb, row, a, b)}
    assert mine and mine <= set(levels), (mine, levels)
    if len(levels) == 1:
        assert mine == {levels[0]}
    found = [i.severity for i in kb.interactions(kb.drug(a), kb.drug(b))]
    worst = max(found, key=SEVERITY_RANK.get)
    intended = kb.intended(kb.drug(a), kb.drug(b))
    if intended and intended.max_interaction_severity:
        worst = min(worst, intended.max_interaction_severity, key=SEVERITY_RANK.get)
    return worst


def test_multi_level_rows_apply_each_level_to_its_condition():
    kb = real_kb()
    d = kb.drug
    # "sedatives + other sedatives": minor for all, contraindicated only with sodium oxybate
    assert {i.severity for i in kb.interactions(d("metoclopramide"), d("diazepam"))} == {
        "minor"}
    # fibrates + statins: "at least not recommended", contraindicated gemfibrozil+simvastatin
    fenofibrate = {i.severity for i in kb.interactions(d("atorvastatin"), d("fenofibrate"))}
    assert fenofibrate == {"major"}
    gem = {i.severity for i in kb.interactions(d("simvastatin"), d("gemfibrozil"))
           if i.id.startswith("ansm-")}
    assert gem == {"contraindicated"}
    # bictegravir + inducers: contraindicated with rifampicin, not recommended otherwise
    assert "contraindicated" in {i.severity for i in
                                 kb.interactions(d("bictegravir"), d("rifampicin"))}
    assert {i.severity for i in kb.interactions(d("bictegravir"), d("carbamazepine"))} == {
        "major"}


NOT_DRUGS = {"PAMPLEMOUSSE (JUS ET FRUIT)", "PRÉSERVATIFS EN LATEX",
             "MÉDICAMENTS ADMINISTRÉS PAR VOIE ORALE", "MÉDICAMENTS UTILISÉS PAR VOIE VAGINALE"}


def test_ansm_rows_are_all_mapped():
    kb = real_kb()
    unmapped = [(r["main_drug"], r["plus_drug"]) for r in ANSM_ROWS
                if not (kb.ansm_side(r["main_drug"]) and kb.ansm_side(r["plus_drug"]))]
    assert all({a, b} & NOT_DRUGS for a, b in unmapped), unmapped
    assert len(unmapped) == len(ANSM_ROWS) - len(PRESCRIBABLE)


# Rows whose sides are drugs (not grapefruit, latex or a route): something to prescribe.
PRESCRIBABLE = [n for n, r in enumerate(ANSM_ROWS) if not {r["main_drug"], r["plus_drug"]} &
                NOT_DRUGS]
# Oral iron + injectable iron salts: one ingredient in the dictionary, two routes in ANSM.
SAME_INGREDIENT = {("FER", "SELS DE FER PAR VOIE INJECTABLE")}


@pytest.mark.parametrize("number", PRESCRIBABLE, ids=lambda n: f"ansm-{n + 1:04d}")
def test_every_ansm_row_alerts_by_each_spelling(number):
    kb = real_kb()
    row = ANSM_ROWS[number]
    if (row["main_drug"], row["plus_drug"]) in SAME_INGREDIENT:
        assert kb.ansm_side(row["main_drug"]) == kb.ansm_side(row["plus_drug"]) == ("iron",)
        return
    pair = _pick(kb, row)
    assert pair is not None, (row["main_drug"], row["plus_drug"])
    a, b = pair
    want = _expected(kb, row, a, b)
    da, db = kb.drug(a), kb.drug(b)
    for spelling in ("french", "vietnamese", "international"):
        if spelling == "french":
            lines = (da.name_fr or a, db.name_fr or b)
        elif spelling == "vietnamese":
            lines = (f"{da.name_vi} viên", f"{db.name_vi} 10mg")
        else:
            lines = (a.upper(), f"{b} 5 mg")
        result = engine().check(rx(*lines))
        found = ddi(result, a, b)
        assert [x.severity for x in found] == [want], (spelling, lines, row["max_severity"])


def test_every_ansm_side_has_a_french_spelling():
    kb = real_kb()
    for row in ANSM_ROWS:
        for side in (row["main_drug"], row["plus_drug"]):
            for key in kb.ansm_side(side):
                drug = kb.drug(key)
                assert drug.name_fr or kb.resolve(key), key


def test_class_rows_expand_through_the_ansm_class_table():
    kb = real_kb()
    strong = set(kb.ansm_side("INHIBITEURS PUISSANTS DU CYP3A4"))
    assert {"clarithromycin", "itraconazole", "ketoconazole", "ritonavir"} <= strong
    assert "amoxicillin" not in strong
    nsaids = set(kb.ansm_side("ANTI-INFLAMMATOIRES NON STÉROÏDIENS"))
    assert {"ibuprofen", "meloxicam", "diclofenac"} <= nsaids
    # the class row reaches a member the row does not name
    simva = kb.drug("simvastatin")
    sources = {i.source for i in kb.interactions(simva, kb.drug("itraconazole"))}
    assert any("INHIBITEURS PUISSANTS DU CYP3A4" in s for s in sources), sources


def test_stricter_severity_wins_and_every_source_is_cited():
    kb = real_kb()
    merged = 0
    for item in kb.all_interactions:
        if not item.id.startswith("qd5948-"):
            continue
        for a in sorted(kb.expand(item.a))[:2]:
            for b in sorted(kb.expand(item.b))[:2]:
                found = kb.interactions(kb.drug(a), kb.drug(b)) if a != b else []
                if item not in found or not any(i.id.startswith("ansm-") for i in found):
                    continue
                if kb.intended(kb.drug(a), kb.drug(b)):
                    continue
                [alert] = ddi(engine().check(rx(a, b)), a, b)
                assert alert.severity == max((i.severity for i in found), key=SEVERITY_RANK.get)
                assert "QĐ 5948" in alert.source and "ANSM" in alert.source, alert.source
                merged += 1
    assert merged >= 50, merged


def test_ansm_stricter_than_a_curated_row():
    kb = real_kb()
    # curated moderate (label), ANSM contraindicated: the alert is contraindicated
    found = kb.interactions(kb.drug("atorvastatin"), kb.drug("ketoconazole"))
    assert {i.severity for i in found} >= {"contraindicated"}
    [alert] = ddi(engine().check(rx("Atorvastatin 20mg", "Ketoconazol 200mg")),
                  "atorvastatin", "ketoconazole")
    assert alert.severity == "contraindicated"


def test_ansm_text_is_translated_or_says_it_is_french():
    kb = real_kb()
    for item in kb.all_interactions:
        if item.id.startswith("ansm-"):
            assert item.original, item.id
            assert item.consequence_vi.endswith("[pending pharmacist review]"), item.id
            assert item.consequence_en.endswith("[pending pharmacist review]"), item.id
            assert item.source.startswith("ANSM"), item.id


MISSED_CLASSICS = [
    ("Amiodaron 200mg", "Simvastatin 20mg", "amiodarone", "simvastatin"),
    ("Carbamazepin 200mg", "Warfarin 5mg", "carbamazepine", "warfarin"),
    ("Acenocoumarol 4mg", "Amiodaron 200mg", "acenocoumarol", "amiodarone"),
    ("Clarithromycin 500mg", "Digoxin 0,25mg", "clarithromycin", "digoxin"),
    ("Atorvastatin 20mg", "Ketoconazol 200mg", "atorvastatin", "ketoconazole"),
    ("Atazanavir 300mg", "Omeprazol 20mg", "atazanavir", "omeprazole"),
    ("Meloxicam 7,5mg", "Losartan kali 50mg", "meloxicam", "losartan"),
]


@pytest.mark.parametrize(("one", "two", "a", "b"), MISSED_CLASSICS, ids=lambda v: str(v)[:14])
def test_missed_classics_alert(one, two, a, b):
    result = engine().check(rx(one, two))
    [alert] = ddi(result, a, b)
    assert SEVERITY_RANK[alert.severity] >= SEVERITY_RANK["moderate"]
    assert alert in shown(result.alerts, "moderate")  # visible by default


def duplicates(result):
    return [a for a in result.alerts if a.kind == "duplicate"]


@pytest.mark.parametrize("lines", [
    ("Aspirin 81mg", "Clopidogrel 75mg"),  # DAPT
    ("Aspirin 81mg", "Ticagrelor 90mg"),
    ("Omeprazol 20mg", "Meloxicam 7,5mg"),  # PPI + NSAID
    ("Pantoprazol 40mg", "Clopidogrel 75mg"),  # PPI + antiplatelet
    ("Losartan kali 50mg", "Hydroclorothiazid 12,5mg"),  # ARB + thiazide
    ("Perindopril 5mg", "Indapamid 1,5mg"),  # ACEI + thiazide-like
    ("Amlodipin 5mg", "Telmisartan 40mg"),  # ARB + CCB
    ("Aspirin 81mg", "Ibuprofen 400mg"),  # an interaction, not a duplicate
])
def test_guideline_combinations_are_not_duplicates(lines):
    assert duplicates(engine().check(rx(*lines))) == []


def test_dapt_is_a_moderate_precaution_not_a_major_alert():
    [alert] = ddi(engine().check(rx("Aspirin 81mg", "Clopidogrel 75mg")),
                  "acetylsalicylic acid", "clopidogrel")
    assert alert.severity == "moderate"


@pytest.mark.parametrize(("lines", "group"), [
    (("Ibuprofen 400mg", "Diclofenac 50mg"), "M01A"),
    (("Meloxicam 7,5mg", "Celecoxib 200mg"), "M01A"),
    (("Losartan kali 50mg", "Valsartan 80mg"), "C09"),
    (("Enalapril 5mg", "Losartan 50mg"), "C09"),
    (("Diazepam 5mg", "Alprazolam 0,5mg"), "N05BA"),
    (("Omeprazol 20mg", "Esomeprazol 40mg"), "A02BC"),
])
def test_hazardous_same_class_is_a_duplicate(lines, group):
    [alert] = duplicates(engine().check(rx(*lines)))
    assert alert.id.startswith(f"duplicate:{group}:")
    assert alert.severity == "moderate" and alert.source


def test_other_same_atc_group_is_not_a_duplicate():
    # two drugs of one ATC level-4 group with no known duplication hazard
    assert duplicates(engine().check(rx("Paracetamol 500mg", "Metamizol 500mg"))) == []


def test_triple_whammy():
    result = engine().check(rx("Meloxicam 7,5mg", "Losartan kali 50mg",
                               "Hydroclorothiazid 12,5mg"))
    [triple] = [a for a in result.alerts if a.id.startswith("ddi:triple-whammy:")]
    assert triple.severity == "major" and triple.lines == [0, 1, 2]
    assert "BMJ 2013" in triple.source
    assert not [a for a in engine().check(rx("Losartan kali 50mg",
                                             "Hydroclorothiazid 12,5mg")).alerts
                if a.id.startswith("ddi:triple-whammy:")]


def test_minor_is_hidden_by_channel_threshold():
    eng = CheckEngine(real_kb(), Icd10(), thresholds={"cds-hooks": "major"})
    lines = rx("Aspirin 81mg", "Clopidogrel 75mg", "Omeprazol 20mg", "Meloxicam 7,5mg")
    every = eng.check(lines).alerts
    native = eng.check(lines, channel="native").alerts
    hooks = eng.check(lines, channel="cds-hooks").alerts
    assert any(a.severity == "minor" for a in every)
    assert native == [a for a in every if a.severity != "minor"]
    assert hooks == [a for a in every if a.severity in ("major", "contraindicated")]


SAMPLES = json.loads((DEFAULT_ROOT.parents[1] / "tests" / "support" / "fixtures" / "cdss" /
                      "prescriptions-outpatient.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("sample", SAMPLES["prescriptions"], ids=lambda p: p["name"][:30])
def test_sample_prescriptions(sample):
    """Every real interaction alerted; nothing unrecognised; no duplicate-therapy or
    indication alert for the guideline combinations."""
    result = engine().check(Prescription(
        lines=[DrugLine(text=t) for t in sample["lines"]], diagnoses=sample["diagnoses"],
        sex=sample["sex"], age_days=sample["age_years"] * 365), channel="native")
    kinds = [a.kind for a in result.alerts]
    assert "unrecognised-drug" not in kinds and all(result.recognised)
    drug_sets = [set(a.drugs) for a in result.alerts if a.kind == "drug-drug"]
    for expected in sample["expected"]:
        assert any(set(expected) <= found for found in drug_sets), expected
    assert len(drug_sets) <= len(sample["expected"])  # nothing beyond the references
    assert "duplicate" not in kinds and "indication" not in kinds, kinds


# ---------------------------------------------------------------------- dictionary
def test_dictionary_size_and_rows():
    kb = real_kb()
    assert len(kb.drugs) >= 1500
    rows = list(csv.DictReader((DEFAULT_ROOT / "dictionary.csv").open(encoding="utf-8")))
    assert len(rows) == len(kb.drugs)
    for row in rows:
        assert row["source"] and row["review"] == "pending pharmacist review", row["inn"]


def test_every_qd5948_name_is_recognised():
    kb = real_kb()
    for row in QD5948_NAMES:
        if row["ingredients"].startswith("class:"):
            continue
        assert kb.resolve_name(row["name_as_written"]), row["name_as_written"]


def test_vietnamese_spelling_follows_the_moh_lists():
    """The generated spelling folds onto the MoH name for every single-ingredient row of QĐ
    5948 it is not a synonym of, and equals it letter for letter in most."""
    exact = total = 0
    synonyms = {"acetylsalicylic acid", "butylscopolamine", "glyceryl trinitrate",
                "norethisterone", "methylthioninium chloride", "peginterferon alfa",
                "amisulpride", "oxcarbazepine", "nicorandil", "indometacin",
                "calcium gluconate",  # the list writes "Calcigluconat"
                "ioxaglic acid", "ioxitalamic acid"}  # written as their salts
    for row in QD5948_NAMES:
        keys = row["ingredients"].split("|")
        if len(keys) != 1 or keys[0].startswith("class:") or keys[0] in synonyms:
            continue
        generated = names.vietnamese_spelling(keys[0])
        written = row["name_as_written"]
        total += 1
        exact += generated.lower() == written.lower()
        g, w = names.fold(generated), names.fold(written)
        # equal, or one adds a salt/ester word ("Estradiol valerat", "Clidinium bromid")
        assert g == w or g.startswith(w + " ") or w.startswith(g + " "), (keys[0], written)
    assert exact / total >= 0.9, (exact, total)


@pytest.mark.parametrize(("english", "moh"), [
    ("amiodarone", "Amiodaron"), ("chlorpromazine", "Clorpromazin"),
    ("amoxicillin", "Amoxicilin"), ("tranexamic acid", "Acid tranexamic"),
    ("potassium chloride", "Kali clorid"), ("furosemide", "Furosemid"),
    ("glucose", "Glucose"), ("methylprednisolone", "Methylprednisolon"),
])
def test_moh_transliteration_rules(english, moh):
    assert names.vietnamese_spelling(english) == moh


@pytest.mark.parametrize(("text", "keys"), [
    ("Amlodipin (dưới dạng Amlodipin besilat) 5mg", ["amlodipine"]),
    ("Losartan kali 50mg", ["losartan"]),
    ("Methylprednisolon natri succinat 40mg", ["methylprednisolone"]),
    ("Amoxicilin + Acid clavulanic 500mg/125mg", ["amoxicillin", "clavulanic acid"]),
    ("CLARITHROMYCINE", ["clarithromycin"]),
    ("kétoconazole", ["ketoconazole"]),
    ("Xylotin 10mg", []),
    ("Kẽm gluconat 70mg", ["zinc"]),  # kẽm is zinc; kem (no tilde) is a cream
    ("Kem bôi Hydrocortison 1%", ["hydrocortisone"]),
    ("Vitamin B1 + B6 + B12", ["thiamine", "pyridoxine", "cyanocobalamin"]),
    ("Calci carbonat + Vitamin D3", ["calcium carbonate", "colecalciferol"]),
    ("Clopidogrel bisulfat 75mg", ["clopidogrel"]),
])
def test_resolve_name(text, keys):
    assert real_kb().resolve_name(text) == keys


def test_atc_lookups():
    kb = real_kb()
    assert kb.ingredient_by_atc("C09CA01") == ["losartan"]
    assert kb.atc_codes("losartan") == ("C09CA01",)
    statins = kb.ingredient_by_atc("C10AA")
    assert {"atorvastatin", "simvastatin", "rosuvastatin"} <= set(statins)
    assert kb.ingredient_by_atc("c10aa05") == ["atorvastatin"]
    assert kb.ingredient_by_atc("Z99ZZ99") == [] and kb.atc_codes("nope") == ()


def test_build_reproduces_the_shipped_dictionary(tmp_path):
    """The compiled files are exactly what build.py makes from the shipped sources."""
    root = DEFAULT_ROOT.parents[1]
    subprocess.run([sys.executable, str(DEFAULT_ROOT / "build.py"), "--out", str(tmp_path)],
                   check=True, cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
                   capture_output=True)
    for name in ("dictionary.csv", "ansm-names.csv", "pharmacology.csv"):
        assert (tmp_path / name).read_bytes() == (DEFAULT_ROOT / name).read_bytes(), name


def test_intended_combination_caps_severity_and_cites_its_guideline(tmp_path):
    import shutil

    from serving.cdss.knowledge import KnowledgeBase

    root = tmp_path / "knowledge"
    shutil.copytree(DEFAULT_ROOT, root)
    for name in ("ddi-vn", "ddi-ansm"):
        shutil.copytree(DEFAULT_ROOT.parent / name, tmp_path / name)
    with (root / "intended-combinations.csv").open("a", encoding="utf-8") as handle:
        handle.write("int-999,amiodarone,simvastatin,minor,thử nghiệm,test cap,"
                     "Test guideline 2026,pending pharmacist review\n")
    eng = CheckEngine(KnowledgeBase.load(root), Icd10())
    [alert] = ddi(eng.check(rx("Amiodaron 200mg", "Simvastatin 20mg")), "amiodarone",
                  "simvastatin")
    assert alert.severity == "minor"
    assert "Test guideline 2026" in alert.source and "test cap" in alert.message_en
