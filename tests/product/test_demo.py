"""``haidang demo --json`` as a user runs it: a subprocess, real Orthanc, the demo studies.

Every study the demo manifest says the intended-use gate must refuse (a lateral view, a
child, a CT slice, a blank image) comes back not analysed, with its reason, never URGENT;
the adult frontal chest radiographs are analysed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pydicom
import pytest

from tests.support.imaging_e2e import DEMO, ROOT, adult_registry, demo_manifest


def _demo(tmp_path: Path, *extra: str) -> tuple[dict, subprocess.CompletedProcess]:
    config = tmp_path / "haidang.toml"
    config.write_text(f'[serving]\nmodels_dir = "{adult_registry(tmp_path)}"\n')
    out = subprocess.run(
        [sys.executable, "-m", "haidang", "-c", str(config), "demo", "--json",
         "--workdir", str(tmp_path / "demo"), *extra],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout), out


def _chest_studies() -> int:
    """The studies the gate accepts: each gets a TID 1500 SR and a visual summary."""
    return sum(1 for r in demo_manifest() if r["expected"] == "analysed")


@pytest.mark.orthanc
def test_demo_json_with_orthanc(tmp_path):
    report, out = _demo(tmp_path)
    assert report["studies_sent"] == len(list(DEMO.glob("*.dcm")))
    assert report["studies_analysed"] == report["studies_sent"]
    assert report["reports_written"] == _chest_studies()
    urgent = [s for s in report["studies"] if s["priority"] == "URGENT"]
    assert report["flagged"] == len(urgent)
    assert all(s["analysed"] and s["verdict"] not in ("normal", "no urgent finding")
               for s in urgent)
    by_file = {s["study"]: s for s in report["studies"]}
    refused = [r for r in demo_manifest() if r["expected"] == "refused"]
    assert report["studies_refused"] == len(refused)
    for row in refused:
        shown = by_file[Path(row["path"]).stem]
        assert not shown["analysed"] and shown["priority"] == "ROUTINE", shown
        assert shown["reason"] == row["reason"] and shown["probability"] is None
        assert shown["reason_en"] and shown["reason_vi"]
    ttf = report["time_to_flag_ms"]
    assert 0 <= ttf["p50"] <= ttf["p95"] <= ttf["max"]
    assert report["pacs"].startswith("Orthanc") and report["worklist_url"].endswith("/worklist")
    assert len(report["worklist_sign_in"]["password"]) >= 12  # a fresh user, no key in a URL

    # clean shutdown: neither the PACS nor the worklist is still listening
    for url in (report["pacs"].split()[-1], report["worklist_url"]):
        with pytest.raises(httpx.HTTPError):
            httpx.get(url, timeout=1)


def test_demo_without_orthanc_writes_a_local_archive(tmp_path):
    report, _ = _demo(tmp_path, "--no-orthanc")
    assert report["pacs"] is None and report["studies_analysed"] == report["studies_sent"]
    archive = Path(report["archive"])
    modalities = [pydicom.dcmread(f, stop_before_pixels=True).Modality
                  for f in archive.rglob("*.dcm")]
    assert modalities.count("SR") == report["studies_sent"] and "OT" in modalities
    assert len(list((archive / "summaries").glob("*.png"))) == _chest_studies()


def test_demo_serves_results_behind_a_fresh_key(tmp_path):
    from haidang.demo import demo_settings

    one = demo_settings(tmp_path / "a", tmp_path / "models", None)
    two = demo_settings(tmp_path / "b", tmp_path / "models", None)
    assert not one.security.development
    assert len(one.security.api_keys) == 1 and len(one.security.api_keys[0]) >= 20
    assert one.security.api_keys != two.security.api_keys
