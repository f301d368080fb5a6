"""Reading through a chain of re-publishing sites, against reading one hop away (issue 20).

    .venv/bin/python bench/relay.py

Sites run as real processes on loopback (:class:`caterva2.tests.relay_chain.Chain`, with
no proxies in between): the origin publishes ``data``; site A's subscriber follows it and
re-publishes it; site B's subscriber follows A's relay, and re-publishes in turn; site
C's subscriber follows B's relay.  So a read at A is one hop from the origin, at B two,
at C three.

Each read is of a whole 128 MiB float64 array (64 chunks of 2 MiB), through the Python
client: *cold* (nothing cached anywhere along the chain: each read is of its own copy of
the array, the same size and data kind), then *warm* (cached at the reading site); each
the median of REPEATS (the machine may be shared: single reads are noisy).  Goals: cold at two hops at most 1.5x one hop; warm the same as one hop.

For cold reads it also sums the CPU seconds every process of the chain spent (the
client, the publishers, the relays and the subscribers, from ``/proc/PID/stat``): that
sum divided by the cores is the least time the read can take on this machine, however
well the hops overlap.  Each hop adds two processes that handle every byte.

Writes ``relay.md`` next to this file and prints the table.
"""
from __future__ import annotations

import datetime
import os
import pathlib
import statistics
import sys
import tempfile
import time

import blosc2
import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from caterva2.tests.relay_chain import Chain

SHAPE, CHUNKS = (8192, 2048), (128, 2048)  # 128 MiB of float64, 64 chunks of 2 MiB
WHERE = {1: ("A", "data"), 2: ("B", "adata"), 3: ("C", "bdata")}  # hops: site, root
REPEATS = 3


def make_copies(source: pathlib.Path) -> None:
    """One array per read, so that each cold read is cold all along the chain."""
    rng = np.random.default_rng(1)
    for hops in WHERE:
        for n in range(REPEATS):
            data = rng.normal(size=SHAPE).round(3)  # (compresses a little, as data may)
            blosc2.asarray(data, urlpath=str(source / f"big{hops}-{n}.b2nd"), mode="w",
                           chunks=CHUNKS)


def timed(action) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def chain_cpu_s(chain: Chain) -> float:
    """CPU seconds used so far by this process and every service of the chain."""
    services = [*chain.pubs.values(), *chain.subs.values()]
    mine = os.times()
    return mine.user + mine.system + sum(cpu_s(s.proc.pid) for s in services if s.proc)


Figures = dict[int, tuple[float, float, float]]  # hops: cold s, warm s, cold CPU s


def measure(tmp: pathlib.Path) -> Figures:
    source = tmp / "data"
    source.mkdir()
    make_copies(source)
    chain = Chain(tmp / "state", source, counted=False)
    try:
        results = {}
        for hops, (site, root) in WHERE.items():
            client = chain.client(site)
            client.subscribe(root)
            colds, warms, cpus = [], [], []
            for n in range(REPEATS):
                ds = client.get_dataset(f"{root}/big{hops}-{n}.b2nd")
                cpu_before = chain_cpu_s(chain)
                colds.append(timed(ds.fetch))
                cpus.append(chain_cpu_s(chain) - cpu_before)
                warms.append(timed(ds.fetch))
            results[hops] = (statistics.median(colds), statistics.median(warms),
                             statistics.median(cpus))
        return results
    finally:
        chain.stop()


def table(results: Figures) -> str:
    one_cold, one_warm, _ = results[1]
    cores = os.cpu_count() or 1
    lines = ["| read of 128 MiB at | cold (s) | vs one hop | cold CPU, all processes (s) "
             f"| least cold time on {cores} cores (s) | warm (s) | vs one hop |",
             "|---|---|---|---|---|---|---|"]
    for hops, (cold, warm, cpu) in results.items():
        lines.append(f"| {hops} hop{'s' if hops > 1 else ''} from the origin | {cold:.2f} | "
                     f"{cold / one_cold:.2f}x | {cpu:.2f} | {cpu / cores:.2f} "
                     f"({cpu / cores / one_cold:.2f}x) | {warm:.3f} | {warm / one_warm:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="caterva2-relay-") as tmp:
        results = measure(pathlib.Path(tmp))
    load = f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    text = (f"# Reading through re-publishing sites\n\n{datetime.date.today()}, "
            f"`bench/relay.py` on {os.cpu_count()} cores ({load}); see its docstring.  "
            "Goals: cold at 2 hops at most 1.5x one hop; warm the same as one hop.  On a "
            "busy machine the chain's extra processes compete for the cores: cold ratios "
            "grow with the load.\n\n" + table(results) + "\n")
    (HERE / "relay.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
