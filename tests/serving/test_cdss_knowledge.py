"""The prescription knowledge base: the MoH list, the drug dictionary, names and rules."""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import pytest

from serving.cdss import names
from serving.cdss.knowledge import DEFAULT_ROOT, KnowledgeBase, KnowledgeError

QD5948 = DEFAULT_ROOT.parent / "ddi-vn" / "qd5948-contraindicated-pairs.csv"
ROWS = list(csv.DictReader(QD5948.open(encoding="utf-8")))


@pytest.fixture(scope="module")
def kb() -> KnowledgeBase:
    return KnowledgeBase.load()


def _lines(kb: KnowledgeBase, texts: list[str]):
    matches = [kb.resolve(t) for t in texts]
    unknown = [t for t, m in zip(texts, matches, strict=True) if not m]
    assert not unknown, f"not recognised: {unknown}"
    return [d for m in matches for d in m.drugs]


def _ids(kb: KnowledgeBase, left, right) -> set[str]:
    return {
        i.id for x in left for y in right for i in kb.interactions(x, y)
        if i.severity == "contraindicated"
    }


def _side_keys(kb: KnowledgeBase, written: str) -> list[str]:
    keys = kb.qd5948_side(written)
    assert keys, f"{written!r} is not mapped in qd5948-names.csv"
    return list(keys)


def _members(kb: KnowledgeBase, written: str) -> list[list[str]]:
    """Per prescription variant, the INN keys one would prescribe for this side."""
    keys = _side_keys(kb, written)
    if len(keys) == 1 and keys[0].startswith("class:"):
        members = sorted(kb.class_members(keys[0]))
        assert members, f"class {keys[0]} has no members"
        return [[m] for m in members]
    return [keys]


def _brand_for(kb: KnowledgeBase, written: str) -> str | None:
    keys = set(kb.expand("/".join(_side_keys(kb, written))))
    for brand, ingredients in sorted(kb.brands.items()):
        if set(ingredients) == keys:  # the brand is exactly this side (Kaletra, Cordarone)
            return brand
    return None


def test_every_row_is_mapped(kb):
    assert len(ROWS) == 633
    assert kb.qd5948_unmapped == []
    ids = {i.id for i in kb.all_interactions if i.id.startswith("qd5948-")}
    assert ids == {f"qd5948-{int(r['STT']):03d}" for r in ROWS}


@pytest.mark.parametrize("row", ROWS, ids=[f"STT{r['STT']}" for r in ROWS])
def test_row_contraindicated_by_vietnamese_international_and_brand(kb, row):
    stt = f"qd5948-{int(row['STT']):03d}"
    one, two = row["HOAT_CHAT_1"], row["HOAT_CHAT_2"]
    # Vietnamese names as the list writes them (class rows: each member's Vietnamese name).
    for left in _members(kb, one):
        for right in _members(kb, two):
            left_vi = [one] if not _side_keys(kb, one)[0].startswith("class:") else [
                kb.drug(k).name_vi for k in left]
            right_vi = [two] if not _side_keys(kb, two)[0].startswith("class:") else [
                kb.drug(k).name_vi for k in right]
            assert stt in _ids(kb, _lines(kb, left_vi), _lines(kb, right_vi)), (left_vi, right_vi)
            # International names, one line per ingredient, in upper case with a strength.
            left_en = [f"{k.upper()} 10mg" for k in left]
            right_en = [f"{k.upper()} 10 mg" for k in right]
            assert stt in _ids(kb, _lines(kb, left_en), _lines(kb, right_en)), (left_en, right_en)
    # Through a brand name when the dictionary knows one for either side.
    for side, other in ((one, two), (two, one)):
        brand = _brand_for(kb, side)
        if brand:
            other_lines = [kb.drug(k).name_vi for k in _members(kb, other)[0]]
            found = _ids(kb, _lines(kb, [f"{brand} viên"]), _lines(kb, other_lines))
            assert stt in found, (brand, other_lines)
    item = next(i for i in kb.all_interactions if i.id == stt)
    assert item.severity == "contraindicated"
    assert item.management_vi and item.consequence_vi
    assert item.source.endswith(f"STT {int(row['STT'])}")


def test_brand_sides_are_exercised(kb):
    sides = {r[k] for r in ROWS for k in ("HOAT_CHAT_1", "HOAT_CHAT_2")}
    with_brand = [s for s in sides if _brand_for(kb, s)]
    assert len(with_brand) >= 100, len(with_brand)
    assert _brand_for(kb, "Amiodaron") == "Cordarone"


def test_class_row_expands_to_every_member(kb):
    members = kb.class_members("iv-calcium")
    assert {"calcium chloride", "calcium gluconate", "ringer lactate",
            "parenteral nutrition with calcium"} <= members
    ceftriaxone = kb.drug("ceftriaxone")
    for inn in members:
        ids = {i.id for i in kb.interactions(ceftriaxone, kb.drug(inn))}
        assert "qd5948-150" in ids, inn
    assert kb.interactions(ceftriaxone, kb.drug("sodium chloride")) == []


