"""Learned CDSS models: interaction risk (pairs the knowledge base does not name) and the
prescription-anomaly table; export parity, severity cap, drug-disjoint evaluation, registry.

Trains small real models on the shipped knowledge base and on synthetic XML 130 exports;
the committed models in ``models/`` are exercised through the registry as serving loads them.
"""

from __future__ import annotations

import csv
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from serving.cdss.knowledge import KnowledgeBase
from serving.cdss.learned import (
    PHARMACOLOGY_CSV,
    PREDICTED_KIND,
    PREDICTED_LABEL_EN,
    PREDICTED_LABEL_VI,
    PROPERTIES,
    UNUSUAL_KIND,
    LearnedChecks,
    PairFeaturizer,
    base_columns,
    diagnosis_group,
    explain_feature,
    feature_names,
    read_pharmacology,
)
from serving.registry import ModelRegistry, RegistryError
from training import interaction_risk as ir
from training import protocol
from training.xml130_synth import CONDITIONS, generate

REPO = Path(__file__).resolve().parents[2]
FAST = dict(max_iter=40, learning_rate=0.2, splits=1, neg_per_pos=3)


@lru_cache(maxsize=1)
def kb() -> KnowledgeBase:
    return KnowledgeBase.load()


@lru_cache(maxsize=1)
def pair_data():
    k = kb()
    pharm = read_pharmacology()
    fz = PairFeaturizer(k, feature_names(k), pharm)
    return fz, ir.build_pairs(k, fz, ir.training_drugs(k, pharm))


@lru_cache(maxsize=1)
def shipped() -> LearnedChecks:
    return LearnedChecks.load(kb(), REPO / "models")


# ------------------------------------------------------------------ pharmacology data
def test_pharmacology_rows_are_sourced_and_known():
    drugs = kb().drugs
    with PHARMACOLOGY_CSV.open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["inn"] for r in rows} <= set(drugs)
    for r in rows:
        props = {p for p in r["properties"].split("|") if p}
        assert props <= set(PROPERTIES), r
        assert r["source"].strip() and r["review"] == "pharmacist", r
    pharm = read_pharmacology()
    # where the dictionary's class tags already say it, the property agrees
    for inn, drug in drugs.items():
        if "qt-prolonging" in drug.classes:
            assert "qt" in pharm[inn], inn
        if "strong-cyp3a4-inhibitor" in drug.classes:
            assert "cyp3a4_inhibitor" in pharm[inn], inn
        if "serotonergic" in drug.classes:
            assert "serotonergic" in pharm[inn], inn


def test_unknown_property_is_refused(tmp_path):
    bad = tmp_path / "pharmacology.csv"
    bad.write_text("inn,properties,source,review\nwarfarin,bleeding|telepathy,x,pharmacist\n")
    with pytest.raises(ValueError, match="telepathy"):
        read_pharmacology(bad)


# ------------------------------------------------------------------ features
def test_pair_features_are_symmetric_and_named():
    fz, data = pair_data()
    rng = np.random.default_rng(1)
    inns = data.inns
    pairs = [tuple(rng.choice(inns, 2, replace=False)) for _ in range(300)]
    ab = fz.pair_features(pairs)
    ba = fz.pair_features([(b, a) for a, b in pairs])
    assert np.array_equal(ab, ba)
    # reference: each named feature computed from the two drugs' attribute sets
    k, pharm = kb(), read_pharmacology()
    for row, (x, y) in zip(ab[:40], pairs[:40], strict=True):
        cx = base_columns(k.drug(x), pharm)
        cy = base_columns(k.drug(y), pharm)
        for value, name in zip(row, fz.names, strict=True):
            op, rest = name.split(":", 1)
            if op == "both":
                want = float(rest in cx and rest in cy)
            elif op == "sum":
                want = float(rest in cx) + float(rest in cy)
            elif op == "cross":
                u, v = rest.split("*")
                want = float((u in cx and v in cy) or (v in cx and u in cy))
            else:
                level = rest + ":"
                want = float(any(c.startswith(level) for c in cx & cy))
            assert value == want, (x, y, name)
    qt = fz.names.index("both:p:qt")
    x = fz.pair_features([("amiodarone", "haloperidol"), ("amiodarone", "paracetamol")])
    assert x[0, qt] == 1 and x[1, qt] == 0
    cross = fz.names.index("cross:p:cyp3a4_inhibitor*p:cyp3a4_substrate")
    y = fz.pair_features([("clarithromycin", "simvastatin"), ("simvastatin", "clarithromycin")])
    assert y[0, cross] == y[1, cross] == 1
    assert data.y.sum() > 1000 and data.X.shape[1] == len(fz.names)


