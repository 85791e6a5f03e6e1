"""Synthetic XML 130 (QĐ 130/QĐ-BYT) exports: realistic outpatient visits, no real patients.

Each file is a claim envelope ``GIAMDINHHS`` holding many ``HOSO`` records; each record has
an XML1 table (``TONG_HOP``: sex, birth date, main and secondary ICD-10 codes) and an XML2
table (``CHI_TIET_THUOC`` drug lines: name, strength, dosage, quantity), base64-encoded in
``FILEHOSO/NOIDUNGFILE`` exactly as ``serving.cdss.xml130.parse_xml130`` reads them. The
facility code ``MACSKCB`` is ``SYNTHETIC`` so a model card can tell which data it learned.

Visits mix common Vietnamese outpatient conditions (hypertension, type 2 diabetes,
dyslipidaemia, respiratory infections, gastritis, osteoarthritis ...) with comorbidities,
typical regimens and doses; a small share of lines are random dictionary drugs (the
"unusual" prescriptions a protocol model should notice).

    python -m training.xml130_synth --out exports --records 6000 --per-file 500
"""

from __future__ import annotations

import argparse
import base64
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

SYNTHETIC_FACILITY = "SYNTHETIC"


@dataclass(frozen=True)
class Line:
    name: str  # TEN_THUOC as a Vietnamese HIS writes it
    strength: str  # HAM_LUONG
    dosage: str  # LIEU_DUNG
    per_day: float  # units a day (for SO_LUONG)


@dataclass(frozen=True)
class Condition:
    name: str
    codes: tuple[tuple[str, float], ...]  # ICD-10 with weights
    weight: float  # prevalence weight among visits
    core: tuple[tuple[Line, ...], ...]  # choose one from each tuple
    optional: tuple[tuple[Line, float], ...] = ()  # each added with its probability
    sex: str | None = None  # "male" / "female" when only one applies
    min_age: int = 18
    chronic: bool = False  # chronic conditions are the usual comorbidities


def L(name: str, strength: str, dosage: str, per_day: float) -> Line:  # noqa: N802
    return Line(name, strength, dosage, per_day)


BID = "1 viên/lần * 2 lần/ngày"
TID = "1 viên/lần * 3 lần/ngày"
QD = "1 viên/ngày"
QN = "1 viên buổi tối"
PRN = "1 viên khi sốt/đau, cách 4-6 giờ"

