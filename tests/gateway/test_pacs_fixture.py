"""The test PACS itself works: dcmtk storescu into the Orthanc fixture, read back over REST."""

from haidang.testbed.studies import make_study
from tests.support.pacs import storescu


def test_storescu_into_orthanc(orthanc, tmp_path):
    study_uid, files = make_study(["ct", "cr"], tmp_path)
    result = storescu(files, orthanc.dicom_port, orthanc.aet)
    assert result.returncode == 0, result.stderr
    found = orthanc.find_instances(StudyInstanceUID=study_uid)
    assert len(found) == 2
