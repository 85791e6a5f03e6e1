"""The imaging-result messages the HIS guide shows, built by the real analysis on a shipped
sample: ``python -m tests.support.imaging_examples --write`` rewrites ``docs/examples/imaging/``;
``tests/test_imaging_docs_examples.py`` checks that the files and the guide still match what
the code sends (times aside)."""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "examples" / "imaging"
GUIDE = ROOT / "docs" / "his-integration.md"
SAMPLE = ROOT / "datasets" / "samples" / "demo" / "nih-01-ap-finding.dcm"  # an adult AP film
FILES = {("fhir", "DiagnosticReport"): "diagnostic-report.json",
         ("hl7", "ORU^R01"): "oru-r01.hl7", ("hl7", "ORM^O01"): "orm-o01.hl7",
         ("hl7", "OMI^O23"): "omi-o23.hl7", ("webhook", "urgent-study"): "webhook.json"}
_TIMES = [re.compile(r"\b\d{14}[+-]\d{4}\b"),  # HL7 DTM with offset
          re.compile(r'"(issued|analysed_at)": "[^"]+"')]


def build(tmp: Path) -> dict[str, str]:
    """File name -> text, as the analysis builds them (HL7 segments one per line)."""
    import pydicom

    from dicom_gateway.analyses import StudyInput, load_analysis
    from haidang.ground.settings import Settings
    from tests.support.imaging_e2e import model_registry

    out: dict[str, str] = {}
    for kind in ("ORM^O01", "OMI^O23"):
        settings = Settings.model_validate({
            "serving": {"models_dir": str(model_registry(tmp))},
            "notify": {"fhir_url": "https://his.example/fhir",
                       "webhook_url": "https://chat.example/hook",
                       "patient_identifier_system": "urn:oid:1.2.704.0.99.1"},
            "hl7": {"host": "ris.example", "priority_message": kind}})
        uid = str(pydicom.dcmread(SAMPLE, stop_before_pixels=True).StudyInstanceUID)
        result = load_analysis("cxr-pneumonia")(StudyInput(uid, "PACS", [SAMPLE], settings))
        for message in result.messages:
            body = message.body.replace("\r", "\n") if message.channel == "hl7" else message.body
            out[FILES[(message.channel, message.kind)]] = body.rstrip("\n") + "\n"
    return out


def normalise(text: str) -> str:
    text = _TIMES[0].sub("TIME", text)
    return _TIMES[1].sub(lambda m: f'"{m.group(1)}": "TIME"', text)


def write() -> None:
    EXAMPLES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in build(Path(tmp)).items():
            (EXAMPLES / name).write_text(text, encoding="utf-8")
    print(f"wrote {len(FILES)} examples under {EXAMPLES.relative_to(ROOT)}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        raise SystemExit(__doc__)
    write()