PARA = L("Paracetamol 500mg", "500mg", PRN, 3)
CONDITIONS: tuple[Condition, ...] = (
    Condition(
        "hypertension",
        (("I10", 1.0),),
        14,
        (
            (
                L("Amlodipin 5mg", "5mg", QD, 1),
                L("Nifedipin 20mg", "20mg", BID, 2),
                L("Losartan 50mg", "50mg", QD, 1),
                L("Telmisartan 40mg", "40mg", QD, 1),
                L("Enalapril 5mg", "5mg", BID, 2),
                L("Perindopril 5mg", "5mg", QD, 1),
            ),
        ),
        (
            (L("Hydroclorothiazid 25mg", "25mg", QD, 1), 0.25),
            (L("Bisoprolol 5mg", "5mg", QD, 1), 0.3),
            (L("Indapamid 1.5mg", "1.5mg", QD, 1), 0.1),
        ),
        min_age=35,
        chronic=True,
    ),
    Condition(
        "type 2 diabetes",
        (("E11.9", 0.7), ("E11.6", 0.1), ("E11.2", 0.2)),
        9,
        ((L("Metformin 850mg", "850mg", BID, 2), L("Metformin 500mg", "500mg", TID, 3)),),
        (
            (L("Gliclazid 30mg", "30mg", QD, 1), 0.35),
            (L("Glimepirid 2mg", "2mg", QD, 1), 0.15),
            (L("Sitagliptin 100mg", "100mg", QD, 1), 0.15),
            (L("Empagliflozin 10mg", "10mg", QD, 1), 0.1),
            (L("Insulin human 100IU/ml", "100IU/ml", "10 IU tiêm dưới da buổi sáng", 1), 0.08),
        ),
        min_age=35,
        chronic=True,
    ),
    Condition(
        "dyslipidaemia",
        (("E78.5", 0.6), ("E78.0", 0.2), ("E78.2", 0.2)),
        8,
        (
            (
                L("Atorvastatin 20mg", "20mg", QN, 1),
                L("Rosuvastatin 10mg", "10mg", QN, 1),
                L("Simvastatin 20mg", "20mg", QN, 1),
                L("Fenofibrat 200mg", "200mg", QD, 1),
            ),
        ),
        ((L("Ezetimib 10mg", "10mg", QD, 1), 0.05),),
        min_age=30,
        chronic=True,
    ),
    Condition(
        "chronic ischaemic heart disease",
        (("I25.1", 0.7), ("I20.9", 0.3)),
        4,
        (
            (L("Aspirin 81mg", "81mg", QD, 1), L("Clopidogrel 75mg", "75mg", QD, 1)),
            (L("Atorvastatin 40mg", "40mg", QN, 1), L("Rosuvastatin 20mg", "20mg", QN, 1)),
        ),
        (
            (L("Isosorbid mononitrat 60mg", "60mg", QD, 1), 0.3),
            (L("Trimetazidin 35mg", "35mg", BID, 2), 0.4),
            (L("Bisoprolol 2.5mg", "2.5mg", QD, 1), 0.5),
        ),
        min_age=45,
        chronic=True,
    ),
    Condition(
        "atrial fibrillation",
        (("I48.0", 0.5), ("I48.1", 0.5)),
        1.5,
        (
            (
                L("Rivaroxaban 20mg", "20mg", QD, 1),
                L("Apixaban 5mg", "5mg", BID, 2),
                L("Acenocoumarol 4mg", "4mg", "1/2 viên/ngày", 0.5),
            ),
            (L("Bisoprolol 5mg", "5mg", QD, 1), L("Digoxin 0.25mg", "0.25mg", QD, 1)),
        ),
        min_age=50,
        chronic=True,
    ),
    Condition(
        "heart failure",
        (("I50.0", 0.7), ("I50.9", 0.3)),
        1.5,
        (
            (L("Furosemid 40mg", "40mg", QD, 1),),
            (L("Enalapril 5mg", "5mg", BID, 2), L("Losartan 50mg", "50mg", QD, 1)),
        ),
        (
            (L("Spironolacton 25mg", "25mg", QD, 1), 0.6),
            (L("Bisoprolol 2.5mg", "2.5mg", QD, 1), 0.6),
        ),
        min_age=50,
        chronic=True,
    ),
    Condition(
        "pneumonia",
        (("J18.9", 0.8), ("J18.0", 0.2)),
        3,
        (
            (
                L("Amoxicilin + Acid clavulanic 875mg/125mg", "875mg/125mg", BID, 2),
                L("Ceftriaxon 1g", "1g", "1 lọ tiêm tĩnh mạch/ngày", 1),
                L("Levofloxacin 500mg", "500mg", QD, 1),
                L("Cefuroxim 500mg", "500mg", BID, 2),
            ),
        ),
        (
            (L("Azithromycin 500mg", "500mg", QD, 1), 0.3),
            (PARA, 0.7),
            (L("Acetylcystein 200mg", "200mg", TID, 3), 0.4),
        ),
        min_age=1,
    ),
    Condition(
        "upper respiratory infection",
        (("J06.9", 0.5), ("J02.9", 0.3), ("J03.9", 0.2)),
        12,
        ((PARA,),),
        (
            (L("Amoxicilin 500mg", "500mg", TID, 3), 0.35),
            (L("Cefuroxim 250mg", "250mg", BID, 2), 0.1),
            (L("Clorpheniramin 4mg", "4mg", BID, 2), 0.3),
            (L("Loratadin 10mg", "10mg", QD, 1), 0.2),
            (L("Ambroxol 30mg", "30mg", TID, 3), 0.3),
        ),
        min_age=1,
    ),
    Condition(
        "acute bronchitis",
        (("J20.9", 1.0),),
        5,
        (
            (
                L("Ambroxol 30mg", "30mg", TID, 3),
                L("Bromhexin 8mg", "8mg", TID, 3),
                L("Acetylcystein 200mg", "200mg", TID, 3),
            ),
        ),
        (
            (L("Amoxicilin + Acid clavulanic 500mg/125mg", "500mg/125mg", BID, 2), 0.4),
            (PARA, 0.5),
            (L("Salbutamol 2mg", "2mg", TID, 3), 0.15),
        ),
        min_age=1,
    ),
    Condition(
        "asthma",
        (("J45.9", 0.7), ("J45.0", 0.3)),
        2,
        (
            (L("Salbutamol 100mcg/liều xịt", "100mcg", "2 nhát xịt khi khó thở", 1),),
            (
                L("Budesonid 200mcg/liều xịt", "200mcg", "2 nhát xịt * 2 lần/ngày", 1),
                L("Montelukast 10mg", "10mg", QN, 1),
            ),
        ),
        min_age=5,
        chronic=True,
    ),
    Condition(
        "COPD",
        (("J44.9", 0.6), ("J44.1", 0.4)),
        2,
        ((L("Salbutamol 100mcg/liều xịt", "100mcg", "2 nhát xịt khi khó thở", 1),),),
        (
            (L("Budesonid 200mcg/liều xịt", "200mcg", "2 nhát xịt * 2 lần/ngày", 1), 0.5),
            (L("Theophylin 100mg", "100mg", BID, 2), 0.3),
            (L("Acetylcystein 200mg", "200mg", TID, 3), 0.3),
        ),
        min_age=45,
        chronic=True,
    ),
    Condition(
        "gastritis / reflux",
        (("K29.7", 0.5), ("K21.9", 0.3), ("K30", 0.2)),
        9,
        (
            (
                L("Omeprazol 20mg", "20mg", BID, 2),
                L("Esomeprazol 40mg", "40mg", QD, 1),
                L("Pantoprazol 40mg", "40mg", QD, 1),
                L("Rabeprazol 20mg", "20mg", QD, 1),
            ),
        ),
        (
            (L("Domperidon 10mg", "10mg", TID, 3), 0.3),
            (L("Sucralfat 1g", "1g", TID, 3), 0.2),
            (L("Trimebutin 100mg", "100mg", TID, 3), 0.15),
        ),
        min_age=12,
    ),
    Condition(
        "peptic ulcer (H. pylori)",
        (("K25.9", 0.4), ("K26.9", 0.6)),
        2,
        (
            (L("Esomeprazol 40mg", "40mg", BID, 2), L("Omeprazol 20mg", "20mg", BID, 2)),
            (L("Amoxicilin 500mg", "500mg", "2 viên/lần * 2 lần/ngày", 4),),
            (
                L("Clarithromycin 500mg", "500mg", BID, 2),
                L("Metronidazol 250mg", "250mg", "2 viên/lần * 2 lần/ngày", 4),
            ),
        ),
        min_age=15,
    ),
    Condition(
        "acute diarrhoea",
        (("A09", 0.7), ("K52.9", 0.3)),
        3,
        (
            (
                L("Loperamid 2mg", "2mg", "1 viên sau mỗi lần đi ngoài", 2),
                L("Drotaverin 40mg", "40mg", TID, 3),
            ),
        ),
        ((L("Metronidazol 250mg", "250mg", TID, 3), 0.2),),
        min_age=6,
    ),
    Condition(
        "osteoarthritis / back pain",
        (("M17.9", 0.4), ("M54.5", 0.4), ("M47.8", 0.2)),
        8,
        (
            (
                L("Meloxicam 7.5mg", "7.5mg", QD, 1),
                L("Diclofenac 50mg", "50mg", BID, 2),
                L("Celecoxib 200mg", "200mg", QD, 1),
                PARA,
                L("Etoricoxib 60mg", "60mg", QD, 1),
            ),
        ),
        ((L("Eperison 50mg", "50mg", TID, 3), 0.4), (L("Omeprazol 20mg", "20mg", QD, 1), 0.3)),
        min_age=30,
    ),
    Condition(
        "gout",
        (("M10.9", 0.6), ("M10.0", 0.4)),
        1.5,
        (
            (
                L("Colchicin 1mg", "1mg", QD, 1),
                L("Allopurinol 300mg", "300mg", QD, 1),
                L("Febuxostat 40mg", "40mg", QD, 1),
            ),
        ),
        ((L("Etoricoxib 90mg", "90mg", QD, 1), 0.3),),
        min_age=30,
        sex="male",
    ),
    Condition(
        "urinary tract infection",
        (("N39.0", 0.7), ("N30.0", 0.3)),
        3,
        (
            (
                L("Ciprofloxacin 500mg", "500mg", BID, 2),
                L("Cefixim 200mg", "200mg", BID, 2),
                L("Nitrofurantoin 100mg", "100mg", BID, 2),
                L("Levofloxacin 500mg", "500mg", QD, 1),
            ),
        ),
        min_age=15,
        sex="female",
    ),
    Condition(
        "depression / anxiety",
        (("F32.9", 0.5), ("F41.1", 0.5)),
        2,
        (
            (
                L("Sertralin 50mg", "50mg", QD, 1),
                L("Fluoxetin 20mg", "20mg", QD, 1),
                L("Escitalopram 10mg", "10mg", QD, 1),
                L("Mirtazapin 30mg", "30mg", QN, 1),
            ),
        ),
        ((L("Alprazolam 0.5mg", "0.5mg", QN, 1), 0.2), (L("Diazepam 5mg", "5mg", QN, 1), 0.1)),
        min_age=18,
        chronic=True,
    ),
    Condition(
        "epilepsy",
        (("G40.9", 1.0),),
        1,
        (
            (
                L("Acid valproic 500mg", "500mg", BID, 2),
                L("Levetiracetam 500mg", "500mg", BID, 2),
                L("Carbamazepin 200mg", "200mg", BID, 2),
                L("Phenobarbital 100mg", "100mg", QN, 1),
            ),
        ),
        min_age=3,
        chronic=True,
    ),
    Condition(
        "hypothyroidism",
        (("E03.9", 1.0),),
        1,
        ((L("Levothyroxin 50mcg", "50mcg", QD, 1),),),
        min_age=18,
        chronic=True,
    ),
    Condition(
        "hyperthyroidism",
        (("E05.0", 0.6), ("E05.9", 0.4)),
        1,
        ((L("Thiamazol 5mg", "5mg", BID, 2), L("Propylthiouracil 50mg", "50mg", TID, 3)),),
        ((L("Propranolol 40mg", "40mg", BID, 2), 0.6),),
        min_age=15,
    ),
    Condition(
        "allergic rhinitis / urticaria",
        (("J30.4", 0.5), ("L50.9", 0.5)),
        4,
        (
            (
                L("Loratadin 10mg", "10mg", QD, 1),
                L("Cetirizin 10mg", "10mg", QD, 1),
                L("Desloratadin 5mg", "5mg", QD, 1),
                L("Fexofenadin 180mg", "180mg", QD, 1),
            ),
        ),
        min_age=2,
    ),
    Condition(
        "pulmonary tuberculosis",
        (("A15.0", 0.6), ("A16.2", 0.4)),
        0.8,
        (
            (L("Isoniazid 300mg", "300mg", QD, 1),),
            (L("Rifampicin 300mg", "300mg", "2 viên/ngày", 2),),
            (L("Pyrazinamid 500mg", "500mg", "3 viên/ngày", 3),),
            (L("Ethambutol 400mg", "400mg", "3 viên/ngày", 3),),
        ),
        min_age=15,
    ),
    Condition(
        "chronic hepatitis B",
        (("B18.1", 1.0),),
        1.2,
        (
            (
                L("Tenofovir disoproxil fumarat 300mg", "300mg", QD, 1),
                L("Entecavir 0.5mg", "0.5mg", QD, 1),
            ),
        ),
        min_age=18,
        chronic=True,
    ),
    Condition(
        "benign prostatic hyperplasia",
        (("N40", 1.0),),
        1.5,
        ((L("Tamsulosin 0.4mg", "0.4mg", QN, 1),),),
        ((L("Finasterid 5mg", "5mg", QD, 1), 0.4),),
        min_age=50,
        sex="male",
        chronic=True,
    ),
    Condition(
        "ischaemic stroke (follow-up)",
        (("I63.9", 0.7), ("I69.3", 0.3)),
        1.2,
        (
            (L("Aspirin 81mg", "81mg", QD, 1), L("Clopidogrel 75mg", "75mg", QD, 1)),
            (L("Atorvastatin 40mg", "40mg", QN, 1),),
        ),
        min_age=45,
        chronic=True,
    ),
    Condition(
        "migraine / headache",
        (("G43.9", 0.5), ("R51", 0.5)),
        2,
        ((PARA, L("Ibuprofen 400mg", "400mg", TID, 3)),),
        ((L("Sumatriptan 50mg", "50mg", "1 viên khi đau nửa đầu", 1), 0.15),),
        min_age=12,
    ),
    Condition("dengue fever", (("A97.0", 0.7), ("A97.1", 0.3)), 1.5, ((PARA,),), min_age=1),
)
CHRONIC = tuple(c for c in CONDITIONS if c.chronic)
COMORBID = {  # a chronic condition often comes with these
    "hypertension": (
        ("dyslipidaemia", 0.35),
        ("type 2 diabetes", 0.25),
        ("chronic ischaemic heart disease", 0.1),
    ),
    "type 2 diabetes": (("hypertension", 0.5), ("dyslipidaemia", 0.4)),
    "chronic ischaemic heart disease": (("hypertension", 0.6), ("dyslipidaemia", 0.3)),
    "atrial fibrillation": (("hypertension", 0.5), ("heart failure", 0.25)),
    "heart failure": (("hypertension", 0.4), ("atrial fibrillation", 0.25)),
}
BY_NAME = {c.name: c for c in CONDITIONS}

