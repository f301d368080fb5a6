"""Cached small reads against subscriber workers: ``cat2sub --workers 1`` vs ``--workers 2``.

    .venv/bin/python bench/workers.py            # about two minutes; also run by `make bench`
    .venv/bin/python bench/workers.py --seconds 3 --rounds 1   # quicker, noisier

A broker, a publisher and a subscriber are started as real processes on free loopback
ports (:mod:`caterva2.tests.harness`).  A (2000, 2000) float64 array in 500x500 chunks is
read whole once (every chunk cached), then 1, 8 and 32 client processes (each with its own
``caterva2.Dataset`` and so its own kept-alive connection) read 10x10 selections at random
places for a fixed time; every read is checked against the source.  For each number of
workers and clients: reads/s (all reads over the common wall time), latency p50/p99, and
the subscriber's CPU per read (user + system time of all its processes, owner and fronts,
from ``/proc/PID/stat``).  Rounds alternate the two subscribers so that a change in the
machine's load hits both; the table shows each figure's median over rounds.

Writes ``workers.md`` next to this file and prints it.  The clients share the machine's
cores with the subscriber: on a 2-core machine a second worker gains only what the clients
leave over.
"""
from __future__ import annotations

import argparse
import datetime
import multiprocessing
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import blosc2
import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the checkout's caterva2, also when not installed

import caterva2 as cat2
from caterva2.tests.harness import Stack, wait_until

SHAPE, CHUNKS, BLOCKS = (2000, 2000), (500, 500), (100, 100)  # as bench/scaling.py (c)
CLIENTS = [1, 8, 32]
WORKERS = [1, 2]
PHASE_TIMEOUT_S = 300  # any single wait in this script


def log(*args) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *args, file=sys.stderr, flush=True)


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds used so far by processes ``pids`` (gone ones: 0)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def service_pids(pid: int) -> list[int]:
    """A subscriber's processes: ``pid`` and its children (the front workers)."""
    pids = [pid]
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == pid:
                pids.append(int(entry.name))
    return pids


def reader(host, root, path, source, seconds, seed, go, ready, results) -> None:
    """One client process: 10x10 reads at random places for ``seconds``, each checked."""
    try:
        ds = cat2.Dataset(path, root=root, host=host)
        src = blosc2.open(source)[:]  # (the source in memory: checking costs no I/O)
        rng = np.random.default_rng(seed)
        ds[0:10, 0:10]  # the connection is opened before the clock starts
        ready.put(os.getpid())
        if not go.wait(PHASE_TIMEOUT_S):
            raise RuntimeError("never told to start")
        latencies, wrong = [], 0
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            i, j = rng.integers(0, [SHAPE[0] - 10, SHAPE[1] - 10])
            t = time.perf_counter()
            out = ds[i:i + 10, j:j + 10]
            latencies.append(time.perf_counter() - t)
            wrong += not np.array_equal(out, src[i:i + 10, j:j + 10])
        end = time.monotonic()
        results.put({"start": start, "end": end, "latencies": latencies, "wrong": wrong})
    except Exception as e:  # noqa: BLE001 - reported by the parent
        results.put({"error": f"{type(e).__name__}: {e}"})
        ready.put(os.getpid())


