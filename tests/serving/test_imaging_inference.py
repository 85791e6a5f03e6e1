"""ONNX session, batched prediction, calibration and class activation maps on small real
ONNX models."""

from __future__ import annotations

import numpy as np
import pytest

from haidang.ground.files import sha256_of as file_sha256
from serving.imaging.explain import heat_of, normalise, resize_map
from serving.imaging.predictor import (
    Predictor,
    calibrated,
    card_activation,
    card_threshold,
    to_probability,
)
from serving.imaging.session import (
    ModelSession,
    choose_providers,
    provider_arguments,
)
from tests.support.imaging_model import (
    CAM_BIASES,
    CAM_CARD,
    CARD,
    SIZE,
    bright_top_left,
    build_cam_onnx,
    build_onnx,
)


@pytest.fixture
def session(tmp_path):
    path = build_onnx(tmp_path / "model.onnx")
    return ModelSession(name="cxr-pneumonia", version="0.0.1-test", onnx_path=path,
                        sha256=file_sha256(path), card=CARD)


def test_session_reports_identity_and_cpu_provider(session):
    info = session.info()
    assert info["model"] == "cxr-pneumonia" and info["version"] == "0.0.1-test"
    assert len(info["sha256"]) == 64
    assert info["provider"] in choose_providers()
    assert info["provider"] == choose_providers()[0]


def test_session_refuses_a_changed_model_file(tmp_path):
    path = build_onnx(tmp_path / "model.onnx")
    with pytest.raises(RuntimeError, match="does not match"):
        ModelSession(name="m", version="1", onnx_path=path, sha256="0" * 64, card=CARD)


def test_unknown_provider_is_an_error_that_says_what_to_do():
    with pytest.raises(RuntimeError, match="serving.providers"):
        choose_providers(["NoSuchExecutionProvider"])


def test_cuda_is_served_in_strict_float32():
    """TF32 would let a verdict near the threshold differ between GPU and CPU machines."""
    args = provider_arguments(["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert args[0] == ("CUDAExecutionProvider", {"use_tf32": "0"})
    assert args[1] == "CPUExecutionProvider"
    assert provider_arguments(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_predict_uses_card_threshold_and_batches(session):
    predictor = Predictor(session, max_batch=3)
    images = np.concatenate([bright_top_left(4), np.zeros((3, 1, SIZE, SIZE), np.float32)])
    results = predictor.predict(images)
    assert len(results) == 7
    expected_pos = 1 / (1 + np.exp(-4.0))  # 8*1 - 4
    assert results[0].probability == pytest.approx(expected_pos, rel=1e-5)
    assert [r.finding for r in results] == [True] * 4 + [False] * 3
    assert results[0].label == "pneumonia" and results[-1].label == "normal"
    assert results[0].model == "cxr-pneumonia" and results[0].sha256 == session.sha256
    # a card with a higher threshold turns the same probability into "no finding"
    session.card = {**CARD, "threshold": 0.99}
    assert not Predictor(session).predict(bright_top_left())[0].finding


def test_card_threshold_shapes():
    assert card_threshold({"threshold": 0.3}) == 0.3
    assert card_threshold({"thresholds": {"operating": 0.42, "high_sensitivity": 0.2}}) == 0.42
    with pytest.raises(ValueError, match="threshold"):
        card_threshold({})


def test_to_probability_handles_two_class_logits_and_probability_outputs():
    p = to_probability(np.array([[0.0, 0.0], [0.0, 10.0]]), "softmax")
    assert p[0] == pytest.approx(0.5) and p[1] > 0.99
    as_is = card_activation({"output": {"name": "probability"}})
    assert to_probability(np.array([[0.7]]), as_is)[0] == pytest.approx(0.7)
    assert to_probability(np.array([[0.0]]), "sigmoid")[0] == pytest.approx(0.5)


def test_multi_output_card_calibrates_flags_and_returns_cams(tmp_path):
    """cxr-triage's contract: calibrated probabilities per output, URGENT from the card's
    urgent output, and the class activation map from the same run."""
    path = build_cam_onnx(tmp_path / "model.onnx")
    session = ModelSession(name="cxr-triage", version="0.0.2-test", onnx_path=path,
                           sha256=file_sha256(path), card=CAM_CARD)
    predictor = Predictor(session)
    images = np.concatenate([bright_top_left(1), np.zeros((1, 1, SIZE, SIZE), np.float32)])
    raw_logits, cam = session.run_all(images)
    assert cam.shape == (2, 2, 7, 7)
    np.testing.assert_allclose(raw_logits, cam.mean(axis=(2, 3)) + CAM_BIASES, atol=1e-6)
    bright, dark = predictor.predict(images)
    for k, output in enumerate(CAM_CARD["outputs"]):
        c = output["calibration"]
        expected = 1 / (1 + np.exp(-(c["slope"] * raw_logits[0, k] + c["intercept"])))
        assert bright.probabilities[output["name"]] == pytest.approx(expected, rel=1e-6)
    assert calibrated(raw_logits, CAM_CARD["outputs"])[0, 1] == pytest.approx(
        bright.probability)
    assert bright.finding and bright.label == "pneumonia" and bright.threshold == 0.5
    assert not dark.finding and dark.label == "no urgent finding"
    assert dark.findings == {"abnormal": False, "pneumonia": False}
    heat = heat_of(bright)
    assert heat.shape == (7, 7)
    assert heat[:3, :3].min() > 0 and np.abs(heat[4:, 4:]).max() == 0  # where the evidence is
    shown = resize_map(normalise(heat), (300, 200))
    assert shown.shape == (300, 200) and shown.max() <= 1.0 and shown.min() >= 0
    assert predictor.describe()["thresholds"] == {"abnormal": 0.45, "pneumonia": 0.5}


def test_a_card_and_a_graph_that_disagree_on_outputs_are_refused():
    with pytest.raises(ValueError, match="2 outputs, its card lists 1"):
        calibrated(np.zeros((1, 2)), [{"name": "pneumonia"}])


def test_embedded_client_picks_up_a_promoted_version(tmp_path):
    import yaml

    from haidang.ground.settings import ServingSettings
    from serving.imaging.client import ImagingClient
    from serving.registry import ModelRegistry
    from tests.support.imaging_model import build_registry

    root = build_registry(tmp_path, version="1.0.0")
    client = ImagingClient(ServingSettings(models_dir=root))
    assert client.predict(bright_top_left())[0].version == "1.0.0"
    build_registry(tmp_path, version="1.1.0")  # also moves `current`; promote it properly too
    card = root / "cxr-triage" / "1.1.0" / "card.yaml"
    card.write_text(yaml.safe_dump({**yaml.safe_load(card.read_text()), "threshold": 0.99}))
    ModelRegistry(root).promote("cxr-triage", "1.1.0")
    result = client.predict(bright_top_left())[0]
    assert result.version == "1.1.0" and result.threshold == 0.99 and not result.finding
