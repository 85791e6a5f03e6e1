"""The codes of the chest X-ray analysis, once, for every object it writes.

The SR (TID 1500), the presentation state, the visual summary, the FHIR report and the HL7
result all name the same finding with the same SNOMED CT codes (DICOM CID 240 for its
presence), and the same device as the one that made them.
"""

from __future__ import annotations

SNOMED_CT = "SCT"  # DICOM and HL7 v2 coding scheme designator; FHIR: http://snomed.info/sct
PNEUMONIA = ("233604007", "Pneumonia")
PRESENT = ("52101004", "Present")
ABSENT = ("272519000", "Absent")
MANUFACTURER = "Hai Dang (open source)"
