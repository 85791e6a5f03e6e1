"""Routing: which analyses a study gets, from its DICOM attributes and its source.

Rules come from ``[[routes]]``: a rule matches an instance when every listed
attribute has one of the listed values (``""`` matches a missing or empty
attribute; ``CallingAE`` is the source's AE title). For each instance the first
matching rule decides; a study gets the union over its instances, in rule order.
"""

from __future__ import annotations

from haidang.ground.settings import Route

DEFAULT_ANALYSES = ["study-summary"]


def _norm(value) -> str:
    return str(value or "").strip().upper()


def rule_matches(route: Route, attrs: dict, calling_ae: str) -> bool:
    for key, allowed in route.match.items():
        value = calling_ae if key == "CallingAE" else attrs.get(key, "")
        if _norm(value) not in {_norm(a) for a in allowed}:
            return False
    return True


def route_study(routes: list[Route], instances: list[dict], calling_ae: str
                ) -> dict[str, list[int]]:
    """Each analysis to run on a study, in order of first match, with the positions of the instances
    (in ``instances``, their attribute dicts) it runs on. The only place routing is decided:
    an analysis gets its instances from here and never matches rules itself."""
    if not routes:
        return {name: list(range(len(instances))) for name in DEFAULT_ANALYSES}
    chosen: dict[str, list[int]] = {}
    for position, attrs in enumerate(instances):
        for route in routes:
            if rule_matches(route, attrs, calling_ae):
                for name in route.analyses:
                    chosen.setdefault(name, []).append(position)
                break
    return chosen


def analyses_for(routes: list[Route], instances: list[dict], calling_ae: str) -> list[str]:
    """The analyses to run on a study whose instances have these attributes."""
    return list(route_study(routes, instances, calling_ae))
