"""Prescription clinical decision support (CDSS).

The knowledge base (`serving.cdss.knowledge`) compiles the reviewable data files in
`datasets/knowledge/` and the Ministry of Health list in `datasets/ddi-vn/` into in-memory
indexes; `serving.cdss.icd` wraps WHO ICD-10 2019 and the MoH Vietnamese catalogue.
"""

from serving.cdss.icd import Icd10, IcdEdit
from serving.cdss.knowledge import (
    DiseaseContraindication,
    Drug,
    DrugMatch,
    IndicationRule,
    Interaction,
    KnowledgeBase,
    PregnancyRule,
)

__all__ = [
    "DiseaseContraindication",
    "Drug",
    "DrugMatch",
    "Icd10",
    "IcdEdit",
    "IndicationRule",
    "Interaction",
    "KnowledgeBase",
    "PregnancyRule",
]
