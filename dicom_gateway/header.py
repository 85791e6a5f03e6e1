"""Reading a received data set's header: what the index and the routing rules need.

One structure walk without pydicom (:func:`quick_header`) covers the common case; anything
unusual (character sets, multiple values, a missing UID) goes to pydicom's parse
(:func:`parse_header`), so both paths agree by construction. :func:`header_of` turns a
parsed data set into a :class:`Header`; re-indexing the spool after a crash uses the same.
"""

from __future__ import annotations

import io
from typing import NamedTuple

import pydicom

from dicom_gateway.wellformed import Malformed, check_file_bytes, scan_top_level

ROUTING_KEYS = (
    "Modality",
    "BodyPartExamined",
    "ViewPosition",
    "StudyDescription",
    "SeriesDescription",
    "Manufacturer",
    "SeriesNumber",
    "InstanceNumber",
)
# what the worklist shows a radiologist, recorded at ingest with the routing keys
STUDY_KEYS = (
    "PatientName",
    "PatientID",
    "PatientSex",
    "PatientAge",
    "PatientBirthDate",
    "AccessionNumber",
    "StudyDate",
    "StudyTime",
)
INDEXED_KEYS = ROUTING_KEYS + STUDY_KEYS


class Unparsable(ValueError):
    """The received data set cannot be understood."""


HEADER_TAGS = [
    "SpecificCharacterSet",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    *INDEXED_KEYS,
]


def parse_header(data: bytes) -> pydicom.Dataset:
    """Parse the header up to the pixel data; raise Unparsable if it is not DICOM we can index.

    Reading walks every element's tag and length (a broken structure fails here); only
    the attributes the index and the routing rules need are decoded, to keep ingest lean.
    """
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=HEADER_TAGS)
        check_file_bytes(data, str(ds.file_meta.TransferSyntaxUID))  # cut short, bad lengths
        uids = [str(ds[k].value).strip() for k in HEADER_TAGS[1:5]]
        for key in INDEXED_KEYS:
            ds.get(key)
    except Exception as exc:  # noqa: BLE001 - whatever pydicom raises, the data is not understood
        raise Unparsable(f"{type(exc).__name__}: {exc}") from exc
    if not all(uids) or any(len(u) > 64 for u in uids):
        raise Unparsable("Study, Series or SOP Instance UID is empty or too long")
    return ds


class Header(NamedTuple):
    """What the index and the routing rules need from a received data set."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    attrs: dict[str, str]  # INDEXED_KEYS as str(ds.get(key, "") or ""), plus SOPClassUID


def header_of(ds: pydicom.Dataset) -> Header:
    attrs = {k: str(ds.get(k, "") or "") for k in INDEXED_KEYS}
    attrs["SOPClassUID"] = str(ds.SOPClassUID)
    return Header(str(ds.StudyInstanceUID).strip(), str(ds.SeriesInstanceUID).strip(),
                  str(ds.SOPInstanceUID).strip(), str(ds.SOPClassUID), attrs)


# tag -> (keyword, VR) of the attributes the quick header read decodes itself
_QUICK = {
    0x0020000D: ("StudyInstanceUID", b"UI"),
    0x0020000E: ("SeriesInstanceUID", b"UI"),
    0x00080018: ("SOPInstanceUID", b"UI"),
    0x00080016: ("SOPClassUID", b"UI"),
    0x00080060: ("Modality", b"CS"),
    0x00180015: ("BodyPartExamined", b"CS"),
    0x00185101: ("ViewPosition", b"CS"),
    0x00081030: ("StudyDescription", b"LO"),
    0x0008103E: ("SeriesDescription", b"LO"),
    0x00080070: ("Manufacturer", b"LO"),
    0x00200011: ("SeriesNumber", b"IS"),
    0x00200013: ("InstanceNumber", b"IS"),
    0x00100010: ("PatientName", b"PN"),
    0x00100020: ("PatientID", b"LO"),
    0x00100040: ("PatientSex", b"CS"),
    0x00101010: ("PatientAge", b"AS"),
    0x00100030: ("PatientBirthDate", b"DA"),
    0x00080050: ("AccessionNumber", b"SH"),
    0x00080020: ("StudyDate", b"DA"),
    0x00080030: ("StudyTime", b"TM"),
}
_QUICK_TAGS = frozenset(_QUICK)
_UID_CHARS = frozenset(b"0123456789.")
_DIGITS = frozenset(b"0123456789")


def _quick_value(vr: bytes, raw: bytes) -> str | None:
    """The value as ``str(pydicom value)`` would give it, or None where only pydicom can say.

    Only plain ASCII single values are decoded here (the common case); character sets,
    multiple values and anything unusual go to pydicom, so both paths agree by construction.
    """
    if b"\\" in raw or b"\x1b" in raw or not raw.isascii():
        return None
    if vr == b"UI":
        text = raw.rstrip(b"\x00 ")
        return text.decode() if text and _UID_CHARS.issuperset(text) else None
    if vr == b"IS":
        text = raw.strip(b" ")
        if text and not _DIGITS.issuperset(text):
            return None
        return text.decode() if text and int(text) else ""  # IS 0 is falsy: `or ""` gives ""
    if b"\x00" in raw.rstrip(b"\x00"):
        return None
    return raw.decode().rstrip("\x00 ")  # CS, LO: pydicom keeps leading spaces


def quick_header(stream: bytes | memoryview, transfer_syntax: str) -> Header | None:
    """The header from one structure walk, without pydicom; None where pydicom must decide.

    Raises Unparsable for a broken structure (as :func:`parse_header` does).
    """
    try:
        found = scan_top_level(stream, transfer_syntax, 0, _QUICK_TAGS)
    except Malformed as exc:
        raise Unparsable(f"Malformed: {exc}") from exc
    if found is None:
        return None
    values: dict[str, str] = {}
    for tag, (keyword, want_vr) in _QUICK.items():
        entry = found.get(tag)
        if entry is None:
            if tag in (0x0020000D, 0x0020000E, 0x00080018, 0x00080016):
                return None  # a required UID is missing: pydicom's parse says why
            values[keyword] = ""
            continue
        vr, offset, length = entry
        if vr is not None and vr != want_vr:
            return None
        value = _quick_value(want_vr, bytes(stream[offset:offset + length]))
        if value is None:
            return None
        values[keyword] = value
    uids = [values[k] for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                                "SOPClassUID")]
    if any(len(u) > 64 for u in uids):
        return None
    attrs = {k: values[k] for k in INDEXED_KEYS}
    attrs["SOPClassUID"] = uids[3]
    return Header(*uids, attrs)


def read_header(head: bytes, stream: bytes | memoryview, transfer_syntax: str) -> Header:
    """The header of a received data set: the quick read, else pydicom's parse."""
    header = quick_header(stream, transfer_syntax)
    if header is None:
        header = header_of(parse_header(head + stream))
    return header