# Drug lines a Vietnamese HIS may write for any dictionary ingredient (the "unusual" ones).
RANDOM_FORMS = ("{} 10mg", "{} 50mg", "{} 100mg", "{} 250mg", "{} 500mg")


@dataclass
class Visit:
    key: str
    sex: int
    birth: str
    codes: list[str]
    lines: list[Line]
    injected: list[int]  # indexes of lines that are random dictionary drugs


def _pick(rng: random.Random, options):
    return rng.choices([o[0] for o in options], weights=[o[1] for o in options])[0]


def make_visit(
    rng: random.Random,
    number: int,
    random_names: list[str],
    unusual_rate: float = 0.02,
    year: int = 2026,
) -> Visit:
    main = rng.choices(CONDITIONS, weights=[c.weight for c in CONDITIONS])[0]
    conditions = [main]
    for name, p in COMORBID.get(main.name, ()):
        if rng.random() < p:
            conditions.append(BY_NAME[name])
    if not main.chronic and rng.random() < 0.25:  # an acute visit of a chronic patient
        conditions.append(rng.choices(CHRONIC, weights=[c.weight for c in CHRONIC])[0])
    conditions = list(dict.fromkeys(conditions))
    sexes = {c.sex for c in conditions if c.sex}
    sex = 1 if sexes == {"male"} else 2 if sexes == {"female"} else rng.choice((1, 2))
    if len(sexes) > 1:  # contradictory sex-specific conditions: keep the main one
        conditions = [c for c in conditions if c.sex in (None, main.sex)]
        sex = 1 if main.sex == "male" else 2
    min_age = max(c.min_age for c in conditions)
    age = rng.randint(min_age, max(min_age + 5, 85 if any(c.chronic for c in conditions) else 60))
    birth = f"{year - age}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
    codes: list[str] = []
    lines: list[Line] = []
    for c in conditions:
        codes.append(_pick(rng, c.codes))
        for options in c.core:
            lines.append(rng.choice(options))
        for line, p in c.optional:
            if rng.random() < p:
                lines.append(line)
    lines = list(dict.fromkeys(lines))
    injected = []
    if rng.random() < unusual_rate:
        form = rng.choice(RANDOM_FORMS)
        injected.append(len(lines))
        lines.append(Line(form.format(rng.choice(random_names)), form.format("").strip(), QD, 1))
    return Visit(f"LK-SYN-{number:07d}", sex, birth, codes, lines, injected)