def test_training_drugs_have_pharmacology_or_a_pair_outside_ansm():
    """The model learns from ~700 ingredients, not 6 million pairs of the whole dictionary:
    those with pharmacology rows or a QĐ 5948 / curated pair; drugs only ANSM names stay
    out (it is the external reference)."""
    k, pharm = kb(), read_pharmacology()
    inns = ir.training_drugs(k, pharm)
    assert inns == sorted(set(inns)) and len(inns) < len(k.drugs) / 3
    assert {"amiodarone", "simvastatin", "warfarin"} <= set(inns)  # QĐ 5948
    assert "amoxicillin" in inns and "amoxicillin" in pharm  # a pharmacology row
    ansm_only = {x for pair in k.interacting_pairs() for x in pair} - set(inns)
    assert "acetazolamide" in ansm_only and "acetazolamide" not in pharm
    _, data = pair_data()
    assert len(data.y) == len(inns) * (len(inns) - 1) // 2
    served = ir.build_pairs(k, PairFeaturizer(k, feature_names(k), pharm), inns[:120],
                            exclude=ir.never)
    labelled = ir.build_pairs(k, PairFeaturizer(k, feature_names(k), pharm), inns[:120])
    assert served.y.sum() > labelled.y.sum()  # ANSM's labels only in the served model


# ------------------------------------------------------------------ interaction risk
def test_drug_disjoint_split_is_disjoint_and_auc_is_useful():
    """Fast CI version of the card's evaluation: one split, a small model."""
    _, data = pair_data()
    cfg = ir.Config(**FAST)
    test_drugs, train, test, one_new = ir.split_drugs(data, cfg, 0)
    test_idx = set(np.flatnonzero(test_drugs))
    assert not test_idx & (set(train.i) | set(train.j))  # no test drug in training
    assert set(test.i) | set(test.j) <= test_idx
    assert all((a in test_idx) != (b in test_idx) for a, b in zip(one_new.i, one_new.j,
                                                                  strict=True))
    assert test.y.sum() >= 10
    result = ir.drug_disjoint_splits(data, cfg)
    assert result["roc_auc_mean"] >= 0.80, result["runs"]
    assert result["pr_auc_mean"] > 3 * result["runs"][0]["prevalence"]


def test_export_parity_small_model(tmp_path):
    _, data = pair_data()
    cfg = ir.Config(**FAST)
    model, _ = ir.fit(data, cfg, 0)
    path = ir.export(model, data.X.shape[1], tmp_path / "model.onnx")
    fig = ir.parity(model, path, data.X)
    assert fig["labels_differing"] == 0 and fig["max_abs_diff"] <= 1e-5
    assert fig["pairs"] == len(data.y)


def test_parity_catches_a_different_graph(tmp_path):
    _, data = pair_data()
    one, _ = ir.fit(data, ir.Config(**FAST), 0)
    other, _ = ir.fit(data, ir.Config(**{**FAST, "max_iter": 5}), 1)
    path = ir.export(other, data.X.shape[1], tmp_path / "model.onnx")
    with pytest.raises(ir.ParityError):
        ir.parity(one, path, data.X)


def test_retraining_moves_current_only_on_promote(tmp_path):
    root = tmp_path / "models"
    reg = ModelRegistry(root)
    card = ir.train_and_register(root / "interaction-risk" / "1.0.0", cfg=ir.Config(**FAST),
                                 progress=False, plots=False)
    assert card["parity"]["max_abs_diff"] <= 1e-5
    ext = card["external_evaluation"]  # measured on ANSM, which training left out
    assert 0 <= ext["recall"] <= 1 and 0 <= ext["precision"] <= 1
    assert ext["class_rows_expanded"]["ansm_pairs"] > ext["substance_rows_only"]["ansm_pairs"]
    with pytest.raises(RegistryError):
        reg.current("interaction-risk")  # trained, not promoted
    reg.promote("interaction-risk", "1.0.0")
    assert reg.current_version("interaction-risk") == "1.0.0"
    ir.train_and_register(root / "interaction-risk" / "1.1.0", cfg=ir.Config(**FAST),
                          progress=False, plots=False, ansm=None)
    assert reg.current_version("interaction-risk") == "1.0.0"
    assert reg.versions("interaction-risk") == ["1.0.0", "1.1.0"]
    with pytest.raises(FileExistsError):
        ir.train_and_register(root / "interaction-risk" / "1.1.0", cfg=ir.Config(**FAST),
                              progress=False, plots=False)
    reg.promote("interaction-risk", "1.1.0")
    mv = reg.current("interaction-risk")
    assert mv.version == "1.1.0"
    # serving picks the promoted version up through the registry
    checks = LearnedChecks.load(kb(), root)
    assert checks.interaction.version.version == "1.1.0"
    assert checks.protocol is None  # no protocol model in this registry: check off, no error
    assert checks.unusual_drugs(["amlodipine"], ["I10"]) == []


