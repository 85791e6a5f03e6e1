"""The gateway end to end with real peers: dcmtk storescu in, Orthanc as the PACS out."""

from __future__ import annotations

import pydicom
import pytest

from dicom_gateway.runtime import Gateway
from tests.dicomdata import SAMPLES, make_study
from tests.gateway_helpers import dataset_hash, gateway_settings, send_as_is, wait_until

pytestmark = pytest.mark.orthanc


def test_ingest_assemble_and_write_back(tmp_path, orthanc):
    settings = gateway_settings(tmp_path, orthanc)
    study_uid, files = make_study(list(SAMPLES), tmp_path / "send")
    with Gateway(settings) as gw:
        for res in send_as_is(files, gw.port):
            assert res.returncode == 0, res.stderr
        index = gw.index
        # every instance indexed, stored byte-identical in its own transfer syntax
        instances = {i["sop_uid"]: i for i in index.study_instances(study_uid)}
        assert len(instances) == len(files)
        for f in files:
            sent = pydicom.dcmread(f, stop_before_pixels=True)
            got = instances[str(sent.SOPInstanceUID)]
            assert got["transfer_syntax"] == str(sent.file_meta.TransferSyntaxUID)
            assert dataset_hash(gw.spool.root / got["path"]) == dataset_hash(f)
        # assembled once, processed, and the result is in the PACS
        wait_until(
            lambda: (index.study(study_uid) or {}).get("state") == "processed",
            timeout=30,
            what="study processed",
        )
        assert index.query("SELECT COUNT(*) FROM jobs WHERE study_uid = ?", (study_uid,))[0][0] == 1
        wait_until(
            lambda: (
                all(e["state"] == "done" for e in index.list_exports()) and index.list_exports()
            ),
            timeout=30,
            what="export delivered",
        )
        found = orthanc.find_instances(StudyInstanceUID=study_uid, Modality="SR")
        assert len(found) == 1
        tags = orthanc.instance_tags(found[0]["ID"])
        assert tags["SeriesDescription"] == "Haidang study summary"
        results = index.results(study_uid)
        assert [r["state"] for r in results] == ["current"]
        assert results[0]["summary"]["instances"] == len(files)
        study = index.study(study_uid)
        assert study["first_arrival"] <= study["last_arrival"] <= study["assembled_at"]
        assert study["assembled_at"] <= study["processed_at"]
