"""Set-up shared by the imaging end-to-end, worklist and demo tests.

Uses the committed model (``models/cxr-triage``) when the registry has it, else the
small real ONNX test model; chest X-ray studies are the shipped demo radiographs the
intended-use gate accepts (``datasets/samples/demo/manifest.csv``), else real CR files
from pydicom-data with fresh UIDs.
"""

from __future__ import annotations

import csv
import shutil
import threading
import time
from pathlib import Path

import pydicom
import yaml
from pydicom.uid import generate_uid

from dicom_gateway.analyses.cxr_pneumonia import MODEL
from dicom_gateway.analyses.intended_use import Population
from haidang.settings import Settings
from tests.dicomdata import make_study
from tests.gateway_helpers import gateway_settings
from tests.imaging_model import build_registry

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
SAMPLES = ROOT / "datasets" / "samples"
DEMO = SAMPLES / "demo"
CXR_ROUTES = [{"name": "chest-xray", "match": {"Modality": ["CR", "DX"]},
               "analyses": ["cxr-pneumonia"]},
              {"name": "other", "match": {}, "analyses": ["study-summary"]}]


def model_registry(tmp: Path) -> Path:
    if (MODELS / "cxr-triage" / "current").is_file():
        return MODELS
    return build_registry(tmp / "models")


def adult_registry(tmp: Path) -> Path:
    """The served model's registry; its card gains an adult population if it has none."""
    source = model_registry(tmp)
    card_path = source / MODEL / (source / MODEL / "current").read_text().strip() / "card.yaml"
    card = yaml.safe_load(card_path.read_text(encoding="utf-8"))
    if Population.from_card(card).age_min:
        return source
    root = tmp / "models-adult"
    shutil.copytree(source / MODEL, root / MODEL)
    copied = root / MODEL / card_path.parent.name / "card.yaml"
    card["population"] = {"age_min": 18, "views": ["PA", "AP"], "modalities": ["CR", "DX"],
                          "photometric": ["MONOCHROME1", "MONOCHROME2"], "body_parts": ["CHEST"]}
    copied.write_text(yaml.safe_dump(card, allow_unicode=True), encoding="utf-8")
    return root


def imaging_settings(tmp: Path, orthanc=None, quiet: float = 0.5, **serving) -> Settings:
    base = gateway_settings(tmp, orthanc, quiet=quiet)
    data = base.model_dump(mode="json")
    data["routes"] = CXR_ROUTES
    data["serving"] = {**data["serving"], "models_dir": str(model_registry(tmp)), **serving}
    return Settings.model_validate(data)


def demo_manifest() -> list[dict[str, str]]:
    """One row per demo study: ``path``, ``expected`` (analysed / refused), ``reason`` ..."""
    with open(DEMO / "manifest.csv", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def sample_files() -> list[Path]:
    """The demo's adult frontal chest radiographs: what the model is made for."""
    if not (DEMO / "manifest.csv").is_file():
        return []
    return [DEMO / r["path"] for r in demo_manifest() if r["expected"] == "analysed"]


def cxr_studies(dest: Path, count: int) -> list[tuple[str, list[Path]]]:
    """``count`` one-image chest X-ray studies with fresh UIDs (shipped samples, cycled)."""
    samples = sample_files()
    out = []
    for n in range(count):
        if samples:
            ds = pydicom.dcmread(samples[n % len(samples)])
            ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            folder = dest / f"s{n}"
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            out.append((str(ds.StudyInstanceUID), [path]))
        else:
            out.append(make_study(["cr"], dest / f"s{n}"))
    return out


class WebServer:
    """uvicorn in a thread, for pages the tests open in Chromium."""

    def __init__(self, app, port: int):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{port}"

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


def copy_out(path: Path, name: str) -> None:
    """Keep an artefact (screenshot) where a person can look at it after the run."""
    out = ROOT / "var" / "test-artifacts"
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, out / name)
