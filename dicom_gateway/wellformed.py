"""Is a received data set complete? A walk over every element's tag, VR and length.

The gateway's header parse decodes only the attributes it indexes and stops before the
pixel data, so on its own it accepts a data set cut short in the pixel data, an element
whose length runs past the end, or pixel data that contradicts the transfer syntax the
caller declared. This walk finds those in microseconds, without decoding values, so the
SCP can answer 0xC000 instead of storing an instance no one can read.
"""

from __future__ import annotations

import struct

UNDEFINED = 0xFFFFFFFF
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV",
            b"UV"}
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED = ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1")
NATIVE = (IMPLICIT_LE, "1.2.840.10008.1.2.1", EXPLICIT_BE)
PIXEL_TAGS = {(0x7FE0, 0x0010), (0x7FE0, 0x0008), (0x7FE0, 0x0009)}
MAX_DEPTH = 32
KNOWN_VRS = LONG_VRS | {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS",
                        b"LO", b"LT", b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL",
                        b"US"}
PIXEL_KEYS = {g << 16 | e for g, e in PIXEL_TAGS}
_EXPLICIT = {"<": struct.Struct("<HH2sH").unpack_from, ">": struct.Struct(">HH2sH").unpack_from}
_IMPLICIT = {"<": struct.Struct("<HHI").unpack_from, ">": struct.Struct(">HHI").unpack_from}
_U16 = {"<": struct.Struct("<H").unpack_from, ">": struct.Struct(">H").unpack_from}
_U32 = {"<": struct.Struct("<I").unpack_from, ">": struct.Struct(">I").unpack_from}


class Malformed(ValueError):
    """The data set's structure is broken; the message says where."""


def check_complete(data: bytes | memoryview, transfer_syntax: str, start: int = 0) -> None:
    """Raise :class:`Malformed` unless ``data[start:]`` is a complete, well-formed data set."""
    ts = str(transfer_syntax)
    if ts in DEFLATED:
        return  # compressed as a whole: pydicom's full parse is the check there
    walker = _Walker(memoryview(data), ts)
    try:
        walker.walk(start, len(data), depth=0, in_item=False)
    except Malformed:
        # like pydicom, accept implicit VR data under an explicit VR declaration when the very
        # first element shows it (some modalities write such files)
        if not walker.explicit or _first_vr_valid(data, start):
            raise
        walker.explicit = False
        walker.walk(start, len(data), depth=0, in_item=False)


def scan_top_level(data: bytes | memoryview, transfer_syntax: str, start: int,
                   wanted: frozenset[int]) -> dict[int, tuple[bytes | None, int, int]] | None:
    """:func:`check_complete` that also notes where the ``wanted`` top-level elements are.

    Returns ``{tag: (vr or None, value offset, value length)}`` for the wanted tags seen
    before the pixel data, as a reader that stops before the pixel data sees them.
    Raises :class:`Malformed` as :func:`check_complete` does. Returns None where this
    quick reading is not the whole story and a full parser must decide: deflated or big
    endian syntaxes, a VR this module does not know, a wanted element of undefined length,
    or implicit VR data under an explicit VR declaration.
    """
    ts = str(transfer_syntax)
    if ts in DEFLATED or ts == EXPLICIT_BE:
        return None
    walker = _Walker(memoryview(data), ts)
    walker.capture = {}
    walker.wanted = wanted
    try:
        walker.walk(start, len(data), depth=0, in_item=False)
    except Malformed:
        if walker.explicit and not _first_vr_valid(data, start):
            return None  # check_complete would retry as implicit VR: the full parser decides
        raise
    if walker.odd:
        return None
    return walker.capture


def _first_vr_valid(data, start: int) -> bool:
    vr = bytes(data[start + 4:start + 6])
    return len(vr) == 2 and vr.isalpha() and vr.isupper()


