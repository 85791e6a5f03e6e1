"""``training.learning_curve``: the line fit's arithmetic, the patient shares, and a short real
curve on NIH films written as JSON and a plot (issue 18's pneumonia gap)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from training.cxr_triage import SPEC, CxrSet, TriageConfig, patient_split
from training.learning_curve import CurveConfig, learning_curve, log_fit, patients_share, write

ROOT = Path(__file__).resolve().parents[2]
NIH = ROOT / "datasets" / "nih-cxr"


def test_log_fit_recovers_a_known_line():
    films = [250, 500, 1000, 2000]
    auc = [0.70 + 0.02 * math.log2(f / 250) for f in films]  # +0.02 per doubling
    fitted = log_fit(films, auc, target=0.78)
    assert fitted["per_doubling"] == pytest.approx(0.02, abs=1e-6)
    assert fitted["standard_error"] == pytest.approx(0.0, abs=1e-6)
    assert fitted["films_for_target"] == 250 * 2 ** 4  # 0.08 above 0.70 is four doublings
    assert fitted["at_most_films_now"] == pytest.approx(0.76, abs=1e-4)


def test_log_fit_says_when_no_amount_of_films_reaches_the_target():
    fitted = log_fit([300, 600, 1200], [0.72, 0.70, 0.68], target=0.78)
    assert fitted["per_doubling"] < 0
    assert fitted["films_for_target"] is None


def _rows(n_patients: int, films_each: int) -> CxrSet:
    rows = [{"patient_id": str(p), "image": f"{p}_{k}.png"}
            for p in range(n_patients) for k in range(films_each)]
    targets = np.zeros((len(rows), 7), np.float32)
    return CxrSet(np.zeros((len(rows), 1, 4, 4), np.float16), targets, rows)


def test_a_share_takes_whole_patients_and_differs_by_draw():
    train = _rows(40, 3)
    half = patients_share(train, 0.5, draw=0)
    assert len(half) == 60  # 20 patients, all 3 films each
    pids = {train.rows[i]["patient_id"] for i in half}
    assert len(pids) == 20
    assert set(patients_share(train, 0.5, draw=1).tolist()) != set(half.tolist())
    assert len(patients_share(train, 1.0, draw=3)) == len(train)


def test_shares_outside_zero_to_one_are_refused():
    with pytest.raises(ValueError, match="shares must lie in"):
        CurveConfig(shares=[0.0, 1.0])
    with pytest.raises(ValueError, match="shares must lie in"):
        CurveConfig(shares=[1.5])


def test_a_short_curve_on_real_films(tmp_path):
    triage = TriageConfig(epochs=2, widths=[8, 16, 32, 64], batch_size=32, lr=3e-3,
                          time_budget_s=1800, pretrain_epochs=1, pretrain_budget_s=1800)
    cfg = CurveConfig(shares=[0.5, 1.0], draws=1, triage=triage)
    spec = {**SPEC, "size": [96, 96]}
    result = learning_curve(NIH, cfg, spec, limit=360, progress=False)

    half, whole = result["points"]
    assert (half["share"], whole["share"]) == (0.5, 1.0)
    assert 0 < half["films"] < whole["films"]
    for point in result["points"]:
        for kind in ("cnn", "blended"):
            assert set(point[kind]) == {"abnormal", "pneumonia_vs_no_finding"}
            assert all(0.0 <= v <= 1.0 for v in point[kind].values())
    # every point is scored on the recipe's own validation patients, never trained on
    from training.cxr_triage import load_labelled_folder

    data = load_labelled_folder(NIH, spec, 360)
    tr, va = patient_split(data, triage.val_fraction, triage.split_seed)
    assert whole["films"] == len(tr)
    assert result["validation"]["films"] == len(va)
    assert result["pretraining"]["epochs_run"] == 1
    fits = result["fit_log2_films"]["blended"]["pneumonia_vs_no_finding"]
    assert fits["points"] == 2 and fits["target"] == 0.78

    json_path, png = write(result, tmp_path / "curve")
    assert json.loads(json_path.read_text(encoding="utf-8"))["points"] == result["points"]
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"


def test_the_command_refuses_a_bad_share_before_any_work(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "haidang", "learning-curve", "cxr-triage", "--out",
         str(tmp_path / "c"), "--shares", "0.5,2"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert proc.returncode == 2
    assert "shares must lie in (0, 1]" in proc.stderr
    assert not (tmp_path / "c").exists()
