"""scripts/strip_fatbin.py on synthetic fatbins: what an sm_90 GPU needs stays
byte for byte, everything else is zeroed in place, and nothing moves.

The real input (onnxruntime-gpu's CUDA provider, 284 MB) is too large for a test; these
blobs use the same header layout (fatbin header 16 bytes, entry headers 64 bytes)."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from scripts import strip_fatbin as sf

REPO = Path(__file__).resolve().parents[2]

DROP = re.compile(sf.DROP_DEFAULT)


def cubin(*kernels: str, pad: int = 40) -> bytes:
    """A payload that reads like an uncompressed cubin: ELF magic and .text.<kernel> names."""
    body = b"\x7fELF" + b"".join(b"\0.text." + k.encode() for k in kernels) + b"\0"
    return body + bytes(range(1, pad + 1))  # non-zero filler, so zeroing is visible


def entry(kind: int, arch: int, payload: bytes) -> bytes:
    padded = payload + bytes(-len(payload) % 8)
    header = struct.pack("<HHIQIIHHI", kind, 0x0101, 64, len(padded), len(payload), 0, 8, 1, arch)
    header += bytes(64 - len(header))
    return header + padded


def fatbin(*entries: bytes) -> bytes:
    body = b"".join(entries)
    return struct.pack("<IHHQ", sf.FATBIN_MAGIC, 1, 16, len(body)) + body


def entries_of(section: bytes) -> list[list[tuple[int, int, bytes]]]:
    """(kind, arch, payload) of each entry of each fatbin."""
    return [[(e.kind, e.arch, section[e.payload]) for e in fb.entries]
            for fb in sf.parse_fatbins(section)]


def test_keeps_sm90_sass_and_zeroes_the_other_gpus_in_place():
    sm90 = cubin("_ZN11onnxruntime4cuda13_UnaryElementWise")
    original = fatbin(entry(2, 75, cubin("a75")), entry(2, 80, cubin("a80", pad=100)),
                      entry(2, 90, sm90), entry(2, 120, cubin("a120")))
    section = bytearray(original)
    stats = sf.strip_section(section, 90, DROP)

    assert len(section) == len(original)
    (kept,) = entries_of(bytes(section))
    assert [(k, a) for k, a, _ in kept] == [(2, 75), (2, 80), (2, 90), (2, 120)]
    assert kept[2][2].startswith(sm90)  # byte for byte
    assert all(not any(p) for i, (_, _, p) in enumerate(kept) if i != 2)
    assert stats.fatbins == 1 and stats.entries == 4 and stats.dropped_fatbins == 0
    assert stats.kept_bytes == len(kept[2][2])
    # only payload bytes changed: every header is as it was
    for fb in sf.parse_fatbins(original):
        for e in fb.entries:
            assert section[e.offset:e.offset + e.header_size] == \
                original[e.offset:e.offset + e.header_size]


def test_drops_a_fatbin_whose_kernels_all_match_and_relabels_it_so_nothing_runs_it():
    llm = fatbin(entry(2, 80, cubin("x")), entry(2, 90, cubin(
        "_ZN11onnxruntime5flash16flash_fwd_kernel", "_ZN7cutlass6KernelINS_4gemm")))
    mixed = fatbin(entry(2, 90, cubin("_ZN11onnxruntime5flash16flash_fwd_kernel",
                                      "_ZN11onnxruntime4cuda9_Fill")))
    section = bytearray(llm + mixed)
    stats = sf.strip_section(section, 90, DROP)

    first, second = entries_of(bytes(section))
    assert [(k, a) for k, a, _ in first] == [(2, 80), (2, 0)]  # no sm_90 image left
    assert not any(first[1][2])
    assert second[0][1] == 90 and second[0][2].startswith(b"\x7fELF")  # one kernel is needed
    assert stats.dropped_fatbins == 1

    untouched = bytearray(llm)
    sf.strip_section(untouched, 90, None)  # no --drop: the sm_90 code stays
    assert entries_of(bytes(untouched))[0][1][1] == 90
    assert any(entries_of(bytes(untouched))[0][1][2])


def test_without_sm90_sass_the_newest_ptx_at_or_below_stays():
    section = bytearray(fatbin(entry(2, 80, cubin("s80")), entry(1, 80, b"ptx80" * 8),
                               entry(1, 86, b"ptx86" * 8), entry(1, 100, b"ptx100" * 8)))
    sf.strip_section(section, 90, DROP)
    payloads = {(k, a): p for k, a, p in entries_of(bytes(section))[0]}
    assert payloads[(1, 86)].startswith(b"ptx86")
    assert not any(payloads[(2, 80)]) and not any(payloads[(1, 80)])
    assert not any(payloads[(1, 100)])


def test_fatbins_after_alignment_padding_and_a_bad_header_is_an_error():
    first = fatbin(entry(2, 90, cubin("k")))
    blob = first + bytes(8) + fatbin(entry(2, 90, cubin("k2")))
    assert [fb.offset for fb in sf.parse_fatbins(blob)] == [0, len(first) + 8]
    at = len(first) + 8
    with pytest.raises(ValueError, match="no fatbin header"):
        sf.parse_fatbins(blob[:at] + b"garbage!" + blob[at + 8:])


def minimal_elf(sections: dict[str, bytes]) -> bytes:
    """A little-endian ELF64 file holding only the given sections (and .shstrtab)."""
    names = b"\0" + b"".join(n.encode() + b"\0" for n in [*sections, ".shstrtab"])
    data, offsets, pos = b"", [], 64
    for body in [*sections.values(), names]:
        offsets.append(pos)
        data += body
        pos += len(body)
    shoff = pos
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header = ident + struct.pack("<HHIQQQIHHHHHH", 3, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64,
                                 len(sections) + 2, len(sections) + 1)
    shdrs = bytes(64)  # the null section
    name_off = 1
    for (name, body), off in zip([*sections.items(), (".shstrtab", names)], offsets,
                                 strict=True):
        shdrs += struct.pack("<IIQQQQIIQQ", name_off, 1, 0, 0, off, len(body), 0, 0, 1, 0)
        name_off += len(name) + 1
    return header + data + shdrs


def test_strip_library_changes_only_the_nv_fatbin_section():
    text = b"\x90" * 48
    fat = fatbin(entry(2, 86, cubin("old")), entry(2, 90, cubin("_ZN11onnxruntime4cuda4Pool")))
    elf = minimal_elf({".text": text, ".nv_fatbin": fat, ".data": b"\x11" * 24})
    off, size = sf.elf_section(elf, ".nv_fatbin")
    assert elf[off:off + size] == fat

    stripped = bytearray(elf)
    sf.strip_library(stripped, 90, DROP)
    assert len(stripped) == len(elf)
    assert stripped[:off] == elf[:off] and stripped[off + size:] == elf[off + size:]
    (kept,) = entries_of(bytes(stripped[off:off + size]))
    assert not any(kept[0][2]) and kept[1][2].startswith(b"\x7fELF")

    with pytest.raises(ValueError, match="no .nv_fatbin"):
        sf.elf_section(minimal_elf({".text": text}), ".nv_fatbin")
