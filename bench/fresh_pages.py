"""How much touching memory costs here, depending on how long it lay unused.

    .venv/bin/python bench/fresh_pages.py [--mb 128]

Large reads allocate and fill large buffers (the client's result, the subscriber's cache
file in the page cache).  On some virtual machines memory freed for a few seconds is handed
back to the host ("free page reporting"), and the first touch of such memory is many times
slower than of memory freed a moment ago.  This script measures both, for NumPy arrays and
for writing a new file, so that benchmark figures of large reads can be read against them.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import tempfile
import time

import numpy as np


def fill_array(mb: int) -> float:
    """Seconds to allocate and fill a fresh array of ``mb`` MiB."""
    t = time.perf_counter()
    a = np.empty(mb << 17)  # float64
    a.fill(1.0)
    elapsed = time.perf_counter() - t
    del a
    return elapsed


def write_file(directory: str, mb: int, name: str) -> float:
    """Seconds to write ``mb`` MiB to a new file (page cache only: no fsync)."""
    block = os.urandom(1 << 20)
    path = os.path.join(directory, name)
    t = time.perf_counter()
    with open(path, "wb") as f:
        f.writelines(block for _ in range(mb))
    return time.perf_counter() - t


def reporting_settings() -> str:
    """The kernel's free page reporting parameters, if this machine has them."""
    directory = pathlib.Path("/sys/module/page_reporting/parameters")
    if not directory.is_dir():
        return "no free page reporting"
    return "free page reporting: " + ", ".join(
        f"{p.name}={p.read_text().strip()}" for p in sorted(directory.iterdir()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=128, help="size of each buffer (MiB)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(reporting_settings())
    print(f"{args.mb} MiB each; median of {args.repeat}")
    for pause in (0.0, 1.0, 5.0):
        times = []
        for _ in range(args.repeat):
            time.sleep(pause)
            times.append(fill_array(args.mb))
        print(f"array filled after {pause:3.0f} s idle: {statistics.median(times):.3f} s "
              f"(min {min(times):.3f}, max {max(times):.3f})")
    with tempfile.TemporaryDirectory(dir=".") as directory:
        new = [write_file(directory, args.mb, f"new{i}") for i in range(args.repeat)]
        for i in range(args.repeat):
            os.unlink(os.path.join(directory, f"new{i}"))  # its pages are free again...
        again = [write_file(directory, args.mb, f"again{i}") for i in range(args.repeat)]
        print(f"new file written:              {statistics.median(new):.3f} s")
        print(f"new file, just after deleting: {statistics.median(again):.3f} s")


if __name__ == "__main__":
    main()
