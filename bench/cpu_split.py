"""Where a large read's time goes: wall time and each process's CPU, read by read.

    .venv/bin/python bench/cpu_split.py [--arrays 6]

Starts a publisher and a subscriber on free loopback ports (``caterva2.tests.harness``),
then reads each of ``--arrays`` 128 MB arrays (float64, 64 chunks of 500x500) whole: once
cold (every chunk crosses publisher -> subscriber and is written to the cache) and three
times warm.  For every read it prints the wall time and the CPU seconds that the client
(this process), the subscriber and the publisher spent on it, from ``/proc/PID/stat``.

The sum of the three CPU columns, divided by the number of cores, is a lower bound for
the wall time; a read far above that bound waited on something (a lock, the GIL, memory
the machine was slow to hand over: ``bench/fresh_pages.py``).  Data and services live in
a temporary directory, removed at the end.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # scaling.py: the benchmark's data maker and helpers

import scaling

import caterva2 as cat2
from caterva2.tests.harness import Stack, wait_until

SHAPE = (4000, 4000)
WARM_READS = 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arrays", type=int, default=6, help="arrays read cold (one each)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="caterva2-cpu-") as temp:
        data = pathlib.Path(temp) / "data"
        data.mkdir()
        # One more array than reported: the first read warms up every process.
        for i in range(args.arrays + 1):
            scaling.make_array(data / f"a{i}.b2nd", SHAPE, seed=i)
        stack = Stack(pathlib.Path(temp) / "state")
        try:
            pub = stack.publisher("cpu", data)
            sub = stack.subscriber()
            wait_until(lambda: "cpu" in cat2.get_roots(sub.address), timeout=60,
                       what="the root at the subscriber")
            root = cat2.Root("cpu", host=sub.address)
            root["a0.b2nd"][:]
            pids = {"client": os.getpid(), "subscriber": sub.proc.pid,
                    "publisher": pub.proc.pid}
            print(f"{'read':8} {'wall s':>8} " + " ".join(f"{k + ' cpu':>15}" for k in pids)
                  + f" {'cpu sum / cores':>16}")
            for i in range(1, args.arrays + 1):
                for kind in ["cold"] + ["warm"] * WARM_READS:
                    before = {k: scaling.cpu_s(p) for k, p in pids.items()}
                    t = time.perf_counter()
                    root[f"a{i}.b2nd"][:]
                    wall = time.perf_counter() - t
                    cpu = {k: scaling.cpu_s(p) - before[k] for k, p in pids.items()}
                    bound = sum(cpu.values()) / (os.cpu_count() or 1)
                    print(f"{kind:8} {wall:8.3f} " + " ".join(f"{v:15.2f}" for v in cpu.values())
                          + f" {bound:16.3f}", flush=True)
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
