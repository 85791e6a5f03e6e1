"""cxr-triage: the shared pipeline on a small real subset, CAM parity, calibration parity.

One tiny model (narrow MONAI ResNet at 96 px so it trains in a minute or two, one seed, a
few epochs on the 1,838 NIH films) is trained once per module through ``training.pipeline.run``,
exactly as ``haidang train cxr-triage`` does; the tests then check what it wrote.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from haidang.cli import main  # noqa: E402
from serving.imaging.predictor import Predictor, calibrated  # noqa: E402
from serving.imaging.preprocess import file_to_unit, unit_to_model_input  # noqa: E402
from serving.imaging.session import ModelSession  # noqa: E402
from serving.registry import ModelVersion  # noqa: E402
from training.cxr_triage import (  # noqa: E402
    OUTPUTS,
    TriageConfig,
    TriageRecipe,
    findings_targets,
    load_labelled_folder,
    patient_split,
)
from training.pipeline import RunOptions, run  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
NIH = ROOT / "datasets" / "nih-cxr"


TINY = 96  # px; the CAM grid is TINY / 32 = 3


def tiny_config() -> TriageConfig:
    return TriageConfig(epochs=8, seeds=[0], widths=[8, 16, 32, 64], batch_size=32, lr=3e-3,
                        time_budget_s=1800,  # the budget never binds: deterministic
                        pretrain_epochs=2)  # the contrastive start runs, briefly


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("models") / "cxr-triage" / "0.0.1"
    recipe = TriageRecipe(NIH, tiny_config(), size=TINY)  # all 1,838 films
    run(recipe, out, RunOptions(command="pytest", progress=False,
                                checkpoint_dir=out.parent.parent / "checkpoints"))
    return out


def _session(model_dir: Path) -> ModelSession:
    mv = ModelVersion.load(model_dir)
    return ModelSession(mv.name, mv.version, mv.onnx_path, mv.sha256, mv.card)


def test_split_is_by_patient():
    data = load_labelled_folder(NIH, limit=300)
    tr, va = patient_split(data, 0.25, 18)
    assert len(tr) + len(va) == 300 and len(va) > 30
    assert not set(data.column("patient_id")[tr]) & set(data.column("patient_id")[va])


def test_findings_targets():
    assert findings_targets("No Finding")[:2] == [0.0, 0.0]
    assert findings_targets("Infiltration|Pneumonia")[:3] == [1.0, 1.0, 1.0]
    assert findings_targets("Fibrosis")[:2] == [1.0, 0.0]


def test_short_training_beats_chance(tiny_model):
    card = yaml.safe_load((tiny_model / "card.yaml").read_text())
    m = card["metrics"]["validation"]
    assert [o["name"] for o in card["outputs"]] == list(OUTPUTS)
    assert m["abnormal"]["auc_by_stratum"]["all"]["auc"] > 0.6, m["abnormal"]
    for o in card["outputs"]:
        assert 0 < o["threshold"] < 1
        assert m[o["name"]]["sensitivity"] >= 0.9  # the triage operating point on validation
    assert card["parity"]["max_abs_diff"] <= 1e-4
    assert card["sha256"] == ModelVersion.load(tiny_model).sha256
    for png in card["plots"]:
        assert (tiny_model / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cam_comes_from_the_same_forward_pass_with_onnx_parity(tiny_model):
    """ONNX logits and CAM equal PyTorch's, and logits = mean(CAM) + bias."""
    import onnxruntime as ort

    from training.pipeline import recipe_resume

    recipe = TriageRecipe(NIH, tiny_config(), size=TINY)
    saved = torch.load(tiny_model.parent.parent / "checkpoints" / "cxr-triage-0.0.1.pt",
                       weights_only=False)
    model = recipe_resume(recipe, saved).model
    data = load_labelled_folder(NIH, recipe.input_spec, limit=12)
    x = ((data.images.astype(np.float32) - 0.5) / 0.25).astype(np.float32)
    sess = ort.InferenceSession(str(tiny_model / "model.onnx"),
                                providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["logits", "cam"]
    logits, cam = sess.run(None, {"image": x})
    with torch.no_grad():
        t_logits, t_cam = model(torch.from_numpy(x))
    assert model.pixels is not None  # the default recipe blends in the pixel branch
    assert cam.shape == (12, len(OUTPUTS), TINY // 16, TINY // 16)
    np.testing.assert_allclose(cam, t_cam.numpy(), atol=1e-4)
    np.testing.assert_allclose(logits, t_logits.numpy(), atol=1e-4)
    bias = model.bias().detach().numpy()
    np.testing.assert_allclose(logits, cam.mean(axis=(2, 3)) + bias, atol=1e-4)


def test_pixel_branch_blend_is_the_sum_of_standardised_logits(tiny_model):
    """The blended logit is (cnn - centre)/scale + (pixel - centre)/scale, the pixel logit
    is a logistic regression on 16-px block means, and its C came from grouped CV."""
    from training.pipeline import recipe_resume

    recipe = TriageRecipe(NIH, tiny_config(), size=TINY)
    saved = torch.load(tiny_model.parent.parent / "checkpoints" / "cxr-triage-0.0.1.pt",
                       weights_only=False)
    model = recipe_resume(recipe, saved).model
    px = model.pixels
    x = torch.from_numpy((load_labelled_folder(NIH, recipe.input_spec, limit=6).images
                           .astype(np.float32) - 0.5) / 0.25)
    with torch.no_grad():
        logits, _ = model(x)
        cnn_cam, cnn_bias = model.cnn(x)
        cnn = cnn_cam.mean(dim=(2, 3)) + cnn_bias
        blocks = x.reshape(6, TINY // 16, 16, TINY // 16, 16).mean(dim=(2, 4)).reshape(6, -1)
        pixel = (blocks - px.centre) @ px.weight.T + px.intercept
        expected = (cnn - px.cnn_centre) / px.cnn_scale + (pixel - px.pixel_centre) / px.pixel_scale
    np.testing.assert_allclose(logits.numpy(), expected.numpy(), atol=1e-4)
    assert float(px.weight.abs().sum()) > 0
    facts = saved["report"]["pixel_branch"]["outputs"]
    assert set(facts) == set(OUTPUTS)
    assert facts["pneumonia"]["films"] < facts["abnormal"]["films"]  # pneumonia vs No Finding
    assert all(f["C"] > 0 and 0.5 < f["cv_auc"] <= 1 for f in facts.values()), facts


def test_serving_and_evaluate_give_identical_calibrated_probabilities(tiny_model, tmp_path):
    rows = list(csv.DictReader(open(NIH / "labels.csv", encoding="utf-8")))[:10]
    folder = tmp_path / "data"
    (folder / "images").mkdir(parents=True)
    for r in rows:
        shutil.copy(NIH / "images" / r["image"], folder / "images" / r["image"])
    with open(folder / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    csv_path = tmp_path / "pred.csv"
    assert main(["evaluate", str(tiny_model), "--data", str(folder), "--json",
                 "--predictions", str(csv_path)]) == 0
    evaluated = list(csv.DictReader(open(csv_path, encoding="utf-8")))

    session = _session(tiny_model)
    predictor = Predictor(session)
    x = np.stack([unit_to_model_input(file_to_unit(folder / "images" / r["image"])[0],
                                      session.card["input"]) for r in rows])
    served = predictor.predict(x)
    logits = session.run_all(x)[0]
    by_hand = 1 / (1 + np.exp(-(logits * [o["calibration"]["slope"] for o in
                                          session.card["outputs"]]
                                + [o["calibration"]["intercept"] for o in
                                   session.card["outputs"]])))
    np.testing.assert_allclose(calibrated(logits, session.card["outputs"]), by_hand, atol=1e-9)
    for row, pred, hand in zip(evaluated, served, by_hand, strict=True):
        for k, name in enumerate(OUTPUTS):
            assert float(row[name]) == pytest.approx(pred.probabilities[name], abs=1e-6)
            assert pred.probabilities[name] == pytest.approx(hand[k], abs=1e-6)
        assert (row["flagged"] == "true") == pred.finding
        assert pred.cams and np.asarray(pred.cams["pneumonia"]).shape == (TINY // 16,) * 2


def test_evaluate_json_and_predictions_format(tiny_model, tmp_path, capsys):
    """Issue 18's format: per output auc, auc_pa, auc_ap, accuracy, sensitivity,
    specificity, threshold, ece, n; CSV image, analysed, reason, one column per output,
    flagged. Nothing is written into the model folder."""
    from PIL import Image

    rows = list(csv.DictReader(open(NIH / "labels.csv", encoding="utf-8")))
    pick = [r for r in rows if r["view"] == "PA"][:6] + [r for r in rows if r["view"] == "AP"][:6]
    folder = tmp_path / "data"
    (folder / "images" / "sub").mkdir(parents=True)
    for r in pick:
        shutil.copy(NIH / "images" / r["image"], folder / "images" / "sub" / r["image"])
    Image.fromarray(np.full((64, 64), 128, np.uint8)).save(folder / "images" / "blank.png")
    shutil.copy(ROOT / "datasets" / "samples" / "real-cr-chest-rg1.dcm",
                folder / "images" / "cr.dcm")
    with open(folder / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "findings", "view"])
        for r in pick:
            w.writerow([f"sub/{r['image']}", r["findings"], r["view"]])
        w.writerow(["blank.png", "No Finding", "PA"])
        w.writerow(["cr.dcm", "No Finding", "PA"])
    before = sorted(p.name for p in tiny_model.iterdir())
    csv_path = tmp_path / "out" / "pred.csv"
    assert main(["evaluate", str(tiny_model), "--data", str(folder), "--json",
                 "--predictions", str(csv_path)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 14
    for name in OUTPUTS:
        m = result["outputs"][name]
        for key in ("auc", "auc_pa", "auc_ap", "accuracy", "sensitivity", "specificity",
                    "threshold", "ece", "n"):
            assert key in m, (name, key)
        assert m["n"] == 14
    assert "auc_vs_no_finding" in result["outputs"]["pneumonia"]
    with open(csv_path, encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        body = list(reader)
    assert header == ["image", "analysed", "reason", *OUTPUTS, "flagged"]
    assert len(body) == 14 and body[0][0] == f"sub/{pick[0]['image']}"
    for line in body:
        assert line[1] in ("true", "false") and line[-1] in ("true", "false")
        assert all(0.0 <= float(v) <= 1.0 for v in line[3:-1])
    assert sorted(p.name for p in tiny_model.iterdir()) == before


def test_evaluate_says_what_is_missing(tiny_model, tmp_path, capsys):
    (tmp_path / "images").mkdir()
    assert main(["evaluate", str(tiny_model), "--data", str(tmp_path), "--json"]) == 1
    assert "labels.csv" in capsys.readouterr().err
