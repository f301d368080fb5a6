"""How the Caterva2 stack scales: one command, real services, figures and a plot.

    .venv/bin/python bench/scaling.py            # full size (1 GB dataset, 10,000 datasets)
    .venv/bin/python bench/scaling.py --quick    # a small version, a few minutes

A broker, publishers and subscribers are started as real processes on free loopback ports
(with :mod:`caterva2.tests.harness`) under a temporary directory, and four things are
measured:

(a) subscribing to a root vs the number of datasets in it (100, 1,000, 10,000);
(b) cold and warm full reads (``root[path][:]``) and the subscriber's peak memory vs the
    size of a float64 dataset (32 MB, 128 MB, 1 GB), each size with a fresh subscriber
    (peak memory is Linux's high-water mark, ``VmHWM``);
(c) throughput of small cached reads (10x10) vs the number of concurrent clients
    (1, 8, 32 processes, each with its own connection pool);
(d) link efficiency: bytes that crossed the publisher -> subscriber link for a selection,
    divided by the compressed size of the chunks the selection really touches (ideal 1.0).
    The bytes are counted by a small TCP proxy in this process: the publisher's root is
    registered a second time at the broker under an alias whose address is the proxy.

Writes ``scaling.md`` (Markdown tables) and ``scaling.png`` (one plot per item) next to
this file, and prints the tables.  Figures are wall-clock times on whatever machine runs
this: read them as orders of magnitude and trends, not as precise values.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import multiprocessing
import os
import pathlib
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import blosc2
import httpx
import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the checkout's caterva2, also when not installed

import caterva2 as cat2  # noqa: E402
from caterva2.tests.harness import CountingProxy, Stack, wait_until  # noqa: E402

CHUNKS, BLOCKS = (500, 500), (100, 100)  # as in stackbench: 2 MB chunks of float64
CPARAMS = {"codec": blosc2.Codec.ZSTD, "clevel": 1}
LOOPBACK = "127.0.0.1"

FULL = {
    "ndatasets": [100, 1_000, 10_000],
    "sizes_mb": [32, 128, 1000],
    "clients": [1, 8, 32],
    "reads_per_client": 200,
    "subscribe_repeats": 3,
    "warm_repeats": 3,
}
QUICK = {
    "ndatasets": [100, 1_000],
    "sizes_mb": [32, 128],
    "clients": [1, 8, 32],
    "reads_per_client": 60,
    "subscribe_repeats": 2,
    "warm_repeats": 2,
}
# Shapes of the float64 datasets of (b), in whole 500x500 chunks (MB = 10**6 bytes).
SHAPES = {32: (2000, 2000), 128: (4000, 4000), 1000: (10000, 12500)}
LINK_SHAPE = (2000, 2000)  # 4x4 chunks
CLIENT_TIME_LIMIT_S = 120  # a reader process stops after this, whatever its count
PHASE_TIMEOUT_S = 900      # any single wait in this script


def log(*args) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *args, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------

def make_array(path: pathlib.Path, shape: tuple[int, int], seed: int = 0) -> blosc2.NDArray:
    """A noisy sine of float64, written one band of chunk rows at a time (bounded memory)."""
    arr = blosc2.empty(shape, dtype=np.float64, chunks=CHUNKS, blocks=BLOCKS,
                       cparams=CPARAMS, urlpath=str(path), mode="w")
    n = shape[0] * shape[1]
    rng = np.random.default_rng(seed)
    for r0 in range(0, shape[0], CHUNKS[0]):
        r1 = min(r0 + CHUNKS[0], shape[0])
        x = np.arange(r0 * shape[1], r1 * shape[1], dtype=np.float64) * (40 / (n - 1))
        band = np.sin(x) + rng.normal(0, 0.01, x.size)
        arr[r0:r1, :] = band.reshape(r1 - r0, shape[1])
    return arr


def make_many(directory: pathlib.Path, count: int) -> None:
    directory.mkdir(parents=True)
    for i in range(count):
        blosc2.asarray(np.arange(100, dtype="i8") + i, chunks=(50,), blocks=(10,),
                       cparams=CPARAMS, urlpath=str(directory / f"d{i:05d}.b2nd"), mode="w")


def same_as_source(out: np.ndarray, source: pathlib.Path, key=()) -> bool:
    """Compare a result with the source file, a band of rows at a time for full reads."""
    src = blosc2.open(str(source))
    if key != ():
        return np.array_equal(out, src[key])
    if out.shape != src.shape:
        return False
    return all(np.array_equal(out[r0:r0 + CHUNKS[0]], src[r0:r0 + CHUNKS[0]])
               for r0 in range(0, src.shape[0], CHUNKS[0]))


def touched_cbytes(source: pathlib.Path, key: tuple[slice, ...]) -> tuple[int, int]:
    """(number, compressed bytes) of the chunks holding at least one selected element."""
    arr = blosc2.open(str(source))
    per_dim = [np.unique(np.arange(n)[k] // c) for n, k, c in zip(arr.shape, key, arr.chunks)]
    grid = [-(-n // c) for n, c in zip(arr.shape, arr.chunks)]
    coords = np.stack(np.meshgrid(*per_dim, indexing="ij"), -1).reshape(-1, len(grid))
    nchunks = np.ravel_multi_index(coords.T, grid).tolist()
    return len(nchunks), sum(len(arr.schunk.get_chunk(n)) for n in nchunks)


# ---------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------

def cpu_s(pid: int) -> float:
    """User + system CPU seconds used so far by a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def subscribed_root(sub: str, name: str) -> cat2.Root:
    wait_until(lambda: name in cat2.get_roots(sub), timeout=60, what=f"root {name}")
    return cat2.Root(name, host=sub)


