"""Routing: which analyses a study gets, from its DICOM attributes and its source.

Rules come from ``[[routes]]``: a rule matches an instance when every listed
attribute has one of the listed values (``""`` matches a missing or empty
attribute; ``CallingAE`` is the source's AE title). For each instance the first
matching rule decides; a study gets the union over its instances, in rule order.
"""

from __future__ import annotations

from haidang.ground.settings import Route

ROUTED_ATTRIBUTES = (
    "Modality",
    "BodyPartExamined",
    "SOPClassUID",
    "ViewPosition",
    "StudyDescription",
    "SeriesDescription",
    "Manufacturer",
)
DEFAULT_ANALYSES = ["study-summary"]


def _norm(value) -> str:
    return str(value or "").strip().upper()


def rule_matches(route: Route, attrs: dict, calling_ae: str) -> bool:
    for key, allowed in route.match.items():
        value = calling_ae if key == "CallingAE" else attrs.get(key, "")
        if _norm(value) not in {_norm(a) for a in allowed}:
            return False
    return True


def analyses_for(routes: list[Route], instances: list[dict], calling_ae: str) -> list[str]:
    """The analyses to run on a study whose instances have these attributes."""
    if not routes:
        return list(DEFAULT_ANALYSES)
    chosen: list[str] = []
    for attrs in instances:
        for route in routes:
            if rule_matches(route, attrs, calling_ae):
                chosen += [a for a in route.analyses if a not in chosen]
                break
    return chosen
