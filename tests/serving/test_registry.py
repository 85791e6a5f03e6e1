"""The model registry: versions, current, promotion, sha256 verification, and the CLI."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml

from haidang.cli import main
from serving.registry import ModelIntegrityError, ModelRegistry, ModelVersion, RegistryError

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"

REQUIRED_CARD_FIELDS = [
    "name", "version", "task", "labels", "input", "preprocessing", "output", "threshold",
    "threshold_method", "metrics", "parity", "sha256", "training", "data", "intended_use",
    "limitations",
]


def add_version(root: Path, name: str, version: str, payload: bytes = b"onnx bytes",
                auc: float = 0.9) -> Path:
    d = root / name / version
    d.mkdir(parents=True)
    (d / "model.onnx").write_bytes(payload)
    card = {"name": name, "version": version, "threshold": 0.5, "labels": ["normal", "pneumonia"],
            "sha256": hashlib.sha256(payload).hexdigest(),
            "metrics": {"validation": {"auc": auc, "accuracy": 0.8, "sensitivity": 0.7,
                                       "specificity": 0.9}}}
    (d / "card.yaml").write_text(yaml.safe_dump(card), encoding="utf-8")
    return d


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    for v in ("1.2.0", "1.10.0", "1.9.1"):
        add_version(tmp_path, "demo", v, payload=v.encode())
    (tmp_path / "demo" / "current").write_text("1.2.0\n")
    return ModelRegistry(tmp_path)


def test_versions_are_in_natural_order(registry):
    assert registry.names() == ["demo"]
    assert registry.versions("demo") == ["1.2.0", "1.9.1", "1.10.0"]
    assert registry.versions("nothing") == []


def test_current_and_promote(registry):
    mv = registry.current("demo")
    assert (mv.name, mv.version) == ("demo", "1.2.0")
    assert mv.onnx_path.read_bytes() == b"1.2.0"
    assert mv.sha256 == hashlib.sha256(b"1.2.0").hexdigest()
    promoted = registry.promote("demo", "1.10.0")
    assert promoted.version == "1.10.0"
    assert (registry.root / "demo" / "current").read_text().strip() == "1.10.0"
    assert registry.current("demo").version == "1.10.0"
    assert not list((registry.root / "demo").glob(".current.*"))  # no temp file left behind


def test_promote_unknown_version_keeps_current(registry):
    with pytest.raises(RegistryError, match="no version 9.9"):
        registry.promote("demo", "9.9")
    assert registry.current_version("demo") == "1.2.0"


def test_tampered_model_is_refused(registry):
    (registry.root / "demo" / "1.2.0" / "model.onnx").write_bytes(b"something else")
    with pytest.raises(ModelIntegrityError, match="changed after registration"):
        registry.current("demo")
    with pytest.raises(ModelIntegrityError):
        registry.promote("demo", "1.2.0")


def test_missing_current_says_what_to_do(tmp_path):
    add_version(tmp_path, "demo", "1.0.0")
    with pytest.raises(RegistryError, match="haidang models promote demo VERSION"):
        ModelRegistry(tmp_path).current("demo")
    with pytest.raises(RegistryError, match="no model named other"):
        ModelRegistry(tmp_path).current("other")


def test_cli_list_and_promote(registry, capsys):
    assert main(["models", "--models-dir", str(registry.root), "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["version"], r["current"]) for r in rows] == [
        ("1.2.0", True), ("1.9.1", False), ("1.10.0", False)]
    assert rows[0]["auc"] == 0.9
    assert main(["models", "--models-dir", str(registry.root), "promote", "demo", "1.9.1"]) == 0
    assert "1.2.0 -> 1.9.1" in capsys.readouterr().out
    assert registry.current_version("demo") == "1.9.1"
    assert main(["models", "--models-dir", str(registry.root), "promote", "demo", "7"]) == 1
    assert main(["models", "--models-dir", str(registry.root), "list"]) == 0
    table = capsys.readouterr().out
    assert "* demo" in table and "1.9.1" in table


def test_committed_model_is_registered_and_complete(tmp_path):
    reg = ModelRegistry(MODELS)
    assert "cxr-pneumonia" in reg.names()
    mv = reg.current("cxr-pneumonia")  # verifies the sha256
    for key in REQUIRED_CARD_FIELDS:
        assert key in mv.card, key
    assert mv.card["labels"] == ["normal", "pneumonia"]
    assert mv.card["parity"]["max_abs_diff"] <= 1e-4
    assert 0.0 < mv.threshold < 1.0
    assert mv.card["metrics"]["validation"]["auc"] > 0.9
    assert "CC BY 4.0" in mv.card["data"]["licence"]
    assert any("not for clinical use" in x.lower() for x in mv.card["limitations"])
    # Promotion on a copy: the committed pointer is never touched by tests.
    copy = tmp_path / "models"
    shutil.copytree(MODELS / "cxr-pneumonia", copy / "cxr-pneumonia")
    reg2 = ModelRegistry(copy)
    assert reg2.promote("cxr-pneumonia", mv.version).version == mv.version
    assert isinstance(reg2.current("cxr-pneumonia"), ModelVersion)


def test_committed_cxr_triage_card_is_complete():
    """The adult chest model serving uses: every section issue 18 asks of its card."""
    reg = ModelRegistry(MODELS)
    mv = reg.current("cxr-triage")  # verifies the sha256
    card = mv.card
    assert [o["name"] for o in card["outputs"]] == ["abnormal", "pneumonia"]
    assert card["urgent"] == ["pneumonia"]
    for output in card["outputs"]:
        assert 0.0 < output["threshold"] < 1.0
        assert {"slope", "intercept", "ece_cross_fitted"} <= set(output["calibration"])
        m = card["metrics"]["validation"][output["name"]]
        assert m["sensitivity"] >= 0.9  # the triage operating point, on validation
        for stratum in ("all", "view PA", "view AP", "sex M", "sex F", "age 60+"):
            assert "ci95" in m["auc_by_stratum"][stratum], stratum
    assert card["population"]["age_min_years"] == 18
    assert card["population"]["views"] == ["PA", "AP"]
    assert card["parity"]["max_abs_diff"] <= 1e-4
    assert "Wang" in card["data"]["citations"][0] and "NIH" in card["data"]["acknowledgement"]
    assert card["gate"]["sha256"] and card["gate"]["held_out"]
    assert any("not for clinical use" in x.lower() for x in card["limitations"])
    assert card["known_failure_modes"]
    assert "cxr-pneumonia" in reg.names()  # retired from routing, kept in the registry
    assert "retired" in reg.current("cxr-pneumonia").card["status"]