def test_shipped_card_records_drug_disjoint_metrics_and_parity():
    mv = ModelRegistry(REPO / "models").current("interaction-risk")
    card = mv.card
    dd = card["metrics"]["drug_disjoint"]
    assert 0.5 < dd["roc_auc_mean"] <= 1 and 0 < dd["pr_auc_mean"] <= 1
    assert card["parity"]["max_abs_diff"] <= 1e-5 and card["parity"]["labels_differing"] == 0
    # serving builds the card's features from the dictionary it runs with
    fz = PairFeaturizer(kb(), card["input"]["features"], read_pharmacology())
    assert fz.base.shape[0] == len(kb().drugs) and len(fz.names) == card["input"]["shape"][1]
    assert card["severity"]["served"] == "info"


# drugs among which some pairs no list names but pharmacology says are risky (CYP3A4
# inhibitor + substrate, two potassium-raising drugs, two antiplatelets ...); the
# MAOI + serotonergic pairs are named by the curated serotonergic rule since the dictionary
# grew, so the knowledge base answers for those.
RISKY = ["dextromethorphan", "moclobemide", "carbamazepine", "saquinavir", "linezolid",
         "lithium", "aliskiren", "spironolactone", "cilostazol", "ticagrelor"]


def test_predicted_alerts_are_info_labelled_and_skip_kb_pairs():
    checks = shipped()
    k = kb()
    alerts = checks.predicted_interactions(RISKY, lines=list(range(len(RISKY))))
    assert len(alerts) >= 4
    pairs = {tuple(a.drugs) for a in alerts}
    assert {("aliskiren", "spironolactone"), ("cilostazol", "saquinavir")} <= pairs
    assert ("dextromethorphan", "moclobemide") not in pairs  # named: the KB's alert
    for a in alerts:
        assert a.kind == PREDICTED_KIND
        assert a.severity == "info"
        assert a.message_vi.startswith(f"[{PREDICTED_LABEL_VI}]")
        assert a.message_en.startswith(f"[{PREDICTED_LABEL_EN}]")
        assert "predicted, not from a reference" in a.source
        assert not k.interactions(k.drug(a.drugs[0]), k.drug(a.drugs[1]))
        assert a.score >= checks.interaction.threshold
        assert a.lines == sorted(RISKY.index(d) for d in a.drugs)
        assert "model" in a.message_en and "mô hình" in a.message_vi
    # every pair the lists name is left to the knowledge base, whatever its score
    qt = sorted(inn for inn, d in k.drugs.items() if "qt-prolonging" in d.classes)
    assert checks.predicted_interactions(qt) == []  # QĐ 5948 names every QT-QT pair
    assert checks.predicted_interactions(["amiodarone", "moxifloxacin"]) == []


def test_predicted_alert_names_the_driving_features():
    checks = shipped()
    [alert] = checks.predicted_interactions(["aliskiren", "spironolactone"])
    assert "both raise serum potassium" in alert.message_en
    assert "cả hai thuốc đều làm tăng kali máu" in alert.message_vi
    [cyp] = checks.predicted_interactions(["cilostazol", "saquinavir"])
    assert "saquinavir inhibits CYP3A4; cilostazol is a CYP3A4 substrate" in cyp.message_en
    assert cyp.as_dict()["kind"] == PREDICTED_KIND
    assert set(cyp.as_dict()) >= {"id", "severity", "drugs", "message_vi", "message_en",
                                  "source"}
    k = kb()
    words = explain_feature("both:p:qt", k.drug("amiodarone"), k.drug("haloperidol"), k)
    assert words == ("cả hai thuốc đều kéo dài khoảng QT", "both prolong the QT interval")
    words = explain_feature("cross:p:cyp3a4_inhibitor*p:cyp3a4_substrate",
                            k.drug("simvastatin"), k.drug("clarithromycin"), k)
    assert words[1] == "clarithromycin inhibits CYP3A4; simvastatin is a CYP3A4 substrate"


def test_low_risk_pair_gives_no_alert():
    assert shipped().predicted_interactions(["paracetamol", "loratadine"]) == []
    assert shipped().predicted_interactions(["paracetamol"]) == []