def measure(host: str, pid: int, source: pathlib.Path, nclients: int, seconds: float
            ) -> dict:
    ctx = multiprocessing.get_context("spawn")  # no inherited HTTP pools or threads
    go, ready, results = ctx.Event(), ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=reader, daemon=True,
                         args=(host, "data", "data.b2nd", str(source), seconds, k, go,
                               ready, results))
             for k in range(nclients)]
    for p in procs:
        p.start()
    try:
        for _ in procs:
            ready.get(timeout=PHASE_TIMEOUT_S)
        pids = service_pids(pid)
        cpu0 = cpu_s(pids)
        go.set()
        out = [results.get(timeout=PHASE_TIMEOUT_S) for _ in procs]
        cpu1 = cpu_s(pids)
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    errors = [o["error"] for o in out if "error" in o]
    if errors:
        raise RuntimeError(f"reader failed: {errors[0]}")
    lat = sorted(x for o in out for x in o["latencies"])
    wall = max(o["end"] for o in out) - min(o["start"] for o in out)
    return {"reads": len(lat), "reads_per_s": len(lat) / wall,
            "p50_ms": 1000 * lat[len(lat) // 2],
            "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))],
            "cpu_ms_per_read": 1000 * (cpu1 - cpu0) / len(lat),
            "wrong": sum(o["wrong"] for o in out)}


def environment(load_start: str) -> str:
    def git(*a):
        try:
            return subprocess.run(["git", *a], cwd=HERE, capture_output=True, text=True,
                                  timeout=10, check=False).stdout.strip()
        except OSError:
            return "?"
    return "\n".join([
        f"- when: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- code: commit {git('rev-parse', '--short', 'HEAD')}",
        (f"- machine: {os.cpu_count()} CPUs, {platform.machine()}, Python "
         f"{platform.python_version()}, blosc2 {blosc2.__version__}"),
        f"- load average at start / end: {load_start} / "
        + " ".join(f"{x:.2f}" for x in os.getloadavg()),
    ])


def report(rows: list[dict], args, load_start: str) -> str:
    lines = ["# Subscriber workers: cached 10x10 reads\n",
             "Produced by `bench/workers.py`; see `bench/README.md`.\n",
             environment(load_start),
             (f"- each cell: median of {args.rounds} rounds of {args.seconds:g} s; the "
              "clients (separate processes) share the CPUs with the subscriber\n"),
             ("| workers | clients | reads/s | vs 1 worker | p50 (ms) | p99 (ms) | "
              "sub CPU/read (ms) | sub cores busy | data correct |"),
             "|---|---|---|---|---|---|---|---|---|"]
    base = {r["clients"]: r["reads_per_s"] for r in rows if r["workers"] == 1}
    for r in rows:
        ratio = r["reads_per_s"] / base[r["clients"]] if r["clients"] in base else float("nan")
        lines.append(f"| {r['workers']} | {r['clients']} | {r['reads_per_s']:.0f} | "
                     f"{ratio:.2f}x | {r['p50_ms']:.2f} | {r['p99_ms']:.1f} | "
                     f"{r['cpu_ms_per_read']:.3f} | "
                     f"{r['reads_per_s'] * r['cpu_ms_per_read'] / 1000:.2f} | "
                     f"{'yes' if r['correct'] else 'NO'} |")
    lines += ["", ("*sub cores busy*: reads/s x CPU/read, the cores the subscriber's "
                   "processes kept busy; the rest of the machine went to the clients (and "
                   "whatever else ran on it).")]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=6, help="length of one measure")
    parser.add_argument("--rounds", type=int, default=3, help="measures per cell")
    parser.add_argument("--out", default=str(HERE), help="where workers.md goes")
    args = parser.parse_args()
    load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    results: dict[tuple[int, int], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="caterva2-workers-") as temp:
        work = pathlib.Path(temp)
        (work / "src").mkdir()
        source = work / "src" / "data.b2nd"
        rng = np.random.default_rng(0)
        blosc2.asarray(np.sin(np.arange(SHAPE[0] * SHAPE[1]) / 1e5).reshape(SHAPE)
                       + rng.normal(0, 0.01, SHAPE), urlpath=str(source), mode="w",
                       chunks=CHUNKS, blocks=BLOCKS,
                       cparams={"codec": blosc2.Codec.ZSTD, "clevel": 1})
        stack = Stack(work / "services")
        try:
            stack.publisher("data", work / "src")
            subs = {n: stack.subscriber(f"sub{n}", ["--workers", str(n)]) for n in WORKERS}
            for n, sub in subs.items():
                wait_until(lambda s=sub: "data" in cat2.get_roots(s.address), timeout=60,
                           what="root data")
                full = cat2.Root("data", host=sub.address)["data.b2nd"][:]  # all cached
                assert np.array_equal(full, blosc2.open(str(source))[:]), "wrong data"
            for round_ in range(args.rounds):
                for nclients in CLIENTS:
                    for n, sub in subs.items():
                        row = measure(sub.address, sub.proc.pid, source, nclients,
                                      args.seconds)
                        results.setdefault((n, nclients), []).append(row)
                        log(f"round {round_ + 1}: {n} workers, {nclients} clients: "
                            f"{row['reads_per_s']:.0f} reads/s, "
                            f"{row['cpu_ms_per_read']:.3f} ms CPU/read")
        finally:
            stack.stop()
    rows = []
    for (n, nclients), runs in sorted(results.items()):
        rows.append({"workers": n, "clients": nclients,
                     **{key: statistics.median(r[key] for r in runs)
                        for key in ("reads_per_s", "p50_ms", "p99_ms", "cpu_ms_per_read")},
                     "correct": all(r["wrong"] == 0 for r in runs)})
    text = report(rows, args, load_start)
    (pathlib.Path(args.out) / "workers.md").write_text(text)
    print(text)
    sys.exit(0 if all(r["correct"] for r in rows) else 1)


if __name__ == "__main__":
    main()
