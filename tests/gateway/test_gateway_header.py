"""The quick header read (one structure walk, no pydicom) agrees with pydicom's parse.

The C-STORE path reads the UIDs and routing keys with ``quick_header`` and falls back
to pydicom (``parse_header``) wherever it is not sure. Whatever the quick read answers
(a header or Unparsable) must be what the pydicom path answers for the same bytes:
real files in every sample transfer syntax, the malformed corpus, and mutated files.
"""

from __future__ import annotations

import io
import struct
import warnings
from pathlib import Path

import pydicom
import pydicom.data
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dicom_gateway.header import Header, Unparsable, header_of, parse_header, quick_header
from haidang.testbed.studies import SAMPLES, sample_path
from tests.gateway.test_fuzz_dicom import FUZZ, mutated
from tests.support.malformed import build_corpus, good_file

TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _split(data: bytes) -> tuple[bytes, str]:
    """The data set after the file meta, and the transfer syntax the meta declares."""
    end = 144 + struct.unpack("<I", data[140:144])[0]
    meta = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta
    return data[end:], str(meta.TransferSyntaxUID)


def _full(data: bytes) -> Header | str:
    try:
        return header_of(parse_header(data))
    except Unparsable:
        return "unparsable"


def _quick(data: bytes) -> Header | str | None:
    stream, ts = _split(data)
    try:
        return quick_header(memoryview(stream), ts)
    except Unparsable:
        return "unparsable"


def _agree(data: bytes) -> Header | str | None:
    quick = _quick(data)
    if quick is not None:  # None: the quick read handed over to pydicom
        assert quick == _full(data)
    return quick


@pytest.mark.parametrize("key", sorted(SAMPLES))
def test_quick_read_of_every_sample_matches_pydicom(key):
    data = sample_path(key).read_bytes()
    quick = _agree(data)
    if key not in ("us_implicit",):  # plain ASCII explicit/implicit files take the quick path
        assert isinstance(quick, Header), key
        assert quick.attrs["Modality"]


def test_quick_read_of_pydicom_test_files_matches_pydicom():
    """Every small Part 10 file pydicom ships (character sets, sequences, odd encodings)."""
    taken = handed_over = 0
    for path in sorted(TEST_FILES.rglob("*.dcm")):
        if path.stat().st_size > 2_000_000:
            continue
        data = path.read_bytes()
        if data[128:138] != b"DICM\x02\x00\x00\x00UL":
            continue
        try:
            _split(data)
        except Exception:  # noqa: BLE001 - a file whose meta pydicom cannot read: not on the wire
            continue
        quick = _agree(data)
        taken += isinstance(quick, Header)
        handed_over += quick is None
    assert taken >= 20 and handed_over >= 3, (taken, handed_over)


def test_non_ascii_description_goes_to_pydicom(tmp_path):
    ds = pydicom.dcmread(good_file(tmp_path))
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.StudyDescription = "Chụp cắt lớp lồng ngực"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    assert _quick(data) is None
    assert _full(data).attrs["StudyDescription"] == "Chụp cắt lớp lồng ngực"


@pytest.mark.parametrize("value,expected", [("CT", "CT"), (" CT", " CT"), ("12", "12"),
                                            ("012", "012"), ("A\\B", None)])
def test_quick_values_are_pydicom_strings(tmp_path, value, expected):
    ds = pydicom.dcmread(good_file(tmp_path))
    ds.Modality = value if not value.isdigit() else "CT"
    if value.isdigit():
        ds.SeriesNumber = value
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    quick = _agree(buf.getvalue())
    if expected is None:
        assert quick is None
    else:
        key = "SeriesNumber" if value.isdigit() else "Modality"
        assert quick.attrs[key] == expected


def test_malformed_corpus_answers_as_pydicom(tmp_path):
    corpus = build_corpus(tmp_path)
    refused = 0
    for kind, path in corpus.items():
        if kind == "no_meta":
            continue
        data = path.read_bytes()
        try:
            quick = _agree(data)
        except Exception as exc:  # noqa: BLE001 - the meta itself is damaged: not on the wire
            assert kind in ("wrong_meta_syntax", "garbage_after_meta", "empty_dataset"), (kind,
                                                                                          exc)
            continue
        refused += quick == "unparsable"
    assert refused >= 3


@FUZZ
@given(data=mutated())
def test_quick_read_of_mutated_files_matches_pydicom(data):
    try:
        stream, ts = _split(data)
    except Exception:  # noqa: BLE001 - mutations stay after the meta; be safe anyway
        return
    try:
        quick = quick_header(stream, ts)
    except Unparsable:
        quick = "unparsable"
    if quick is not None:
        assert quick == _full(data)


@given(st.sampled_from(["1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"]))
def test_deflated_and_big_endian_go_to_pydicom(ts):
    stream, _ = _split(sample_path("ct").read_bytes())
    assert quick_header(stream, ts) is None
