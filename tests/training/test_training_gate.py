"""The gate's training pieces: the calibration split, the threshold rule, the members' graph.

The whole gate (``haidang train cxr-gate``) takes minutes; what it serves is tested against
the committed files in ``tests/serving/test_imaging_gate.py``. Here the parts that decide
where its threshold sits are checked on their own, on real NIH rows and small real inputs.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from training.gate import (  # noqa: E402
    CLASSES,
    GateEnsemble,
    GateNet,
    calibration_split,
    fit_member,
    frontal_threshold,
    stack_inputs,
)

ROOT = Path(__file__).resolve().parents[2]
NIH = ROOT / "datasets" / "nih-cxr"


def nih_rows() -> list[dict]:
    return list(csv.DictReader(open(NIH / "labels.csv", encoding="utf-8")))


def test_calibration_patients_are_split_off_whole():
    rows = nih_rows()
    train_idx = np.arange(0, len(rows), 1)
    fit, cal = calibration_split(rows, train_idx, 0.2, seed=7)
    assert sorted(np.concatenate([fit, cal]).tolist()) == train_idx.tolist()
    fit_patients = {rows[i]["patient_id"] for i in fit}
    cal_patients = {rows[i]["patient_id"] for i in cal}
    assert not fit_patients & cal_patients
    share = len(cal_patients) / (len(cal_patients) + len(fit_patients))
    assert 0.19 < share < 0.21
    again = calibration_split(rows, train_idx, 0.2, seed=7)[1]
    assert again.tolist() == cal.tolist()  # the same split on every run


def test_threshold_accepts_the_asked_share_of_calibration_films():
    rng = np.random.default_rng(0)
    for scale in (0.1, 1.0):  # whatever the score scale of the trained gate
        p = np.clip(rng.beta(8, 1, 400) * scale, 0, 1)
        for share in (0.975, 0.99):
            t = frontal_threshold(p, share)
            accepted = float(np.mean(p >= t))
            assert share <= accepted <= share + 2 / len(p)
            assert t in p  # a score a film really had, not an interpolation


def test_members_average_in_one_onnx_graph(tmp_path):
    from serving.imaging.gate import gate_input
    from serving.imaging.preprocess import picture_to_unit
    from training.export import export_onnx, parity_check

    rows = nih_rows()[:12]
    films = [(r["image"], picture_to_unit(NIH / "images" / r["image"])) for r in rows]
    sets = {"frontal": films[:6], "inverted": [(n, 1 - u) for n, u in films[6:]]}
    x, y = stack_inputs(sets)
    assert x.shape == (12, 1, 64, 64)
    assert y.tolist() == [CLASSES.index("frontal")] * 6 + [CLASSES.index("inverted")] * 6
    members = [fit_member(x, y, seed, epochs=1, progress=False) for seed in (0, 1)]
    net = GateEnsemble(members).eval()
    with torch.no_grad():
        probs, emb = net(x)
        alone = [m(x)[0] for m in members]
    assert torch.allclose(probs, (alone[0] + alone[1]) / 2, atol=1e-6)
    assert torch.allclose(probs.sum(dim=1), torch.ones(12), atol=1e-5)
    assert emb.shape == (12, 2 * 64)
    assert not torch.allclose(alone[0], alone[1])  # the seeds really differ
    path = export_onnx(net, tmp_path / "gate.onnx", (64, 64),
                       output_names=("probabilities", "embedding"))
    parity_check(net, path, np.stack([gate_input(u) for _, u in films]))


def test_a_single_member_is_a_gate_net():
    assert isinstance(fit_member(torch.zeros(4, 1, 64, 64), torch.tensor([0, 1, 2, 3]), 0,
                                 epochs=0, progress=False), GateNet)
