"""Bounded fuzzing of the parsing paths with hypothesis (~200 examples each).

Mutations of real files (a CT with native pixel data, a JPEG 2000 CT with encapsulated
pixel data, a file with sequences): flipped bytes, truncation, inserted garbage and
rewritten length fields. The header parse may only answer a data set or ``Unparsable``;
the structure walk only ``Malformed``; a live gateway only Success or 0xC000, and it keeps
serving; the XML 130 parser only a dict or ``Xml130Error``.
"""

from __future__ import annotations

import io
import struct
import warnings
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file

from dicom_gateway.header import Unparsable, parse_header
from dicom_gateway.runtime import Gateway
from dicom_gateway.scu import echo
from dicom_gateway.wellformed import Malformed, check_complete
from haidang.testbed.studies import sample_path
from serving.cdss.xml130 import Xml130Error, parse_xml130
from tests.support.gateway_helpers import gateway_settings

FIXTURES = Path(__file__).resolve().parents[1] / "support" / "fixtures" / "cdss"
COUNTS: Counter = Counter()
FUZZ = settings(max_examples=200, deadline=2000, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


def _seed(path: Path) -> bytes:
    ds = pydicom.dcmread(path)
    if 0xFFFCFFFC in ds:
        del ds[0xFFFCFFFC]
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


SEEDS = [_seed(Path(get_testdata_file("CT_small.dcm"))), _seed(sample_path("ct_j2k")),
         _seed(Path(get_testdata_file("rtplan.dcm")))]


def _meta_end(raw: bytes) -> int:
    return 144 + struct.unpack("<I", raw[140:144])[0]


@st.composite
def mutated(draw) -> bytes:
    raw = bytearray(draw(st.sampled_from(SEEDS)))
    body = _meta_end(bytes(raw))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "length", "delete"]))
        n = len(raw)
        if n <= body + 1:
            break
        pos = draw(st.integers(body, n - 1))
        if op == "flip":
            raw[pos] ^= draw(st.integers(1, 255))
        elif op == "truncate":
            del raw[pos:]
        elif op == "insert":
            raw[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        elif op == "delete":
            del raw[pos:pos + draw(st.integers(1, 64))]
        else:  # overwrite 4 bytes with a length-like value: tiny, odd, huge or undefined
            value = draw(st.sampled_from([0, 1, 3, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFF0, 0xFFFFFFFF]))
            raw[pos:pos + 4] = struct.pack("<I", value)
    return bytes(raw)


@pytest.fixture(autouse=True, scope="module")
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    print("fuzz examples run:", dict(COUNTS))


@FUZZ
@given(data=mutated())
def test_header_parse_answers_a_data_set_or_unparsable(data):
    COUNTS["parse_header"] += 1
    try:
        ds = parse_header(data)
    except Unparsable:
        COUNTS["parse_header.unparsable"] += 1
        return
    assert str(ds.SOPInstanceUID).strip()


@FUZZ
@given(data=mutated(), ts=st.sampled_from(["1.2.840.10008.1.2", "1.2.840.10008.1.2.1",
                                          "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.4.90"]))
def test_structure_walk_raises_only_malformed(data, ts):
    COUNTS["check_complete"] += 1
    try:
        check_complete(data, ts, _meta_end(data) if len(data) > 144 else 0)
    except Malformed:
        COUNTS["check_complete.malformed"] += 1


@FUZZ
@given(data=st.binary(max_size=2048))
def test_structure_walk_on_random_bytes(data):
    COUNTS["check_complete.random"] += 1
    try:
        check_complete(data, "1.2.840.10008.1.2.1")
    except Malformed:
        pass


@pytest.fixture(scope="module")
def live_gateway(tmp_path_factory):
    from pynetdicom import AE, _config
    from pynetdicom.presentation import build_context

    tmp = tmp_path_factory.mktemp("fuzzgw")
    with Gateway(gateway_settings(tmp, quiet=60)) as gw:
        ae = AE(ae_title="STORESCU")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        for raw in SEEDS:
            meta = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True).file_meta
            ae.requested_contexts.append(build_context(str(meta.MediaStorageSOPClassUID),
                                                       [str(meta.TransferSyntaxUID)]))
        chunked = _config.STORE_SEND_CHUNKED_DATASET
        _config.STORE_SEND_CHUNKED_DATASET = True
        try:
            yield gw, ae, tmp
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = chunked


@FUZZ
@given(data=mutated())
def test_live_gateway_answers_success_or_cannot_understand(live_gateway, data):
    gw, ae, tmp = live_gateway
    COUNTS["c_store"] += 1
    path = tmp / "fuzz.dcm"
    path.write_bytes(data)
    assoc = ae.associate("127.0.0.1", gw.port, ae_title="HAIDANG")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(path)
    finally:
        assoc.release()
    code = getattr(status, "Status", None)
    assert code in (0x0000, 0xC000), code
    COUNTS[f"c_store.0x{code:04X}"] += 1
    if code == 0x0000:  # what was stored is a complete file
        assert parse_header((gw.spool.root / gw.index.query(
            "SELECT path FROM instances ORDER BY received_at DESC LIMIT 1")[0][0]).read_bytes())


def test_live_gateway_still_serves_after_fuzzing(live_gateway):
    gw, _, _ = live_gateway
    assert echo("127.0.0.1", gw.port, "HAIDANG", "STORESCU")[0]
    assert not [p for p in gw.spool.root.rglob(".*.tmp")]


XML_SEEDS = [(FIXTURES / n).read_bytes() for n in ("xml130-sample.xml", "xml130-tables.xml")]


@st.composite
def mutated_xml(draw) -> bytes:
    raw = bytearray(draw(st.sampled_from(XML_SEEDS)))
    for _ in range(draw(st.integers(1, 3))):
        pos = draw(st.integers(0, max(0, len(raw) - 1)))
        op = draw(st.sampled_from(["flip", "truncate", "insert"]))
        if op == "flip" and raw:
            raw[pos] ^= draw(st.integers(1, 255))
        elif op == "truncate":
            del raw[pos:]
        else:
            raw[pos:pos] = draw(st.sampled_from(
                [b"<", b">", b"&amp;", b"&lol;", b"<!DOCTYPE x [<!ENTITY a 'b'>]>", b"\x00",
                 b"]]>", b"<THUOC>", b"</NOIDUNGFILE>", b"\xff\xfe"]))
    return bytes(raw)


@FUZZ
@given(data=mutated_xml())
def test_xml130_parser_answers_a_dict_or_xml130_error(data):
    COUNTS["xml130"] += 1
    try:
        out = parse_xml130(data)
    except Xml130Error:
        COUNTS["xml130.rejected"] += 1
        return
    assert isinstance(out, dict)
