"""The HIS guide's imaging-result examples are what the code sends: rebuilt by the real
analysis on the shipped sample, they equal the committed files (times aside), the guide
shows each file verbatim, the FHIR example validates with fhir.resources and the HL7
examples parse with python-hl7."""

from __future__ import annotations

import json

import hl7
import pytest
from fhir.resources.R4B.diagnosticreport import DiagnosticReport

from tests.support.imaging_examples import EXAMPLES, FILES, GUIDE, build, normalise


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory):
    return build(tmp_path_factory.mktemp("imaging-examples"))


def test_examples_are_what_the_analysis_builds(rebuilt):
    assert set(rebuilt) == set(FILES.values())
    for name, text in rebuilt.items():
        committed = (EXAMPLES / name).read_text(encoding="utf-8")
        assert normalise(committed) == normalise(text), (
            f"{name} is out of date: python -m tests.support.imaging_examples --write")


def test_guide_shows_every_example_verbatim():
    guide = GUIDE.read_text(encoding="utf-8")
    for name in FILES.values():
        assert (EXAMPLES / name).read_text(encoding="utf-8") in guide, name


def test_examples_are_valid_fhir_and_hl7():
    DiagnosticReport.parse_obj(json.loads(
        (EXAMPLES / "diagnostic-report.json").read_text(encoding="utf-8")))
    for name, kind in (("oru-r01.hl7", "ORU^R01"), ("orm-o01.hl7", "ORM^O01"),
                       ("omi-o23.hl7", "OMI^O23")):
        text = (EXAMPLES / name).read_text(encoding="utf-8").replace("\n", "\r")
        message = hl7.parse(text, encoding="utf-8")
        assert str(message.segment("MSH")[9]).startswith(kind)
        assert message.extract_field("MSH", 1, 18) == "UNICODE UTF-8"
