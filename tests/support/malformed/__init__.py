"""A corpus of malformed DICOM files, built from a real CT (pydicom's CT_small) with fresh UIDs.

``build_corpus(dest)`` writes one file per kind of damage and returns ``{kind: path}``.
Every file but ``no_meta`` keeps a valid file meta header, so it can be put on the wire by
a C-STORE SCU that sends a file's own bytes (``dicom_gateway.scu.send_files``); ``no_meta``
is what a file-reading path meets when a folder holds a bare data set.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    generate_uid,
)

# What a receiver may answer: Success (stored as received), or a failure status
EXPECTED = {
    "truncated_header": "failure",
    "truncated_pixels": "failure",
    "wrong_length": "failure",
    "bad_vr": "failure",
    "huge_element": "failure",
    "no_meta": "failure",
    "wrong_meta_syntax": "failure",
    "garbage_after_meta": "failure",
    "empty_dataset": "failure",
    "missing_uids": "failure",
    "unknown_sop_class": "success",  # stored as sent: any storage SOP class is accepted
    "wrong_ts_declared": "failure",  # pixel data not encapsulated under a JPEG syntax
}


def _template() -> pydicom.Dataset:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    if 0xFFFCFFFC in ds:
        del ds[0xFFFCFFFC]
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PatientName, ds.PatientID = "LE^VAN MALFORMED", "HD-BAD-0001"
    return ds


def _encode(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _meta_end(raw: bytes) -> int:
    (group_len,) = struct.unpack("<I", raw[140:144])
    return 144 + group_len


def _find(raw: bytes, tag: tuple[int, int], start: int) -> int:
    needle = struct.pack("<HH", *tag)
    pos = raw.index(needle, start)
    return pos


def build_corpus(dest: Path) -> dict[str, Path]:
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    out: dict[str, bytes] = {}

    raw = _encode(_template())
    body = _meta_end(raw)
    pixels = _find(raw, (0x7FE0, 0x0010), body)
    out["truncated_header"] = raw[: body + (pixels - body) // 2 + 3]
    out["truncated_pixels"] = raw[: pixels + 12 + 1000]

    raw = _encode(_template())
    body = _meta_end(raw)
    name = _find(raw, (0x0010, 0x0010), body)  # PatientName, explicit VR: tag VR len(2)
    out["wrong_length"] = raw[: name + 6] + struct.pack("<H", 0xFFF0) + raw[name + 8:]

    raw = _encode(_template())
    body = _meta_end(raw)
    study = _find(raw, (0x0020, 0x000D), _meta_end(raw))
    out["bad_vr"] = raw[: study + 4] + b"\x01\x02" + raw[study + 6:]

    raw = _encode(_template())
    body = _meta_end(raw)
    # an OB element claiming ~4 GiB just before the pixel data
    out["huge_element"] = (raw[:pixels] + struct.pack("<HH", 0x0009, 0x1010) + b"OB\x00\x00"
                           + struct.pack("<I", 0xFFFFFFF0) + raw[pixels:pixels + 64])

    ds = _template()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=False, implicit_vr=False, little_endian=True)
    bare = buf.getvalue()
    out["no_meta"] = bare[_meta_end(bare):] if bare[128:132] == b"DICM" else bare

    ds = _template()
    raw = _encode(ds)
    meta = FileMetaDataset(ds.file_meta)
    meta.TransferSyntaxUID = ImplicitVRLittleEndian  # the data set stays explicit VR
    out["wrong_meta_syntax"] = _with_meta(meta, raw[_meta_end(raw):])

    ds = _template()
    raw = _encode(ds)
    import random

    out["garbage_after_meta"] = raw[: _meta_end(raw)] + random.Random(3).randbytes(4000)
    out["empty_dataset"] = raw[: _meta_end(raw)]

    ds = _template()
    del ds.StudyInstanceUID
    del ds.SeriesInstanceUID
    out["missing_uids"] = _encode(ds)

    ds = _template()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.826.0.1.3680043.9.9999.1.1"
    out["unknown_sop_class"] = _encode(ds)

    ds = _template()
    raw = _encode(ds)
    meta = FileMetaDataset(ds.file_meta)
    meta.TransferSyntaxUID = JPEGBaseline8Bit  # explicit VR LE on the wire: parses, pixels lie
    out["wrong_ts_declared"] = _with_meta(meta, raw[_meta_end(raw):])

    assert set(out) == set(EXPECTED)
    paths = {}
    for kind, data in out.items():
        path = dest / f"{kind}.dcm"
        path.write_bytes(data)
        paths[kind] = path
    return paths


def _with_meta(meta: FileMetaDataset, dataset_bytes: bytes) -> bytes:
    from pydicom.filewriter import write_file_meta_info

    buf = io.BytesIO()
    buf.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(pydicom.filebase.DicomFileLike(buf), meta, enforce_standard=True)
    return buf.getvalue() + dataset_bytes


def good_file(dest: Path) -> Path:
    """A well-formed file of the same kind, to show the receiver still works after the corpus."""
    ds = _template()
    path = Path(dest) / "good.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


__all__ = ["EXPECTED", "ExplicitVRLittleEndian", "build_corpus", "good_file"]
