"""Objects written back to PACS and the HIS for an AI finding: TID 1500 SR, visual summary, FHIR."""
