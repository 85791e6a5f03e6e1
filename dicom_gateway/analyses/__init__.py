"""Analyses the gateway runs on a complete study, looked up by name: the registry.

An analysis is a function ``analyse(study: StudyInput) -> AnalysisOutput`` named in
:data:`ANALYSES` as ``"module:function"``; modules are imported only when a study
needs them, so a missing or broken analysis fails its job, not the gateway. Analysis
names appear only here and in each analysis's own module.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from dicom_gateway.analyses.base import AnalysisOutput, Finding, Message, StudyInput

ANALYSES: dict[str, str] = {
    "study-summary": "dicom_gateway.analyses.study_summary:analyse",
    "cxr-pneumonia": "dicom_gateway.analyses.cxr_pneumonia:analyse",
}
# runs on every study no other analysis analysed, with the reasons: a trace in PACS
TRACE_ANALYSIS = "study-summary"
# loads an analysis's model and builders before the first study (``warm_up(settings)``)
WARM_UPS: dict[str, str] = {
    "cxr-pneumonia": "dicom_gateway.analyses.cxr_pneumonia:warm_up",
}


class AnalysisUnavailable(RuntimeError):
    """The named analysis is not registered or cannot be imported."""


def _load(name: str, target: str) -> Callable:
    module_name, _, func_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure makes the analysis unavailable
        raise AnalysisUnavailable(
            f"analysis {name!r} cannot be loaded from {module_name}: {type(exc).__name__}: {exc}; "
            "check that its package and model are installed"
        ) from exc
    func = getattr(module, func_name, None)
    if func is None:
        raise AnalysisUnavailable(f"analysis {name!r}: {module_name} has no function {func_name}")
    return func


def load_analysis(name: str) -> Callable[[StudyInput], AnalysisOutput]:
    target = ANALYSES.get(name)
    if target is None:
        raise AnalysisUnavailable(
            f"analysis {name!r} is not registered (known: {', '.join(sorted(ANALYSES))}); "
            "fix the analyses list of the matching [[routes]] rule"
        )
    return _load(name, target)


def warm_up_routed(settings) -> dict[str, dict]:
    """Warm up every analysis the routes name that has a warm-up; returns what each reports."""
    routed = dict.fromkeys(name for route in settings.routes for name in route.analyses)
    return {name: _load(name, WARM_UPS[name])(settings) for name in routed if name in WARM_UPS}


__all__ = ["ANALYSES", "TRACE_ANALYSIS", "WARM_UPS", "AnalysisOutput", "AnalysisUnavailable",
           "Finding", "Message", "StudyInput", "load_analysis", "warm_up_routed"]
