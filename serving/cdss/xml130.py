"""Reading the XML 130 (QĐ 130/QĐ-BYT, formerly QĐ 4210) a Vietnamese HIS already produces.

Accepted shapes, all parsed with defusedxml (no DTD, no entities, no external references:
"billion laughs" and XXE payloads are refused):

- the claim envelope `GIAMDINHHS/…/HOSO/FILEHOSO` whose `NOIDUNGFILE` holds each table as
  base64 (or as inline XML), with `LOAIHOSO` XML1 (`TONG_HOP`) and XML2 (`CHI_TIET_THUOC`);
- the tables themselves: a document holding `TONG_HOP` and/or `CHI_TIET_THUOC` elements;
- a flat `<DON_THUOC>` with XML1 fields as children and `CHI_TIET_THUOC` lines.

Both versions of the tables parse: QĐ 130/QĐ-BYT (2023) and its amendment QĐ 4750/QĐ-BYT
(29/12/2023), which adds XML2 `NGAY_TH_YL` (and XML1 `NHOM_MAU`, ignored here) and widens
XML2 `MA_KHOA` to 50 characters (field list: `datasets/xml130/`). NGAY_SINH and NGAY_VAO are
kept as sent (yyyymmddHHMM); the request model validates them.

The result is a dict with the native request's field names; validation (which names the
offending field) happens in `PrescriptionCheckRequest`.
"""

from __future__ import annotations

import base64
import binascii
from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree as DET
from defusedxml import DefusedXmlException

XML1_FIELDS = ("MA_LK", "MA_BN", "NGAY_SINH", "GIOI_TINH", "MA_BENH_CHINH", "MA_BENH_KT")
XML2_FIELDS = ("TEN_THUOC", "MA_THUOC", "HAM_LUONG", "LIEU_DUNG", "SO_LUONG", "NGAY_TH_YL",
               "MA_KHOA")
MAX_FILES = 50


class Xml130Error(ValueError):
    """The XML cannot be read; the message says where and what to fix."""


def _parse(data: bytes | str, what: str) -> Element:
    try:
        return DET.fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise Xml130Error(f"{what}: DTDs, entities and external references are not accepted "
                          f"({type(exc).__name__}); send plain XML 130") from None
    except ParseError as exc:
        raise Xml130Error(f"{what}: XML is not well-formed ({exc})") from None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1].upper()


def _text(el: Element, name: str) -> str | None:
    for child in el:
        if _local(child.tag) == name:
            value = (child.text or "").strip()
            return value or None
    return None


def _tables(root: Element) -> list[Element]:
    """The roots to search: the document itself plus every embedded FILEHOSO table."""
    roots = [root]
    files = [el for el in root.iter() if _local(el.tag) == "FILEHOSO"]
    if len(files) > MAX_FILES:
        raise Xml130Error(f"FILEHOSO: {len(files)} files in one request; at most {MAX_FILES}")
    for number, file in enumerate(files, start=1):
        kind = (_text(file, "LOAIHOSO") or "").upper()
        if kind not in ("XML1", "XML2"):
            continue
        content = next((c for c in file if _local(c.tag) == "NOIDUNGFILE"), None)
        if content is None:
            continue
        if len(content):  # inline XML: already part of the document searched below
            continue
        raw = (content.text or "").strip()
        if not raw:
            continue
        try:
            decoded = base64.b64decode(raw, validate=False)
        except (binascii.Error, ValueError):
            raise Xml130Error(
                f"FILEHOSO[{number}] ({kind}) NOIDUNGFILE: not valid base64"
            ) from None
        roots.append(_parse(decoded, f"FILEHOSO[{number}] ({kind}) NOIDUNGFILE"))
    return roots


def parse_xml130(data: bytes | str) -> dict:
    """XML 130 text -> dict with the native request's field names (not yet validated)."""
    root = _parse(data, "body")
    roots = _tables(root)
    out: dict = {}
    summary = None
    for r in roots:
        summary = next((el for el in r.iter() if _local(el.tag) == "TONG_HOP"), None)
        if summary is not None:
            break
    if summary is None and _local(root.tag) not in ("GIAMDINHHS",):
        summary = root  # flat document: XML1 fields are children of the root
    if summary is not None:
        for name in XML1_FIELDS:
            value = _text(summary, name)
            if value is not None:
                out[name] = value
        visit = _text(summary, "NGAY_VAO")
        if visit is not None:
            out["NGAY_KHAM"] = visit  # validated (and named) as NGAY_KHAM
    lines = []
    for r in roots:
        for el in r.iter():
            if _local(el.tag) == "CHI_TIET_THUOC":
                lines.append({k: v for k in XML2_FIELDS if (v := _text(el, k)) is not None})
    out["THUOC"] = lines
    return out