# ---------------------------------------------------------------------------
# (a) subscribe vs number of datasets
# ---------------------------------------------------------------------------

def bench_subscribe(stack: Stack, work: pathlib.Path, cfg: dict) -> list[dict]:
    rows = []
    for count in cfg["ndatasets"]:
        name = f"many{count}"
        log(f"(a) {count} datasets: writing them")
        make_many(work / name, count)
        t = time.perf_counter()
        pub = stack.publisher(name, work / name)
        announced = pub.statedir / "announced.json"
        wait_until(lambda: announced.exists() and len(json.loads(announced.read_text())) == count,
                   timeout=PHASE_TIMEOUT_S, interval=0.1, what=f"{name} announced")
        pub_ready = time.perf_counter() - t
        times, listed, peak = [], [], []
        for rep in range(cfg["subscribe_repeats"]):
            sub = stack.subscriber(f"sub-a-{count}-{rep}")
            wait_until(lambda: name in cat2.get_roots(sub.address), timeout=60,
                       what=f"root {name} at the subscriber")
            dt, r = timed(lambda: httpx.post(f"http://{sub.address}/api/subscribe/{name}",
                                             timeout=PHASE_TIMEOUT_S))
            r.raise_for_status()
            times.append(dt)
            dt, names = timed(lambda: cat2.get_list(name, sub.address))
            assert len(names) == count, (len(names), count)
            listed.append(dt)
            peak.append(sub.peak_memory_mb())
            index_mb = (sub.statedir / "cache" / "roots" / name / "index.json").stat().st_size / 1e6
            sub.stop()
            log(f"(a) {count} datasets: subscribe {times[-1]:.3f}s, list {dt:.3f}s")
        rows.append({
            "datasets": count,
            "publisher_ready_s": pub_ready,
            "subscribe_first_s": times[0],
            "subscribe_again_s": statistics.median(times[1:]) if len(times) > 1 else None,
            "list_s": statistics.median(listed),
            "sub_peak_mb": max(peak),
            "index_mb": index_mb,
        })
        pub.stop()
    return rows


