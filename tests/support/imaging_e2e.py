"""Set-up shared by the imaging end-to-end, worklist and demo tests.

Uses the committed model (``models/cxr-triage``) when the registry has it, else the
small real ONNX test model; chest X-ray studies are the shipped demo radiographs the
intended-use gate accepts (``datasets/samples/demo/manifest.csv``), else real CR files
from pydicom-data with fresh UIDs.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import yaml

from dicom_gateway.analyses.cxr_pneumonia import MODEL
from dicom_gateway.analyses.intended_use import Population
from haidang.ground.settings import Settings
from haidang.testbed.studies import (  # noqa: F401 - the tests import them from here
    DEMO,
    cxr_studies,
    demo_manifest,
    sample_files,
)
from tests.support.gateway_helpers import gateway_settings
from tests.support.imaging_model import build_registry

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
SAMPLES = ROOT / "datasets" / "samples"
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
