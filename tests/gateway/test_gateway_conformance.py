"""The listener against independent DICOM implementations, and at the edges of PS3.8.

Senders: dcmtk ``storescu`` (several presentation contexts; 4 KiB PDUs), pynetdicom's own
``storescu`` app, PixelMed's ``StorageSOPClassSCU`` (Java) and Orthanc pushing through its
REST ``/modalities/{id}/store``. Each instance must arrive with the content it was sent with.
At the edges: an A-ABORT in the middle of a data set, a release after a pause, and an
association whose every presentation context is refused.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from io import BytesIO
from pathlib import Path

import httpx
import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RQ, A_RELEASE_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import A_ABORT, A_ASSOCIATE, A_RELEASE, MaximumLengthNotification
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import CTImageStorage, PatientRootQueryRetrieveInformationModelFind

from dicom_gateway.runtime import Gateway
from dicom_gateway.scu import echo
from haidang.testbed.studies import fresh_copy
from tests.support.gateway_helpers import dataset_hash, gateway_settings
from tests.support.pacs import Orthanc, storescu

pytestmark = pytest.mark.orthanc

PIXELMED = Path("/usr/share/java/pixelmed.jar")
ANY_SOURCE: list = []  # allowed_sources empty: any calling AE (each tool names itself)


def _stored_as_sent(gw: Gateway, files: list[Path]) -> None:
    """Every file is in the index and its spool copy has the same content."""
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        row = gw.index.study_instances(str(ds.StudyInstanceUID))
        by_sop = {r["sop_uid"]: r for r in row}
        assert str(ds.SOPInstanceUID) in by_sop, f"{f.name} not stored"
        assert dataset_hash(gw.spool.root / by_sop[str(ds.SOPInstanceUID)]["path"]) == \
            dataset_hash(f), f"{f.name} stored with other content"


def _files(tmp_path: Path, keys=("ct", "mr", "cr")) -> list[Path]:
    return [fresh_copy(k, tmp_path / "send") for k in keys]


def test_dcmtk_storescu_several_contexts_and_4k_pdus(tmp_path):
    files = _files(tmp_path)
    classes = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPClassUID) for f in files}
    assert len(classes) >= 3  # one presentation context per SOP class at least
    small = _files(tmp_path / "small")
    with Gateway(gateway_settings(tmp_path, allowed=ANY_SOURCE, quiet=30)) as gw:
        res = storescu(files, gw.port, "HAIDANG", extra=["-v"])
        assert res.returncode == 0, res.stderr
        assert res.stderr.count("Received Store Response (Success)") == len(files), res.stderr
        _stored_as_sent(gw, files)
        # 4 KiB PDUs both ways: the 6 MB CR arrives in ~1,500 P-DATA-TF PDUs
        res = storescu(small, gw.port, "HAIDANG",
                       extra=["-v", "--max-pdu", "4096", "--max-send-pdu", "4096"])
        assert res.returncode == 0, res.stderr
        assert res.stderr.count("Received Store Response (Success)") == len(small), res.stderr
        _stored_as_sent(gw, small)
        assert gw.index.counts()["instances"] == len(files) + len(small)


def test_pynetdicom_storescu_app(tmp_path):
    files = _files(tmp_path, ("ct", "mr"))
    with Gateway(gateway_settings(tmp_path, allowed=ANY_SOURCE, quiet=30)) as gw:
        for f in files:
            res = subprocess.run(
                [sys.executable, "-m", "pynetdicom", "storescu", "-aet", "PYNETDICOM",
                 "-aec", "HAIDANG", "-v", "127.0.0.1", str(gw.port), str(f)],
                capture_output=True, text=True, timeout=120)
            assert res.returncode == 0, res.stderr
            assert "Received Store Response (Status: 0x0000 - Success)" in res.stderr, res.stderr
        _stored_as_sent(gw, files)


def test_pixelmed_storage_scu(tmp_path):
    assert PIXELMED.is_file(), "apt-get install libpixelmed-java"
    files = _files(tmp_path, ("ct", "mr"))
    with Gateway(gateway_settings(tmp_path, allowed=ANY_SOURCE, quiet=30)) as gw:
        for f in files:
            res = subprocess.run(
                ["java", "-cp", str(PIXELMED), "com.pixelmed.network.StorageSOPClassSCU",
                 "127.0.0.1", str(gw.port), "HAIDANG", "PIXELMED", str(f)],
                capture_output=True, text=True, timeout=120)
            assert res.returncode == 0, res.stdout + res.stderr
        _stored_as_sent(gw, files)
        rows = [r for f in files for r in gw.index.study_instances(
            str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID))]
        assert {r["calling_ae"] for r in rows} == {"PIXELMED"}


def test_orthanc_pushes_with_modalities_store(tmp_path):
    files = _files(tmp_path, ("ct", "mr", "us_rle"))
    settings = gateway_settings(tmp_path, allowed=ANY_SOURCE, quiet=30)
    port = settings.gateway.port
    pacs = Orthanc(tmp_path / "orthanc", aet="PUSHER",
                   modalities={"haidang": ["HAIDANG", "127.0.0.1", port]})
    pacs.start()
    try:
        ids = []
        for f in files:
            r = httpx.post(f"{pacs.url}/instances", content=f.read_bytes(), timeout=30)
            r.raise_for_status()
            ids.append(r.json()["ID"])
        with Gateway(settings) as gw:
            r = httpx.post(f"{pacs.url}/modalities/haidang/store",
                           json={"Resources": ids, "Synchronous": True}, timeout=120)
            assert r.status_code == 200, r.text
            assert r.json()["InstancesCount"] == len(files)
            _stored_as_sent(gw, files)
    finally:
        pacs.stop()


# -- the edges of PS3.8, spoken with pynetdicom's PDU classes ---------------------------


def _associate(port: int, contexts) -> tuple[socket.socket, A_ASSOCIATE_AC]:
    rq = A_ASSOCIATE()
    rq.application_context_name = "1.2.840.10008.3.1.1.1"
    rq.calling_ae_title, rq.called_ae_title = "EDGE", "HAIDANG"
    for i, cx in enumerate(contexts):
        cx.context_id = 2 * i + 1
    rq.presentation_context_definition_list = list(contexts)
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16384
    rq.user_information = [max_length]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(rq)
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(pdu.encode())
    head = sock.recv(6, socket.MSG_WAITALL)
    body = sock.recv(int.from_bytes(head[2:6], "big"), socket.MSG_WAITALL)
    assert head[0] == 0x02, f"expected A-ASSOCIATE-AC, got PDU type {head[0]:#04x}"
    ac = A_ASSOCIATE_AC()
    ac.decode(head + body)
    return sock, ac


def _release(sock: socket.socket) -> bytes:
    """Send A-RELEASE-RQ; the PDU type answered (0x06: A-RELEASE-RP)."""
    rq = A_RELEASE_RQ()
    rq.from_primitive(A_RELEASE())
    sock.sendall(rq.encode())
    head = sock.recv(6, socket.MSG_WAITALL)
    sock.recv(int.from_bytes(head[2:6], "big"), socket.MSG_WAITALL)
    return head[0]


def _store_pdus(path: Path, context_id: int) -> list[bytes]:
    """The P-DATA-TF PDUs (command, then data set fragments) of one C-STORE-RQ."""
    ds = pydicom.dcmread(path)
    prim = C_STORE()
    prim.MessageID = 1
    prim.AffectedSOPClassUID = ds.SOPClassUID
    prim.AffectedSOPInstanceUID = ds.SOPInstanceUID
    prim.Priority = 2
    prim.DataSet = BytesIO(encode(ds, False, True))
    msg = C_STORE_RQ()
    msg.primitive_to_message(prim)
    out = []
    for p_data in msg.encode_msg(context_id, 16384):
        pdu = P_DATA_TF()
        pdu.from_primitive(p_data)
        out.append(pdu.encode())
    return out


def test_abort_in_the_middle_of_a_data_set_stores_nothing(tmp_path):
    f = fresh_copy("cr", tmp_path / "send")  # 6 MB: hundreds of fragments
    with Gateway(gateway_settings(tmp_path, allowed=ANY_SOURCE, quiet=30)) as gw:
        sop_class = str(pydicom.dcmread(f, stop_before_pixels=True).SOPClassUID)
        sock, _ = _associate(gw.port, [build_context(sop_class, "1.2.840.10008.1.2.1")])
        pdus = _store_pdus(f, 1)
        assert len(pdus) > 100
        for pdu in pdus[: len(pdus) // 2]:
            sock.sendall(pdu)
        abort = A_ABORT()
        abort.abort_source = 0x00
        pdu = A_ABORT_RQ()
        pdu.from_primitive(abort)
        sock.sendall(pdu.encode())
        sock.close()
        time.sleep(0.5)
        assert gw.index.counts()["instances"] == 0
        assert [p for p in gw.spool.root.rglob("*") if p.is_file()] == []
        assert echo("127.0.0.1", gw.port, "HAIDANG", "STORESCU")[0]  # still serving
        res = storescu([f], gw.port, "HAIDANG")  # and the same instance goes through later
        assert res.returncode == 0, res.stderr
        _stored_as_sent(gw, [f])


def test_release_after_an_idle_pause(tmp_path):
    with Gateway(gateway_settings(tmp_path, allowed=ANY_SOURCE, quiet=30)) as gw:
        ae = AE(ae_title="IDLE")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", gw.port, ae_title="HAIDANG")
        assert assoc.is_established
        time.sleep(2.0)  # nothing sent
        assoc.release()
        assert assoc.is_released and not assoc.is_aborted


def test_no_acceptable_presentation_context(tmp_path):
    """Accepted with each context refused and its reason (PS3.8 9.3.3.2); then a release."""
    with Gateway(gateway_settings(tmp_path, allowed=ANY_SOURCE, quiet=30)) as gw:
        find = build_context(PatientRootQueryRetrieveInformationModelFind)
        sock, ac = _associate(gw.port, [find])
        with sock:
            results = [item.result for item in ac.variable_items
                       if item.item_type == 0x21]  # presentation context (AC) items
            assert results == [0x03]  # abstract syntax not supported
            assert _release(sock) == 0x06
        # pynetdicom, as a requestor, aborts such an association itself
        ae = AE(ae_title="FINDER")
        ae.add_requested_context(PatientRootQueryRetrieveInformationModelFind)
        assoc = ae.associate("127.0.0.1", gw.port, ae_title="HAIDANG")
        assert not assoc.is_established and not assoc.is_rejected
        assert echo("127.0.0.1", gw.port, "HAIDANG", "STORESCU")[0]  # still serving
        assert gw.index.counts()["instances"] == 0