def test_curated_class_rows_expand(kb):
    warfarin = kb.drug("warfarin")
    for nsaid in kb.class_members("nsaid"):
        severities = {i.severity for i in kb.interactions(warfarin, kb.drug(nsaid))}
        assert severities & {"major", "contraindicated"}, nsaid
    # ANSM: antivitamin K + paracetamol at high doses is a precaution (moderate), no more
    assert {i.severity for i in kb.interactions(warfarin, kb.drug("paracetamol"))} <= {
        "moderate"}
    assert kb.interactions(warfarin, kb.drug("sodium chloride")) == []


def test_interactions_symmetric_and_not_self(kb):
    a, b = kb.drug("clarithromycin"), kb.drug("simvastatin")
    assert kb.interactions(a, b) == kb.interactions(b, a)
    assert kb.interactions(a, b)
    assert kb.interactions(a, a) == []


def test_combination_side_indexed_as_configured(kb):
    entresto = kb.resolve("Entresto 50mg")
    assert [d.inn for d in entresto.drugs] == ["sacubitril", "valsartan"]
    enalapril = kb.drug("enalapril")
    with_sacubitril = kb.interactions(kb.drug("sacubitril"), enalapril)
    assert any(i.id.startswith("qd5948-") for i in with_sacubitril)
    # valsartan alone with an ACE inhibitor is dual RAS blockade (major), not the MoH row.
    alone = kb.interactions(kb.drug("valsartan"), enalapril)
    assert alone and all(not i.id.startswith("qd5948-") for i in alone)


@pytest.mark.parametrize(
    ("line", "inns", "strength"),
    [
        ("Amiodaron 200mg viên", ["amiodarone"], 200.0),
        ("AMIODARONE", ["amiodarone"], None),
        ("Cordarone 200 mg", ["amiodarone"], 200.0),
        ("Acid tranexamic 250mg", ["tranexamic acid"], 250.0),
        ("tranexamic acid 500 mg", ["tranexamic acid"], 500.0),
        ("Axit tranexamic", ["tranexamic acid"], None),
        ("Paracetamol 500 mg viên nén", ["paracetamol"], 500.0),
        ("Acetaminophen 325mg", ["paracetamol"], 325.0),
        ("Augmentin 625mg", ["amoxicillin", "clavulanic acid"], 625.0),
        ("Amoxicilin + Acid clavulanic 500mg/125mg", ["amoxicillin", "clavulanic acid"], 500.0),
        ("Clorpromazin 25mg", ["chlorpromazine"], 25.0),
        ("chlorpromazine hydrochloride", ["chlorpromazine"], None),
        ("Hydroxycloroquin", ["hydroxychloroquine"], None),
        ("Diclofenac natri 50mg", ["diclofenac"], 50.0),
        ("Losartan kali 50 mg viên bao phim", ["losartan"], 50.0),
        ("Natri valproat 200mg", ["valproic acid"], 200.0),
        ("Kali clorid 600mg", ["potassium chloride"], 600.0),
        ("Xanh methylen 1%", ["methylthioninium chloride"], None),
        ("methylene blue", ["methylthioninium chloride"], None),
        ("Nitroglycerin 2.5mg", ["glyceryl trinitrate"], 2.5),
        ("Ciclosporin", ["ciclosporin"], None),
        ("cyclosporine", ["ciclosporin"], None),
        ("Fenytoin", ["phenytoin"], None),
        ("Metformin 1 g", ["metformin"], 1000.0),
        ("Levothyroxin 100mcg", ["levothyroxine sodium"], 0.1),
        ("Atazanavir/ritonavir 300/100mg", ["atazanavir", "ritonavir"], 100.0),
        ("Đ-test không phải thuốc", None, None),
        ("Thuốc lạ XYZ 10mg", None, None),
        ("", None, None),
    ],
)
def test_resolve(kb, line, inns, strength):
    match = kb.resolve(line)
    if inns is None:
        assert match is None
        return
    assert match is not None, line
    assert [d.inn for d in match.drugs] == inns
    assert match.text == line
    if strength is not None:
        assert match.strength_mg == pytest.approx(strength) or line.startswith("Atazanavir")
    else:
        assert match.strength_mg is None


def test_partial_line_reports_unmatched_words(kb):
    match = kb.resolve("Codein + Xylotin hydrat 10mg/100mg")
    assert [d.inn for d in match.drugs] == ["codeine"]
    assert match.unmatched == ("xylotin",)
    assert kb.resolve("Paracetamol 500mg viên nén").unmatched == ()


def test_folding_rules():
    assert names.fold("Amiodaron") == names.fold("amiodarone")
    assert names.fold("Acid tranexamic") == names.fold("tranexamic acid")
    assert names.fold("Clorpromazin") == names.fold("CHLORPROMAZINE")
    assert names.fold("Đ") == "d"
    assert names.fold("Amiodaron") != names.fold("Amlodipin")
    assert names.strip_diacritics("Dung dịch nuôi dưỡng") == "Dung dich nuoi duong"
    assert names.parse_strength_mg("Paracetamol 1,5 g") == 1500.0