# ---------------------------------------------------------------------------
# (b) full reads and memory vs size
# ---------------------------------------------------------------------------

def bench_sizes(stack: Stack, work: pathlib.Path, cfg: dict, keep_first: list) -> list[dict]:
    rows = []
    for mb in cfg["sizes_mb"]:
        shape = SHAPES[mb]
        name = f"size{mb}"
        (work / name).mkdir()
        source = work / name / "data.b2nd"
        log(f"(b) {mb} MB: writing {shape} float64")
        make_array(source, shape)
        src = blosc2.open(str(source))
        cbytes, nchunks = src.schunk.cbytes, src.schunk.nchunks
        floor_s, out = timed(lambda: src[:])
        del out, src
        pub = stack.publisher(name, work / name)
        sub = stack.subscriber(f"sub-b-{mb}")
        ds = subscribed_root(sub.address, name)["data.b2nd"]
        base_mb = sub.peak_memory_mb()
        log(f"(b) {mb} MB: cold read")
        cold_s, out = timed(lambda: ds[:])
        peak_cold = sub.peak_memory_mb()
        ok = same_as_source(out, source)
        del out
        warm = []
        for _ in range(cfg["warm_repeats"]):
            dt, out = timed(lambda: ds[:])
            warm.append(dt)
            del out
        rows.append({
            "size_mb": mb, "shape": "x".join(map(str, shape)), "chunks": nchunks,
            "cbytes_mb": cbytes / 1e6, "cold_s": cold_s, "warm_s": statistics.median(warm),
            "floor_s": floor_s, "cold_mb_s": mb / cold_s,
            "warm_mb_s": mb / statistics.median(warm), "sub_start_mb": base_mb,
            "sub_peak_cold_mb": peak_cold, "sub_peak_mb": sub.peak_memory_mb(),
            "pub_peak_mb": pub.peak_memory_mb(), "correct": ok,
        })
        log(f"(b) {mb} MB: cold {cold_s:.2f}s, warm {rows[-1]['warm_s']:.2f}s, "
            f"subscriber peak {rows[-1]['sub_peak_mb']:.0f} MB")
        sub.stop()
        shutil.rmtree(sub.statedir / "cache", ignore_errors=True)
        if not keep_first:
            keep_first.append((name, pub, source))  # (c) reads the smallest one
        else:
            pub.stop()
    return rows


# ---------------------------------------------------------------------------
# (c) small cached reads vs concurrent clients
# ---------------------------------------------------------------------------

def reader(host, root, path, source, count, seed, go, ready, results) -> None:
    """One client process: ``count`` 10x10 reads at random places of a cached dataset."""
    try:
        ds = cat2.Dataset(path, root=root, host=host)  # its own pooled HTTP client
        shape = ds.shape
        rng = np.random.default_rng(seed)
        where = rng.integers(0, [shape[0] - 10, shape[1] - 10], size=(count, 2))
        ds[0:10, 0:10]  # connection opened before the clock starts
        ready.put(os.getpid())
        if not go.wait(PHASE_TIMEOUT_S):
            raise RuntimeError("never told to start")
        latencies = []
        start = time.monotonic()
        for i, j in where:
            t = time.perf_counter()
            out = ds[i:i + 10, j:j + 10]
            latencies.append(time.perf_counter() - t)
            if time.monotonic() - start > CLIENT_TIME_LIMIT_S:
                break
        end = time.monotonic()
        i, j = where[len(latencies) - 1]
        ok = same_as_source(out, pathlib.Path(source), (slice(i, i + 10), slice(j, j + 10)))
        results.put({"start": start, "end": end, "latencies": latencies, "ok": ok})
    except Exception as e:  # noqa: BLE001 - reported by the parent
        results.put({"error": f"{type(e).__name__}: {e}"})
        ready.put(os.getpid())


