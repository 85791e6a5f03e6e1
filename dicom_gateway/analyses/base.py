"""The contract between the gateway and whatever analyses a study."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pydicom

from haidang.ground.settings import Settings


@dataclass
class StudyInput:
    """A complete study as the gateway received it."""

    study_uid: str
    calling_ae: str
    instance_paths: list[Path]  # spool files, exactly as received
    settings: Settings


@dataclass
class AnalysisOutput:
    """What an analysis hands back: DICOM objects to write back and a worklist summary."""

    analysis: str  # e.g. "cxr-pneumonia"
    objects: list[pydicom.Dataset] = field(
        default_factory=list
    )  # same StudyInstanceUID, new series
    summary: dict = field(
        default_factory=dict
    )  # JSON-able: verdict, probability, model, version ...
    priority: str = "ROUTINE"  # or "URGENT"