def test_drug_entries(kb):
    amiodarone = kb.drug("amiodarone")
    assert amiodarone.name_vi == "Amiodaron"
    assert amiodarone.atc_codes[0] == "C01BD01"
    assert {"qt-prolonging", "antiarrhythmic"} <= amiodarone.classes
    assert kb.drug("paracetamol").max_daily_dose_mg == 4000
    assert kb.drug("paracetamol").dose_source
    with pytest.raises(KeyError):
        kb.drug("not-a-drug")
    drugs = kb.drugs
    assert len(drugs) >= 150
    atc = re.compile(r"^[A-Z]\d\d[A-Z]{2}\d\d$")
    for drug in drugs.values():
        assert all(atc.match(code) for code in drug.atc_codes), drug
        assert drug.source
        if drug.max_daily_dose_mg is not None:
            assert drug.dose_source, drug.inn


def test_every_data_row_has_source_and_review():
    for path in sorted(DEFAULT_ROOT.glob("*.csv")):
        rows = list(csv.DictReader(path.open(encoding="utf-8")))
        assert rows, path
        for row in rows:
            assert row.get("source"), (path.name, row)
            if "review" in row:
                assert row["review"] in {"pharmacist", "pending pharmacist review"}, (
                    path.name, row)


def test_rules(kb):
    assert any("K25-K28" in r.icd_ranges for r in kb.contraindications("ibuprofen"))
    assert any("J45-J46" in r.icd_ranges and r.severity == "contraindicated"
               for r in kb.contraindications("propranolol"))
    assert not any(r.severity == "contraindicated" and "J45-J46" in r.icd_ranges
                   for r in kb.contraindications("bisoprolol"))
    assert any("N18.4-N18.5" in r.icd_ranges for r in kb.contraindications("metformin"))
    assert kb.contraindications("paracetamol") == []
    assert any("E11-E14" in r.icd_ranges for r in kb.indications("metformin"))
    assert kb.indications("paracetamol") == []
    assert kb.pregnancy_risk("isotretinoin").trimesters == frozenset({1, 2, 3})
    assert kb.pregnancy_risk("perindopril").trimesters == frozenset({2, 3})
    assert kb.pregnancy_risk("paracetamol") is None
    for inn in kb.drugs:  # messages are shown as written: no unfilled placeholders
        for rule in [*kb.contraindications(inn), kb.pregnancy_risk(inn)]:
            if rule is not None:
                assert "{" not in rule.message_vi + rule.message_en, rule.id


def test_text_fixes_applied(kb):
    texts = " ".join(i.mechanism_vi + i.consequence_vi + i.management_vi
                     for i in kb.all_interactions)
    assert "ritona vir" not in texts and "elbasvi r" not in texts
    assert "\n" not in texts


def _copy_root(tmp_path: Path) -> Path:
    root = tmp_path / "knowledge"
    shutil.copytree(DEFAULT_ROOT, root)
    shutil.copytree(DEFAULT_ROOT.parent / "ddi-vn", tmp_path / "ddi-vn")
    shutil.copytree(DEFAULT_ROOT.parent / "ddi-ansm", tmp_path / "ddi-ansm")
    return root


def test_name_collision_is_refused(tmp_path):
    root = _copy_root(tmp_path)
    with (root / "brands.csv").open("a", encoding="utf-8") as handle:
        handle.write("Amiodarone,warfarin,test,pharmacist\n")
    with pytest.raises(KnowledgeError, match="already used"):
        KnowledgeBase.load(root)


def test_unknown_side_is_refused(tmp_path):
    root = _copy_root(tmp_path)
    with (root / "interactions.csv").open("a", encoding="utf-8") as handle:
        handle.write("cur-9999,warfarin,class:nope,major,a,b,c,,,,test,pharmacist\n")
    with pytest.raises(KnowledgeError, match="class:nope"):
        KnowledgeBase.load(root)


def test_missing_file_is_refused(tmp_path):
    root = _copy_root(tmp_path)
    (root / "drugs.csv").unlink()
    with pytest.raises(KnowledgeError, match="drugs.csv: missing"):
        KnowledgeBase.load(root)
    root = _copy_root(tmp_path / "again")
    (root.parent / "ddi-vn" / "qd5948-contraindicated-pairs.csv").unlink()
    with pytest.raises(KnowledgeError, match="qd5948-contraindicated-pairs.csv: missing"):
        KnowledgeBase.load(root)


def test_unmapped_row_is_reported(tmp_path):
    root = _copy_root(tmp_path)
    lines = (root / "qd5948-names.csv").read_text(encoding="utf-8").splitlines()
    kept = [line for line in lines if not line.startswith("Amiodaron,")]
    (root / "qd5948-names.csv").write_text("\n".join(kept) + "\n", encoding="utf-8")
    kb = KnowledgeBase.load(root)
    assert len(kb.qd5948_unmapped) == 18