class _Walker:
    def __init__(self, buf: memoryview, ts: str):
        self.buf = buf
        self.explicit = ts != IMPLICIT_LE
        self.endian = ">" if ts == EXPLICIT_BE else "<"
        self.encapsulated = ts not in NATIVE
        self.capture: dict | None = None  # scan_top_level: wanted tag -> (vr, offset, length)
        self.wanted: frozenset[int] = frozenset()
        self.odd = False  # something only a full parser should judge
        self._u16_from = _U16[self.endian]
        self._u32_from = _U32[self.endian]

    def _u16(self, pos):
        return self._u16_from(self.buf, pos)[0]

    def _u32(self, pos):
        return self._u32_from(self.buf, pos)[0]

    def _tag(self, pos, end):
        if pos + 8 > end:
            raise Malformed(f"data set ends inside an element header at byte {pos}")
        return self._u16(pos), self._u16(pos + 2)

    def walk(self, pos: int, end: int, depth: int, in_item: bool) -> int:
        """Walk elements from ``pos``; returns where the walk stopped (delimiter or end)."""
        if depth > MAX_DEPTH:
            raise Malformed("sequences nested deeper than 32 levels")
        buf = self.buf
        explicit_from = _EXPLICIT[self.endian]
        implicit_from = _IMPLICIT[self.endian]
        u32_from = self._u32_from
        capture = self.capture if depth == 0 and not in_item else None
        while pos < end:
            if pos + 8 > end:
                raise Malformed(f"data set ends inside an element header at byte {pos}")
            if self.explicit:
                group, elem, vr, length = explicit_from(buf, pos)
            else:
                group, elem, length = implicit_from(buf, pos)
                vr = None
            if group == 0xFFFE:
                if in_item and elem == 0xE00D:  # item delimitation
                    return pos + 8
                raise Malformed(f"unexpected delimiter ({group:04X},{elem:04X}) at byte {pos}")
            head = 8
            if vr is not None:
                if vr not in KNOWN_VRS:
                    if not (vr.isalpha() and vr.isupper()):
                        raise Malformed(f"element ({group:04X},{elem:04X}) has no valid VR "
                                        f"({vr!r})")
                    self.odd = True
                if vr in LONG_VRS:
                    if pos + 12 > end:
                        raise Malformed(f"data set ends inside element ({group:04X},{elem:04X})")
                    length, head = u32_from(buf, pos + 8)[0], 12
            pos += head
            key = group << 16 | elem
            pixels = key in PIXEL_KEYS
            if capture is not None:
                if key in self.wanted:
                    if length == UNDEFINED:
                        self.odd = True
                    capture[key] = (vr, pos, length)
                elif pixels:
                    self.wanted = frozenset()  # a reader stopping before pixel data stops here
            if pixels and self.encapsulated and length != UNDEFINED:
                raise Malformed("pixel data are not encapsulated although the transfer syntax "
                                "declared is a compressed one")
            if length == UNDEFINED:
                if vr == b"UN":  # PS3.5 6.2.2: its items are encoded implicit VR little endian
                    self.explicit = False
                    try:
                        pos = self._sequence(pos, end, depth, pixels=False)
                    finally:
                        self.explicit = True
                    continue
                pos = self._sequence(pos, end, depth, pixels=pixels)
                continue
            if pos + length > end:
                raise Malformed(f"element ({group:04X},{elem:04X}) claims {length} bytes but "
                                f"only {end - pos} remain: the data set is cut short")
            if vr == b"SQ" and length:
                self._defined_sequence(pos, pos + length, depth)
            pos += length
        if in_item:
            raise Malformed("an item of undefined length has no delimiter")
        return pos

    def _defined_sequence(self, pos, end, depth):
        while pos < end:
            group, elem = self._tag(pos, end)
            length = self._u32(pos + 4)
            if (group, elem) != (0xFFFE, 0xE000):
                raise Malformed(f"sequence holds ({group:04X},{elem:04X}) where an item belongs")
            pos += 8
            if length == UNDEFINED:
                pos = self.walk(pos, end, depth + 1, in_item=True)
            else:
                if pos + length > end:
                    raise Malformed("a sequence item runs past its sequence")
                self.walk(pos, pos + length, depth + 1, in_item=False)
                pos += length

    def _sequence(self, pos, end, depth, pixels: bool):
        """Items up to the sequence delimiter (or fragments of encapsulated pixel data)."""
        while True:
            group, elem = self._tag(pos, end)
            length = self._u32(pos + 4)
            pos += 8
            if (group, elem) == (0xFFFE, 0xE0DD):
                return pos
            if (group, elem) != (0xFFFE, 0xE000):
                raise Malformed(f"({group:04X},{elem:04X}) found where an item or the end of a "
                                "sequence belongs")
            if length == UNDEFINED:
                if pixels:
                    raise Malformed("a pixel data fragment has undefined length")
                pos = self.walk(pos, end, depth + 1, in_item=True)
                continue
            if pos + length > end:
                raise Malformed(f"an item claims {length} bytes but only {end - pos} remain: "
                                "the data set is cut short")
            if not pixels:
                self.walk(pos, pos + length, depth + 1, in_item=False)
            pos += length


def check_file_bytes(data: bytes | memoryview, transfer_syntax: str) -> None:
    """:func:`check_complete` on a whole Part 10 file (preamble, file meta, data set)."""
    if bytes(data[128:132]) != b"DICM" or bytes(data[132:138]) != b"\x02\x00\x00\x00UL":
        return  # no group length to find the data set by: pydicom's parse is the check
    (group_len,) = struct.unpack_from("<I", data, 140)
    check_complete(data, transfer_syntax, 144 + group_len)
