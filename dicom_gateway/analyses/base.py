"""The contract between the gateway and whatever analyses a study.

An analysis is a pure step: it gets a :class:`StudyInput` (the study as received, the
instances its route picked, what it produced last time) and returns an
:class:`AnalysisOutput` (findings, the objects and messages to deliver). It routes
nothing, writes no file and opens no connection: the worker stores the output with the
job and the delivery queue sends it after the job commits, so a slow or absent receiver
never holds up a study and a crash never sends anything twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pydicom

from haidang.ground.settings import Settings

Channel = Literal["fhir", "hl7", "webhook"]


@dataclass
class StudyInput:
    """A complete study as the gateway received it."""

    study_uid: str
    calling_ae: str
    instance_paths: list[Path]  # spool files of the whole study, exactly as received
    settings: Settings
    routed_paths: list[Path] | None = None  # the instances routing gave this analysis (None: all)
    generation: int = 1  # bumped each time a late instance re-opens the study
    previous: list[Path] = field(default_factory=list)  # this analysis's last objects sent
    not_analysed: list[str] = field(default_factory=list)  # why other analyses did not run

    @property
    def routed(self) -> list[Path]:
        return self.instance_paths if self.routed_paths is None else self.routed_paths


@dataclass
class Finding:
    """One thing the analysis looked for, and what it concluded."""

    code: str  # SNOMED CT code of what was looked for
    meaning: str  # its English display name
    present: bool
    probability: float
    threshold: float


@dataclass
class Message:
    """A non-DICOM delivery: the body to send on one channel and its idempotency key.

    ``key`` is stable per study and analysis (FHIR: the report identifier a conditional
    update replaces) or per result generation (HL7: the message control id), so a resend
    after a crash or a timeout is recognised by the receiver as the same message.
    """

    channel: Channel
    kind: str  # "DiagnosticReport", "ORU^R01", "ORM^O01", "OMI^O23", "urgent-study"
    key: str
    body: str  # FHIR/webhook JSON or HL7 ER7 text


@dataclass
class AnalysisOutput:
    """What an analysis hands back. Nothing is sent until the worker's job commits."""

    analysis: str
    objects: list[pydicom.Dataset] = field(default_factory=list)  # same study, new series
    summary: dict = field(default_factory=dict)  # JSON-able: verdict, probability, model ...
    priority: str = "ROUTINE"  # or "URGENT"
    findings: list[Finding] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    thumbnail_png: bytes | None = None  # the worklist's picture of the result
    not_analysed: str | None = None  # the reason, when the study was received but not analysed
