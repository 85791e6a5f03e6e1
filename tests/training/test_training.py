"""Training, ONNX export with parity check, and evaluation — on small real subsets.

One tiny model (narrow MONAI ResNet, 1 seed, a few epochs on 900 PneumoniaMNIST images) is
trained once per module; the tests then export, evaluate and retrain from DICOM with it.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from haidang.cli import main  # noqa: E402
from serving.registry import ModelVersion  # noqa: E402
from training.cxr_pneumonia import (  # noqa: E402
    TrainConfig,
    build_network,
    train_and_register,
    youden_threshold,
)
from training.export import ParityError, export_onnx, parity_check  # noqa: E402
from training.schedule import learning_rate, schedule_progress  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
NPZ = ROOT / "datasets" / "pneumoniamnist" / "pneumoniamnist_trainval.npz"
SAMPLES = ROOT / "datasets" / "samples"
REQUIRED_JSON = ("auc", "accuracy", "sensitivity", "specificity", "threshold", "ece", "n")


def tiny_config(**kw) -> TrainConfig:
    base = dict(epochs=4, seeds=[0], widths=[8, 16, 32, 64], batch_size=64, lr=3e-3,
                time_budget_s=900, threads=2)  # budget never binds: deterministic
    base.update(kw)
    return TrainConfig(**base)


def stratified(labels: np.ndarray, n_per_class: dict[int, int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    idx = [rng.choice(np.flatnonzero(labels == c), n, replace=False)
           for c, n in n_per_class.items()]
    return np.sort(np.concatenate(idx))


@pytest.fixture(scope="module")
def subset_npz(tmp_path_factory) -> Path:
    """900 train / 200 val images (real PneumoniaMNIST), plus a 60-image 'test' split from val."""
    with np.load(NPZ) as npz:
        tr_x, tr_y = npz["train_images"], npz["train_labels"]
        va_x, va_y = npz["val_images"], npz["val_labels"]
    tr = stratified(tr_y.ravel(), {0: 300, 1: 600}, 1)
    va = stratified(va_y.ravel(), {0: 60, 1: 140}, 2)
    rest = np.setdiff1d(np.arange(len(va_y)), va)
    te = stratified(va_y.ravel()[rest], {0: 20, 1: 40}, 3)
    te = rest[te]
    path = tmp_path_factory.mktemp("npz") / "subset.npz"
    np.savez(path, train_images=tr_x[tr], train_labels=tr_y[tr], val_images=va_x[va],
             val_labels=va_y[va], test_images=va_x[te], test_labels=va_y[te])
    return path


@pytest.fixture(scope="module")
def tiny_model(subset_npz, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("models") / "cxr-pneumonia" / "0.0.1"
    train_and_register(subset_npz, out, tiny_config(), command="pytest", progress=False)
    return out


def test_short_training_beats_chance(tiny_model):
    card = yaml.safe_load((tiny_model / "card.yaml").read_text())
    m = card["metrics"]["validation"]
    assert m["n"] == 200
    assert m["auc"] > 0.80, m
    assert (m["sensitivity"] + m["specificity"]) / 2 > 0.70, m
    assert card["parity"]["max_abs_diff"] <= 1e-4
    assert card["sha256"] == ModelVersion.load(tiny_model).sha256
    for png in card["plots"]:
        assert (tiny_model / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_export_parity_dynamic_batch_and_failure(tmp_path):
    import onnxruntime as ort

    torch.manual_seed(0)
    net = build_network(tiny_config()).eval()
    path = export_onnx(net, tmp_path / "m.onnx", (28, 28))
    x = np.random.default_rng(0).normal(size=(11, 1, 28, 28)).astype(np.float32)
    assert parity_check(net, path, x) <= 1e-4
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].name == "image"
    one = np.concatenate([sess.run(None, {"image": x[i : i + 1]})[0] for i in range(len(x))])
    allx = sess.run(None, {"image": x})[0]
    assert allx.shape == (11, 1)
    np.testing.assert_allclose(one, allx, atol=1e-5)
    with torch.no_grad():  # the graph no longer matches the weights: export must be refused
        next(net.parameters()).add_(0.5)
    with pytest.raises(ParityError, match="onnxruntime"):
        parity_check(net, path, x)


def test_schedule_fits_the_time_budget():
    assert schedule_progress(10, 100, elapsed_s=5, budget_s=100) == 0.1  # steps decide
    assert schedule_progress(10, 100, elapsed_s=50, budget_s=100) == 0.5  # time decides
    peak = 2e-3
    assert learning_rate(peak, 0.0) == pytest.approx(peak / 25)
    assert learning_rate(peak, 0.15) == pytest.approx(peak)
    assert learning_rate(peak, 1.0) < peak * 1e-3  # annealed when the budget runs out
    lrs = [learning_rate(peak, d / 100) for d in range(15, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))


def test_youden_threshold_separates_perfect_scores():
    labels = np.array([0, 0, 0, 1, 1, 1])
    prob = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.9])
    t = youden_threshold(labels, prob)
    assert 0.3 < t <= 0.6
    assert ((prob >= t) == labels.astype(bool)).all()


def test_evaluate_json_on_tiny_npz(tiny_model, subset_npz, tmp_path, capsys):
    """MedMNIST .npz input keeps working; figures go only where --plots says."""
    before = sorted(p.name for p in tiny_model.iterdir())
    argv = ["evaluate", str(tiny_model), "--data", str(subset_npz), "--split", "test", "--json",
            "--plots", str(tmp_path / "plots")]
    code = main(argv)
    assert code == 0
    out = capsys.readouterr().out.strip()
    assert out.count("\n") == 0  # exactly one JSON object on one line
    result = json.loads(out)
    m = result["outputs"]["pneumonia"]
    for key in REQUIRED_JSON:
        assert key in m, key
    assert m["n"] == 60 and m["n_positive"] == 40
    card = yaml.safe_load((tiny_model / "card.yaml").read_text())
    assert m["threshold"] == pytest.approx(card["threshold"])
    assert 0.5 < m["auc"] <= 1.0
    assert 0 <= m["ece"] <= 1
    for name in ("roc", "pr", "confusion", "calibration"):
        png = tmp_path / "plots" / f"eval-pneumonia-{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stat().st_size > 10_000
    assert sorted(p.name for p in tiny_model.iterdir()) == before  # nothing written there


def test_evaluate_refuses_a_missing_split(tiny_model, subset_npz, capsys):
    assert main(["evaluate", str(tiny_model), "--data", str(subset_npz), "--split", "nope"]) == 1
    assert "no split 'nope'" in capsys.readouterr().err


def test_evaluate_dicom_folder_equals_npz(tiny_model, tmp_path, capsys):
    """The 8 wrapped sample CRs (images/ + labels.csv) give the figures of their npz images."""
    import shutil

    with open(SAMPLES / "manifest.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    idx = [int(r["source"].split("[")[1].rstrip("]")) for r in rows]
    with np.load(NPZ) as npz:
        np.savez(tmp_path / "s.npz", samples_images=npz["val_images"][idx],
                 samples_labels=npz["val_labels"][idx])
    folder = tmp_path / "dicom"
    (folder / "images").mkdir(parents=True)
    with open(folder / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "findings"])
        for r in rows:
            shutil.copy(SAMPLES / r["path"], folder / "images" / r["path"])
            w.writerow([r["path"], "Pneumonia" if r["label"] == "1" else "No Finding"])
    argv = ["evaluate", str(tiny_model), "--split", "samples", "--json"]
    assert main([*argv, "--data", str(folder)]) == 0
    from_dicom = json.loads(capsys.readouterr().out)["outputs"]["pneumonia"]
    assert main([*argv, "--data", str(tmp_path / "s.npz")]) == 0
    from_npz = json.loads(capsys.readouterr().out)["outputs"]["pneumonia"]
    assert from_dicom["n"] == 8
    for key in ("auc", "accuracy", "sensitivity", "specificity", "ece"):
        assert from_dicom[key] == pytest.approx(from_npz[key], abs=1e-6), key


def _load_make_samples():
    spec = importlib.util.spec_from_file_location("make_samples", SAMPLES / "make_samples.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_train_from_dicom_folder_with_labels_csv(tmp_path, capsys):
    """A hospital's folder of DICOM + labels CSV (SOPInstanceUID -> label, split column)."""
    ms = _load_make_samples()
    with np.load(NPZ) as npz:
        x, y = npz["train_images"], npz["train_labels"].ravel()
    idx = stratified(y, {0: 60, 1: 80}, 5)
    folder = tmp_path / "dicom"
    folder.mkdir()
    rows = []
    for n, i in enumerate(idx):
        ds = ms.wrap_medmnist(x[i], f"test-train-{i}", ms.PATIENTS[n % len(ms.PATIENTS)], n)
        ds.save_as(folder / f"{n:04d}.dcm", enforce_file_format=True)
        rows.append({"SOPInstanceUID": ds.SOPInstanceUID,
                     "label": ["normal", "pneumonia"][y[i]] if n % 2 else str(y[i]),
                     "split": "val" if n % 4 == 0 else "train"})
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["SOPInstanceUID", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    out = tmp_path / "models" / "cxr-pneumonia" / "0.1.0"
    code = main(["train", "cxr-pneumonia", "--data", str(folder), "--labels", str(labels),
                 "--out", str(out), "--epochs", "2", "--seeds", "0", "--no-progress"])
    assert code == 0
    mv = ModelVersion.load(out)
    assert mv.card["training"]["n_val"] == 35 and mv.card["training"]["n_train"] == 105
    assert "val AUC" in capsys.readouterr().out
    # retraining into an existing version folder is refused
    assert main(["train", "cxr-pneumonia", "--data", str(folder), "--labels", str(labels),
                 "--out", str(out), "--epochs", "1", "--seeds", "0", "--no-progress"]) == 1
