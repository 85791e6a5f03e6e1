"""Shared fixtures: a real Orthanc on loopback, fresh-UID copies of real DICOM files."""

from __future__ import annotations

import pytest

from tests.support.pacs import Orthanc


@pytest.fixture
def orthanc(tmp_path_factory):
    """A running Orthanc with an empty storage directory; stopped after the test."""
    pacs = Orthanc(tmp_path_factory.mktemp("orthanc"))
    pacs.start()
    yield pacs
    pacs.stop()