def _xml1(v: Visit, visit_date: str) -> str:
    kt = ";".join(v.codes[1:])
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<TONG_HOP>\n'
        f"  <MA_LK>{v.key}</MA_LK>\n  <STT>1</STT>\n  <MA_BN>BN-{v.key[7:]}</MA_BN>\n"
        f"  <HO_TEN>Bệnh nhân tổng hợp {v.key[7:]}</HO_TEN>\n"
        f"  <NGAY_SINH>{v.birth}0000</NGAY_SINH>\n  <GIOI_TINH>{v.sex}</GIOI_TINH>\n"
        f"  <MA_BENH_CHINH>{v.codes[0]}</MA_BENH_CHINH>\n  <MA_BENH_KT>{kt}</MA_BENH_KT>\n"
        f"  <NGAY_VAO>{visit_date}0800</NGAY_VAO>\n</TONG_HOP>\n"
    )


def _xml2(v: Visit, days: int) -> str:
    rows = []
    for n, line in enumerate(v.lines, start=1):
        qty = max(1, round(line.per_day * days))
        rows.append(
            "    <CHI_TIET_THUOC>\n"
            f"      <MA_LK>{v.key}</MA_LK>\n      <STT>{n}</STT>\n"
            f"      <MA_THUOC></MA_THUOC>\n      <MA_NHOM>4</MA_NHOM>\n"
            f"      <TEN_THUOC><![CDATA[{line.name}]]></TEN_THUOC>\n"
            f"      <HAM_LUONG>{escape(line.strength)}</HAM_LUONG>\n"
            f"      <LIEU_DUNG>{escape(line.dosage)}</LIEU_DUNG>\n"
            f"      <SO_LUONG>{qty}</SO_LUONG>\n    </CHI_TIET_THUOC>\n"
        )
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<CHITIEU_CHITIET_THUOC>\n'
        "  <DSACH_CHI_TIET_THUOC>\n"
        + "".join(rows)
        + "  </DSACH_CHI_TIET_THUOC>\n</CHITIEU_CHITIET_THUOC>\n"
    )


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def hoso(v: Visit, visit_date: str, days: int) -> str:
    return (
        "      <HOSO>\n"
        "        <FILEHOSO>\n          <LOAIHOSO>XML1</LOAIHOSO>\n"
        f"          <NOIDUNGFILE>{_b64(_xml1(v, visit_date))}</NOIDUNGFILE>\n"
        "        </FILEHOSO>\n"
        "        <FILEHOSO>\n          <LOAIHOSO>XML2</LOAIHOSO>\n"
        f"          <NOIDUNGFILE>{_b64(_xml2(v, days))}</NOIDUNGFILE>\n"
        "        </FILEHOSO>\n"
        "      </HOSO>\n"
    )


