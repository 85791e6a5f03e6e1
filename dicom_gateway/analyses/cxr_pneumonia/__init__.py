"""The chest X-ray analysis, highdicom-style: one folder with its codes and its wording.

``analysis`` gates, scores and builds; the objects it writes live beside it, each with the
codes of ``codes`` and the bilingual words of ``wording``: the TID 1500 SR (``sr``), the
presentation state on the original image (``gsps``), the optional visual summary
(``summary_image``), the FHIR DiagnosticReport (``fhir``) and the HL7 v2 result and
priority update (``hl7``). Nothing outside this folder and the registry names the analysis.
"""

from dicom_gateway.analyses.cxr_pneumonia.analysis import (
    MODEL,
    NAME,
    Admitted,
    analyse,
    imaging_client,
    intended_use,
    score,
    warm_up,
)

__all__ = ["MODEL", "NAME", "Admitted", "analyse", "imaging_client", "intended_use", "score",
           "warm_up"]
