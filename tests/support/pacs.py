"""Real peers for tests: an Orthanc PACS on loopback and the dcmtk command-line tools.

Both come from ``haidang.testbed`` (shared with the demo and the benchmarks); this module adds
the REST helpers the tests' assertions use.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from haidang.testbed.dcmtk import (  # noqa: F401 - the tests import them from here
    dcmtk,
    dcmtk_env,
    storescu,
    wait_for_port,
)
from haidang.testbed.orthanc import Orthanc as BaseOrthanc
from haidang.testbed.orthanc import free_port  # noqa: F401 - the tests import it from here

ORTHANC_BIN = shutil.which("Orthanc", path="/usr/sbin:/usr/bin") or "/usr/sbin/Orthanc"


class Orthanc(BaseOrthanc):
    """The product's Orthanc launcher (``haidang.testbed.orthanc``) plus REST helpers for tests."""

    def __init__(self, workdir: Path, aet: str = "ORTHANC", modalities: dict | None = None):
        super().__init__(workdir, aet=aet, modalities=modalities, binary=ORTHANC_BIN,
                         name="haidang-test-pacs")