def envelope(records: list[str], made: str) -> str:
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<GIAMDINHHS>\n'
        f"  <THONGTINDONVI>\n    <MACSKCB>{SYNTHETIC_FACILITY}</MACSKCB>\n  </THONGTINDONVI>\n"
        f"  <THONGTINHOSO>\n    <NGAYLAP>{made}</NGAYLAP>\n"
        f"    <SOLUONGHOSO>{len(records)}</SOLUONGHOSO>\n    <DANHSACHHOSO>\n"
        + "".join(records)
        + "    </DANHSACHHOSO>\n  </THONGTINHOSO>\n  <CHUKYDONVI/>\n</GIAMDINHHS>\n"
    )


def random_drug_names(kb=None) -> list[str]:
    """Vietnamese names of dictionary ingredients (used for the rare unusual lines)."""
    from serving.cdss.knowledge import KnowledgeBase

    kb = kb or KnowledgeBase.load()
    return sorted(d.name_vi for d in kb.drugs.values() if d.atc_codes)


def generate(
    out: Path,
    records: int = 6000,
    per_file: int = 500,
    seed: int = 0,
    unusual_rate: float = 0.02,
    kb=None,
) -> list[Path]:
    """Write ``ceil(records / per_file)`` files ``xml130-synthetic-NNN.xml`` under ``out``."""
    rng = random.Random(seed)
    names = random_drug_names(kb)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths, batch = [], []
    for number in range(1, records + 1):
        visit = make_visit(rng, number, names, unusual_rate)
        day = f"2026{rng.randint(1, 10):02d}{rng.randint(1, 28):02d}"
        batch.append(hoso(visit, day, rng.choice((5, 7, 7, 10, 14, 30))))
        if len(batch) == per_file or number == records:
            path = out / f"xml130-synthetic-{len(paths) + 1:03d}.xml"
            path.write_text(envelope(batch, "20261122"), encoding="utf-8")
            paths.append(path)
            batch = []
    return paths


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="write synthetic XML 130 exports (no real patients)")
    p.add_argument("--out", type=Path, required=True, help="folder for the XML files")
    p.add_argument("--records", type=int, default=6000)
    p.add_argument("--per-file", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--unusual-rate",
        type=float,
        default=0.02,
        help="share of visits with a random dictionary drug added (default 0.02)",
    )
    args = p.parse_args(argv)
    paths = generate(args.out, args.records, args.per_file, args.seed, args.unusual_rate)
    print(f"wrote {args.records} synthetic records in {len(paths)} files under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
