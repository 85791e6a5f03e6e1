"""Learned CDSS models that tell the truth: predicted interactions are `info`, labelled
"predicted, not from a reference", and served only when their external precision (ANSM, a
reference they were not trained on) reaches 0.5 or the hospital switches them on; the
protocol-anomaly model (a synthetic demo) is off unless switched on, and labelled a demo."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from haidang.ground.settings import LearnedSettings
from serving.cdss.app import create_app
from serving.cdss.knowledge import Interaction
from serving.cdss.learned import (
    DEMO_LABEL_EN,
    MIN_EXTERNAL_PRECISION,
    PREDICTED_LABEL_EN,
    PREDICTED_LABEL_VI,
    LearnedChecks,
    external_precision,
)
from serving.registry import ModelRegistry
from tests.support.cdss_support import real_kb, settings_for
from training.interaction_external import from_ansm, read_ansm

REPO = Path(__file__).resolve().parents[2]
CHECK = "/api/v1/prescriptions/check"
# no list names these pairs; the shipped model predicts them (see tests/serving/test_learned.py)
RISKY = [{"TEN_THUOC": "Aliskiren 150mg"}, {"TEN_THUOC": "Spironolacton 25mg"},
         {"TEN_THUOC": "Praziquantel 600mg"}]


def _registry(tmp_path, precision: float | None) -> Path:
    """A copy of the shipped interaction-risk model whose card states `precision`."""
    root = tmp_path / "models"
    shipped = ModelRegistry(REPO / "models").current("interaction-risk")
    shutil.copytree(shipped.path, root / "interaction-risk" / "1.0.0")
    card_path = root / "interaction-risk" / "1.0.0" / "card.yaml"
    card = yaml.safe_load(card_path.read_text(encoding="utf-8"))
    if precision is None:
        card.pop("external_evaluation", None)
    else:
        card["external_evaluation"]["precision"] = precision
    card_path.write_text(yaml.safe_dump(card, allow_unicode=True), encoding="utf-8")
    ModelRegistry(root).promote("interaction-risk", "1.0.0")
    return root


def test_defaults_switch_both_models_off():
    assert LearnedSettings().interaction_risk == "auto"
    assert LearnedSettings().protocol_anomaly == "auto"
    checks = LearnedChecks.from_settings(LearnedSettings(), real_kb(), REPO / "models")
    card = ModelRegistry(REPO / "models").current("interaction-risk").card
    precision = external_precision(card)
    assert precision is not None  # the shipped card states its external figure
    assert (checks.interaction is None) == (precision < MIN_EXTERNAL_PRECISION)
    assert checks.protocol is None  # synthetic demo: never on by default
    protocol_card = ModelRegistry(REPO / "models").current("protocol-anomaly").card
    assert protocol_card["data"]["synthetic"] and "DEMO" in protocol_card["serving"]


def test_shipped_card_states_the_external_figures_it_decides_on():
    ext = ModelRegistry(REPO / "models").current("interaction-risk").card["external_evaluation"]
    readings = [ext["class_rows_expanded"], ext["substance_rows_only"]]
    for m in readings:
        assert m["true_positives"] <= m["predicted"] and m["true_positives"] <= m["ansm_pairs"]
        assert m["recall"] == round(m["true_positives"] / m["ansm_pairs"], 4)
        assert m["precision"] == round(m["true_positives"] / max(1, m["predicted"]), 4)
    assert ext["precision"] == min(m["precision"] for m in readings)
    assert "ANSM" in ext["reference"]


@pytest.mark.parametrize(("precision", "mode", "served"), [
    (0.6, "auto", True), (0.5, "auto", True), (0.49, "auto", False), (None, "auto", False),
    (0.1, "on", True), (0.9, "off", False),
])
def test_interaction_risk_served_only_when_it_measured_well_or_is_switched_on(
        tmp_path, precision, mode, served):
    root = _registry(tmp_path, precision)
    checks = LearnedChecks.from_settings(LearnedSettings(interaction_risk=mode), real_kb(), root)
    assert (checks.interaction is not None) == served


def test_protocol_demo_model_only_when_forced_on_and_then_labelled_a_demo():
    on = LearnedChecks.from_settings(LearnedSettings(protocol_anomaly="on"), real_kb(),
                                     REPO / "models")
    [alert] = on.unusual_drugs(["amlodipine", "praziquantel"], ["I10"])
    assert alert.message_en.startswith(f"[{DEMO_LABEL_EN}]") and "MÔ HÌNH DEMO" in alert.message_vi


def _app_alerts(tmp_path, **env):
    settings = settings_for(tmp_path, development=True)
    settings = settings.model_copy(update={"learned": LearnedSettings(**env)})
    with TestClient(create_app(settings, kb=real_kb())) as client:
        r = client.post(CHECK, json={"MA_BENH_CHINH": "I10", "THUOC": RISKY})
    assert r.status_code == 200, r.text
    return r.json()["alerts"]


def test_no_learned_alert_reaches_a_clinician_by_default(tmp_path):
    kinds = {a["kind"] for a in _app_alerts(tmp_path)}
    assert "drug-drug-predicted" not in kinds and "unusual-drug" not in kinds
    switched_on = _app_alerts(tmp_path, interaction_risk="on", protocol_anomaly="on")
    [predicted] = [a for a in switched_on if a["kind"] == "drug-drug-predicted"]
    assert predicted["severity"] == "info"
    assert PREDICTED_LABEL_VI in predicted["message_vi"]
    assert PREDICTED_LABEL_EN in predicted["message_en"]
    assert [a for a in switched_on if a["kind"] == "unusual-drug"]


# ---------------------------------------------------------------- the external reference
def test_ansm_reference_maps_names_and_expands_classes():
    kb = real_kb()
    expanded = read_ansm(kb)
    substances = read_ansm(kb, expand_classes=False)
    assert ("amiodarone", "simvastatin") in substances.pairs  # AMIODARONE x SIMVASTATINE
    assert ("clarithromycin", "simvastatin") in expanded.pairs - substances.pairs  # by class
    assert substances.pairs <= expanded.pairs
    assert len(expanded.pairs) > len(substances.pairs)  # class rows add their members' pairs
    assert substances.rows == expanded.rows == 3139
    assert substances.rows_used < expanded.rows_used


def test_ansm_interactions_are_kept_out_of_training_labels():
    row = dict(id="x", a="a", b="b", severity="major", mechanism_vi="", consequence_vi="",
               management_vi="", mechanism_en=None, consequence_en=None, management_en=None)
    assert from_ansm(Interaction(**row, source="ANSM, Thésaurus (20/10/2020)"))
    assert not from_ansm(Interaction(**row, source="QĐ 5948/QĐ-BYT, STT 12"))


def test_protocol_model_trained_on_real_exports_is_served_by_default(tmp_path):
    root = tmp_path / "models"
    shutil.copytree(REPO / "models" / "protocol-anomaly" / "1.0.0",
                    root / "protocol-anomaly" / "1.0.0")
    card_path = root / "protocol-anomaly" / "1.0.0" / "card.yaml"
    card = yaml.safe_load(card_path.read_text(encoding="utf-8"))
    card["data"]["synthetic"] = False  # as `haidang train protocol` writes for real exports
    card_path.write_text(yaml.safe_dump(card, allow_unicode=True), encoding="utf-8")
    ModelRegistry(root).promote("protocol-anomaly", "1.0.0")
    served = LearnedChecks.from_settings(LearnedSettings(), real_kb(), root)
    [alert] = served.unusual_drugs(["amlodipine", "praziquantel"], ["I10"])
    assert "DEMO" not in alert.message_en
    off = LearnedChecks.from_settings(LearnedSettings(protocol_anomaly="off"), real_kb(), root)
    assert off.protocol is None
