"""Shrink an onnxruntime-gpu wheel to one GPU architecture so it can travel to a GPU machine.

Why: ``onnxruntime-gpu`` 1.31.1 (cp312, CUDA 13) is 255 MB; its CUDA provider library is
284 MB, 218 MB of which is the ``.nv_fatbin`` section: every kernel compiled for sm_75,
80, 86, 89, 90 and 120. The lent GPU machine (H100, sm_90) cannot download anything and
a call carries at most 64 MiB, so the CUDA figures in ``RESULTS.md`` were taken with a copy
of the wheel whose device code was cut down to what an H100 can run.

What it does, without moving a byte (section sizes, offsets and relocations unchanged):

* walks every fatbin in ``.nv_fatbin`` (header magic ``0xBA55ED50``; each entry header
  gives its kind (1 PTX, 2 ELF/SASS), header size, payload size and SM version);
* keeps, in each fatbin, the SASS for ``--arch`` (90), or the newest PTX at or below it
  when there is no such SASS;
* zeroes the payload of every other entry (those for other GPUs are never chosen on an
  sm_90 device, so their content is never read);
* with ``--drop`` (a regular expression over the mangled kernel names of the kept cubin,
  read after zstd decompression): when EVERY kernel of a fatbin matches, its kept entry is
  zeroed too and relabelled as ``sm_0``, so the driver finds no image for it; a launch of
  such a kernel fails with "no kernel image is available" instead of reading zeros. The
  default drops the LLM families (flash attention, MoE/grouped CUTLASS GEMMs, ``llm::``
  kernels, deep_gemm, fpA_intB), which a convolutional network never launches;
* drops the TensorRT provider library and writes the package as a ``.tar.xz`` (the zeroed
  ranges compress to almost nothing).

Only the carried copy is changed; nothing here is used by serving. Recipe (CUDA section
of ``bench/inference/README.md``)::

    pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_28_x86_64 -d /tmp/whl onnxruntime-gpu==1.31.1
    python scripts/strip_fatbin.py /tmp/whl/onnxruntime_gpu-1.31.1-*.whl \\
        --arch 90 --out .gpu/ort-gpu-sm90.tar.xz
"""

from __future__ import annotations

import argparse
import io
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass, field

FATBIN_MAGIC = 0xBA55ED50
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
KIND_PTX, KIND_ELF = 1, 2
CUDA_LIB = "onnxruntime/capi/libonnxruntime_providers_cuda.so"
LEFT_OUT = ("onnxruntime/capi/libonnxruntime_providers_tensorrt.so",)
DROP_DEFAULT = (r"^_ZN11onnxruntime5flash|^_ZN11onnxruntime3llm|^_ZN7cutlass"
                r"|attention_kernel_batched_impl|deep_gemm|fpA_intB|MoeFCGemm")


@dataclass
class Entry:
    offset: int  # of the entry header, within the section
    kind: int
    header_size: int
    payload_size: int
    data_size: int  # payload bytes before padding
    arch: int

    @property
    def payload(self) -> slice:
        return slice(self.offset + self.header_size,
                     self.offset + self.header_size + self.payload_size)


@dataclass
class Fatbin:
    offset: int
    size: int  # header + entries
    entries: list[Entry] = field(default_factory=list)


@dataclass
class Stats:
    fatbins: int = 0
    entries: int = 0
    kept_bytes: int = 0
    zeroed_bytes: int = 0
    dropped_fatbins: int = 0
    no_image: int = 0  # fatbins with nothing for this GPU (left as they were)