# ------------------------------------------------------------------ protocol anomaly
@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exports")
    generate(out, records=1500, per_file=300, seed=3, kb=kb())
    return out


def test_synthetic_exports_parse_with_the_cdss_reader(tmp_path):
    from serving.cdss.xml130 import parse_xml130

    out = tmp_path / "x"
    paths = generate(out, records=40, per_file=25, seed=1, kb=kb())
    assert len(paths) == 2
    docs = protocol._records_of(paths[0])
    assert len(docs) == 25
    rec = parse_xml130(docs[0][0])
    assert rec["MA_BENH_CHINH"] and rec["THUOC"] and rec["GIOI_TINH"] in ("1", "2")
    assert all(kb().resolve(line["TEN_THUOC"]) for line in rec["THUOC"])
    records, stats, _ = protocol.read_exports(str(out / "*.xml"), kb())
    assert stats["records"] == 40 and len(records) == 40 and stats["unrecognised_lines"] == 0
    for c in CONDITIONS:
        for code, _ in c.codes:
            assert diagnosis_group(code), code


def test_protocol_table_export_parity(tmp_path, exports):
    records, _, _ = protocol.read_exports(exports, kb())
    table = protocol.build_table(records)
    path = protocol.export_onnx(table, 0.02, 30, tmp_path / "model.onnx")
    fig = protocol.parity(table, path, 0.02, 30)
    assert fig["max_abs_diff"] == 0 and fig["labels_differing"] == 0
    assert fig["cells"] == (len(table.drug_groups) + 1) * (len(table.diagnosis_groups) + 1)


def test_protocol_retrain_registry_and_alerts(tmp_path, exports):
    root = tmp_path / "models"
    card = protocol.train_and_register(str(exports / "*.xml"), root / "protocol-anomaly" / "1.0.0",
                                       progress=False)
    assert card["data"]["synthetic"] is True and "SYNTHETIC" in card["data"]["kind"]
    assert card["metrics"]["validation"]["auc"] > 0.9
    reg = ModelRegistry(root)
    with pytest.raises(RegistryError):
        reg.current("protocol-anomaly")
    reg.promote("protocol-anomaly", "1.0.0")
    checks = LearnedChecks.load(kb(), root)
    assert checks.interaction is None
    assert checks.predicted_interactions(["amiodarone", "haloperidol"]) == []
    assert checks.unusual_drugs(["amlodipine", "losartan"], ["I10"]) == []


def test_unusual_drug_is_info_with_frequency():
    checks = shipped()
    alerts = checks.unusual_drugs(["amlodipine", "praziquantel"], ["I10"], lines=[0, 1])
    assert [a.drugs for a in alerts] == [["praziquantel"]]
    a = alerts[0]
    assert a.kind == UNUSUAL_KIND and a.severity == "info" and a.lines == [1]
    assert "%" in a.message_en and "%" in a.message_vi and a.score < checks.protocol.threshold
    assert "I10-I15" in a.message_en
    # the same drug is usual when the patient has its indication among the diagnoses
    assert checks.unusual_drugs(["praziquantel", "paracetamol"], ["J06.9"]) != []
    assert checks.unusual_drugs(["amlodipine"], ["I10"]) == []
    assert checks.unusual_drugs(["amlodipine"], ["NOT-A-CODE"]) == []
    card = checks.protocol.version.card
    assert card["data"]["synthetic"] is True



def test_cli_dispatch_trains_protocol_and_routes_interaction_risk(tmp_path, exports,
                                                                  monkeypatch, capsys):
    """``haidang train protocol|interaction-risk`` (the real CLI) lands in learned_cli.train."""
    from argparse import Namespace

    from training import learned_cli

    out = tmp_path / "models" / "protocol-anomaly" / "2.0.0"
    from haidang.cli import main

    rc = main(["train", "protocol", "--data", f"{exports}/*.xml", "--out", str(out),
               "--promote", "--no-progress"])
    assert rc == 0 and "synthetic" in capsys.readouterr().out
    assert ModelRegistry(tmp_path / "models").current_version("protocol-anomaly") == "2.0.0"
    assert learned_cli.train(Namespace(model="protocol", data=None, out=None)) == 2
    seen = {}
    monkeypatch.setattr(ir, "run", lambda opts: seen.setdefault("opts", opts) and 0)
    assert learned_cli.train(Namespace(model="interaction-risk", data=None, out=out,
                                       promote=False)) == 0
    assert seen["opts"].out == out and seen["opts"].promote is False
