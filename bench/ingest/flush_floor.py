"""What durable storage of one instance costs on this disk, whatever the code around it.

Writes N copies of a 560 KB buffer (a CT instance's size) five ways and prints the median
ms per instance: (A) the gateway's way: new temporary file, write, fsync, rename, fsync of
the directory; (B) storescp's way: new file, write, no flush; (C) overwrite of a pre-zeroed
segment file + fdatasync (no metadata to journal); (D) append to one file + fdatasync;
(E) O_DIRECT|O_DSYNC into a pre-zeroed segment (no page cache). The cheapest durable way is
the floor any fsync-before-Success receiver pays on top of storescp's per-instance time.

    python -m bench.ingest.flush_floor [--n 300] [--dir DIR]   # DIR on the spool's disk
"""

from __future__ import annotations

import argparse
import mmap
import os
import shutil
import statistics
import tempfile
import time

SIZE = 560_000


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--dir", default=None, help="a folder on the disk to measure (default: "
                    "a temporary folder under the current directory)")
    args = ap.parse_args(argv)
    d = tempfile.mkdtemp(prefix=".flush-floor-", dir=args.dir or ".")
    data, n = os.urandom(SIZE), args.n
    dfd = os.open(d, os.O_RDONLY)
    rows: dict[str, float] = {}

    def timed(name, fn):
        times = []
        for i in range(n):
            t = time.perf_counter()
            fn(i)
            times.append(time.perf_counter() - t)
        rows[name] = statistics.median(times) * 1e3

    def gateway(i):
        tmp = f"{d}/a{i}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        os.rename(tmp, f"{d}/a{i}")
        os.fsync(dfd)

    def no_flush(i):
        fd = os.open(f"{d}/b{i}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, data)
        os.close(fd)

    try:
        timed("A new file, fsync, rename, directory fsync (the gateway)", gateway)
        timed("B new file, no flush (storescp)", no_flush)
        seg = os.open(f"{d}/segment", os.O_RDWR | os.O_CREAT, 0o644)
        os.write(seg, b"\0" * (SIZE * n))
        os.fsync(seg)
        os.fsync(dfd)
        timed("C pre-zeroed segment, pwrite + fdatasync",
              lambda i: (os.pwrite(seg, data, i * SIZE), os.fdatasync(seg)))
        log = os.open(f"{d}/log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        timed("D append to one file + fdatasync", lambda i: (os.write(log, data),
                                                            os.fdatasync(log)))
        os.close(log)
        block = 4096 * ((SIZE + 4095) // 4096)
        buf = mmap.mmap(-1, block)
        buf.write(data)
        direct = os.open(f"{d}/segment", os.O_RDWR | os.O_DIRECT | os.O_DSYNC)
        timed("E O_DIRECT|O_DSYNC into the pre-zeroed segment",
              lambda i: os.pwritev(direct, [buf], (i * block) % (SIZE * n - block)
                                   // 4096 * 4096))
        os.close(direct)
        os.close(seg)
    finally:
        os.close(dfd)
        shutil.rmtree(d, ignore_errors=True)
    print(f"{n} x {SIZE // 1000} KB, load average {os.getloadavg()[0]:.2f}")
    print("| way | ms per instance (median) |\n| --- | ---: |")
    for name, ms in rows.items():
        print(f"| {name} | {ms:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