def elf_section(elf: bytes | bytearray, name: str) -> tuple[int, int]:
    """(file offset, size) of a section of a little-endian ELF64 file."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise ValueError("not a little-endian ELF64 file")
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
    def header(i: int) -> tuple[int, int, int]:
        base = shoff + i * shentsize
        sh_name, = struct.unpack_from("<I", elf, base)
        sh_offset, sh_size = struct.unpack_from("<QQ", elf, base + 0x18)
        return sh_name, sh_offset, sh_size
    _, str_off, str_size = header(shstrndx)
    names = bytes(elf[str_off:str_off + str_size])
    for i in range(shnum):
        sh_name, off, size = header(i)
        if names[sh_name:names.index(b"\0", sh_name)].decode() == name:
            return off, size
    raise ValueError(f"no {name} section")


def parse_fatbins(section: bytes | bytearray) -> list[Fatbin]:
    """Every fatbin in a ``.nv_fatbin`` section (they follow one another, 8-byte aligned)."""
    fatbins, pos = [], 0
    while pos + 16 <= len(section):
        magic, _version, header_size, size = struct.unpack_from("<IHHQ", section, pos)
        if magic != FATBIN_MAGIC:
            if any(section[pos:pos + 8]):
                raise ValueError(f"no fatbin header at offset {pos:#x}")
            pos += 8  # alignment padding
            continue
        fatbin = Fatbin(pos, header_size + size)
        e, end = pos + header_size, pos + header_size + size
        while e < end:
            kind, _v, ehs, psize = struct.unpack_from("<HHIQ", section, e)
            dsize, = struct.unpack_from("<I", section, e + 16)
            arch, = struct.unpack_from("<I", section, e + 28)
            fatbin.entries.append(Entry(e, kind, ehs, psize,
                                        dsize if 0 < dsize <= psize else psize, arch))
            e += ehs + psize
        if e != end:
            raise ValueError(f"fatbin at {pos:#x}: entries overrun its size")
        fatbins.append(fatbin)
        pos = end
    return fatbins


def kernel_names(payload: bytes) -> list[str] | None:
    """Mangled kernel names of a cubin (``.text.<name>`` sections); None if unreadable."""
    if payload[:4] == ZSTD_MAGIC:
        try:
            import zstandard

            payload = zstandard.ZstdDecompressor().decompressobj().decompress(payload)
        except ImportError:
            if not shutil.which("zstd"):
                return None
            run = subprocess.run(["zstd", "-d", "-c"], input=payload, capture_output=True)
            if run.returncode:
                return None
            payload = run.stdout
    if payload[:4] != b"\x7fELF":
        return None
    return sorted({m.decode() for m in re.findall(rb"\.text\.([A-Za-z0-9_$.]+)", payload)})


def choose(fatbin: Fatbin, arch: int) -> Entry | None:
    """The entry an sm_``arch`` GPU runs: its SASS, else the newest PTX at or below it."""
    sass = [e for e in fatbin.entries if e.kind == KIND_ELF and e.arch == arch]
    if sass:
        return sass[0]
    ptx = [e for e in fatbin.entries if e.kind == KIND_PTX and e.arch <= arch]
    return max(ptx, key=lambda e: e.arch) if ptx else None


def strip_section(section: bytearray, arch: int, drop: re.Pattern[str] | None) -> Stats:
    """Zero, in place, every payload an sm_``arch`` GPU does not need (see module doc)."""
    stats = Stats()
    for fatbin in parse_fatbins(section):
        stats.fatbins += 1
        stats.entries += len(fatbin.entries)
        keep = choose(fatbin, arch)
        if keep is None and any(e.arch <= arch for e in fatbin.entries):
            stats.no_image += 1  # nothing runnable here; keep as is rather than guess
            continue
        if keep is not None and drop is not None:
            names = kernel_names(bytes(section[keep.offset + keep.header_size:
                                               keep.offset + keep.header_size + keep.data_size]))
            if names and all(drop.search(n) for n in names):
                struct.pack_into("<I", section, keep.offset + 28, 0)  # no image for any GPU
                stats.dropped_fatbins += 1
                keep = None
        for entry in fatbin.entries:
            if entry is keep:
                stats.kept_bytes += entry.payload_size
                continue
            section[entry.payload] = bytes(entry.payload_size)
            stats.zeroed_bytes += entry.payload_size
    return stats


def strip_library(data: bytearray, arch: int, drop: re.Pattern[str] | None) -> Stats:
    offset, size = elf_section(data, ".nv_fatbin")
    section = bytearray(data[offset:offset + size])
    stats = strip_section(section, arch, drop)
    data[offset:offset + size] = section
    return stats


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("wheel", help="onnxruntime-gpu wheel (.whl)")
    ap.add_argument("--arch", type=int, default=90, help="SM version to keep (90 = H100/H200)")
    ap.add_argument("--drop", default=DROP_DEFAULT,
                    help="regex over kernel names: fatbins whose kernels all match are cut; "
                         "'' keeps every kernel")
    ap.add_argument("--out", required=True, help="output .tar.xz of the package folders")
    ap.add_argument("--preset", type=int, default=6, help="xz preset")
    args = ap.parse_args()
    drop = re.compile(args.drop) if args.drop else None

    with zipfile.ZipFile(args.wheel) as whl, tarfile.open(
            args.out, "w:xz", preset=args.preset) as tar:
        for info in whl.infolist():
            if info.is_dir() or info.filename in LEFT_OUT:
                continue
            data = whl.read(info)
            if info.filename == CUDA_LIB:
                buf = bytearray(data)
                stats = strip_library(buf, args.arch, drop)
                data = bytes(buf)
                print(f"{CUDA_LIB}: {stats.fatbins} fatbins, {stats.entries} entries; kept "
                      f"{stats.kept_bytes / 1e6:.1f} MB of sm_{args.arch} code, zeroed "
                      f"{stats.zeroed_bytes / 1e6:.1f} MB; {stats.dropped_fatbins} fatbins "
                      f"dropped by --drop; {stats.no_image} without an sm_{args.arch} image",
                      file=sys.stderr)
            member = tarfile.TarInfo(info.filename)
            member.size = len(data)
            member.mode = 0o755 if info.filename.endswith(".so") or ".so." in info.filename \
                else 0o644
            tar.addfile(member, io.BytesIO(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