def bench_clients(stack: Stack, cfg: dict, name: str, source: pathlib.Path) -> list[dict]:
    sub = stack.subscriber("sub-c")
    ds = subscribed_root(sub.address, name)["data.b2nd"]
    ds[:]  # every chunk cached: the reads below never reach the publisher
    ctx = multiprocessing.get_context("spawn")  # no inherited HTTP pools or threads
    rows = []
    for nclients in cfg["clients"]:
        log(f"(c) {nclients} client processes x {cfg['reads_per_client']} reads")
        go, ready, results = ctx.Event(), ctx.Queue(), ctx.Queue()
        procs = [ctx.Process(target=reader, daemon=True,
                             args=(sub.address, name, "data.b2nd", str(source),
                                   cfg["reads_per_client"], k, go, ready, results))
                 for k in range(nclients)]
        for p in procs:
            p.start()
        try:
            for _ in procs:
                ready.get(timeout=PHASE_TIMEOUT_S)
            cpu0 = cpu_s(sub.proc.pid)
            go.set()
            out = [results.get(timeout=PHASE_TIMEOUT_S) for _ in procs]
            cpu1 = cpu_s(sub.proc.pid)
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
        rows.append({
            "clients": nclients, "reads": len(lat), "wall_s": wall,
            "reads_per_s": len(lat) / wall,
            "p50_ms": 1000 * lat[len(lat) // 2],
            "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))],
            "sub_cpu_ms_per_read": 1000 * (cpu1 - cpu0) / len(lat),
            "correct": all(o["ok"] for o in out),
        })
        log(f"(c) {nclients} clients: {rows[-1]['reads_per_s']:.0f} reads/s, "
            f"p50 {rows[-1]['p50_ms']:.1f} ms")
    sub.stop()
    return rows


# ---------------------------------------------------------------------------
# (d) link efficiency
# ---------------------------------------------------------------------------

LINK_CASES = [
    # (label, dataset copy, key); the last case repeats the 4-chunk one (all cached by then)
    ("10x10 inside one chunk", "one.b2nd", (slice(100, 110), slice(100, 110))),
    ("[0:900, 1:900] (4 chunks)", "four.b2nd", (slice(0, 900), slice(1, 900))),
    ("[::1000, ::1000] (strided)", "strided.b2nd", (slice(None, None, 1000),) * 2),
    ("[::3, ::3] (strided, every chunk)", "strided3.b2nd", (slice(None, None, 3),) * 2),
    ("[:] (full array)", "full.b2nd", (slice(None),) * 2),
    ("[0:900, 1:900] again", "four.b2nd", (slice(0, 900), slice(1, 900))),
]


def bench_link(stack: Stack, work: pathlib.Path) -> list[dict]:
    directory = work / "link"
    directory.mkdir()
    log(f"(d) writing {len(LINK_CASES)} copies of a {LINK_SHAPE} float64 array")
    make_array(directory / "base", LINK_SHAPE, seed=1)
    for _, file, _ in LINK_CASES:
        if not (directory / file).exists():
            shutil.copyfile(directory / "base", directory / file)
    (directory / "base").rename(directory / ".base")  # hidden: not published
    pub = stack.publisher("link", directory)
    proxy = CountingProxy(pub.address)
    try:
        # The same publisher, registered again under an alias whose address is the proxy:
        # everything the subscriber fetches for "link-proxied" crosses the proxy.
        # (imported here: bench/ab.py runs older checkouts, whose harness lacks it, with
        # this module)
        from caterva2.tests.harness import register_root

        register_root(stack.broker.address, "link-proxied", proxy.address).raise_for_status()
        sub = stack.subscriber("sub-d")
        root = subscribed_root(sub.address, "link-proxied")
        rows = []
        for label, file, key in LINK_CASES:
            ds = root[file]
            down0, up0, req0 = proxy.counters()
            out = ds[key]
            down1, up1, req1 = proxy.counters()
            ntouched, cbytes = touched_cbytes(directory / file, key)
            rows.append({
                "case": label, "result_shape": "x".join(map(str, np.shape(out))),
                "chunks_touched": ntouched, "touched_cbytes": cbytes,
                "link_bytes": down1 - down0, "request_bytes": up1 - up0,
                "requests": req1 - req0,
                "ratio": (down1 - down0) / cbytes if cbytes else float("nan"),
                "correct": same_as_source(out, directory / file, key),
            })
            log(f"(d) {label}: {rows[-1]['link_bytes']} bytes over {cbytes} "
                f"({rows[-1]['ratio']:.3f})")
        sub.stop()
        return rows
    finally:
        proxy.close()
        pub.stop()


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------

def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "**NO**"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def table(rows: list[dict], columns: list[tuple]) -> str:
    """A Markdown table; a column is (key, title) or (key, title, format spec)."""
    def cell(row, key, spec=None):
        value = row.get(key)
        return format(value, spec) if spec and isinstance(value, float) else fmt(value)

    head = "| " + " | ".join(c[1] for c in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(cell(r, c[0], *c[2:]) for c in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def environment(args, load_start) -> str:
    def git(*a):
        with contextlib.suppress(Exception):
            return subprocess.run(["git", *a], cwd=HERE, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        return "?"

    dirty = " (with uncommitted changes)" if git("status", "--porcelain", "--", "caterva2") else ""
    return (f"- when: {datetime.datetime.now().isoformat(timespec='seconds')}, "
            f"mode: {'--quick' if args.quick else 'full'}\n"
            f"- code: commit {git('rev-parse', '--short', 'HEAD')}{dirty}\n"
            f"- machine: {os.cpu_count()} CPUs, {platform.machine()}, Python "
            f"{platform.python_version()}, blosc2 {blosc2.__version__}, numpy {np.__version__}\n"
            f"- load average at start / end: {load_start} / "
            f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}\n"
            "- every service, the clients and this script share the machine's CPUs; "
            "times are one run's wall-clock figures.\n")


def report(res: dict, args, load_start: str) -> str:
    parts = ["# Caterva2 scaling benchmark\n", "Produced by `bench/scaling.py"
             + (" --quick" if args.quick else "") + "`; see `bench/README.md`.\n",
             environment(args, load_start)]
    if "subscribe" in res:
        parts += ["## (a) Subscribing vs number of datasets in a root\n",
                  "`POST /api/subscribe/ROOT` on a fresh subscriber (metadata only). "
                  "*first*: the first subscriber to ask; *again*: median over later fresh "
                  "subscribers. *publisher ready*: start of the publisher until its "
                  "announcement of every dataset was accepted by the broker.\n",
                  table(res["subscribe"], [
                      ("datasets", "datasets"), ("publisher_ready_s", "publisher ready (s)"),
                      ("subscribe_first_s", "subscribe first (s)"),
                      ("subscribe_again_s", "subscribe again (s)"), ("list_s", "list (s)"),
                      ("index_mb", "index.json (MB)"),
                      ("sub_peak_mb", "subscriber peak RSS (MB)")]), ""]
    if "sizes" in res:
        parts += ["## (b) Full reads and memory vs dataset size\n",
                  "`root[path][:]` of a float64 array in 500x500 chunks (noisy sine, ZSTD "
                  "level 1). *cold*: no chunk cached yet; *warm*: median of repeats, all "
                  "cached. *local*: `blosc2.open(file)[:]` on the publisher's file, no "
                  "services. Peak RSS is VmHWM of a fresh subscriber per size.\n",
                  table(res["sizes"], [
                      ("size_mb", "MB"), ("shape", "shape"), ("chunks", "chunks"),
                      ("cbytes_mb", "compressed MB"), ("cold_s", "cold (s)"),
                      ("warm_s", "warm (s)"), ("floor_s", "local (s)"),
                      ("cold_mb_s", "cold MB/s"), ("warm_mb_s", "warm MB/s"),
                      ("sub_start_mb", "sub RSS idle (MB)"),
                      ("sub_peak_cold_mb", "sub peak after cold (MB)"),
                      ("sub_peak_mb", "sub peak (MB)"), ("pub_peak_mb", "pub peak (MB)"),
                      ("correct", "data correct")]), ""]
    if "clients" in res:
        parts += ["## (c) Small cached reads vs concurrent clients\n",
                  "Each client is a separate process with its own connection pool, doing "
                  f"its count of 10x10 reads at random places of the cached "
                  f"{SHAPES[args.cfg['sizes_mb'][0]]} array. Throughput is all reads over "
                  "the wall time from the common start to the last finish. *sub CPU/read*: "
                  "subscriber CPU time divided by reads.\n",
                  table(res["clients"], [
                      ("clients", "clients"), ("reads", "reads"), ("wall_s", "wall (s)"),
                      ("reads_per_s", "reads/s"), ("p50_ms", "p50 (ms)"),
                      ("p99_ms", "p99 (ms)"), ("sub_cpu_ms_per_read", "sub CPU/read (ms)"),
                      ("correct", "data correct")]), ""]
    if "link" in res:
        parts += ["## (d) Link efficiency (publisher -> subscriber)\n",
                  "Bytes the publisher sent to the subscriber for one read (counted by a TCP "
                  "proxy: HTTP headers and framing included), over the compressed size of "
                  "the chunks holding at least one selected element (ideal: 1.0; a repeated "
                  f"read: 0). Each case has its own cold copy of a {LINK_SHAPE} array "
                  "(4x4 chunks), except the repeat.\n",
                  table(res["link"], [
                      ("case", "selection"), ("result_shape", "result"),
                      ("chunks_touched", "chunks touched"),
                      ("touched_cbytes", "their compressed bytes"),
                      ("link_bytes", "bytes pub->sub"), ("requests", "requests"),
                      ("ratio", "ratio", ".4f"), ("correct", "data correct")]), ""]
    if res.get("errors"):
        parts += ["## Errors\n", *[f"- {e}" for e in res["errors"]], ""]
    return "\n".join(parts)


def plot(res: dict, path: pathlib.Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no plot")
        return False
    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    (a, b), (c, d) = axes
    if res.get("subscribe"):
        rows = res["subscribe"]
        x = [r["datasets"] for r in rows]
        a.plot(x, [r["subscribe_first_s"] for r in rows], "o-", label="subscribe, first")
        again = [r["subscribe_again_s"] for r in rows]
        if all(v is not None for v in again):
            a.plot(x, again, "s--", label="subscribe, again")
        a.plot(x, [r["list_s"] for r in rows], "^:", label="list")
        a.set(xscale="log", yscale="log", xlabel="datasets in the root", ylabel="seconds",
              title="(a) subscribe vs datasets in a root")
        a.set_xticks(x, [f"{v:,}" for v in x])
        a.minorticks_off()
        a.legend()
    if res.get("sizes"):
        rows = res["sizes"]
        x = [r["size_mb"] for r in rows]
        for key, style, label in (("cold_s", "o-", "cold read"), ("warm_s", "s-", "warm read"),
                                  ("floor_s", "^:", "local blosc2 read")):
            b.plot(x, [r[key] for r in rows], style, label=label)
        b.set(xscale="log", yscale="log", xlabel="dataset size (MB)", ylabel="seconds",
              title="(b) full read and subscriber peak memory vs size")
        b.set_xticks(x, [str(v) for v in x])
        b.minorticks_off()
        m = b.twinx()
        m.plot(x, [r["sub_peak_mb"] for r in rows], "d--", color="tab:red",
               label="subscriber peak RSS")
        m.set_ylabel("subscriber peak RSS (MB)", color="tab:red")
        m.set_ylim(bottom=0)
        lines = b.get_legend_handles_labels()
        more = m.get_legend_handles_labels()
        b.legend(lines[0] + more[0], lines[1] + more[1], loc="upper left", fontsize="small")
    if res.get("clients"):
        rows = res["clients"]
        x = [r["clients"] for r in rows]
        c.plot(x, [r["reads_per_s"] for r in rows], "o-", label="reads/s")
        c.set(xscale="log", xlabel="concurrent client processes", ylabel="reads per second",
              title="(c) cached 10x10 reads vs concurrent clients")
        c.set_xticks(x, [str(v) for v in x])
        c.set_ylim(bottom=0)
        lat = c.twinx()
        lat.plot(x, [r["p50_ms"] for r in rows], "s--", color="tab:red", label="p50 latency")
        lat.set_ylabel("p50 latency (ms)", color="tab:red")
        lat.set_ylim(bottom=0)
        h1, l1 = c.get_legend_handles_labels()
        h2, l2 = lat.get_legend_handles_labels()
        c.legend(h1 + h2, l1 + l2, loc="upper left")
    if res.get("link"):
        rows = res["link"]
        y = np.arange(len(rows))
        d.barh(y, [r["ratio"] for r in rows])
        d.axvline(1.0, color="k", linestyle=":", label="ideal")
        d.set_yticks(y, [r["case"] for r in rows])
        d.invert_yaxis()
        for yy, r in zip(y, rows):
            d.text(r["ratio"], yy, f" {r['ratio']:.3f}", va="center")
        d.set_xlim(0, 1.2 * max([1.0] + [r["ratio"] for r in rows]))
        d.set(xlabel="bytes pub->sub / compressed bytes of touched chunks",
              title="(d) link efficiency")
        d.legend(loc="lower right")
    fig.suptitle("Caterva2 scaling (one run on a shared machine; wall-clock figures)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small version, a few minutes")
    parser.add_argument("--only", default="abcd", help="which parts to run (default: abcd)")
    parser.add_argument("--out", default=str(HERE), help="where scaling.md/.png go")
    parser.add_argument("--workdir", help="keep data and service state here (default: a "
                                          "temporary directory, removed at the end)")
    args = parser.parse_args()
    args.cfg = QUICK if args.quick else FULL
    if "c" in args.only and "b" not in args.only:
        parser.error("part c reads the dataset of part b: include b")
    load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    temp = None
    if args.workdir:
        work = pathlib.Path(args.workdir).resolve()
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
    else:
        temp = tempfile.TemporaryDirectory(prefix="caterva2-scaling-")
        work = pathlib.Path(temp.name)
    res: dict = {"errors": []}
    t0 = time.perf_counter()
    stack = Stack(work / "services")
    try:
        parts = [("a", "subscribe", lambda: bench_subscribe(stack, work / "data", args.cfg))]
        first: list = []
        parts.append(("b", "sizes", lambda: bench_sizes(stack, work / "data", args.cfg, first)))
        parts.append(("c", "clients", lambda: bench_clients(stack, args.cfg, first[0][0],
                                                             first[0][2])))
        parts.append(("d", "link", lambda: bench_link(stack, work / "data")))
        (work / "data").mkdir()
        for letter, key, fn in parts:
            if letter not in args.only:
                continue
            try:
                res[key] = fn()
            except Exception as e:  # noqa: BLE001 - report it, run the other parts
                log(f"part {letter} failed: {type(e).__name__}: {e}")
                res["errors"].append(f"part ({letter}): {type(e).__name__}: {e}")
    finally:
        stack.stop()
        if temp is not None:
            temp.cleanup()
    log(f"done in {time.perf_counter() - t0:.0f}s")
    text = report(res, args, load_start)
    (out / "scaling.md").write_text(text)
    if plot(res, out / "scaling.png"):
        text += f"\nPlot: {out / 'scaling.png'}\n"
    print(text)
    sys.exit(1 if res["errors"] else 0)


if __name__ == "__main__":
    main()
